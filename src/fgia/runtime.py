"""Small runtime helpers shared by every stage: seeding, device choice, atomic file writes, output folders."""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import functools
import json
import logging
import os
import random
import re
import shutil
import stat
import tempfile
from collections.abc import Collection, Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from threadpoolctl import ThreadpoolController


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (all devices) so runs repeat."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def pick_device(requested: str = "auto") -> torch.device:
    """Return `requested`, or the best available device when it is "auto"."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(requested)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {requested!r} was asked for but CUDA is not available")
    return device


@functools.cache
def _pthread_blas() -> ThreadpoolController:
    return ThreadpoolController().select(threading_layer="pthreads")


@contextlib.contextmanager
def single_threaded_blas() -> Iterator[None]:
    """Run NumPy's BLAS on one thread inside the block.

    A query batch's matrix products (PCA, classifier) are too small to gain from more threads, and a
    pthreads OpenBLAS keeps its idle threads spinning after each one, taking a core from the next forward pass:
    with it multi-threaded a batch of 32 queries spent ~20 % longer in the network on 2 cores."""
    with _pthread_blas().limit(limits=1, user_api="blas"):
        yield


log = logging.getLogger(__name__)

_WRITE_ERRORS = {
    errno.ENOSPC: "no space left on device",
    errno.EDQUOT: "disk quota exceeded",
    errno.EROFS: "read-only file system",
    errno.EACCES: "permission denied",
    errno.EPERM: "operation not permitted",
    errno.EFBIG: "file too large for this file system or limit",
}


class OutputError(OSError):
    """A write the operating system refused (full disk, read-only or forbidden folder), named by its file."""

    def __str__(self) -> str:
        return str(self.strerror)


def write_error(exc: OSError, path: str | os.PathLike) -> OSError:
    """`exc` as an OutputError naming `path` when it is a refused write, else `exc` unchanged."""
    if isinstance(exc, OutputError) or exc.errno not in _WRITE_ERRORS:
        return exc
    return OutputError(exc.errno, f"cannot write {path}: {_WRITE_ERRORS[exc.errno]}; nothing was changed")


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, durable: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success rename it over `path`.

    An interrupted write leaves the previous file untouched (no half-written index or checkpoint). A symlink is
    written through (the link stays a link); a FIFO or device is written directly, as it cannot be replaced.
    `durable` flushes the file and its folder to disk before returning (survives a power cut, not only a
    crash). A refused write (full disk, read-only, permissions) raises OutputError naming `path`.
    """
    target = Path(os.path.realpath(path)) if Path(path).is_symlink() else Path(path)
    if target.exists() and not target.is_dir() and not stat.S_ISREG(target.stat().st_mode):
        yield target  # a FIFO or device: nothing to replace atomically
        return
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    except OSError as exc:
        raise write_error(exc, target) from None
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes files owner-only; give them the usual permissions
    tmp_path = Path(tmp)
    try:
        yield tmp_path
        if durable:
            with open(tmp_path, "rb+") as f:
                os.fsync(f.fileno())
        os.replace(tmp_path, target)
        if durable:
            _fsync_dir(target.parent)
    except OSError as exc:
        raise write_error(exc, target) from None
    finally:
        tmp_path.unlink(missing_ok=True)


def atomic_write_text(path: str | os.PathLike, text: str, durable: bool = False) -> None:
    """Write `text` to `path` atomically (see `atomic_path`)."""
    with atomic_path(path, durable) as tmp:
        tmp.write_text(text, encoding="utf-8")


# Output folders ----------------------------------------------------------------------------------------------
OUTPUT_MARKER = ".fgia-output.json"
"""Written into every output folder a command completes: its kind and the files it wrote."""
_STAGING = ".fgia-staging-"
_REPLACED = ".fgia-replaced-"


class OutputExistsError(FileExistsError):
    """An output folder that a command may not write into without --force."""


def _marker(path: Path) -> dict:
    try:
        marker = json.loads((path / OUTPUT_MARKER).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return marker if isinstance(marker, dict) else {}


def output_kind(path: str | os.PathLike) -> str | None:
    """The kind of fgia output at `path` ("index", "system", ...), or None when it is not one."""
    return _marker(Path(path)).get("kind")


def _listed_files(folder: Path) -> set[str]:
    """Files (relative posix paths) the output in `folder` says it wrote: its marker's list, plus the `files` of
    every JSON manifest the marker names (outputs that grow after they are made, like an index)."""
    marker = _marker(folder)
    listed = set(marker.get("files", []))
    for name in marker.get("manifests", []):
        listed.add(name)
        try:
            listed |= set(json.loads((folder / name).read_text(encoding="utf-8")).get("files", {}))
        except (OSError, ValueError, AttributeError):
            continue
    return listed | {OUTPUT_MARKER}


def _writer_died(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    return False


def _leftovers(target: Path, prefix: str) -> list[Path]:
    """Folders `<prefix><target name>-<pid>` beside `target` whose writer died, newest first."""
    if not target.parent.is_dir():
        return []
    name = re.compile(re.escape(f"{prefix}{target.name}-") + r"(\d+)")
    found = [p for p in target.parent.iterdir()
             if (m := name.fullmatch(p.name)) and p.is_dir() and _writer_died(int(m.group(1)))]
    return sorted(found, key=lambda p: p.stat().st_mtime, reverse=True)


def _write_marker(folder: Path, kind: str, files: Sequence[str] | None, manifests: Sequence[str]) -> None:
    marker = {"kind": kind, "complete": files is not None, "manifests": list(manifests), "files": sorted(files or [])}
    atomic_write_text(folder / OUTPUT_MARKER, json.dumps(marker, indent=1))


def _describe(folder: Path, limit: int = 3) -> str:
    names = sorted(p.name for p in folder.iterdir())
    return ", ".join(names[:limit]) + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _retire(old: Path, target: Path) -> None:
    """Delete the files the replaced output `old` listed; keep anything else in `<target>.kept-<time>`."""
    for name in sorted(_listed_files(old)):
        path = old / name
        if path.is_file() or path.is_symlink():
            path.unlink()
    for folder in sorted((p for p in old.rglob("*") if p.is_dir()), key=lambda p: len(p.parts), reverse=True):
        with contextlib.suppress(OSError):
            folder.rmdir()  # only the empty ones go
    with contextlib.suppress(OSError):
        old.rmdir()
        return
    kept = target.with_name(f"{target.name}.kept-{dt.datetime.now():%Y%m%d-%H%M%S}")
    old.rename(kept)
    log.warning("kept the files fgia did not write in %s", kept)


def _restore_replaced(target: Path) -> None:
    """An output a killed writer moved aside to swap in a new one goes back in place (or is retired when the
    new one made it there)."""
    for old in _leftovers(target, _REPLACED):
        if target.exists():
            _retire(old, target)
        else:
            old.rename(target)


def _stale_staging(target: Path, kind: str, resume: bool) -> Path | None:
    """Delete the staging folders killed writers left beside `target`, except that with `resume` the newest
    one of `kind` is returned for the caller to continue."""
    resumable = None
    for folder in _leftovers(target, _STAGING):
        if resume and resumable is None and output_kind(folder) == kind:
            resumable = folder
        elif output_kind(folder) is not None or not any(folder.iterdir()):  # only folders fgia made
            shutil.rmtree(folder)
    return resumable


def _finish(staging: Path, target: Path, kind: str, manifests: Sequence[str]) -> None:
    """Mark the output in `staging` complete (listing its files) and move it to `target` when it is elsewhere."""
    files = [p.relative_to(staging).as_posix() for p in staging.rglob("*") if p.is_file()]
    _write_marker(staging, kind, [f for f in files if f != OUTPUT_MARKER], manifests)
    if staging == target:
        return
    if not target.exists():
        staging.rename(target)
        return
    old = target.with_name(f"{_REPLACED}{target.name}-{os.getpid()}")
    target.rename(old)
    try:
        staging.rename(target)
    except OSError:
        old.rename(target)
        raise
    _retire(old, target)


def clear_folder(folder: Path, keep: Collection[str] = ()) -> None:
    """Delete everything in `folder` but the entries named in `keep` (for folders whose every file is ours)."""
    for child in folder.iterdir():
        if child.name in keep:
            continue
        if child.is_dir() and not child.is_symlink():
            shutil.rmtree(child)
        else:
            child.unlink()


@contextlib.contextmanager
def output_folder(
    path: str | os.PathLike,
    kind: str,
    force: bool = False,
    replace_own: bool = True,
    manifests: Sequence[str] = (),
    resume: bool = False,
) -> Iterator[Path]:
    """Yield the folder to write an output of `kind` into; when the block succeeds the output is at `path`.

    Refuses (OutputExistsError) a non-empty `path` that is not an fgia output of `kind` unless `force`, and a
    finished output of `kind` unless `replace_own` or `force`. A new output is built in a staging folder beside
    `path` and renamed into place when complete, so a failure leaves the old one as it was and removes the
    staging folder (an existing empty folder, such as a mount point, is written in place and emptied again on
    failure). Of a replaced output only the files its marker lists (with those of the JSON `manifests` it names,
    for outputs that grow) are deleted; anything else is kept in `<path>.kept-<time>`. With `resume`, what a
    killed writer of the same kind left is handed back as it was (its contents are the caller's to check);
    otherwise it is deleted.
    """
    target = Path(path)
    if target.exists() and not target.is_dir():
        raise OutputExistsError(f"{target} is a file, not a folder; choose another output folder")
    try:
        _restore_replaced(target)
    except OSError as exc:
        raise write_error(exc, target) from None
    existing = target.is_dir() and any(target.iterdir())
    marker = _marker(target) if existing else {}
    own = marker.get("kind")
    if existing and own != kind and not force:
        what = f"holds an fgia {own!r} output, not {kind!r}" if own else "is not an fgia output"
        raise OutputExistsError(f"{target} is not empty ({_describe(target)}) and {what}; choose another folder, or "
                                "pass --force to replace it (files fgia did not write are kept)")
    finished = marker.get("complete", True)
    if existing and own == kind and finished and not (replace_own or force):
        raise OutputExistsError(f"{target} already holds an fgia {kind!r} output; pass --force to replace it")
    in_place = target.is_dir() and (not existing or (own == kind and not finished))  # empty, or killed in place
    staging = target if in_place else target.with_name(f"{_STAGING}{target.name}-{os.getpid()}")
    try:
        resumable = _stale_staging(target, kind, resume and not in_place)
        if in_place and existing and not resume:
            clear_folder(target)
        elif resumable is not None and not in_place:
            resumable.rename(staging)
        if (in_place and existing and resume) or (resumable is not None and not in_place):
            log.warning("resuming the interrupted %s of %s", kind, target)
        staging.mkdir(parents=True, exist_ok=True)
        _write_marker(staging, kind, None, manifests)
    except OSError as exc:
        if not in_place:
            shutil.rmtree(staging, ignore_errors=True)
        raise write_error(exc, target) from None
    try:
        yield staging
        _finish(staging, target, kind, manifests)
    except BaseException as exc:
        if in_place:
            with contextlib.suppress(OSError):
                clear_folder(staging)  # it was empty before: everything in it is this output's
        else:
            shutil.rmtree(staging, ignore_errors=True)
        if isinstance(exc, OutputError):
            raise OutputError(exc.errno, str(exc).replace(str(staging), str(target))) from None
        if isinstance(exc, OSError) and str(staging) in str(exc.filename or staging):  # a write of this output
            raise write_error(exc, target) from None
        raise
