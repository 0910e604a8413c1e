"""Dataset inspection and validation: counts, classes, images per class, splits, annotations, broken files."""

from __future__ import annotations

import os
import statistics
from collections import Counter
from dataclasses import asdict, dataclass, field

from rich.console import Group
from rich.table import Table

from fgia.data.images import check_images as _check_images
from fgia.data.readers import detect_format, read_dataset
from fgia.data.samples import FineGrainedDataset


@dataclass
class DatasetReport:
    """What `inspect_dataset` found; `broken` is filled only when images were checked."""

    name: str
    format: str
    root: str
    n_images: int
    n_classes: int
    n_unlabelled: int
    per_class_min: int
    per_class_median: float
    per_class_max: int
    splits: dict[str, int]
    categories: dict[str, int]
    with_bbox: int
    with_parts: int
    with_attributes: int
    hierarchy_levels: list[str]
    images_checked: bool = False
    broken: list[tuple[str, str]] = field(default_factory=list)
    class_counts: dict[str, int] = field(default_factory=dict)

    def to_dict(self) -> dict:
        """A JSON-ready dict of the report."""
        return asdict(self)

    def render(self, max_classes: int = 20) -> Group:
        """Rich tables (summary, images per class, broken files) for printing with a rich Console."""
        summary = Table(title=f"{self.name} ({self.format})", show_header=False)
        summary.add_column("field", style="bold")
        summary.add_column("value")
        rows = [
            ("root", self.root),
            ("images", str(self.n_images)),
            ("classes", str(self.n_classes)),
            ("unlabelled", str(self.n_unlabelled)),
            ("images/class min/median/max", f"{self.per_class_min} / {self.per_class_median:g} / {self.per_class_max}"),
            ("splits", _counts(self.splits)),
            ("categories", _counts(self.categories)),
            ("boxes / parts / attributes", f"{self.with_bbox} / {self.with_parts} / {self.with_attributes}"),
            ("hierarchy", ", ".join(self.hierarchy_levels) or "-"),
            ("broken images", str(len(self.broken)) if self.images_checked else "not checked"),
        ]
        for key, value in rows:
            summary.add_row(key, value)
        per_class = Table(title=f"images per class (first {min(max_classes, len(self.class_counts))})")
        per_class.add_column("class")
        per_class.add_column("images", justify="right")
        for name, n in list(self.class_counts.items())[:max_classes]:
            per_class.add_row(name, str(n))
        parts = [summary, per_class]
        if self.broken:
            broken = Table(title=f"broken images ({len(self.broken)})")
            broken.add_column("path")
            broken.add_column("reason")
            for path, reason in self.broken:
                broken.add_row(path, reason)
            parts.append(broken)
        return Group(*parts)


def _counts(counts: dict[str, int]) -> str:
    return ", ".join(f"{k}: {v}" for k, v in counts.items()) or "-"


def inspect_dataset(
    ds: FineGrainedDataset, check_images: bool = False, workers: int = 4, fmt: str | None = None
) -> DatasetReport:
    """Summarise `ds`; with `check_images` every image is decoded and the broken ones listed."""
    per_class = Counter(s.label for s in ds.samples if s.label >= 0)
    counts = [per_class.get(k, 0) for k in range(len(ds.classes))] or [0]
    broken = []
    if check_images:
        _, bad = _check_images(ds.samples, workers=workers)
        broken = [(str(s.path), reason) for s, reason in bad]
    return DatasetReport(
        name=ds.name,
        format=fmt or ds.name,
        root=str(ds.root),
        n_images=len(ds.samples),
        n_classes=len(ds.classes),
        n_unlabelled=sum(s.label < 0 for s in ds.samples),
        per_class_min=min(counts),
        per_class_median=float(statistics.median(counts)),
        per_class_max=max(counts),
        splits=dict(Counter(s.split or "none" for s in ds.samples)),
        categories=dict(Counter(s.category or "none" for s in ds.samples)),
        with_bbox=sum(s.bbox is not None for s in ds.samples),
        with_parts=sum(bool(s.parts) for s in ds.samples),
        with_attributes=sum(s.attributes is not None for s in ds.samples),
        hierarchy_levels=sorted({k for s in ds.samples if s.hierarchy for k in s.hierarchy}),
        images_checked=check_images,
        broken=broken,
        class_counts={name: per_class.get(k, 0) for k, name in enumerate(ds.classes)},
    )


def inspect_path(
    root: str | os.PathLike, fmt: str = "auto", check_images: bool = False, workers: int = 4
) -> DatasetReport:
    """Read the dataset at `root` and inspect it (`fgia datasets inspect`; `validate` = `check_images=True`)."""
    if fmt == "auto":
        fmt, _ = detect_format(root)
    return inspect_dataset(read_dataset(root, fmt), check_images=check_images, workers=workers, fmt=fmt)
