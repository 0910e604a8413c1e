"""CUB-200-2011 and NABirds: the Caltech/Cornell id-table layout (`images.txt`, `image_class_labels.txt`, ...)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

from fgia.data.readers.base import (
    DatasetError,
    find_dir,
    natural_key,
    read_id_map,
    read_rows,
    register_reader,
    require,
    to_float,
    xywh_box,
)
from fgia.data.samples import FineGrainedDataset, Sample

_TABLES = ("images.txt", "image_class_labels.txt", "classes.txt")


def read_id_tables(
    root: Path, name: str, hierarchy_of: Callable[[str], dict[str, str] | None] | None = None
) -> FineGrainedDataset:
    """Read the shared id-table layout: images, labels, class names, split, boxes and parts where present.

    Classes are those used by at least one image, in class-id order (NABirds lists internal tree nodes too).
    """
    images = read_id_map(require(root / "images.txt", "images.txt", root))
    labels = read_id_map(require(root / "image_class_labels.txt", "image_class_labels.txt", root))
    class_names = read_id_map(require(root / "classes.txt", "classes.txt", root))
    missing = sorted(set(images) - set(labels))
    if missing:
        raise DatasetError(f"{root / 'image_class_labels.txt'}: no label for image id {missing[0]}")
    unknown = sorted({c for c in labels.values() if c not in class_names})
    if unknown:
        raise DatasetError(f"{root / 'classes.txt'}: class id {unknown[0]} used by images is not listed")
    used = sorted({labels[i] for i in images}, key=natural_key)
    index = {c: k for k, c in enumerate(used)}

    split_path = root / "train_test_split.txt"
    splits = read_id_map(split_path) if split_path.exists() else {}
    boxes = _boxes(root / "bounding_boxes.txt")
    parts = _parts(root / "parts")
    attributes = _attributes(root / "attributes" / "image_attribute_labels.txt")

    samples = [
        Sample(
            path=root / "images" / rel,
            label=index[labels[i]],
            split=("train" if splits[i] == "1" else "test") if i in splits else None,
            bbox=boxes.get(i),
            parts=parts.get(i),
            attributes=attributes.get(i),
            hierarchy=hierarchy_of(labels[i]) if hierarchy_of else None,
        )
        for i, rel in images.items()
    ]
    return FineGrainedDataset(name=name, root=root, classes=[class_names[c] for c in used], samples=samples)


def _boxes(path: Path) -> dict[str, tuple[float, float, float, float]]:
    if not path.exists():
        return {}
    return {r[0]: xywh_box(*(to_float(v, path, "box") for v in r[1:5])) for r in read_rows(path, 5)}


def _parts(folder: Path) -> dict[str, dict[str, tuple[float, float]]]:
    """Visible part locations per image id, keyed by part name."""
    names_path, locs_path = folder / "parts.txt", folder / "part_locs.txt"
    if not (names_path.exists() and locs_path.exists()):
        return {}
    names = read_id_map(names_path)
    parts: dict[str, dict[str, tuple[float, float]]] = {}
    for image_id, part_id, x, y, visible, *_ in read_rows(locs_path, 5):
        if visible != "0":
            name = names.get(part_id, part_id)
            parts.setdefault(image_id, {})[name] = (to_float(x, locs_path, "x"), to_float(y, locs_path, "y"))
    return parts


def _attributes(path: Path) -> dict[str, tuple[int, ...]]:
    """Per image, the 0/1 presence of every attribute in attribute-id order."""
    if not path.exists():
        return {}
    present: dict[str, dict[int, int]] = {}
    for image_id, attr_id, is_present, *_ in read_rows(path, 3):
        present.setdefault(image_id, {})[int(attr_id)] = int(is_present)
    n = max((max(a) for a in present.values() if a), default=0)
    return {i: tuple(a.get(k, 0) for k in range(1, n + 1)) for i, a in present.items()}


def _detect_cub(root: Path) -> Path | None:
    found = find_dir(root, *_TABLES, "images")
    return found if found is not None and not (found / "hierarchy.txt").exists() else None


@register_reader(
    "cub200",
    "CUB-200-2011: images.txt, image_class_labels.txt, classes.txt, train_test_split.txt, "
    "bounding_boxes.txt, parts/, attributes/ (1-based ids)",
    detect=_detect_cub,
)
def read_cub(root: Path) -> FineGrainedDataset:
    """Read CUB-200-2011 (or a subset in its layout)."""
    return read_id_tables(root, "cub200")


@register_reader(
    "nabirds",
    "NABirds: CUB-style tables with UUID ids plus hierarchy.txt (class tree), bounding_boxes.txt, parts/",
    detect=lambda root: find_dir(root, *_TABLES, "hierarchy.txt"),
)
def read_nabirds(root: Path) -> FineGrainedDataset:
    """Read NABirds; each sample's hierarchy holds its parent class and the lineage from the tree's top."""
    class_names = read_id_map(require(root / "classes.txt", "classes.txt", root))
    parent = read_id_map(require(root / "hierarchy.txt", "hierarchy.txt", root))

    def hierarchy_of(class_id: str) -> dict[str, str]:
        chain, node, seen = [], class_id, {class_id}
        while node in parent:
            node = parent[node]
            if node in seen:
                raise DatasetError(f"{root / 'hierarchy.txt'}: cycle through class id {node}")
            seen.add(node)
            chain.append(class_names.get(node, node))
        lineage = list(reversed(chain))[1:] or chain  # drop the single root node ("Birds")
        return {"parent": chain[0] if chain else "", "lineage": " > ".join(lineage)}

    return read_id_tables(root, "nabirds", hierarchy_of)
