"""How images are turned into a model's input and its features, carried by the model (like timm's
`pretrained_cfg`): saved in every checkpoint's model.yaml and every system, and passed as one object to
extraction, classification and few-shot evaluation, so a model is always read at the size it was trained at.

Geometry: the whole image is resized (not cropped) to `image_size` x `image_size`, as in training; regions are
found on the confidence maps of the model `region_from` (the map resized to the input, divided by its maximum,
thresholded at `threshold`, dominant connected component of at least `min_area` of the image, enclosing box) and
cropped from the image loaded at `region_zoom` x `image_size`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields, replace
from typing import Any

from fgia.data.transforms import IMAGENET_MEAN, IMAGENET_STD


@dataclass(frozen=True)
class ExtractionSpec:
    """Input size, normalisation and region settings of a model's features (see the module docstring)."""

    image_size: int = 224
    mean: tuple[float, ...] = IMAGENET_MEAN
    std: tuple[float, ...] = IMAGENET_STD
    regions: bool = True
    threshold: float = 0.5
    min_area: float = 0.02
    region_zoom: float = 1.0
    flip: bool = False
    region_from: str | None = None

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise ValueError(f"image_size must be at least 8, got {self.image_size}")
        if self.region_zoom < 1.0:
            raise ValueError(f"region_zoom must be >= 1, got {self.region_zoom}")
        if not 0.0 < self.threshold < 1.0:
            raise ValueError(f"threshold must lie in (0, 1), got {self.threshold}")
        object.__setattr__(self, "mean", tuple(float(v) for v in self.mean))
        object.__setattr__(self, "std", tuple(float(v) for v in self.std))

    def with_(self, **changes: Any) -> ExtractionSpec:
        """A copy with `changes` (e.g. `spec.with_(regions=False)`)."""
        return replace(self, **changes)

    def to_dict(self) -> dict[str, Any]:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ExtractionSpec:
        """The spec saved by `to_dict`; unknown keys are an error naming them."""
        known = {f.name for f in fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise ValueError(f"unknown extraction spec key(s): {', '.join(unknown)}")
        return cls(**dict(values))


def model_spec(model: Any, **changes: Any) -> ExtractionSpec:
    """The spec of `model`: the one it carries (`model.spec`, set by `load_model` and by training), else the
    defaults with its own normalisation (`model.mean` / `model.std`); `changes` override either."""
    spec = getattr(model, "spec", None)
    if not isinstance(spec, ExtractionSpec):
        spec = ExtractionSpec(mean=tuple(getattr(model, "mean", IMAGENET_MEAN)),
                              std=tuple(getattr(model, "std", IMAGENET_STD)))
    return replace(spec, **changes)
