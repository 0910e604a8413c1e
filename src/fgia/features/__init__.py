"""Features: batched extraction with discriminative regions, PCA, overlays (descriptors: `fgia.features.descriptors`)."""

from fgia.features.extract import FeatureSet, extract_features, extract_from_images, featurize_batch, prepare_model
from fgia.features.pca import FeaturePCA, l2_normalize
from fgia.features.regions import normalize_map, region_box, region_boxes
from fgia.features.visualize import overlay

__all__ = [
    "FeaturePCA",
    "FeatureSet",
    "extract_features",
    "extract_from_images",
    "featurize_batch",
    "l2_normalize",
    "normalize_map",
    "overlay",
    "prepare_model",
    "region_box",
    "region_boxes",
]
