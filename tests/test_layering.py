"""The stages import only downwards: the import-linter contract in pyproject.toml holds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_stages_import_only_downwards():
    pytest.importorskip("importlinter")
    # In a child process: import-linter reconfigures logging (disabling the loggers that exist) when it runs.
    result = subprocess.run([sys.executable, "-c", "from importlinter.cli import lint_imports; "
                             "raise SystemExit(lint_imports(config_filename='pyproject.toml'))"],
                            cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stdout + result.stderr
