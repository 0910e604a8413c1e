"""Export a system's extraction networks for use outside fgia: ONNX (onnxruntime, ...) or a torch.export program.

What is exported is what `fgia.features.extract` runs on a batch: every model of the system over its shared frozen
lower trunk (the trunk runs once inside the graph), as one graph from normalised images to each model's
embedding (averaged with the mirror image's when the system extracts with `flip`), class logits and
class-confidence maps. The export folder holds the graph and `export.json`: input size, mean and std, the output
names, the system's fingerprint. Preprocessing stays outside the graph: resize the RGB image to size x size
(bilinear, antialiased, no crop), scale to [0, 1], subtract the mean and divide by the std, NCHW float32. Region
features are the same graph run on the discriminative region's crop (found from the unified model's maps, see
`fgia.models.regions`); PCAs and the coarse classifier stay in the system folder.
"""

from __future__ import annotations

import importlib.util
import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
from torch import Tensor

from fgia.features.extract import TrunkGroup
from fgia.retrieval.system import System, load_system
from fgia.runtime import atomic_path, atomic_write_text

EXPORT_FILE = "export.json"
FORMATS = {"onnx": "extraction.onnx", "torch": "extraction.pt2"}
"""Export format -> the graph's file name in the export folder."""


class ExtractionGraph(nn.Module):
    """A system's TrunkGroup as one module: normalised images -> a flat tuple of every model's embedding, logits
    and maps (the names are in `output_names`, "<model>/embedding", "<model>/logits", "<model>/maps")."""

    def __init__(self, group: TrunkGroup, flip: bool, image_size: int) -> None:
        super().__init__()
        self.group = group.eval()
        self.flip = flip
        with torch.no_grad():
            probe = group(torch.zeros(1, 3, image_size, image_size))
        self.output_names = [f"{name}/{part}" for name, out in probe.items()
                             for part in ("embedding", "logits", "maps") if getattr(out, part) is not None]

    def forward(self, images: Tensor) -> tuple[Tensor, ...]:
        outputs = self.group(images)
        mirrored = self.group(images.flip(-1)) if self.flip else {}
        flat = []
        for name, out in outputs.items():
            embedding = out.embedding.float()
            if self.flip:
                embedding = (embedding + mirrored[name].embedding.float()) / 2
            flat += [embedding, *(t.float() for t in (out.logits, out.maps) if t is not None)]
        return tuple(flat)


@dataclass
class ExportResult:
    """Where the graph and its description were written."""

    graph: Path
    manifest: Path


def export_system(system: System | str | os.PathLike, out_dir: str | os.PathLike, fmt: str = "onnx",
                  force: bool = False) -> ExportResult:
    """Export `system`'s extraction networks (see the module docstring) as `fmt` ("onnx" or "torch") into
    `out_dir`; a non-empty folder that is not an fgia export is refused unless `force`."""
    if fmt not in FORMATS:
        raise ValueError(f"unknown export format {fmt!r}; choose one of {', '.join(FORMATS)}")
    if fmt == "onnx" and importlib.util.find_spec("onnxscript") is None:
        raise ImportError("ONNX export needs onnx and onnxscript: pip install 'fgia[export]'")
    if not isinstance(system, System):
        system = load_system(system, device="cpu")
    out = Path(out_dir)
    if out.is_dir() and any(out.iterdir()) and not (out / EXPORT_FILE).is_file() and not force:
        raise FileExistsError(f"{out} is not empty and holds no fgia export ({EXPORT_FILE}); choose another folder "
                              "or pass --force")
    out.mkdir(parents=True, exist_ok=True)
    cfg = system.config
    graph = ExtractionGraph(system.group, cfg.flip, cfg.image_size)
    graph = graph.to("cpu", memory_format=torch.contiguous_format).eval()
    example = torch.zeros(2, 3, cfg.image_size, cfg.image_size)
    batch = torch.export.Dim("batch", min=1)
    path = out / FORMATS[fmt]
    with atomic_path(path) as tmp, torch.no_grad():
        if fmt == "onnx":
            torch.onnx.export(graph, (example,), str(tmp), input_names=["images"], output_names=graph.output_names,
                              dynamic_shapes={"images": {0: batch}}, dynamo=True, external_data=False,
                              verbose=False)
        else:
            program = torch.export.export(graph, (example,), dynamic_shapes={"images": {0: batch}})
            buffer = io.BytesIO()  # torch.export.save wants a .pt2 name or a buffer, not the temporary file
            torch.export.save(program, buffer)
            tmp.write_bytes(buffer.getvalue())
    mean, std = system.spec.mean, system.spec.std
    manifest: dict[str, Any] = {
        "format": fmt,
        "file": path.name,
        "input": {"name": "images", "shape": ["batch", 3, cfg.image_size, cfg.image_size], "dtype": "float32",
                  "image_size": cfg.image_size, "mean": list(mean), "std": list(std),
                  "preprocessing": "RGB, resize to image_size x image_size (bilinear, antialiased, no crop), "
                                   "scale to [0, 1], (x - mean) / std, NCHW"},
        "outputs": graph.output_names,
        "flip_averaged": cfg.flip,
        "spec": system.spec.to_dict(),
        "models": list(system.group.models),  # the hashing model too, when the system has one
        "categories": system.categories,
        "system": str(system.path.resolve()),
        "fingerprint": system.fingerprint,
    }
    manifest_path = out / EXPORT_FILE
    atomic_write_text(manifest_path, json.dumps(manifest, indent=2))
    return ExportResult(graph=path, manifest=manifest_path)
