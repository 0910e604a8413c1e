"""`fgia generate train|sample|interpolate`: end to end on the tiny synthetic benchmark, one-line errors."""

from __future__ import annotations

import sys

import pytest
from PIL import Image

from fgia.cli import main
from fgia.data import read_dataset

TINY = ["--steps", "2", "--image-size", "32", "--width", "4", "--batch-size", "8", "--device", "cpu"]


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["fgia", *args])
    with pytest.raises(SystemExit) as exc:
        main()
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exc.value.code or 0, out, err


@pytest.fixture(scope="module")
def generator_dir(tiny_synth, tmp_path_factory):
    out = tmp_path_factory.mktemp("gen") / "gen"
    mp = pytest.MonkeyPatch()
    mp.setattr(sys, "argv", ["fgia", "generate", "train", str(tiny_synth), "--out", str(out), *TINY])
    with pytest.raises(SystemExit) as exc:
        main()
    mp.undo()
    assert exc.value.code == 0
    return out


def test_train_writes_a_generator_folder(generator_dir):
    names = sorted(p.name for p in generator_dir.iterdir())
    assert names == ["generator.safetensors", "generator.yaml", "generator_state.pt", "history.json"]
    text = (generator_dir / "generator.yaml").read_text()
    assert "kind: cvaegan" in text and "image_size: 32" in text and "steps: 2" in text


def test_sample_and_interpolate_write_grids(generator_dir, tiny_synth, tmp_path, monkeypatch, capsys):
    classes = read_dataset(tiny_synth).classes
    code, _, _ = run_cli(monkeypatch, capsys, "generate", "sample", str(generator_dir), "--class", classes[0],
                         "--class", classes[3], "--n", "5", "--out", str(tmp_path / "grid.png"))
    assert code == 0
    with Image.open(tmp_path / "grid.png") as grid:
        assert grid.size == (5 * 34 + 2, 2 * 34 + 2)
    code, _, _ = run_cli(monkeypatch, capsys, "generate", "interpolate", str(generator_dir), "--from", classes[0],
                         "--to", classes[1], "--steps", "4", "--rows", "3", "--out", str(tmp_path / "interp.png"))
    assert code == 0
    with Image.open(tmp_path / "interp.png") as grid:
        assert grid.size == (4 * 34 + 2, 3 * 34 + 2)


def test_unknown_class_is_one_line(generator_dir, tmp_path, monkeypatch, capsys):
    code, _, err = run_cli(monkeypatch, capsys, "generate", "sample", str(generator_dir), "--class", "Dodo",
                           "--out", str(tmp_path / "grid.png"))
    assert code == 1 and "unknown class 'Dodo'" in err and "Traceback" not in err
    assert not (tmp_path / "grid.png").exists()


def test_train_refuses_a_foreign_non_empty_folder(tiny_synth, tmp_path, monkeypatch, capsys):
    (tmp_path / "notes.txt").write_text("keep me")
    code, _, err = run_cli(monkeypatch, capsys, "generate", "train", str(tiny_synth), "--out", str(tmp_path), *TINY)
    assert code == 1 and "not empty and holds no generator" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["notes.txt"]
    code, _, _ = run_cli(monkeypatch, capsys, "generate", "train", str(tiny_synth), "--out", str(tmp_path), *TINY,
                         "--force")
    assert code == 0 and (tmp_path / "notes.txt").read_text() == "keep me"
