"""load_image on every awkward kind of file, and check_images' report."""

from __future__ import annotations

import numpy as np
import pytest
from fakes import write_image
from PIL import Image

from fgia.data import ImageLoadError, Sample, check_images, load_image
from fgia.data.images import BACKGROUND, ORIGINAL_SIZE_KEY


def _rgb(im: Image.Image) -> tuple[int, int, int]:
    assert im.mode == "RGB"
    return tuple(int(v) for v in np.asarray(im)[0, 0])


def test_grayscale_palette_cmyk_become_rgb(tmp_path):
    assert _rgb(load_image(write_image(tmp_path / "g.png", mode="L", color=77))) == (77, 77, 77)
    pal = Image.new("RGB", (8, 8), (10, 200, 40)).convert("P", palette=Image.Palette.ADAPTIVE)
    pal.save(tmp_path / "p.png")
    assert _rgb(load_image(tmp_path / "p.png")) == (10, 200, 40)
    cmyk = load_image(write_image(tmp_path / "c.jpg", mode="CMYK", color=(0, 255, 255, 0), quality=95))
    r, g, b = _rgb(cmyk)
    assert r > 200 and g < 60 and b < 60  # pure red in CMYK


def test_16_bit_is_scaled_not_clipped(tmp_path):
    arr = np.full((6, 6), 32768, dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "deep.png")
    assert Image.open(tmp_path / "deep.png").mode.startswith("I")
    assert _rgb(load_image(tmp_path / "deep.png")) == (128, 128, 128)  # 32768/65535 of full scale, not 255
    Image.fromarray(np.full((4, 4), 0.25, dtype=np.float32), "F").save(tmp_path / "f.tiff")
    assert _rgb(load_image(tmp_path / "f.tiff")) == (64, 64, 64)


def test_alpha_is_composited_on_grey(tmp_path):
    im = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    im.putpixel((1, 1), (255, 0, 0, 255))
    im.save(tmp_path / "a.png")
    out = load_image(tmp_path / "a.png")
    assert _rgb(out) == BACKGROUND  # fully transparent
    assert tuple(np.asarray(out)[1, 1]) == (255, 0, 0)  # opaque pixel kept
    la = Image.new("LA", (2, 2), (255, 128))
    la.save(tmp_path / "la.png")
    assert _rgb(load_image(tmp_path / "la.png"))[0] == round(255 * 128 / 255 + 128 * 127 / 255)


def test_exif_orientation_applied_and_original_size_recorded(tmp_path):
    im = Image.new("RGB", (20, 10), (0, 0, 255))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    im.save(tmp_path / "r.jpg", exif=exif)
    out = load_image(tmp_path / "r.jpg")
    assert out.size == (10, 20)
    assert out.info[ORIGINAL_SIZE_KEY] == (10, 20)


def test_huge_jpeg_is_reduced_while_decoding(tmp_path):
    path = write_image(tmp_path / "big.jpg", size=(2400, 1600), quality=50)
    out = load_image(path, max_pixels=300 * 200)
    assert out.width * out.height <= 300 * 200
    assert out.width / out.height == pytest.approx(1.5, rel=0.02)
    assert out.info[ORIGINAL_SIZE_KEY] == (2400, 1600)
    # the decompression-bomb limit refuses a PNG that would need too many bytes decoded (600 x 400 RGB takes
    # 4 bytes a pixel), but a JPEG that draft mode reduces below the limit still loads
    png = write_image(tmp_path / "big.png", size=(600, 400))
    with pytest.raises(ImageLoadError, match="decompression-bomb"):
        load_image(png, max_decode_bytes=4 * 600 * 400 - 1)
    assert load_image(png, max_decode_bytes=4 * 600 * 400).size == (600, 400)
    assert load_image(path, max_pixels=40_000, max_decode_bytes=800_000).width <= 300


@pytest.mark.parametrize("case", ["missing", "garbage", "truncated", "empty"])
def test_unreadable_files_raise_image_load_error(tmp_path, case):
    path = tmp_path / "x.jpg"
    if case == "garbage":
        path.write_bytes(b"this is not an image at all")
    elif case == "truncated":
        full = write_image(tmp_path / "full.jpg", size=(64, 64), quality=90).read_bytes()
        path.write_bytes(full[: len(full) // 2])
    elif case == "empty":
        path.write_bytes(b"")
    with pytest.raises(ImageLoadError) as err:
        load_image(path)
    assert err.value.path == path and err.value.reason
    assert str(path) in str(err.value)


def test_check_images_splits_ok_and_broken(tmp_path):
    good = [Sample(write_image(tmp_path / f"{i}.png", mode="L", color=i), label=0) for i in range(3)]
    (tmp_path / "bad.jpg").write_bytes(b"\xff\xd8\xff\xe0 broken")
    bad = Sample(tmp_path / "bad.jpg", label=1)
    missing = Sample(tmp_path / "gone.jpg", label=1)
    ok, broken = check_images([good[0], bad, good[1], missing, good[2]], workers=2)
    assert ok == good
    assert [s for s, _ in broken] == [bad, missing]
    assert broken[1][1] == "file not found"
