"""Feature extraction with Ray Data: the features `extract_models` computes, from a pool of actors on a Ray cluster.

The samples become a Ray dataset of (position, path); each image is decoded and resized exactly as the
single-process loader does (`load_image`, then `ResizeWithOriginalSize`), and a pool of actors, each holding the
models (a `TrunkGroup`: the shared frozen lower trunk runs once per batch), featurises the batches with
`featurize_batch`. With GPUs (one per actor), Ray tasks decode on the cluster's CPUs and feed the actors; CPU
actors decode their own batches, since moving decoded pixels through Ray's object store to a process that
competes for the same cores cost more than decoding in place (2,048 photos on 2 cores: 40.5 vs 33.1 images/s
once started). The rows come back to the caller, are put in sample order and collected like `extract_models`'
batches, so both paths give the same `FeatureSet`s.

`ray_session` connects to a running cluster or starts a local Ray on this machine (loopback only, no dashboard, no
usage statistics), once for a whole build.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn as nn

from fgia.data.images import ImageLoadError, load_image
from fgia.data.samples import Sample
from fgia.features.extract import (
    BatchFeatures,
    FeatureSet,
    ResizeWithOriginalSize,
    TrunkGroup,
    as_group,
    collect_features,
    featurize_batch,
    group_spec,
    normalised_batch,
    prepare_model,
    zoom_size,
)
from fgia.models.spec import ExtractionSpec
from fgia.runtime import pick_device

log = logging.getLogger(__name__)

RAY_ENVIRONMENT = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


def _ray() -> Any:
    for key, value in RAY_ENVIRONMENT.items():
        os.environ.setdefault(key, value)
    try:
        import ray
    except ImportError:
        raise ImportError("--engine ray needs Ray Data: pip install 'fgia[scale]'") from None
    return ray


@contextlib.contextmanager
def ray_session(address: str | None = None) -> Iterator[None]:
    """Run the block with Ray up: connected to the cluster at `address` ("auto": the one this machine belongs to)
    or, with None, a local Ray on this machine's cores (loopback only, no dashboard). Ray is shut down after the
    block when this call started it; inside a running session it does nothing."""
    ray = _ray()
    if ray.is_initialized():
        yield
        return
    options: dict[str, Any] = {"log_to_driver": False, "configure_logging": False}
    if address is None:
        options |= {"num_cpus": os.cpu_count() or 1, "include_dashboard": False, "_node_ip_address": "127.0.0.1"}
    else:
        options["address"] = address
    ray.init(**options)
    try:
        yield
    finally:
        ray.shutdown()


def _decode(batch: dict[str, np.ndarray], image_size: int, zoomed_size: int | None) -> dict[str, np.ndarray]:
    """A batch of (position, path) rows -> uint8 images at `image_size` (and `zoomed_size`), original sizes and a
    readable flag (an unreadable image gets a blank one, dropped when the rows come back)."""
    resize = ResizeWithOriginalSize(image_size, zoomed_size)
    images, zoomed, sizes, readable = [], [], [], []
    for path in batch["path"]:
        try:
            item = resize(load_image(str(path)))
        except ImageLoadError as exc:
            log.warning("skipped an unreadable image: %s", exc)
            item = {"image": torch.zeros(3, image_size, image_size, dtype=torch.uint8), "size": torch.zeros(2)}
            if zoomed_size:
                item["zoomed"] = torch.zeros(3, zoomed_size, zoomed_size, dtype=torch.uint8)
            readable.append(False)
        else:
            readable.append(True)
        images.append(item["image"].numpy())
        sizes.append(item["size"].numpy().astype(np.int64))
        if zoomed_size:
            zoomed.append(item["zoomed"].numpy())
    out = {"position": np.asarray(batch["position"], np.int64), "image": np.stack(images), "size": np.stack(sizes),
           "readable": np.array(readable)}
    if zoomed_size:
        out["zoomed"] = np.stack(zoomed)
    return out


class _Featurizer:
    """A Ray actor holding the models: decoded batches in, every model's features out (as numpy columns)."""

    def __init__(self, group: TrunkGroup, spec: ExtractionSpec, device: str, threads: int, keep_maps: bool,
                 decode: bool) -> None:
        # Ray limits an actor to one thread per reserved CPU; the models use the cores given here.
        torch.set_num_threads(threads or os.cpu_count() or 1)
        self.device = pick_device(device)
        self.group = prepare_model(group, self.device)
        self.spec, self.keep_maps, self.decode = spec, keep_maps, decode

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self.decode:  # (position, path) rows: decode them here
            batch = _decode(batch, self.spec.image_size, zoom_size(self.spec))
        tensors = {key: torch.from_numpy(batch[key]) for key in ("image", "zoomed") if key in batch}
        images, zoomed = normalised_batch(tensors, self.device, self.spec)
        feats = featurize_batch(self.group, images, zoomed, spec=self.spec, keep_maps=self.keep_maps)
        out = {key: batch[key] for key in ("position", "size", "readable")}
        for name, f in feats.items():
            out[f"{name}/image"] = f.image.cpu().numpy()
            out[f"{name}/predicted"] = f.predicted.cpu().numpy()
            if f.region is not None:
                out[f"{name}/region"] = f.region.cpu().numpy()
                out[f"{name}/boxes"] = np.asarray(f.boxes, np.float32)
            if f.maps is not None:
                out[f"{name}/maps"] = f.maps.cpu().numpy()
        return out


def extract_models_ray(
    models: Mapping[str, nn.Module] | TrunkGroup,
    samples: Sequence[Sample],
    spec: ExtractionSpec | None = None,
    *,
    batch_size: int = 32,
    workers: int = 0,
    device: str = "auto",
    keep_maps: bool = False,
    progress: bool = False,
    actors: int = 1,
    threads: int = 0,
    decode_in_actors: bool | None = None,
) -> dict[str, FeatureSet]:
    """`extract_models` (same options and result) on Ray: features computed by `actors` actors (one GPU each when
    the cluster has GPUs and `device` allows; `threads` torch threads each, 0: all the cores of the actor's
    machine); images decoded by the actors themselves or by Ray tasks (at most `workers` at once when > 0), as
    `decode_in_actors` says (None: the actors when they run on CPU, see the module docstring). Starts a local Ray
    unless one is running (see `ray_session`)."""
    if len(samples) == 0:
        raise ValueError("no samples to extract features from")
    if actors < 1:
        raise ValueError(f"actors must be >= 1, got {actors}")
    ray = _ray()
    group = as_group(models)
    spec = spec or group_spec(group)
    with ray_session():
        context = ray.data.DataContext.get_current()
        context.enable_progress_bars = progress
        context.print_on_execution_start = False
        logging.getLogger("ray.data").setLevel(logging.INFO if progress else logging.WARNING)
        gpus = device != "cpu" and ray.cluster_resources().get("GPU", 0) >= 1
        if device.startswith("cuda") and not gpus:
            raise ValueError(f"device {device!r} asked for, but the Ray cluster has no GPU")
        in_actors = not gpus if decode_in_actors is None else decode_in_actors
        dataset = ray.data.from_items([{"position": i, "path": str(s.path)} for i, s in enumerate(samples)])
        if not in_actors:
            dataset = dataset.map_batches(_decode, batch_size=batch_size, concurrency=workers or None,
                                          fn_kwargs={"image_size": spec.image_size, "zoomed_size": zoom_size(spec)})
        featurized = dataset.map_batches(
            _Featurizer, batch_size=batch_size, concurrency=actors, num_gpus=1 if gpus else 0,
            fn_constructor_kwargs={"group": group.cpu(), "spec": spec, "device": "cuda" if gpus else "cpu",
                                   "threads": threads, "keep_maps": keep_maps, "decode": in_actors})
        batches = list(featurized.iter_batches(batch_size=None, batch_format="numpy"))
    columns = {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}
    order = np.argsort(columns["position"], kind="stable")
    keep = order[columns["readable"][order]]
    if len(keep) < len(samples):
        log.warning("skipped %d unreadable image(s) of %d", len(samples) - len(keep), len(samples))
    sizes, index = torch.from_numpy(columns["size"][keep]), torch.from_numpy(columns["position"][keep])

    def part(name: str, key: str) -> Any:
        values = columns.get(f"{name}/{key}")
        return None if values is None else torch.from_numpy(values[keep])

    results = {}
    for name in group.models:
        boxes = columns.get(f"{name}/boxes")
        batch = BatchFeatures(image=part(name, "image"), predicted=part(name, "predicted"),
                              region=part(name, "region"), boxes=None if boxes is None else boxes[keep],
                              maps=part(name, "maps"))
        results[name] = collect_features([(batch, sizes, index)], group.models[name], spec.regions, keep_maps,
                                         skipped=len(samples) - len(keep))
    return results
