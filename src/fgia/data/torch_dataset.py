"""A torch Dataset over Samples yielding (image, label, index), and a loader that skips unreadable images."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from fgia.data.images import (
    DEFAULT_MAX_PIXELS,
    ImageLoadError,
    load_image,
)
from fgia.data.samples import Sample

log = logging.getLogger(__name__)


class ImageDataset(Dataset):
    """Samples as (transformed image, label, index). Unreadable images raise ImageLoadError."""

    def __init__(
        self,
        samples: Sequence[Sample],
        transform: Callable[[Image.Image], Any] | None = None,
        max_pixels: int | None = DEFAULT_MAX_PIXELS,
    ):
        self.samples = list(samples)
        self.transform = transform
        self.max_pixels = max_pixels

    def __len__(self) -> int:
        return len(self.samples)

    def __getitem__(self, index: int) -> tuple[Any, int, int]:
        sample = self.samples[index]
        image = load_image(sample.path, max_pixels=self.max_pixels)
        return (self.transform(image) if self.transform else image), sample.label, index


class _Tolerant(Dataset):
    """Wraps a dataset so an unreadable item becomes a marker the collate function drops."""

    def __init__(self, inner: ImageDataset):
        self.inner = inner

    def __len__(self) -> int:
        return len(self.inner)

    def __getitem__(self, index: int):
        try:
            return self.inner[index]
        except ImageLoadError as e:
            return e


def _collate_skipping(batch: list) -> tuple[Any, torch.Tensor, torch.Tensor, list[str]]:
    good = [item for item in batch if not isinstance(item, ImageLoadError)]
    broken = [str(item) for item in batch if isinstance(item, ImageLoadError)]
    if not good:
        return None, torch.empty(0, dtype=torch.long), torch.empty(0, dtype=torch.long), broken
    images, labels, indices = default_collate(good)
    return images, labels, indices, broken


class SkippingLoader(DataLoader):
    """A DataLoader whose batches leave out unreadable images (a batch shrinks, an all-broken batch is dropped).

    Each skip is logged as a warning with the running count; `skipped` lists the errors of the current epoch.
    """

    skipped: list[str]

    def __iter__(self) -> Iterator[tuple[Any, torch.Tensor, torch.Tensor]]:
        self.skipped = []
        for images, labels, indices, broken in super().__iter__():
            if broken:
                self.skipped.extend(broken)
                log.warning(
                    "skipped %d unreadable image(s) in a batch (%d so far this epoch): %s",
                    len(broken), len(self.skipped), broken[0],
                )
            if images is not None:
                yield images, labels, indices


def make_loader(
    samples: Sequence[Sample],
    transform: Callable[[Image.Image], Any] | None,
    batch_size: int,
    shuffle: bool = False,
    workers: int = 0,
    sampler: Sampler | None = None,
    drop_last: bool = False,
) -> SkippingLoader:
    """Batches of (images, labels, indices) over `samples`, skipping unreadable images; pinned memory on CUDA."""
    return SkippingLoader(
        _Tolerant(ImageDataset(samples, transform)),
        batch_size=batch_size,
        shuffle=shuffle,
        sampler=sampler,
        num_workers=workers,
        drop_last=drop_last,
        collate_fn=_collate_skipping,
        pin_memory=torch.cuda.is_available(),
    )
