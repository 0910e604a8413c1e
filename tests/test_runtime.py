"""Atomic writes and output folders: the target appears whole or not at all, and nothing fgia did not write is
deleted."""

from __future__ import annotations

import logging
import os
import shutil
import subprocess
import sys

import pytest

from fgia.runtime import (
    OutputExistsError,
    atomic_path,
    atomic_write_text,
    output_folder,
    output_kind,
    single_threaded_blas,
)


def test_atomic_write_replaces_and_uses_umask_permissions(tmp_path):
    target = tmp_path / "a" / "file.txt"
    atomic_write_text(target, "one")
    atomic_write_text(target, "two")
    assert target.read_text() == "two"
    umask = os.umask(0)
    os.umask(umask)
    assert target.stat().st_mode & 0o777 == 0o666 & ~umask
    assert [p.name for p in target.parent.iterdir()] == ["file.txt"]


def test_interrupted_write_keeps_the_previous_file(tmp_path):
    target = tmp_path / "index.bin"
    target.write_text("previous")
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        tmp.write_text("half-writ")
        raise RuntimeError("killed mid-write")
    assert target.read_text() == "previous"
    assert [p.name for p in tmp_path.iterdir()] == ["index.bin"]


def test_atomic_write_keeps_a_symlink_a_symlink(tmp_path):
    real = tmp_path / "real.txt"
    real.write_text("old")
    link = tmp_path / "link.txt"
    link.symlink_to(real)
    atomic_write_text(link, "new")
    assert link.is_symlink() and real.read_text() == "new"


def _dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_output_folder_replaces_its_own_kind_and_keeps_what_it_did_not_write(tmp_path, caplog, monkeypatch):
    # the CLI routes these notices to its own handler (propagate off) once `main` ran in this process
    monkeypatch.setattr(logging.getLogger("fgia.runtime"), "propagate", True)
    target = tmp_path / "out"
    with output_folder(target, "thing") as out:
        (out / "a.txt").write_text("first")
        (out / "sub").mkdir()
        (out / "sub" / "b.txt").write_text("first")
    assert output_kind(target) == "thing" and (target / "sub" / "b.txt").read_text() == "first"
    (target / "sub" / "mine.txt").write_text("the user's")  # dropped in by the user afterwards
    with output_folder(target, "thing") as out:
        (out / "a.txt").write_text("second")
    assert sorted(p.name for p in target.iterdir()) == [".fgia-output.json", "a.txt"]
    [kept] = tmp_path.glob("out.kept-*")
    assert [p.relative_to(kept).as_posix() for p in kept.rglob("*") if p.is_file()] == ["sub/mine.txt"]
    assert str(kept) in caplog.text
    with pytest.raises(OutputExistsError, match="--force"):
        with output_folder(target, "thing", replace_own=False):
            pass
    with pytest.raises(OutputExistsError, match="'thing' output, not 'other'"):
        with output_folder(target, "other"):
            pass


def test_output_folder_failure_leaves_the_old_output_and_no_staging(tmp_path):
    target = tmp_path / "out"
    with output_folder(target, "thing") as out:
        (out / "a.txt").write_text("good")
    with pytest.raises(RuntimeError), output_folder(target, "thing") as out:
        (out / "a.txt").write_text("half")
        raise RuntimeError("failed midway")
    assert (target / "a.txt").read_text() == "good"
    assert [p.name for p in tmp_path.iterdir()] == ["out"]
    with pytest.raises(RuntimeError), output_folder(tmp_path / "new", "thing"):
        raise RuntimeError("failed first run")
    assert [p.name for p in tmp_path.iterdir()] == ["out"]


def test_output_folder_writes_an_empty_folder_in_place(tmp_path):
    mount_point = tmp_path / "disk"
    mount_point.mkdir()
    inode = mount_point.stat().st_ino
    with pytest.raises(RuntimeError), output_folder(mount_point, "thing") as out:
        (out / "half.txt").write_text("x")
        raise RuntimeError("failed")
    assert list(mount_point.iterdir()) == []
    with output_folder(mount_point, "thing") as out:
        assert out == mount_point
        (out / "a.txt").write_text("x")
    assert mount_point.stat().st_ino == inode and output_kind(mount_point) == "thing"


def test_output_folder_tidies_or_resumes_what_killed_writers_left(tmp_path):
    target = tmp_path / "out"
    stale = tmp_path / f".fgia-staging-out-{_dead_pid()}"
    with output_folder(target, "thing") as out:  # to get a staging folder's marker
        pass
    shutil.copytree(target, stale)
    (stale / "partial.bin").write_text("half")
    other = tmp_path / f".fgia-staging-out-other-{_dead_pid()}"  # another target's staging: not ours to touch
    shutil.copytree(stale, other)
    with output_folder(target, "thing", resume=True) as out:
        assert (out / "partial.bin").read_text() == "half"
    assert not stale.exists() and other.exists() and (target / "partial.bin").is_file()
    shutil.copytree(target, stale)
    with output_folder(target, "thing") as out:
        assert not (out / "partial.bin").exists()
    assert not stale.exists()
    # A swap killed between its two renames: the old output goes back in place.
    moved = tmp_path / f".fgia-replaced-out-{_dead_pid()}"
    target.rename(moved)
    with output_folder(target, "thing") as out:
        pass
    assert not moved.exists()


def test_single_threaded_blas_limits_numpys_pthreads_blas_inside_the_block_only():
    from threadpoolctl import threadpool_info

    def pthread_blas_threads():
        return [lib["num_threads"] for lib in threadpool_info()
                if lib["user_api"] == "blas" and lib.get("threading_layer") == "pthreads"]

    before = pthread_blas_threads()
    if not before:
        pytest.skip("NumPy's BLAS here is not a pthreads one")
    with single_threaded_blas():
        assert pthread_blas_threads() == [1] * len(before)
    assert pthread_blas_threads() == before
