"""Features: batched extraction (many models sharing a frozen trunk), PCA, overlays (descriptors:
`fgia.features.descriptors`; region finding: `fgia.models.regions`)."""

from fgia.features.extract import (
    FeatureSet,
    TrunkGroup,
    extract_features,
    extract_from_images,
    extract_models,
    featurize_batch,
    prepare_model,
)
from fgia.features.pca import FeaturePCA, l2_normalize
from fgia.features.visualize import overlay

__all__ = [
    "FeaturePCA",
    "FeatureSet",
    "TrunkGroup",
    "extract_features",
    "extract_from_images",
    "extract_models",
    "featurize_batch",
    "l2_normalize",
    "overlay",
    "prepare_model",
]
