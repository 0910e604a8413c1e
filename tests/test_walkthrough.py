"""The README's "Your own photos" walk-through, run line by line as a user would, on a small copy of the shared
data: train on half of CUB's species, index a flat folder of photos of the other half, search one, serve."""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from fgia.data import read_dataset
from fgia.serve.server import free_port

ROOT = Path(__file__).resolve().parents[1]
SECTION = re.search(r"## Your own photos\n(.*?)\n## ", (ROOT / "README.md").read_text(encoding="utf-8"), re.S)
AUX_IMAGES = 4  # per auxiliary species: sized so the whole walk-through takes about a minute on two cores
PHOTO_SPECIES, PHOTOS_EACH = 12, 3


def _commands() -> list[str]:
    [snippet] = re.findall(r"```bash\n(.*?)```", SECTION.group(1), flags=re.S)
    return [line.split("#")[0].strip() for line in snippet.splitlines() if line.split("#")[0].strip()]


def _user_folders(shared: Path, work: Path) -> None:
    """aux/<species>/ links to the images of the first half of CUB's species; my-photos/IMG_NNNN.jpg copies of a
    few photos of the other half (no labels)."""
    cub = read_dataset(shared / "cub100")
    half = len(cub.classes) // 2
    by_class: dict[int, list[Path]] = {}
    for s in cub.samples:
        by_class.setdefault(s.label, []).append(s.path)
    for label in range(half):
        folder = work / "aux" / cub.classes[label]
        folder.mkdir(parents=True)
        for path in by_class[label][:AUX_IMAGES]:
            (folder / path.name).symlink_to(path.resolve())
    photos = work / "my-photos"
    photos.mkdir()
    picked = [p for label in range(half, half + PHOTO_SPECIES) for p in by_class[label][:PHOTOS_EACH]]
    for n, path in enumerate(picked, start=1):
        shutil.copy(path, photos / f"IMG_{n:04d}.jpg")


def _fgia_on_path(work: Path) -> dict[str, str]:
    """The environment of a user's shell where `fgia` is this checkout's command."""
    bin_dir = work / "bin"
    bin_dir.mkdir()
    shim = bin_dir / "fgia"
    shim.write_text(f'#!/bin/sh\nexec {shlex.quote(sys.executable)} -m fgia.cli "$@"\n')
    shim.chmod(0o755)
    return {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "COLUMNS": "200",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT / "src"), os.environ.get("PYTHONPATH")]))}


@pytest.mark.slow
@pytest.mark.shared_data
def test_readme_walkthrough_on_your_own_photos(shared_data, tmp_path):
    commands = _commands()
    assert [c.split()[1] for c in commands] == ["train", "index", "search", "serve"]
    _user_folders(shared_data, tmp_path)
    env = _fgia_on_path(tmp_path)
    said = {}
    for command in commands[:-1]:
        done = subprocess.run(command, shell=True, cwd=tmp_path, env=env, capture_output=True, text=True,
                              timeout=600)
        assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        said[command.split()[1]] = " ".join(done.stdout.split())
    assert (tmp_path / "my-system" / "system.json").read_text().count('"aux"') == 1  # one category, named "aux"
    photos = PHOTO_SPECIES * PHOTOS_EACH
    assert f"added {photos} images" in said["index"] and "unlabelled" in said["index"]
    hits = re.findall(r"/my-photos/(IMG_\d{4}\.jpg)", said["search"])  # the table's absolute paths, in rank order
    assert len(hits) == 5 and hits[0] == "IMG_0001.jpg" and "0.0000" in said["search"]  # a photo finds itself

    port = free_port()
    serve = commands[-1].replace("--port 8000", f"--port {port}")
    server = subprocess.Popen(serve, shell=True, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL,
                              stderr=subprocess.PIPE, start_new_session=True)
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 180
        while True:
            assert server.poll() is None, server.stderr.read().decode()
            try:
                if httpx.get(f"{url}/health", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "the server did not come up"
            time.sleep(1)
        photo = tmp_path / "my-photos" / "IMG_0002.jpg"
        answer = httpx.post(f"{url}/search", files={"file": (photo.name, photo.read_bytes(), "image/jpeg")},
                            data={"top_k": "5"}, timeout=120)
        assert answer.status_code == 200, answer.text
        hits = answer.json()["hits"]
        assert len(hits) == 5 and hits[0]["name"] == "IMG_0002.jpg" and hits[0]["label"] is None
        assert answer.json()["category"] == "aux"
    finally:
        os.killpg(server.pid, 15)
        server.wait(timeout=30)
