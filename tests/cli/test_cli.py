"""The `fgia` command: sub-commands run end to end in-process, bad input gives one line and a non-zero exit."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from fgia.cli import main
from fgia.config import save_yaml
from fgia.data.synthetic import SynthConfig
from fgia.eval.methods import MethodsConfig
from fgia.models import create_model, save_model


def run_cli(monkeypatch, capsys, *args: str) -> tuple[int, str, str]:
    monkeypatch.setattr(sys, "argv", ["fgia", *args])
    with pytest.raises(SystemExit) as exc:
        main()
        raise SystemExit(0)
    out, err = capsys.readouterr()
    return exc.value.code or 0, out, err


def test_datasets_list_names_every_reader(monkeypatch, capsys):
    from fgia.data import list_formats

    code, out, _ = run_cli(monkeypatch, capsys, "datasets", "list")
    assert code == 0
    for name, _ in list_formats():
        assert name in out


def test_synth_then_inspect_reads_it(tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "bench"
    code, _, _ = run_cli(monkeypatch, capsys, "synth", str(out_dir), "--categories", "2", "--species", "3",
                         "--images", "4", "--size", "48", "--workers", "1")
    assert code == 0
    code, out, _ = run_cli(monkeypatch, capsys, "datasets", "inspect", str(out_dir), "--json")
    assert code == 0
    report = json.loads(out)
    assert report["n_images"] == 2 * 3 * 4
    assert report["n_classes"] == 6
    assert set(report["categories"]) == {"birds", "cars"}


def test_validate_exits_nonzero_on_a_broken_image(tmp_path, monkeypatch, capsys):
    out_dir = tmp_path / "bench"
    run_cli(monkeypatch, capsys, "synth", str(out_dir), "--categories", "1", "--species", "2", "--images", "2",
            "--size", "32", "--workers", "1")
    victim = next((out_dir / "images").rglob("*.jpg"))
    victim.write_bytes(victim.read_bytes()[:40])  # truncated JPEG
    code, out, _ = run_cli(monkeypatch, capsys, "datasets", "validate", str(out_dir))
    assert code == 1
    assert "Truncated" in out  # the broken file is listed with its reason


@pytest.mark.parametrize(
    "args",
    [
        ["datasets", "inspect", "/no/such/folder"],
        ["search", "/no/such/index", "/no/such/image.jpg"],
        ["index", "/no/such/system", "/no/such/data"],
    ],
)
def test_bad_input_is_one_line_without_traceback(args, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code != 0
    assert "Traceback" not in out + err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("fgia: error:")


def test_console_script_is_installed():
    result = subprocess.run([sys.executable, "-m", "fgia.cli", "--help"], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0
    for command in ("datasets", "synth", "train", "index", "search", "eval", "serve", "bench", "demo"):
        assert command in result.stdout
    result = subprocess.run([sys.executable, "-m", "fgia.cli", "bench", "--help"], capture_output=True, text=True,
                            timeout=120)
    assert all(name in result.stdout for name in ("methods", "real", "hashing", "fewshot"))


def test_train_index_search_round_trip(tiny_synth, tmp_path, monkeypatch, capsys):
    """The user's path through the CLI: train a system on the labelled set, index it, search with a file."""
    import yaml

    from fgia.data import read_dataset

    tiny = {"backbone": "test_efficientnet", "image_size": 48, "epochs": 1, "batch_size": 8, "head_dim": 16,
            "coarse_dim": 4, "part_dim": 8, "top_k": 12, "classifier_dims": [2, 4, 0], "device": "cpu"}
    config = tmp_path / "run.yaml"
    config.write_text(yaml.safe_dump({"system": tiny}))
    code, out, err = run_cli(monkeypatch, capsys, "train", str(tiny_synth), "--out", str(tmp_path / "system"),
                             "--config", str(config), "--codes", "16,32")
    assert code == 0, err
    code, out, err = run_cli(monkeypatch, capsys, "index", str(tmp_path / "system"), str(tiny_synth),
                             "--out", str(tmp_path / "index"), "--codes", "32")
    assert code == 0, err
    n_images = len(read_dataset(tiny_synth))
    assert f"{n_images} in total" in out

    query = read_dataset(tiny_synth).samples[5].path
    code, out, err = run_cli(monkeypatch, capsys, "search", str(tmp_path / "index"), str(query), "--top-k", "3",
                             "--json", str(tmp_path / "hits.json"), "--device", "cpu")
    assert code == 0, err
    hits = json.loads((tmp_path / "hits.json").read_text())
    assert hits[0]["query"] == str(query)
    assert hits[0]["paths"][0] == str(query)  # an indexed image finds itself first
    assert hits[0]["distances"][0] == pytest.approx(0.0, abs=1e-4)
    # the 32-bit codes' Hamming search picks the candidates that the fine stage re-ranks
    code, out, err = run_cli(monkeypatch, capsys, "search", str(tmp_path / "index"), str(query), "--top-k", "3",
                             "--pipeline", "c2f-hash", "--json", str(tmp_path / "hash.json"), "--device", "cpu")
    assert code == 0, err
    assert json.loads((tmp_path / "hash.json").read_text())[0]["paths"][0] == str(query)

    code, _, err = run_cli(monkeypatch, capsys, "index", str(tmp_path / "system"), str(tiny_synth),
                           "--out", str(tmp_path / "index"), "--append")
    assert code == 0, err


def test_explain_image_and_histogram(tmp_path, monkeypatch, capsys, tiny_synth):
    save_model(create_model("cnnets", num_classes=2, backbone="test_efficientnet"), tmp_path / "m", ["wren", "tit"])
    Image.fromarray(np.full((40, 50, 3), 120, np.uint8)).save(tmp_path / "bird.jpg")
    code, out, _ = run_cli(monkeypatch, capsys, "explain", str(tmp_path / "m"), str(tmp_path / "bird.jpg"), "--out",
                           str(tmp_path / "x.png"), "--image-size", "64")
    assert code == 0 and "x.png" in out and ("wren" in out or "tit" in out)
    assert Image.open(tmp_path / "x.png").format == "PNG"
    code, out, _ = run_cli(monkeypatch, capsys, "explain", str(tmp_path / "m"), "--histogram",
                           str(tiny_synth.parent), "--out", str(tmp_path / "h.png"), "--image-size", "64")
    assert code == 0 and "conv" in out and "norm" in out and (tmp_path / "h.png").is_file()


def test_explain_and_bench_methods_refuse_bad_requests(tmp_path, monkeypatch, capsys):
    for args in (["explain", str(tmp_path)], ["explain", str(tmp_path), str(tmp_path / "x.jpg")],
                 ["bench", "methods", "--shared", str(tmp_path / "none")]):
        code, out, err = run_cli(monkeypatch, capsys, *args)
        assert code != 0 and "Traceback" not in out + err


def test_bench_methods_synthetic_keeps_the_single_table(tmp_path, monkeypatch, capsys):
    cfg = MethodsConfig(image_size=32, epochs=1, batch_size=8, device="cpu", whiten=False,
                        synth=SynthConfig(categories=1, species_per_category=4, images_per_species=6, image_size=32))
    save_yaml(cfg, tmp_path / "m.yaml")
    code, out, _ = run_cli(monkeypatch, capsys, "bench", "methods", "--synthetic", "--methods", "gap-offtheshelf",
                           "--config", str(tmp_path / "m.yaml"), "--out", str(tmp_path / "t.md"))
    assert code == 0 and "| gap-offtheshelf |" in out
    assert json.loads((tmp_path / "t.json").read_text())["rows"][0]["method"] == "gap-offtheshelf"


def test_train_without_a_config_uses_the_recipe_measured_on_real_photos(tmp_path):
    from fgia.cli import _system_config

    default = _system_config(None)
    assert (default.backbone, default.weights, default.image_size) == ("tf_efficientnet_lite0", "efficientnet-lite0", 160)
    assert _system_config(None, weights="efficientnet-lite2").backbone == "tf_efficientnet_lite2"
    assert _system_config(None, backbone="resnet50", weights="hub").backbone == "resnet50"
    own = tmp_path / "own.yaml"
    own.write_text("backbone: resnet18\nweights: efficientnet-lite1\n")
    assert _system_config(own).backbone == "resnet18"  # a backbone the user chose stays
    assert _system_config(own).image_size == 64  # a user's YAML starts from SystemConfig's defaults
