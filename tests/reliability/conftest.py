"""Shared pieces of the reliability tests: a tiny trained system, copies of the tiny benchmark, the CLI in-process."""

from __future__ import annotations

import csv
import shutil
import sys
from pathlib import Path

import pytest
import yaml

from fgia.retrieval.system import SystemConfig, train_system

TINY_SYSTEM = {"backbone": "test_efficientnet", "image_size": 48, "epochs": 1, "batch_size": 8, "head_dim": 16,
               "coarse_dim": 4, "part_dim": 8, "top_k": 12, "classifier_dims": [2, 4, 0], "device": "cpu"}


@pytest.fixture(scope="session")
def tiny_system(tiny_synth, tmp_path_factory) -> Path:
    """A system trained on the whole tiny benchmark (read-only: tests that change a system copy it)."""
    from fgia.config import from_dict
    from fgia.data import read_dataset

    out = tmp_path_factory.mktemp("reliability") / "system"
    return train_system(read_dataset(tiny_synth), from_dict(SystemConfig, TINY_SYSTEM), out, progress=False)


@pytest.fixture
def copy_data(tiny_synth, tmp_path):
    """`copy_data(dest, rows=None)`: a copy of the tiny benchmark (or of its first `rows` images) at `dest`."""

    def copy(dest: Path, rows: int | None = None) -> Path:
        src = tiny_synth.parent
        with open(tiny_synth, newline="", encoding="utf-8") as f:
            records = list(csv.reader(f))
        header, body = records[0], records[1:][:rows]
        for rec in body:
            (dest / rec[0]).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(src / rec[0], dest / rec[0])
        with open(dest / "manifest.csv", "w", newline="", encoding="utf-8") as f:
            csv.writer(f).writerows([header, *body])
        return dest / "manifest.csv"

    return copy


@pytest.fixture
def tiny_config(tmp_path) -> Path:
    """A run config whose `system:` section is the tiny system (for `fgia train --config`)."""
    path = tmp_path / "tiny.yaml"
    path.write_text(yaml.safe_dump({"system": TINY_SYSTEM}))
    return path


@pytest.fixture
def cli(monkeypatch, capsys):
    """`cli(*args)`: run the fgia command in this process; returns (exit code, stdout, stderr)."""
    from fgia.cli import main

    def run(*args: str) -> tuple[int, str, str]:
        monkeypatch.setattr(sys, "argv", ["fgia", *map(str, args)])
        with pytest.raises(SystemExit) as exc:
            main()
        out, err = capsys.readouterr()
        return exc.value.code or 0, out, err

    return run
