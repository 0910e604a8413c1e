"""Oxford Flowers 102: `imagelabels.mat`, `setid.mat` and `jpg/image_NNNNN.jpg` (1-based)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from fgia.data.readers.base import (
    DatasetError,
    cat_to_name,
    find_dir,
    load_mat,
    mat_key,
    register_reader,
    require,
)
from fgia.data.samples import FineGrainedDataset, Sample

_SPLIT_KEYS = {"trnid": "train", "valid": "val", "tstid": "test"}


@register_reader(
    "flowers102",
    "Oxford Flowers 102: imagelabels.mat + setid.mat (trnid/valid/tstid) + jpg/; class names from "
    "cat_to_name.json when present",
    detect=lambda root: find_dir(root, "imagelabels.mat", "setid.mat"),
)
def read_flowers102(root: Path) -> FineGrainedDataset:
    """Read Oxford Flowers 102; without cat_to_name.json the class names are the 1-based ids."""
    labels_path = require(root / "imagelabels.mat", "imagelabels.mat", root)
    labels = np.atleast_1d(mat_key(load_mat(labels_path), "labels", labels_path)).astype(int)
    setid_path = require(root / "setid.mat", "setid.mat", root)
    setid = load_mat(setid_path)
    split_of: dict[int, str] = {}
    for key, split in _SPLIT_KEYS.items():
        for image_id in np.atleast_1d(mat_key(setid, key, setid_path)).astype(int):
            if not 1 <= image_id <= len(labels):
                raise DatasetError(f"{setid_path}: image id {image_id} outside 1..{len(labels)}")
            split_of[int(image_id)] = split
    n_classes = int(labels.max())
    names = cat_to_name(root, root.parent)
    classes = [names.get(str(k), str(k)) for k in range(1, n_classes + 1)]
    samples = [
        Sample(path=root / "jpg" / f"image_{i:05d}.jpg", label=int(label) - 1, split=split_of.get(i))
        for i, label in enumerate(labels, 1)
    ]
    return FineGrainedDataset(name="flowers102", root=root, classes=classes, samples=samples)
