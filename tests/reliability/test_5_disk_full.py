"""Failure 5: a full disk during `fgia index` died with SIGBUS and no message (arrays written through open_memmap
on a sparse file), leaving orphan files that kept the disk full.

Each case runs in a private mount namespace with a small tmpfs as the output disk (skipped where unprivileged
mounts are not allowed); read-only and permission-denied folders need no namespace.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest
from reliability_helpers import one_error_line, run_python

from fgia.index import FeatureStore


def _small_disk_available() -> bool:
    if not shutil.which("unshare"):
        return False
    probe = subprocess.run(["unshare", "-rm", "sh", "-c", "mount -t tmpfs -o size=64k tmpfs /tmp && echo ok"],
                           capture_output=True, text=True)
    return probe.stdout.strip() == "ok"


needs_small_disk = pytest.mark.skipif(not _small_disk_available(), reason="no unprivileged tmpfs mounts here")


def on_small_disk(disk, size_kb: int, command: str) -> subprocess.CompletedProcess:
    """Run the shell `command` with a `size_kb` tmpfs mounted at `disk`; afterwards it lists what is left there."""
    disk.mkdir(exist_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(p for p in sys.path if p)}
    script = (f"mount -t tmpfs -o size={size_kb}k tmpfs {disk} && {command}; code=$?; "
              f"echo LEFT; cd {disk} && find . -type f | sort; exit $code")
    return subprocess.run(["unshare", "-rm", "sh", "-c", script], capture_output=True, text=True, env=env,
                          timeout=300)


def _left(result) -> list[str]:
    return result.stdout.split("LEFT", 1)[1].split()


@needs_small_disk
def test_store_append_on_a_full_disk_is_an_error_not_sigbus(tmp_path):
    disk = tmp_path / "disk"
    code = f"""
import numpy as np
from fgia.index import FeatureStore, StoreRow
store = FeatureStore.create({str(disk / 'store')!r}, {{"m": 1}}, {{"x": 256}}, device="cpu")
rows = [StoreRow(f"img/{{i}}.jpg") for i in range(1000)]
store.append(rows, {{"x": np.ones((1000, 256), np.float32)}})                   # 1 MB: fits
try:
    store.append(rows * 8, {{"x": np.ones((8000, 256), np.float32)}})           # 9 MB of array: does not
except OSError as exc:
    print("ERROR", exc)
print("COUNT", len(FeatureStore.open({str(disk / 'store')!r}, device="cpu", verify=True)))
"""
    script = tmp_path / "fill.py"
    script.write_text(code)
    result = on_small_disk(disk, 4096, f"{sys.executable} {script}")
    assert result.returncode == 0, result.stderr  # 135 (SIGBUS) before the fix
    assert "no space left on device" in result.stdout.lower() and "COUNT 1000" in result.stdout
    left = _left(result)
    assert not [f for f in left if f.endswith(".tmp") or ".g2." in f], left  # no orphans keep the disk full


@needs_small_disk
def test_index_on_a_full_disk_is_one_line_and_leaves_nothing(tiny_system, tiny_synth, tmp_path):
    disk = tmp_path / "disk"
    command = (f"{sys.executable} -m fgia.cli index {tiny_system} {tiny_synth} --quiet --out {disk / 'index'} "
               f"2>{tmp_path / 'err.txt'}")
    result = on_small_disk(disk, 64, command)
    assert result.returncode == 1, result.stderr
    line = one_error_line((tmp_path / "err.txt").read_text())
    assert "no space left" in line.lower() and str(disk) in line
    assert _left(result) == []


@needs_small_disk
def test_read_only_output_is_one_line(tiny_system, tiny_synth, tmp_path):
    disk = tmp_path / "disk"
    command = (f"mount -o remount,ro {disk} && {sys.executable} -m fgia.cli index {tiny_system} {tiny_synth} "
               f"--out {disk / 'index'} 2>{tmp_path / 'err.txt'}")
    result = on_small_disk(disk, 64, command)
    assert result.returncode == 1, result.stderr
    line = one_error_line((tmp_path / "err.txt").read_text())
    assert "read-only" in line.lower() and str(disk) in line


def test_a_write_refused_by_the_os_changes_nothing_and_names_the_file(tmp_path):
    """Portable stand-in for a full disk: a file-size limit makes the OS refuse the big write (EFBIG)."""
    store_dir = tmp_path / "store"
    code = f"""
import resource, signal
import numpy as np
from fgia.index import FeatureStore, StoreRow
store = FeatureStore.create({str(store_dir)!r}, {{"m": 1}}, {{"x": 256}}, device="cpu")
store.append([StoreRow("a.jpg")], {{"x": np.ones((1, 256), np.float32)}})
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (500_000, resource.RLIM_INFINITY))
try:
    store.append([StoreRow("b.jpg")] * 1000, {{"x": np.ones((1000, 256), np.float32)}})
except OSError as exc:
    print("ERROR", exc)
"""
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "ERROR" in result.stdout and str(store_dir / "arrays") in result.stdout
    store = FeatureStore.open(store_dir, device="cpu", verify=True)
    assert len(store) == 1
    listed = {"manifest.json", ".fgia-output.json", *store.manifest["files"]}
    assert {p.relative_to(store_dir).as_posix() for p in store_dir.rglob("*") if p.is_file()} <= listed
