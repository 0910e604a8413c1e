"""The one in-memory form every dataset reader returns: a list of `Sample`s plus class names."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from pathlib import Path

BBox = tuple[float, float, float, float]  # x1, y1, x2, y2 in pixels of the original image


@dataclass(frozen=True)
class Sample:
    """One image with what its dataset knows about it.

    `label` indexes `FineGrainedDataset.classes`; -1 means unlabelled (e.g. distractors).
    `category` is the meta-category ("birds", "cars", ...) used for coarse routing.
    `hierarchy` holds coarser labels a dataset ships (e.g. {"family": ..., "manufacturer": ...}).
    """

    path: Path
    label: int
    split: str | None = None
    bbox: BBox | None = None
    parts: dict[str, tuple[float, float]] | None = None
    attributes: tuple[int, ...] | None = None
    category: str | None = None
    hierarchy: dict[str, str] | None = None


@dataclass
class FineGrainedDataset:
    """A named list of samples over a fixed list of class names."""

    name: str
    root: Path
    classes: list[str]
    samples: list[Sample] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.samples)

    def __iter__(self):
        return iter(self.samples)

    def filter(self, keep: Callable[[Sample], bool], name: str | None = None) -> FineGrainedDataset:
        """A dataset with the samples for which `keep` is true (classes unchanged)."""
        return replace(self, name=name or self.name, samples=[s for s in self.samples if keep(s)])

    def split(self, split: str) -> FineGrainedDataset:
        """The samples of one split ("train", "test", ...)."""
        return self.filter(lambda s: s.split == split, name=f"{self.name}:{split}")

    def with_classes(self, class_ids: Iterable[int], name: str | None = None) -> FineGrainedDataset:
        """Keep only the given classes and renumber their labels 0..k-1 in the given order."""
        ids = list(class_ids)
        remap = {old: new for new, old in enumerate(ids)}
        samples = [replace(s, label=remap[s.label]) for s in self.samples if s.label in remap]
        return FineGrainedDataset(
            name=name or self.name, root=self.root, classes=[self.classes[i] for i in ids], samples=samples
        )

    def class_counts(self) -> dict[str, int]:
        """Images per class name (unlabelled samples counted under "<unlabelled>")."""
        counts = Counter(s.label for s in self.samples)
        return {("<unlabelled>" if k < 0 else self.classes[k]): v for k, v in sorted(counts.items())}

    @property
    def labels(self) -> list[int]:
        return [s.label for s in self.samples]
