"""Failure 8 (minor): --json replaced a symlink or FIFO with a regular file; error details echoed object reprs;
the Content-Length 413 was plain text; /redoc loaded a CDN script; /stats exposed absolute paths; stalled uploads
never timed out; `fgia train` checked batch_size against per-category counts only after training the unified
model; an index held absolute system and image paths, so it could not be moved.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import threading
import time

import pytest
import uvicorn
from fastapi.testclient import TestClient
from reliability_helpers import FakeEngine, one_error_line

from fgia.data import load_image, read_dataset
from fgia.retrieval.engine import RetrievalEngine, build_index
from fgia.serve import ServeConfig, create_app
from fgia.serve.server import free_port


@pytest.fixture(scope="module")
def index(tiny_system, tiny_synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("minor") / "index"
    build_index(tiny_system, read_dataset(tiny_synth), out, device="cpu")
    return out


# --json ------------------------------------------------------------------------------------------------------
def test_json_through_a_symlink_keeps_the_link(index, tiny_synth, tmp_path, cli):
    real = tmp_path / "real.json"
    real.write_text("[]")
    link = tmp_path / "hits.json"
    link.symlink_to(real)
    query = read_dataset(tiny_synth).samples[0].path
    code, _, err = cli("search", index, query, "--json", link, "--device", "cpu")
    assert code == 0, err
    assert link.is_symlink() and json.loads(real.read_text())[0]["query"] == str(query)


def test_json_into_a_fifo_keeps_the_fifo(index, tiny_synth, tmp_path, cli):
    fifo = tmp_path / "hits.fifo"
    os.mkfifo(fifo)
    received = []
    reader = threading.Thread(target=lambda: received.append(fifo.read_text()))
    reader.start()
    code, _, err = cli("search", index, read_dataset(tiny_synth).samples[0].path, "--json", fifo, "--device", "cpu")
    if reader.is_alive():  # unblock the reader if the command never opened the FIFO
        with open(fifo, "w"):
            pass
    reader.join(10)
    assert code == 0, err
    assert fifo.is_fifo() and json.loads(received[0])[0]["paths"]


# serve --------------------------------------------------------------------------------------------------------
@pytest.fixture
def client(tmp_path):
    with TestClient(create_app(FakeEngine(tmp_path), ServeConfig(max_upload_bytes=1000))) as c:
        yield c


def _no_reprs(text: str) -> None:
    assert not re.search(r"object at 0x|_TemporaryFileArgs|_max_mem_size|_rolled", text), text


def test_error_details_carry_no_object_reprs(client):
    corrupt = client.post("/search", files={"file": ("x.png", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40, "image/png")})
    assert corrupt.status_code == 400
    _no_reprs(corrupt.text)
    as_file = client.post("/search", files={"file": ("x.png", b"x", "image/png"), "top_k": ("t.txt", b"3")})
    assert as_file.status_code == 422 and as_file.json()["detail"][0]["loc"][-1] == "top_k"
    _no_reprs(as_file.text)


def test_content_length_413_is_json(client):
    resp = client.post("/search", content=b"x" * 5000, headers={"content-type": "multipart/form-data; boundary=b"})
    assert resp.status_code == 413
    assert resp.headers["content-type"].startswith("application/json") and "1,000 bytes" in resp.json()["detail"]


def test_no_page_loads_a_cdn(client):
    assert client.get("/redoc").status_code == 404
    docs = client.get("/docs").text
    assert "cdn" not in docs and "https://" not in docs


def test_stats_have_no_absolute_paths(index):
    engine = RetrievalEngine.load(index, device="cpu")
    with TestClient(create_app(engine)) as c:
        stats = c.get("/stats").text
    assert str(index.parent) not in stats and "/tmp" not in stats


def test_a_stalled_upload_times_out(tmp_path):
    port = free_port()
    cfg = ServeConfig(upload_timeout_s=1.0)
    server = uvicorn.Server(uvicorn.Config(create_app(FakeEngine(tmp_path), cfg), port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        while not server.started:
            time.sleep(0.05)
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
            sock.sendall(b"POST /search HTTP/1.1\r\nHost: x\r\nContent-Type: multipart/form-data; boundary=b\r\n"
                         b"Content-Length: 900\r\n\r\n--b\r\nContent-Disposition: form-data; name=\"file\"")
            started = time.monotonic()
            answer = sock.recv(4096).decode(errors="replace")  # the client now stalls
        assert answer.startswith("HTTP/1.1 408"), answer
        assert time.monotonic() - started < 5
    finally:
        server.should_exit = True
        thread.join(10)


# train ----------------------------------------------------------------------------------------------------------
def test_train_checks_batch_size_per_category_before_training(cli, tiny_synth, tmp_path):
    import yaml

    per_species = 8  # the tiny benchmark: 4 species x 8 images per category, 96 images in all
    config = tmp_path / "big_batch.yaml"
    config.write_text(yaml.safe_dump({"system": {"backbone": "test_efficientnet", "image_size": 48, "epochs": 1,
                                                 "batch_size": 4 * per_species + 1, "device": "cpu"}}))
    started = time.monotonic()
    code, _, err = cli("train", tiny_synth, "--out", tmp_path / "system", "--config", config)
    assert code == 1
    line = one_error_line(err)
    assert "batch_size 33" in line and "birds" in line
    assert not (tmp_path / "system").exists()
    assert time.monotonic() - started < 20


# moving an index --------------------------------------------------------------------------------------------------
def test_an_index_moved_with_its_system_and_images_still_works(tiny_system, copy_data, tmp_path):
    before = tmp_path / "before"
    shutil.copytree(tiny_system, before / "system")
    manifest = copy_data(before / "data", rows=12)
    build_index(before / "system", read_dataset(manifest), before / "index", device="cpu")
    after = tmp_path / "after"
    before.rename(after)
    engine = RetrievalEngine.load(after / "index", device="cpu")
    assert engine.image_path(0).is_file() and after in engine.image_path(0).parents
    query = read_dataset(after / "data" / "manifest.csv").samples[3].path
    [result] = engine.search([load_image(query)], top_k=1)
    assert result.paths[0] == str(query.resolve())


def test_an_index_moved_alone_still_finds_its_system_and_images(tiny_system, copy_data, tmp_path):
    manifest = copy_data(tmp_path / "data", rows=12)
    build_index(tiny_system, read_dataset(manifest), tmp_path / "index", device="cpu")
    (tmp_path / "elsewhere" / "deeper").mkdir(parents=True)
    moved = tmp_path / "elsewhere" / "deeper" / "index"
    (tmp_path / "index").rename(moved)
    engine = RetrievalEngine.load(moved, device="cpu")
    assert engine.image_path(0).is_file()
