"""Any folder tree of images is an unlabelled database; layouts that match nothing say what was found."""

from __future__ import annotations

import logging

import pytest
from PIL import Image

from fgia.data import DatasetError, detect_format, read_dataset, scan_images


def _image(path, suffix_format="JPEG"):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), (120, 30, 60)).save(path, format=suffix_format)
    return path


@pytest.fixture
def photos(tmp_path):
    """A user's photo folder: images in any case and format, nested, plus files that are not photos."""
    root = tmp_path / "photos"
    _image(root / "b.jpg")
    _image(root / "A.JPEG")
    _image(root / "c.Png", "PNG")
    _image(root / "2024" / "trip" / "d.webp", "WEBP")
    _image(root / "2024" / "img10.jpg")
    _image(root / "2024" / "img9.jpg")
    _image(root / ".thumbnails" / "t.jpg")  # hidden folder: skipped, never descended into
    _image(root / ".hidden.jpg")  # hidden file
    (root / "notes.txt").write_text("not an image")
    (root / "2024" / "trip" / "movie.mov").write_bytes(b"\0" * 10)
    return root


def test_a_folder_tree_of_images_is_an_unlabelled_database(photos, caplog):
    assert detect_format(photos)[0] == "images"
    with caplog.at_level(logging.WARNING):
        ds = read_dataset(photos)
    names = [p.relative_to(photos).as_posix() for p in (s.path for s in ds.samples)]
    # recursive, in natural order folder by folder (img9 before img10), every image unlabelled
    assert names == ["A.JPEG", "b.jpg", "c.Png", "2024/img9.jpg", "2024/img10.jpg", "2024/trip/d.webp"]
    assert all(s.label == -1 and s.category is None for s in ds.samples)
    assert ds.classes == [] and ds.name == "photos"
    assert "6 image(s); skipped 2 hidden, 2 non-image file(s)" in caplog.text
    scan = scan_images(photos)
    assert (len(scan.images), scan.hidden, scan.other) == (6, 2, 2)


def test_class_folders_keep_their_labels_unless_read_as_plain_images(tmp_path):
    for species in ("sparrow", "wren"):
        for k in range(2):
            _image(tmp_path / species / f"{k}.jpg")
    labelled = read_dataset(tmp_path)
    assert labelled.name == "folder" and sorted(labelled.classes) == ["sparrow", "wren"]
    plain = read_dataset(tmp_path, "images")
    assert len(plain) == 4 and {s.label for s in plain.samples} == {-1}


def test_an_unknown_layout_says_what_it_found_and_what_each_layout_needs(tmp_path):
    (tmp_path / "a.txt").write_text("x")
    (tmp_path / "b.txt").write_text("x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "table.csv").write_text("id,name\n1,x\n")
    with pytest.raises(DatasetError) as err:
        read_dataset(tmp_path)
    message = str(err.value)
    assert "\n" not in message
    assert "3 file(s) (.txt 2, .csv 1), 1 folder(s), no jpg/jpeg/png/webp images" in message
    assert "is a database" in message and "<class>/ folders" in message and "manifest CSV" in message


def test_a_folder_with_only_skipped_files_has_no_images(tmp_path):
    _image(tmp_path / ".hidden.jpg")
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DatasetError, match="no images .* skipped 1 hidden, 1 non-image"):
        read_dataset(tmp_path, "images")
