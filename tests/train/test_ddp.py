"""The same training script under torchrun: 2 gloo processes on CPU split the data and stay in sync."""

from __future__ import annotations

import math
import os
import subprocess
import sys

import torch

from fgia.config import save_yaml
from fgia.models import load_model
from fgia.train.trainer import STATE_FILE


def test_torchrun_two_cpu_processes(tiny_synth, tiny_ds, tmp_path, tiny_config):
    cfg = tiny_config(epochs=1, batch_size=4, warmup_epochs=0.0)
    save_yaml(cfg, tmp_path / "train.yaml")
    out = tmp_path / "ckpt"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "fgia.train", str(tmp_path / "train.yaml"), "--data", str(tiny_synth), "--out", str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=240)
    # fit itself raises on rank divergence (parameter checksums compared across ranks at the end).
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]

    state = torch.load(out / STATE_FILE, weights_only=True)
    assert state["world_size"] == 2
    n_train = len(tiny_ds.split("train"))
    # Each rank saw half the images: the optimiser stepped once per local batch.
    assert state["scheduler"]["last_epoch"] == math.ceil(n_train / 2) // cfg.batch_size
    _, info = load_model(out)
    assert info["class_names"] == tiny_ds.classes
    assert proc.stdout.count("epoch 1 ") == 1  # only rank 0 prints
