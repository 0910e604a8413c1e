"""API tests with FastAPI's TestClient over the fake engine: happy paths, caching, and every bad input."""

from __future__ import annotations

import io
import re

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from fgia.serve import ServeConfig, create_app
from fgia.serve.app import STATIC_DIR


def encode(image: Image.Image, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt, **kw)
    return buf.getvalue()


def noise(size=(64, 64)) -> Image.Image:
    return Image.fromarray(np.random.default_rng(1).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8))


def upload(client, data: bytes, content_type: str = "image/png", name: str = "q.png", **form):
    return client.post("/search", files={"file": (name, data, content_type)}, data=form)


@pytest.fixture
def client(fake_engine):
    cfg = ServeConfig(max_upload_bytes=200_000, max_pixels=500_000, thumb_size=32, max_top_k=20)
    with TestClient(create_app(fake_engine, cfg)) as c:
        yield c


@pytest.mark.parametrize(("colour", "fmt", "ctype"), [("red", "PNG", "image/png"), ("green", "JPEG", "image/jpeg"),
                                                      ("blue", "WEBP", "image/webp")])
def test_search_ranks_same_colour_first(client, fake_engine, colour, fmt, ctype, solid):
    resp = upload(client, encode(solid(colour, (40, 30)), fmt), ctype, top_k=4)
    assert resp.status_code == 200, resp.text
    body = resp.json()
    hits = body["hits"]
    assert [h["rank"] for h in hits] == [1, 2, 3, 4]
    assert {h["label"] for h in hits[:2]} == {f"{colour} species"}
    assert all(h["name"].startswith(colour) for h in hits[:2])
    distances = [h["distance"] for h in hits]
    assert distances == sorted(distances)
    assert hits[0]["thumb_url"] == f"/thumbs/{hits[0]['id']}" and hits[0]["image_url"] == f"/images/{hits[0]['id']}"
    assert body["query_size"] == [40, 30]
    assert body["region_box"] == [10.0, 7.5, 30.0, 22.5]
    assert np.asarray(body["confidence_map"]).shape == (4, 6)
    assert body["category"] == "colours"
    assert {"coarse", "fine", "total", "decode", "queue", "request_total"} <= set(body["timings_ms"])
    assert {k: fake_engine.calls[-1][k] for k in ("n", "top_k", "pipeline", "qe", "modes")} == {
        "n": 1, "top_k": 4, "pipeline": "c2f", "qe": False, "modes": ["RGB"]}


def test_options_reach_the_engine(client, fake_engine, solid):
    resp = upload(client, encode(solid("red")), top_k=2, pipeline="coarse", query_expansion="true")
    assert resp.status_code == 200, resp.text
    assert len(resp.json()["hits"]) == 2
    assert resp.json()["options"] == {"top_k": 2, "pipeline": "coarse", "query_expansion": True}
    assert fake_engine.calls[-1]["pipeline"] == "coarse" and fake_engine.calls[-1]["qe"] is True


@pytest.mark.parametrize(("mode", "expected"), [("L", 100), ("LA", 100), ("P", 100), ("CMYK", 100), ("I;16", 117)])
def test_any_pixel_mode_reaches_engine_as_rgb(client, fake_engine, mode, expected):
    image = Image.new("I;16", (16, 16), 30000) if mode == "I;16" else Image.new("L", (16, 16), 100).convert(mode)
    fmt, ctype = ("JPEG", "image/jpeg") if mode == "CMYK" else ("PNG", "image/png")
    resp = upload(client, encode(image, fmt), ctype)
    assert resp.status_code == 200, resp.text
    assert fake_engine.calls[-1]["modes"] == ["RGB"]
    assert fake_engine.calls[-1]["means"][0] == pytest.approx(expected, abs=3)


def test_exif_orientation_is_applied(client, solid):
    image = solid("red", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    resp = upload(client, encode(image, "JPEG", exif=exif), "image/jpeg")
    assert resp.json()["query_size"] == [20, 40]


BAD_UPLOADS = {
    "text file": (b"hello", "text/plain", 415, "unsupported content type"),
    "gif declared as gif": (encode(noise(), "GIF"), "image/gif", 415, "unsupported content type"),
    "gif declared as png": (encode(noise(), "GIF"), "image/png", 415, "not a JPEG, PNG or WebP"),
    "text declared as jpeg": (b"not an image at all" * 10, "image/jpeg", 415, "not a JPEG, PNG or WebP"),
    "empty": (b"", "image/png", 400, "empty"),
    "truncated png": (encode(noise())[:300], "image/png", 400, "truncated"),
    "truncated jpeg": (encode(noise(), "JPEG")[:200], "image/jpeg", 400, "truncated"),
    "corrupt png header": (b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png", 400, "corrupt"),
    "too many pixels": (encode(Image.new("RGB", (1000, 1000))), "image/png", 413, "1,000,000 pixels"),
    "decompression bomb": (encode(Image.new("1", (20000, 20000))), "image/png", 413, "pixels"),
    "too many bytes": (np.random.default_rng(0).bytes(250_000), "image/png", 413, "Content Too Large"),
}


@pytest.mark.parametrize("case", BAD_UPLOADS, ids=list(BAD_UPLOADS))
def test_bad_uploads_get_clear_4xx_and_leave_engine_untouched(client, fake_engine, case, solid):
    data, ctype, status, message = BAD_UPLOADS[case]
    resp = upload(client, data, ctype)
    assert resp.status_code == status, resp.text
    assert message in resp.text
    assert fake_engine.calls == []
    assert client.get("/health").json() == {"status": "ok"}
    good = upload(client, encode(solid("blue")))
    assert good.status_code == 200 and good.json()["hits"][0]["label"] == "blue species"


@pytest.mark.parametrize(("form", "field"), [({"top_k": "0"}, "top_k"), ({"top_k": "21"}, "top_k"),
                                             ({"top_k": "ten"}, "top_k"), ({"pipeline": "bogus"}, "pipeline"),
                                             ({"query_expansion": "maybe"}, "query_expansion")])
def test_bad_options_are_422(client, fake_engine, form, field, solid):
    resp = upload(client, encode(solid("red")), **form)
    assert resp.status_code == 422
    assert resp.json()["detail"][0]["loc"][-1] == field
    assert fake_engine.calls == []


def test_wrong_request_shapes(client, fake_engine, solid):
    as_json = client.post("/search", json={"file": "red.png"})
    assert as_json.status_code == 415 and "multipart/form-data" in as_json.json()["detail"]
    raw = client.post("/search", content=encode(solid("red")), headers={"content-type": "image/png"})
    assert raw.status_code == 415
    no_file = client.post("/search", data={"top_k": "3"}, files={"other": ("x.png", b"x", "image/png")})
    assert no_file.status_code == 422 and no_file.json()["detail"][0]["loc"][-1] == "file"
    garbled = client.post("/search", content=b"--nope\r\n\r\n", headers={"content-type": "multipart/form-data"})
    assert garbled.status_code == 400 and "boundary" in garbled.json()["detail"]
    assert client.get("/search").status_code == 405
    assert fake_engine.calls == []


def test_engine_refusing_options_is_422(client, fake_engine, solid):
    fake_engine.fail_with = ValueError("query expansion applies to the coarse-to-fine pipelines only")
    resp = upload(client, encode(solid("red")), pipeline="coarse", query_expansion="true")
    assert resp.status_code == 422 and "query expansion" in resp.json()["detail"]


def test_engine_failure_is_500_and_service_survives(client, fake_engine, solid):
    fake_engine.fail_with = RuntimeError("index exploded")
    resp = upload(client, encode(solid("red")))
    assert resp.status_code == 500 and "index exploded" in resp.json()["detail"]
    fake_engine.fail_with = None
    assert upload(client, encode(solid("red"))).status_code == 200
    queries = client.get("/stats").json()["queries"]
    assert queries["queries_failed"] == 1 and queries["queries_served"] == 1


def test_images_by_id_with_caching(client, fake_db):
    paths, _ = fake_db
    resp = client.get("/images/3")
    assert resp.status_code == 200
    assert resp.content == paths[3].read_bytes()
    assert resp.headers["content-type"] == "image/png"
    assert "max-age=" in resp.headers["cache-control"]
    etag = resp.headers["etag"]
    again = client.get("/images/3", headers={"if-none-match": etag})
    assert again.status_code == 304 and again.content == b"" and again.headers["etag"] == etag
    assert client.get("/images/2", headers={"if-none-match": etag}).status_code == 200


def test_thumbnails_by_id_with_caching(client, fake_db):
    resp = client.get("/thumbs/1")
    assert resp.status_code == 200 and resp.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(resp.content))
    original = Image.open(fake_db[0][1])
    assert max(thumb.size) == 32
    assert thumb.size[0] / thumb.size[1] == pytest.approx(original.size[0] / original.size[1], rel=0.05)
    assert client.get("/thumbs/1", headers={"if-none-match": resp.headers["etag"]}).status_code == 304
    assert client.get("/thumbs/0").headers["etag"] != resp.headers["etag"]


@pytest.mark.parametrize(("url", "status"), [("/images/6", 404), ("/thumbs/99", 404), ("/images/-1", 422),
                                             ("/thumbs/-2", 422), ("/images/abc", 422),
                                             ("/images/..%2F..%2Fetc%2Fpasswd", 404), ("/images/%2Fetc%2Fpasswd", 404)])
def test_images_only_by_valid_id(client, url, status):
    resp = client.get(url)
    assert resp.status_code == status
    assert b"root:" not in resp.content


def test_missing_database_file_is_404(tmp_path, solid, engine_factory):
    gone = tmp_path / "gone.png"
    solid("red").save(gone)
    engine = engine_factory([gone], ["red species"])
    gone.unlink()
    with TestClient(create_app(engine, ServeConfig())) as c:
        resp = c.get("/images/0")
    assert resp.status_code == 404 and "missing on disk" in resp.json()["detail"]


def test_health_and_stats_count_queries(client, solid):
    assert client.get("/health").json() == {"status": "ok"}
    before = client.get("/stats").json()
    assert before["images"] == 6 and before["backbone"] == "fake-mean-colour" and before["dims"] == {"colour": 3}
    assert before["limits"]["max_upload_bytes"] == 200_000
    assert before["queries"]["queries_served"] == 0 and before["queries"]["p50_ms"] is None
    for colour in ("red", "green", "blue"):
        assert upload(client, encode(solid(colour))).status_code == 200
    upload(client, b"junk", "text/plain")
    after = client.get("/stats").json()["queries"]
    assert after["queries_served"] == 3 and after["window"] == 3
    assert 0 < after["p50_ms"] <= after["p90_ms"] <= after["p99_ms"]


def test_docs_and_openapi_work_offline(client):
    docs = client.get("/docs")
    assert docs.status_code == 200
    assets = re.findall(r"""['"](/docs-assets/[^'"]+)['"]""", docs.text)
    assert {"/docs-assets/swagger-ui-bundle.js", "/docs-assets/swagger-ui.css"} <= set(assets)
    assert not re.search(r"https?://(?!127\.0\.0\.1)", docs.text.replace("http://www.w3.org", ""))
    for url in assets:
        assert client.get(url).status_code == 200
    schema = client.get("/openapi.json").json()
    assert {"/search", "/images/{id}", "/thumbs/{id}", "/health", "/stats"} <= set(schema["paths"])


def test_page_and_assets_are_served_without_external_urls(client):
    page = client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assets = re.findall(r'(?:src|href)="(/static/[^"]+)"', page.text)
    assert {"/static/app.js", "/static/style.css"} <= set(assets)
    for url in assets:
        assert client.get(url).status_code == 200
    for path in STATIC_DIR.iterdir():
        assert not re.search(r"https?://", path.read_text()), f"{path.name} refers to an external URL"
