"""The frozen lower trunk's output, computed once per image and view, and reused by every model that shares it.

A model with `frozen_stages` (`fgia.models.frozen`) trains only what follows its frozen stages, so the trainer
feeds it cached lower-trunk maps instead of images: one forward pass of the frozen stages per image and cached
view, instead of one per image per epoch (on two CPU cores the difference between a few minutes and hours).

Views are fixed augmentations of the extraction geometry (a plain resize to size x size): "resize", "hflip",
"crop" (the centre `CROP_FRACTION` of the image, resized) and "crop-hflip". Each epoch every image is seen in one
view drawn at random. Maps are stored in float16, in RAM, or in a disk memmap under `cache_dir` that later runs
(other processes included) reuse; either way a cache larger than `budget_gb` is refused. The cache is keyed by the
frozen weights, image size, normalisation and views, so the unified model, the category models (a subset of its
images) and the plain baseline on the same backbone share one.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
from collections import OrderedDict
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset
from torchvision.transforms import v2

from fgia.data.samples import Sample
from fgia.data.torch_dataset import make_loader
from fgia.models.frozen import module_digest
from fgia.progress import track_batches
from fgia.runtime import atomic_path, atomic_write_text

VIEWS = ("resize", "hflip", "crop", "crop-hflip")
CROP_FRACTION = 0.8
_MEMO: OrderedDict[str, TrunkCache] = OrderedDict()
_MEMO_ENTRIES = 2


@dataclass
class TrunkCache:
    """Lower-trunk maps (rows, views, C, h, w) float16 of the readable images; `rows[path]` is an image's row,
    `tried` every path the cache was built over (readable or not)."""

    key: str
    views: tuple[str, ...]
    maps: np.ndarray
    rows: dict[str, int]
    tried: frozenset[str]

    @property
    def nbytes(self) -> int:
        return int(self.maps.nbytes)

    def covers(self, samples: Sequence[Sample]) -> bool:
        """Whether every one of `samples` was tried when the cache was built (unreadable ones have no row)."""
        return self.tried.issuperset(str(s.path) for s in samples)

    @torch.inference_mode()
    def apply(self, fn: Callable[[Tensor], Tensor], samples: Sequence[Sample], view: int = 0, batch_size: int = 256,
              device: torch.device | str = "cpu") -> np.ndarray | None:
        """`fn` (cached maps -> a tensor per image) over `samples` (all cached) from their cached `view`, batch by
        batch, as one float32 array (None when `samples` is empty)."""
        missing = [s.path for s in samples if str(s.path) not in self.rows]
        if missing:
            raise KeyError(f"{len(missing)} image(s) are not in the trunk cache, e.g. {missing[0]}")
        rows = [self.rows[str(s.path)] for s in samples]
        parts = []
        for start in range(0, len(rows), batch_size):
            maps = np.asarray(self.maps[rows[start : start + batch_size], view], dtype=np.float32)
            x = torch.from_numpy(maps).to(device).contiguous(memory_format=torch.channels_last)
            parts.append(fn(x).float().cpu().numpy())
        return np.concatenate(parts) if parts else None

    def embeddings(self, model: nn.Module, samples: Sequence[Sample], view: int = 0, batch_size: int = 256,
                   device: torch.device | str = "cpu") -> np.ndarray:
        """`model.forward_top` embeddings of `samples` (all cached) from their cached `view`, in eval mode."""
        was_training = model.training
        model.eval()
        try:
            out = self.apply(lambda x: model.forward_top(x).embedding, samples, view, batch_size, device)
        finally:
            model.train(was_training)
        return out if out is not None else np.zeros((0, getattr(model, "embedding_dim", 0)), np.float32)

    def dataset(self, samples: Sequence[Sample]) -> CachedViews:
        """A training dataset over the readable ones of `samples`: (a random view's maps, label, sample index)."""
        kept = [i for i, s in enumerate(samples) if str(s.path) in self.rows]
        return CachedViews(self, [self.rows[str(samples[i].path)] for i in kept],
                           [samples[i].label for i in kept], kept)


class CachedViews(Dataset):
    """Cached maps as a training set; `sample_index[i]` is item i's position in the samples it was made from."""

    def __init__(self, cache: TrunkCache, rows: list[int], labels: list[int], sample_index: list[int]) -> None:
        self.cache, self.row_of, self.labels, self.sample_index = cache, rows, labels, sample_index

    def __len__(self) -> int:
        return len(self.row_of)

    def __getitem__(self, i: int) -> tuple[Tensor, int, int]:
        view = int(torch.randint(len(self.cache.views), ()))
        maps = torch.from_numpy(np.asarray(self.cache.maps[self.row_of[i], view], dtype=np.float32))
        return maps, self.labels[i], self.sample_index[i]


def trunk_cache(
    lower: nn.Module,
    samples: Sequence[Sample],
    *,
    image_size: int,
    mean: Sequence[float],
    std: Sequence[float],
    views: Sequence[str] = ("resize", "hflip"),
    cache_dir: str | os.PathLike | None = None,
    budget_gb: float = 4.0,
    device: torch.device | str = "cpu",
    batch_size: int = 64,
    workers: int = 0,
    progress: bool = False,
) -> TrunkCache:
    """The cache of `lower`'s output for `samples`: reused from this process or `cache_dir` when one covers them,
    else computed (and written to `cache_dir` when given)."""
    unknown = [v for v in views if v not in VIEWS]
    if unknown or not views:
        raise ValueError(f"cache views must be a non-empty list from {VIEWS}, got {list(views)}")
    if not samples:
        raise ValueError("no samples to cache")
    key = cache_key(lower, image_size, mean, std, views)
    for cached in [_MEMO.get(key), _load(cache_dir, key)]:
        if cached is not None and cached.covers(samples):
            _remember(cached)
            return cached
    cache = _build(lower, samples, key, tuple(views), image_size, mean, std, cache_dir, budget_gb, device,
                   batch_size, workers, progress)
    _remember(cache)
    return cache


def _remember(cache: TrunkCache) -> None:
    _MEMO[cache.key] = cache
    _MEMO.move_to_end(cache.key)
    while len(_MEMO) > _MEMO_ENTRIES:
        _MEMO.popitem(last=False)


def cache_key(lower: nn.Module, image_size: int, mean: Sequence[float], std: Sequence[float],
              views: Sequence[str]) -> str:
    """The key of `lower`'s cache at these settings: equal keys, interchangeable caches (`TrunkCache.key`)."""
    settings = json.dumps([module_digest(lower), image_size, list(mean), list(std), list(views)])
    return hashlib.sha256(settings.encode()).hexdigest()[:20]


def _paths(cache_dir: str | os.PathLike, key: str) -> tuple[Path, Path]:
    return Path(cache_dir) / f"trunk-{key}.npy", Path(cache_dir) / f"trunk-{key}.json"


def _load(cache_dir: str | os.PathLike | None, key: str) -> TrunkCache | None:
    if cache_dir is None:
        return None
    data, meta = _paths(cache_dir, key)
    if not (data.is_file() and meta.is_file()):
        return None
    info = json.loads(meta.read_text(encoding="utf-8"))
    maps = np.load(data, mmap_mode="r")
    if list(maps.shape) != info["shape"]:
        return None  # a memmap from another build than its description: rebuild rather than trust it
    return TrunkCache(key, tuple(info["views"]), maps, dict(zip(info["paths"], range(len(info["paths"])))),
                      frozenset(info["tried"]))


@contextlib.contextmanager
def _locked_atomic_path(path: Path) -> Iterator[Path]:
    """`atomic_path` whose temporary file stays locked (flock) until it is renamed into place: the lock tells
    `_remove_abandoned` in any process that its writer is alive."""
    with contextlib.ExitStack() as held:  # closed last, after the rename
        with atomic_path(path) as tmp:
            lock = held.enter_context(open(tmp, "rb"))
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield tmp


def _remove_abandoned(path: Path) -> None:
    """Delete the temporary maps of `path` that killed builds left (files nobody holds the lock of)."""
    for tmp in path.parent.glob(f".{path.name}.*.tmp"):
        try:
            with open(tmp, "rb") as f:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                tmp.unlink()
        except OSError:  # locked by a live build, or gone already
            continue


@torch.no_grad()
def _build(lower: nn.Module, samples: Sequence[Sample], key: str, views: tuple[str, ...], image_size: int,
           mean: Sequence[float], std: Sequence[float], cache_dir: str | os.PathLike | None, budget_gb: float,
           device: torch.device | str, batch_size: int, workers: int, progress: bool) -> TrunkCache:
    device = torch.device(device)
    modes = [(m, m.training) for m in lower.modules()]  # a slice of a model may hold modes that differ from its own
    lower.eval().to(device)
    probe = lower(torch.zeros(1, 3, image_size, image_size, device=device))
    shape = (len(samples), len(views), *probe.shape[1:])
    need = int(np.prod(shape)) * 2
    if need > budget_gb * 2**30:
        raise ValueError(
            f"the lower-trunk cache of {len(samples)} images x {len(views)} views needs {need / 2**30:.1f} GiB, over "
            f"its budget of {budget_gb} GiB: raise cache_budget_gb, cache fewer views, freeze more stages "
            "(smaller maps) or train without the cache (cache_trunk: false)")
    data_path = None
    if cache_dir is None:
        maps = np.empty(shape, np.float16)
    else:
        data_path, _ = _paths(cache_dir, key)
        data_path.parent.mkdir(parents=True, exist_ok=True)
        _remove_abandoned(data_path)
    resize = v2.Compose([v2.ToImage(), v2.Resize((image_size, image_size), antialias=True)])
    loader = make_loader(samples, resize, batch_size, workers=workers)
    readable: list[int] = []
    with _locked_atomic_path(data_path) if data_path else contextlib.nullcontext() as tmp:
        if tmp is not None:
            maps = np.lib.format.open_memmap(tmp, mode="w+", dtype=np.float16, shape=shape)
        row = 0
        batches = track_batches(loader, "caching the frozen trunk", enabled=progress)
        for images, _, indices in batches:
            x = v2.functional.normalize(v2.functional.to_dtype(images.to(device), torch.float32, scale=True),
                                        list(mean), list(std))
            for v, view in enumerate(views):
                out = lower(_view(x, view).contiguous(memory_format=torch.channels_last))
                maps[row : row + len(x), v] = out.float().cpu().numpy().astype(np.float16)
            readable += indices.tolist()
            row += len(x)
        if tmp is not None:
            maps.flush()
            del maps
    for module, mode in modes:
        module.train(mode)
    paths = [str(samples[i].path) for i in readable]
    rows, tried = dict(zip(paths, range(len(paths)))), [str(s.path) for s in samples]
    if data_path is None:
        return TrunkCache(key, views, maps[: len(readable)], rows, frozenset(tried))
    # Written after the maps, atomically: a crash before it leaves no description, and the maps are rebuilt.
    atomic_write_text(_paths(cache_dir, key)[1], json.dumps(
        {"shape": list(shape), "views": list(views), "paths": paths, "tried": tried}))
    return TrunkCache(key, views, np.load(data_path, mmap_mode="r"), rows, frozenset(tried))


def _view(x: Tensor, view: str) -> Tensor:
    if view.startswith("crop"):
        size = x.shape[-1]
        margin = round(size * (1 - CROP_FRACTION) / 2)
        x = F.interpolate(x[..., margin : size - margin, margin : size - margin], size=(size, size),
                          mode="bilinear", antialias=True, align_corners=False)
    return x.flip(-1) if view.endswith("hflip") else x
