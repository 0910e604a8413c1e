"""`python -m fgia.train CONFIG.yaml --data PATH`: the training script, also under `torchrun --nproc_per_node N`."""

from __future__ import annotations

from pathlib import Path

import torch.distributed as dist
import typer

from fgia.config import load_yaml
from fgia.data import read_dataset
from fgia.data.samples import FineGrainedDataset
from fgia.train.categories import fit_per_category
from fgia.train.config import TrainConfig
from fgia.train.trainer import fit

app = typer.Typer(add_completion=False)


def _split(ds: FineGrainedDataset, split: str) -> FineGrainedDataset:
    part = ds.split(split)
    if len(part) == 0:
        found = sorted({str(s.split) for s in ds.samples})
        raise typer.BadParameter(f"no {split!r} samples in {ds.name!r}; splits present: {', '.join(found)}")
    return part


@app.command()
def main(
    config: Path = typer.Argument(..., exists=True, dir_okay=False, help="TrainConfig YAML"),
    data: Path = typer.Option(..., "--data", exists=True, help="dataset path (any fgia reader, e.g. a manifest)"),
    train_split: str = typer.Option("train", help="split to train on"),
    val_split: str | None = typer.Option(None, help="split to evaluate on after epochs"),
    out: Path | None = typer.Option(None, help="checkpoint folder (overrides out_dir in the config)"),
    resume: bool = typer.Option(False, "--resume", help="continue from out/trainer_state.pt"),
    per_category: int = typer.Option(0, "--per-category", metavar="EPOCHS",
                                     help="also fine-tune one model per meta-category from the unified one"),
    progress: bool = typer.Option(True, help="show a progress bar"),
) -> None:
    """Train the model described by CONFIG on DATA."""
    cfg = load_yaml(TrainConfig, config, out_dir=out, resume=resume or None)
    ds = read_dataset(data)
    train = _split(ds, train_split)
    val = _split(ds, val_split) if val_split else None
    try:
        if per_category:
            if cfg.out_dir is None:
                raise typer.BadParameter("--per-category needs --out (or out_dir in the config)")
            fit_per_category(cfg, train, cfg.out_dir, per_category, val=val, progress=progress)
        else:
            fit(cfg, train, val, progress=progress)
    finally:
        if dist.is_initialized():
            dist.destroy_process_group()


if __name__ == "__main__":
    app()
