"""Each reader on a few fake files written in its dataset's real layout, plus detection and error messages."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from fakes import save_mat, struct_array, write_image, write_lines

from fgia.data import (
    DatasetError,
    detect_format,
    list_formats,
    read_dataset,
    write_manifest,
)
from fgia.data.readers.manifest import read_manifest


def make_cub(root: Path, with_extras: bool = True) -> Path:
    d = root / "CUB_200_2011"
    write_lines(d / "classes.txt", ["1 001.Black_footed_Albatross", "2 002.Laysan_Albatross", "3 003.Sooty_Albatross"])
    files = ["001.Black_footed_Albatross/a.jpg", "002.Laysan_Albatross/b.jpg", "002.Laysan_Albatross/c.jpg"]
    write_lines(d / "images.txt", [f"{i} {f}" for i, f in enumerate(files, 1)])
    write_lines(d / "image_class_labels.txt", ["1 1", "2 2", "3 2"])
    write_lines(d / "train_test_split.txt", ["1 1", "2 0", "3 1"])
    for f in files:
        write_image(d / "images" / f)
    if with_extras:
        write_lines(d / "bounding_boxes.txt", ["1 1.0 2.0 5.0 4.0", "2 0 0 3 3", "3 2 2 4 4"])
        write_lines(d / "parts" / "parts.txt", ["1 back", "2 beak"])
        write_lines(d / "parts" / "part_locs.txt", ["1 1 3.0 4.0 1", "1 2 0.0 0.0 0", "2 2 5.5 6.5 1"])
        write_lines(d / "attributes" / "image_attribute_labels.txt",
                    ["1 1 1 3 2.0", "1 2 0 3 2.0", "1 3 1 4 1.0 extra", "2 2 1 3 1.0"])
    return d


def test_cub_reads_labels_splits_boxes_parts_attributes(tmp_path):
    make_cub(tmp_path)
    ds = read_dataset(tmp_path, category="birds")
    # class 3 has no image, so it is not a class of the dataset
    assert ds.classes == ["001.Black_footed_Albatross", "002.Laysan_Albatross"]
    assert [s.label for s in ds] == [0, 1, 1]
    assert [s.split for s in ds] == ["train", "test", "train"]
    first = ds.samples[0]
    assert first.path.is_file() and first.path.name == "a.jpg"
    assert first.bbox == (1.0, 2.0, 6.0, 6.0)  # x, y, w, h -> x1, y1, x2, y2
    assert first.parts == {"back": (3.0, 4.0)}  # invisible beak left out
    assert first.attributes == (1, 0, 1)
    assert ds.samples[1].attributes == (0, 1, 0)
    assert ds.samples[2].parts is None and ds.samples[2].attributes is None
    assert {s.category for s in ds} == {"birds"}


def test_nabirds_hierarchy_and_uuid_ids(tmp_path):
    write_lines(tmp_path / "classes.txt", ["0 Birds", "1 Ducks", "2 Dabbling Ducks", "3 Mallard", "4 Teal (female)"])
    write_lines(tmp_path / "hierarchy.txt", ["1 0", "2 1", "3 2", "4 2"])
    ids = ["0a1b-22", "ff3c-19"]
    write_lines(tmp_path / "images.txt", [f"{ids[0]} 0003/x.jpg", f"{ids[1]} 0004/y.jpg"])
    write_lines(tmp_path / "image_class_labels.txt", [f"{ids[0]} 3", f"{ids[1]} 4"])
    write_lines(tmp_path / "train_test_split.txt", [f"{ids[0]} 0", f"{ids[1]} 1"])
    write_lines(tmp_path / "bounding_boxes.txt", [f"{ids[0]} 10 20 30 40"])
    (tmp_path / "images").mkdir()
    assert detect_format(tmp_path)[0] == "nabirds"
    ds = read_dataset(tmp_path)
    assert ds.classes == ["Mallard", "Teal (female)"]
    assert ds.samples[0].hierarchy == {"parent": "Dabbling Ducks", "lineage": "Ducks > Dabbling Ducks"}
    assert ds.samples[0].bbox == (10.0, 20.0, 40.0, 60.0) and ds.samples[1].bbox is None
    assert [s.split for s in ds] == ["test", "train"]


def test_stanford_cars_devkit_with_labelled_test(tmp_path):
    save_mat(tmp_path / "devkit" / "cars_meta.mat",
             class_names=np.array([["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]], dtype=object))
    save_mat(tmp_path / "devkit" / "cars_train_annos.mat", annotations=struct_array([
        {"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 12, "bbox_y2": 10, "class": 2, "fname": "00001.jpg"},
        {"bbox_x1": 3, "bbox_y1": 2, "bbox_x2": 8, "bbox_y2": 9, "class": 1, "fname": "00002.jpg"},
    ]))
    save_mat(tmp_path / "cars_test_annos_withlabels.mat", annotations=struct_array([
        {"bbox_x1": 1, "bbox_y1": 1, "bbox_x2": 5, "bbox_y2": 5, "class": 1, "fname": "00001.jpg"},
    ]))
    write_image(tmp_path / "cars_train" / "00001.jpg")
    ds = read_dataset(tmp_path)
    assert ds.classes == ["AM General Hummer SUV 2000", "Acura RL Sedan 2012"]
    assert [(s.label, s.split) for s in ds] == [(1, "train"), (0, "train"), (0, "test")]
    assert ds.samples[0].bbox == (0.0, 0.0, 12.0, 10.0)  # 1-based inclusive -> whole 12x10 image
    assert ds.samples[0].path == tmp_path / "cars_train" / "00001.jpg"
    assert ds.samples[2].path == tmp_path / "cars_test" / "00001.jpg"


def test_stanford_cars_csv_rerelease(tmp_path):
    write_lines(tmp_path / "names.csv", ["AM General Hummer SUV 2000", "Ram C/V Cargo Van Minivan 2012"])
    write_lines(tmp_path / "anno_train.csv", ["00001.jpg,39,116,569,375,2", "00002.jpg,1,1,10,10,1"])
    write_lines(tmp_path / "anno_test.csv", ["00001.jpg,2,2,9,9,1"])
    train = tmp_path / "car_data" / "car_data" / "train"
    write_image(train / "Ram C-V Cargo Van Minivan 2012" / "00001.jpg")
    write_image(train / "AM General Hummer SUV 2000" / "00002.jpg")
    write_image(tmp_path / "car_data" / "car_data" / "test" / "AM General Hummer SUV 2000" / "00001.jpg")
    ds = read_dataset(tmp_path, "stanford_cars")
    assert ds.classes[1] == "Ram C/V Cargo Van Minivan 2012"
    assert [(s.label, s.split) for s in ds] == [(1, "train"), (0, "train"), (0, "test")]
    assert all(s.path.is_file() for s in ds)
    assert ds.samples[2].path.parent.parent.name == "test"
    assert ds.samples[0].bbox == (38.0, 115.0, 569.0, 375.0)


def test_stanford_dogs_lists_and_xml_boxes(tmp_path):
    files = ["n02085620-Chihuahua/n02085620_1.jpg", "n02085782-Japanese_spaniel/n02085782_2.jpg"]
    annos = [f[:-4] for f in files]
    for split, idx in (("train", [0, 1]), ("test", [1])):
        save_mat(tmp_path / "lists" / f"{split}_list.mat",
                 file_list=np.array([[files[i]] for i in idx], dtype=object),
                 annotation_list=np.array([[annos[i]] for i in idx], dtype=object),
                 labels=np.array([[i + 1] for i in idx], dtype=np.uint8))
    for f in files:
        write_image(tmp_path / "Images" / f)
    xml = ("<annotation><object><name>x</name><bndbox><xmin>{}</xmin><ymin>{}</ymin><xmax>{}</xmax>"
           "<ymax>{}</ymax></bndbox></object>{}</annotation>")
    second = "<object><bndbox><xmin>1</xmin><ymin>8</ymin><xmax>20</xmax><ymax>9</ymax></bndbox></object>"
    write_lines(tmp_path / "Annotation" / annos[0], [xml.format(5, 6, 7, 12, second)])
    write_lines(tmp_path / "Annotation" / annos[1], [xml.format(1, 2, 3, 4, "")])
    ds = read_dataset(tmp_path)
    assert ds.name == "stanford_dogs"
    assert ds.classes == ["Chihuahua", "Japanese_spaniel"]
    assert [(s.label, s.split) for s in ds] == [(0, "train"), (1, "train"), (1, "test")]
    assert ds.samples[0].bbox == (1.0, 6.0, 20.0, 12.0)  # union of both dogs
    assert ds.samples[2].bbox == (1.0, 2.0, 3.0, 4.0)


def make_aircraft(root: Path) -> Path:
    d = root / "fgvc-aircraft-2013b" / "data"
    write_lines(d / "variants.txt", ["707-320", "A300B4", "Cessna 172"])
    rows = {"train": [("0034309", "A300B4", "A300", "Airbus")], "val": [("0056978", "707-320", "Boeing 707", "Boeing")],
            "test": [("1025794", "Cessna 172", "Cessna 172", "Cessna")]}
    for split, items in rows.items():
        for col, level in ((1, "variant"), (2, "family"), (3, "manufacturer")):
            write_lines(d / f"images_{level}_{split}.txt", [f"{r[0]} {r[col]}" for r in items])
    write_lines(d / "images_box.txt", ["0034309 1 1 10 8", "0056978 3 4 5 6", "1025794 2 2 3 3"])
    for items in rows.values():
        write_image(d / "images" / f"{items[0][0]}.jpg")
    return d


def test_fgvc_aircraft_levels_and_hierarchy(tmp_path):
    make_aircraft(tmp_path)
    ds = read_dataset(tmp_path)
    assert ds.classes == ["707-320", "A300B4", "Cessna 172"]
    by_id = {s.path.stem: s for s in ds}
    a300 = by_id["0034309"]
    assert (ds.classes[a300.label], a300.split) == ("A300B4", "train")
    assert a300.hierarchy == {"family": "A300", "manufacturer": "Airbus"}
    assert a300.bbox == (0.0, 0.0, 10.0, 8.0)
    assert by_id["0056978"].split == "val"
    fam = read_dataset(tmp_path, "fgvc_aircraft", level="manufacturer")
    assert sorted(fam.classes) == ["Airbus", "Boeing", "Cessna"]
    assert fam.samples[0].hierarchy["variant"] in ("A300B4", "707-320", "Cessna 172")
    with pytest.raises(DatasetError, match="unknown FGVC-Aircraft level"):
        read_dataset(tmp_path, "fgvc_aircraft", level="wing")
    with pytest.raises(DatasetError, match="bad option"):
        read_dataset(tmp_path, "fgvc_aircraft", colour="red")


def test_flowers102_mat_files_and_names(tmp_path):
    save_mat(tmp_path / "imagelabels.mat", labels=np.array([[2, 1, 2, 1]], dtype=np.uint8))
    save_mat(tmp_path / "setid.mat", trnid=np.array([[1, 2]]), valid=np.array([[3]]), tstid=np.array([[4]]))
    (tmp_path / "jpg").mkdir()
    (tmp_path / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "2": "hard-leaved pocket orchid"}))
    ds = read_dataset(tmp_path)
    assert ds.classes == ["pink primrose", "hard-leaved pocket orchid"]
    assert [(s.path.name, s.label, s.split) for s in ds] == [
        ("image_00001.jpg", 1, "train"), ("image_00002.jpg", 0, "train"),
        ("image_00003.jpg", 1, "val"), ("image_00004.jpg", 0, "test"),
    ]


def test_food101_meta_json(tmp_path):
    d = tmp_path / "food-101"
    write_lines(d / "meta" / "classes.txt", ["apple_pie", "baby_back_ribs"])
    (d / "meta" / "train.json").write_text(json.dumps({"apple_pie": ["apple_pie/1005649"],
                                                       "baby_back_ribs": ["baby_back_ribs/11"]}))
    (d / "meta" / "test.json").write_text(json.dumps({"baby_back_ribs": ["baby_back_ribs/7"]}))
    write_image(d / "images" / "apple_pie" / "1005649.jpg")
    ds = read_dataset(tmp_path)
    assert ds.name == "food101"
    assert [(s.path.relative_to(d).as_posix(), s.label, s.split) for s in ds] == [
        ("images/apple_pie/1005649.jpg", 0, "train"),
        ("images/baby_back_ribs/11.jpg", 1, "train"),
        ("images/baby_back_ribs/7.jpg", 1, "test"),
    ]


def test_inat_json_taxonomy_and_unlabelled_test(tmp_path):
    cats = [{"id": 7, "name": "Aves sp. b", "supercategory": "Aves", "family": "Anatidae", "genus": "Anas"},
            {"id": 3, "name": "Plantae sp. a", "supercategory": "Plantae"}]
    train = {"images": [{"id": 1, "file_name": "train_val2018/Aves/7/a.jpg"},
                        {"id": 2, "file_name": "train_val2018/Plantae/3/b.jpg"}],
             "annotations": [{"image_id": 1, "category_id": 7}, {"image_id": 2, "category_id": 3}],
             "categories": cats}
    test = {"images": [{"id": 9, "file_name": "test2018/c.jpg"}], "categories": cats}
    (tmp_path / "train2018.json").write_text(json.dumps(train))
    (tmp_path / "test2018.json").write_text(json.dumps(test))
    ds = read_dataset(tmp_path)
    assert ds.classes == ["Plantae sp. a", "Aves sp. b"]  # category-id order
    by_name = {s.path.name: s for s in ds}
    assert (by_name["a.jpg"].label, by_name["a.jpg"].split, by_name["a.jpg"].category) == (1, "train", "Aves")
    assert by_name["a.jpg"].hierarchy == {"supercategory": "Aves", "family": "Anatidae", "genus": "Anas"}
    assert by_name["c.jpg"].label == -1 and by_name["c.jpg"].split == "test"
    assert by_name["b.jpg"].path == tmp_path / "train_val2018/Plantae/3/b.jpg"


def test_folder_with_split_wrapper_and_cat_to_name(tmp_path):
    # the flowers102_partial layout: root/flowers/train/<id>/*.jpg with cat_to_name.json at root
    base = tmp_path / "flowers" / "train"
    for cls, n in (("10", 2), ("2", 1), ("1", 1)):
        for i in range(n):
            write_image(base / cls / f"img{i}.jpg")
    (base / "5").mkdir()  # an empty class folder is skipped
    (tmp_path / "cat_to_name.json").write_text(json.dumps({"1": "pink primrose", "10": "globe thistle"}))
    assert detect_format(tmp_path) == ("folder", tmp_path.absolute())
    ds = read_dataset(tmp_path)
    assert ds.classes == ["pink primrose", "2", "globe thistle"]  # numeric order; "2" has no name
    assert sorted(ds.labels) == [0, 1, 2, 2]
    assert {s.split for s in ds} == {"train"}


def test_folder_plain_classes_without_split(tmp_path):
    for cls in ("b_cls", "a_cls"):
        write_image(tmp_path / cls / "x.png")
    write_image(tmp_path / "a_cls" / "sub" / "y.jpg")
    (tmp_path / "a_cls" / "notes.txt").write_text("not an image")
    ds = read_dataset(tmp_path, "folder")
    assert ds.classes == ["a_cls", "b_cls"]
    assert ds.class_counts() == {"a_cls": 2, "b_cls": 1}
    assert all(s.split is None for s in ds)


def test_manifest_roundtrip_unlabelled_boxes_categories(tmp_path):
    write_image(tmp_path / "imgs" / "a.jpg")
    write_lines(tmp_path / "manifest.csv", [
        "path,label,split,x1,y1,x2,y2,category,family",
        "imgs/a.jpg,sp10,train,1,2,3,4,birds,ducks",
        "imgs/b.jpg,sp2,test,,,,,birds,",
        "imgs/c.jpg,,,,,,,cars,",
    ])
    ds = read_dataset(tmp_path)
    assert ds.classes == ["sp2", "sp10"]
    assert [s.label for s in ds] == [1, 0, -1]
    assert ds.samples[0].bbox == (1.0, 2.0, 3.0, 4.0) and ds.samples[1].bbox is None
    assert ds.samples[0].hierarchy == {"family": "ducks"} and ds.samples[1].hierarchy is None
    assert [s.category for s in ds] == ["birds", "birds", "cars"]
    assert ds.samples[0].path == tmp_path / "imgs" / "a.jpg"

    out = write_manifest(ds, tmp_path / "elsewhere" / "copy.csv")
    again = read_dataset(out)
    assert again.classes == ds.classes
    assert [(s.path, s.label, s.split, s.bbox, s.category) for s in again] == [
        (s.path, s.label, s.split, s.bbox, s.category) for s in ds
    ]


@pytest.mark.parametrize(
    "rows, message",
    [
        (["path,label", "a.jpg,x", "b.jpg,y"], None),
        (["path,name", "a.jpg,x"], None),  # not a manifest: unknown layout
        (["path,label,x1,y1,x2,y2", "a.jpg,x,1,2,,"], "box needs all"),
        (["path,label,x1,y1,x2,y2", "a.jpg,x,1,2,three,4"], "not a number"),
        (["path,label", ",x"], "empty path"),
    ],
)
def test_manifest_errors_name_the_line(tmp_path, rows, message):
    csv_path = write_lines(tmp_path / "m.csv", rows)
    if message is None and rows[0] == "path,label":
        assert len(read_manifest(csv_path)) == 2
        return
    with pytest.raises(DatasetError, match=message or "unknown dataset layout"):
        read_dataset(csv_path)


def test_list_formats_names_every_layout():
    names = [n for n, _ in list_formats()]
    assert set(names) == {"cub200", "stanford_cars", "stanford_dogs", "fgvc_aircraft", "flowers102", "nabirds",
                          "food101", "inat", "folder", "manifest", "images"}
    assert names[-2:] == ["folder", "images"]  # the generic fallbacks are tried last, labelled before unlabelled
    assert all(desc for _, desc in list_formats())


def test_errors_are_one_line_and_specific(tmp_path):
    with pytest.raises(DatasetError, match="no such file or folder"):
        read_dataset(tmp_path / "nope")
    with pytest.raises(DatasetError, match="empty folder"):
        read_dataset(tmp_path)
    (tmp_path / "readme.txt").write_text("hello")
    with pytest.raises(DatasetError, match="unknown dataset layout") as err:
        read_dataset(tmp_path)
    assert "\n" not in str(err.value)
    with pytest.raises(DatasetError, match="unknown dataset format 'cub'"):
        read_dataset(tmp_path, "cub")
    # a half-shipped CUB: the error names the missing annotation file
    d = make_cub(tmp_path / "cub", with_extras=False)
    (d / "image_class_labels.txt").unlink()
    with pytest.raises(DatasetError, match="missing annotation file: image_class_labels.txt"):
        read_dataset(tmp_path / "cub", "cub200")
    with pytest.raises(DatasetError, match="missing annotation file: devkit/cars_meta.mat"):
        read_dataset(tmp_path / "cub", "stanford_cars")


def test_malformed_annotation_files_give_clear_errors(tmp_path):
    d = make_cub(tmp_path, with_extras=False)
    write_lines(d / "image_class_labels.txt", ["1 1", "2 9", "3 2"])
    with pytest.raises(DatasetError, match="class id 9"):
        read_dataset(tmp_path)
    write_lines(d / "image_class_labels.txt", ["1 1", "2"])
    with pytest.raises(DatasetError, match=r"image_class_labels.txt:2: expected 2 fields"):
        read_dataset(tmp_path)
    save_mat(tmp_path / "bad" / "devkit" / "cars_meta.mat", names=np.array([1]))
    with pytest.raises(DatasetError, match="no 'class_names' variable"):
        read_dataset(tmp_path / "bad")
    (tmp_path / "bad" / "devkit" / "cars_meta.mat").write_bytes(b"garbage")
    with pytest.raises(DatasetError, match="cannot read"):
        read_dataset(tmp_path / "bad", "stanford_cars")
