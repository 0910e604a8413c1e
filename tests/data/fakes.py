"""Helpers for the data tests: tiny images, text and MATLAB files written in the layouts datasets ship in."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import scipy.io
from PIL import Image


def write_image(path: Path, size: tuple[int, int] = (12, 10), color=(200, 30, 30), mode: str = "RGB", **save) -> Path:
    """A small solid-colour image file (parent folders created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new(mode, size, color).save(path, **save)
    return path


def write_lines(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def struct_array(records: list[dict]) -> np.ndarray:
    """A MATLAB struct array (as the Stanford Cars devkit stores `annotations`)."""
    arr = np.empty((1, len(records)), dtype=[(k, "O") for k in records[0]])
    for i, rec in enumerate(records):
        for k, v in rec.items():
            arr[0, i][k] = np.array([[v]]) if not isinstance(v, str) else np.array([v])
    return arr


def save_mat(path: Path, **variables) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    scipy.io.savemat(path, variables)
    return path
