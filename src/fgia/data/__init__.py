"""Data layer: samples, dataset readers, robust image loading, transforms, torch loading, protocols, inspection."""

from fgia.data.compose import (
    DatasetSpec,
    labelled_set,
    merge_categories,
    parse_dataset_spec,
    read_composite,
)
from fgia.data.images import ImageLoadError, check_images, load_image
from fgia.data.inspect import DatasetReport, inspect_dataset, inspect_path
from fgia.data.protocols import (
    OsfgirConfig,
    OsfgirSplit,
    build_osfgir_split,
    hold_out_classes,
    official_split,
    read_shared_composite,
    stratified_split,
    zero_shot_split,
)
from fgia.data.readers import (
    DatasetError,
    detect_format,
    list_formats,
    read_dataset,
    write_manifest,
)
from fgia.data.readers.unlabelled import ImageScan, scan_images
from fgia.data.samples import BBox, FineGrainedDataset, Sample
from fgia.data.torch_dataset import ImageDataset, SkippingLoader, make_loader
from fgia.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    build_transform,
)

__all__ = [
    "BBox",
    "DatasetError",
    "DatasetReport",
    "DatasetSpec",
    "ImageScan",
    "FineGrainedDataset",
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "ImageDataset",
    "ImageLoadError",
    "OsfgirConfig",
    "OsfgirSplit",
    "Sample",
    "SkippingLoader",
    "build_osfgir_split",
    "build_transform",
    "check_images",
    "detect_format",
    "inspect_dataset",
    "inspect_path",
    "labelled_set",
    "merge_categories",
    "parse_dataset_spec",
    "read_composite",
    "scan_images",
    "list_formats",
    "load_image",
    "make_loader",
    "official_split",
    "read_dataset",
    "read_shared_composite",
    "write_manifest",
    "hold_out_classes",
    "stratified_split",
    "zero_shot_split",
]
