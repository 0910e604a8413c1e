"""The stages import only downwards: the import-linter contract in pyproject.toml holds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_stages_import_only_downwards(monkeypatch):
    cli = pytest.importorskip("importlinter.cli")
    monkeypatch.chdir(ROOT)
    assert cli.lint_imports(config_filename=os.fspath(ROOT / "pyproject.toml")) == 0, "run `lint-imports` to see the imports"
