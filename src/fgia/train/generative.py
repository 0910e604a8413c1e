"""Training class-conditional generators (`fgia.models.generative`): CVAE-GAN and its plain baselines.

The images are decoded once into a uint8 tensor (square centre crop, resized to the generator's side), so a
step costs only the networks. Batches are class-balanced, flipped at random, drawn from the global torch RNG;
a checkpoint holds every network, optimiser, the RNG and the running class means, so a resumed run repeats
the uninterrupted one step for step.

CVAE-GAN losses (Bao et al. 2017): the classifier C learns the classes of real images (cross-entropy); the
discriminator D tells real images from reconstructions and prior samples; the encoder and generator minimise
KL(q(z|x) || N(0, I)), the pixel and the D/C-feature distance between x and its reconstruction (pairwise
feature matching), the distance between the mean D features of real and prior samples, and per class the
distance between C's mean features of prior samples and the running mean over real images of that class
(mean feature matching), plus a small non-saturating adversarial term and optionally C's cross-entropy on the
prior samples (`class_ce_weight`, as in AC-GAN). The encoder also regresses the class
code of the image's class, so support images of unseen classes can condition the generator.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import safetensors.torch
import torch
import torch.nn as nn
import torch.nn.functional as F
import yaml
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from torch import Tensor
from torchvision.transforms import v2

from fgia.config import from_dict, save_yaml, to_dict
from fgia.data import ImageLoadError, load_image
from fgia.data.samples import FineGrainedDataset
from fgia.models.generative import KINDS, GenerativeModel, GeneratorArch
from fgia.runtime import atomic_path, atomic_write_text, pick_device, seed_everything

CONFIG_FILE = "generator.yaml"
WEIGHTS_FILE = "generator.safetensors"
STATE_FILE = "generator_state.pt"
HISTORY_FILE = "history.json"
OUTPUT_FORMAT = "fgia-generator/1"
# Options that may change between an interrupted run and its resumption without changing the result.
_RESUME_FREE = {"resume", "device", "save_every", "log_every", "workers"}


@dataclass
class GenerativeConfig:
    """How to train one generator.

    `kind`: "cvaegan" (encoder, generator, discriminator, classifier), "cgan" (generator + projection
    discriminator) or "cvae" (encoder + generator). The *_weight fields weight the generator/encoder losses
    (see the module docstring); the CVAE-GAN uses all of them, the baselines the ones their networks allow.
    `max_images_per_class` caps each class's images (a seeded choice) to bound memory and decoding time.
    `classifier_shift` > 0 trains C on images shifted by up to that fraction of their side.
    The defaults are the CPU benchmark's (configs/generation.yaml): 64 px, width 16, 3000 steps of 32 images.
    """

    kind: str = "cvaegan"
    arch: GeneratorArch = field(default_factory=GeneratorArch)
    steps: int = 3000
    batch_size: int = 32
    lr: float = 4e-4
    beta1: float = 0.5
    kl_weight: float = 0.003
    recon_weight: float = 1.0
    pair_feature_weight: float = 0.1
    mean_feature_weight: float = 0.1
    class_feature_weight: float = 0.1
    class_ce_weight: float = 0.05
    classifier_shift: float = 0.0
    adversarial_weight: float = 0.05
    code_weight: float = 1.0
    class_mean_momentum: float = 0.9
    hflip: bool = True
    max_images_per_class: int | None = None
    seed: int = 0
    workers: int = 2
    device: str = "auto"
    log_every: int = 50
    save_every: int = 500
    resume: bool = False

    def __post_init__(self) -> None:
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {', '.join(KINDS)}, got {self.kind!r}")
        for name in ("steps", "batch_size", "log_every", "save_every"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.batch_size < 2:
            raise ValueError(f"batch_size must be >= 2 (batch statistics), got {self.batch_size}")
        if self.lr <= 0 or not 0 <= self.beta1 < 1 or not 0 <= self.class_mean_momentum < 1:
            raise ValueError("need lr > 0, 0 <= beta1 < 1 and 0 <= class_mean_momentum < 1")
        if self.max_images_per_class is not None and self.max_images_per_class < 1:
            raise ValueError(f"max_images_per_class must be >= 1, got {self.max_images_per_class}")


@dataclass
class ImageTensor:
    """Decoded images: uint8 (N, 3, S, S), labels (N,), positions in the source samples, unreadable count."""

    images: Tensor
    labels: Tensor
    index: np.ndarray
    skipped: int = 0

    def __len__(self) -> int:
        return len(self.labels)

    def as_float(self, rows: Tensor | slice = slice(None)) -> Tensor:
        """Rows as float images in [-1, 1] (the generator's range)."""
        return self.images[rows].float().div(127.5).sub(1.0)


def load_images(dataset: FineGrainedDataset, size: int, max_images_per_class: int | None = None, seed: int = 0,
                workers: int = 2) -> ImageTensor:
    """Decode the labelled images of `dataset` as a centre-cropped size x size uint8 tensor.

    Unreadable images are skipped and counted; with `max_images_per_class` a seeded subset of each class is kept.
    """
    positions = np.array([i for i, s in enumerate(dataset.samples) if s.label >= 0], dtype=np.int64)
    if max_images_per_class is not None:
        rng = np.random.default_rng(seed)
        labels = np.array([dataset.samples[i].label for i in positions])
        positions = np.sort(np.concatenate([
            rng.permutation(positions[labels == c])[:max_images_per_class] for c in np.unique(labels)]))
    if len(positions) == 0:
        raise ValueError(f"{dataset.name}: no labelled images to train a class-conditional generator on")
    square = v2.Compose([v2.ToImage(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])

    def decode(i: int) -> Tensor | None:
        try:  # JPEG draft decoding: a few times the target pixels is plenty for a size x size crop
            return square(load_image(dataset.samples[i].path, max_pixels=16 * size * size))
        except ImageLoadError:
            return None

    with ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
        decoded = list(pool.map(decode, positions.tolist()))
    kept = [i for i, image in enumerate(decoded) if image is not None]
    if not kept:
        raise ValueError(f"{dataset.name}: none of its {len(positions)} images could be read")
    return ImageTensor(
        images=torch.stack([decoded[i] for i in kept]),
        labels=torch.tensor([dataset.samples[positions[i]].label for i in kept]),
        index=positions[kept],
        skipped=len(positions) - len(kept),
    )


def is_generator_dir(path: str | os.PathLike) -> bool:
    """True when `path` holds a generator written by `train_generator`."""
    info = Path(path) / CONFIG_FILE
    if not info.is_file():
        return False
    try:
        return (yaml.safe_load(info.read_text(encoding="utf-8")) or {}).get("format") == OUTPUT_FORMAT
    except yaml.YAMLError:
        return False


def check_output_dir(out_dir: str | os.PathLike, force: bool = False) -> Path:
    """`out_dir` if it is absent, empty or a generator output; otherwise refuse (unless `force`)."""
    out = Path(out_dir)
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out} exists and is not a folder")
    if out.is_dir() and any(out.iterdir()) and not is_generator_dir(out) and not force:
        raise FileExistsError(f"{out} is not empty and holds no generator ({CONFIG_FILE}); choose another "
                              "folder or pass --force")
    return out


def _kl(mu: Tensor, logvar: Tensor) -> Tensor:
    """KL(N(mu, exp(logvar)) || N(0, I)), summed over latent dimensions, averaged over the batch."""
    return (-0.5 * (1 + logvar - mu.pow(2) - logvar.exp())).sum(1).mean()


@contextlib.contextmanager
def _frozen(*modules: nn.Module):
    """No parameter gradients for `modules` inside (the generator step only needs gradients through them)."""
    params = [p for m in modules for p in m.parameters()]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def random_shift(images: Tensor, fraction: float) -> Tensor:
    """Each image moved by a random offset of up to `fraction` of its side (edges repeated)."""
    if fraction <= 0:
        return images
    theta = torch.zeros(len(images), 2, 3, device=images.device)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0
    theta[:, :, 2] = (torch.rand(len(images), 2) * 2 - 1).to(images.device) * 2 * fraction  # grid spans [-1, 1]
    grid = F.affine_grid(theta, list(images.shape), align_corners=False)
    return F.grid_sample(images, grid, mode="bilinear", padding_mode="border", align_corners=False)


def _bce_real(logits: Tensor) -> Tensor:
    return F.softplus(-logits).mean()


def _bce_fake(logits: Tensor) -> Tensor:
    return F.softplus(logits).mean()


class GeneratorTrainer:
    """One training run: the model, its optimisers, the image tensor, the step counter and the history."""

    def __init__(self, cfg: GenerativeConfig, data: ImageTensor, class_names: list[str],
                 out_dir: str | os.PathLike | None = None, progress: bool = True) -> None:
        if cfg.resume and out_dir is None:
            raise ValueError("resume needs an output folder")
        if len(data) < cfg.batch_size:
            raise ValueError(f"batch_size {cfg.batch_size} exceeds the {len(data)} training images")
        self.cfg, self.data, self.class_names = cfg, data, list(class_names)
        self.out_dir = Path(out_dir) if out_dir is not None else None
        self.device = pick_device(cfg.device)
        self.console = Console(quiet=not progress)
        self.progress = progress
        seed_everything(cfg.seed)
        self.model = GenerativeModel(cfg.kind, len(class_names), cfg.arch).to(self.device)
        adam = {"lr": cfg.lr, "betas": (cfg.beta1, 0.999)}
        m = self.model
        generator_params = [*m.generator.parameters(), *m.class_codes.parameters()]
        if m.encoder is not None:
            generator_params += list(m.encoder.parameters())
        self.optimizers = {"generator": torch.optim.Adam(generator_params, **adam)}
        if m.discriminator is not None:
            self.optimizers["discriminator"] = torch.optim.Adam(m.discriminator.parameters(), **adam)
        if m.classifier is not None:
            self.optimizers["classifier"] = torch.optim.Adam(m.classifier.parameters(), **adam)
        counts = torch.bincount(data.labels, minlength=len(class_names)).float()
        self.sample_weights = (1.0 / counts)[data.labels]  # class-balanced batches
        self.class_means: Tensor | None = None  # running mean C-features per class (CVAE-GAN)
        self.class_seen = torch.zeros(len(class_names), dtype=torch.bool, device=self.device)
        self.step = 0
        self.history: list[dict[str, float]] = []

    # ------------------------------------------------------------------------------------------ batches
    def batch(self) -> tuple[Tensor, Tensor]:
        """A class-balanced batch as float images in [-1, 1] (randomly flipped) and labels, on the device."""
        rows = torch.multinomial(self.sample_weights, self.cfg.batch_size, replacement=False)
        images = self.data.as_float(rows)
        if self.cfg.hflip:
            flip = torch.rand(len(rows)) < 0.5
            images = torch.where(flip[:, None, None, None], images.flip(3), images)
        return images.to(self.device), self.data.labels[rows].to(self.device)

    # ------------------------------------------------------------------------------------------ steps
    def _update(self, name: str, loss: Tensor) -> None:
        opt = self.optimizers[name]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    def _update_class_means(self, feats: Tensor, labels: Tensor) -> None:
        """Running per-class mean of C's features of real images (a class's first batch sets its mean)."""
        if self.class_means is None:
            self.class_means = torch.zeros(self.model.num_classes, feats.shape[1], device=self.device)
        sums = torch.zeros_like(self.class_means).index_add_(0, labels, feats)
        counts = torch.bincount(labels, minlength=self.model.num_classes)
        present = counts > 0
        batch_means = sums[present] / counts[present, None]
        momentum = torch.where(self.class_seen[present], self.cfg.class_mean_momentum, 0.0)[:, None]
        self.class_means[present] = momentum * self.class_means[present] + (1 - momentum) * batch_means
        self.class_seen |= present

    def _class_feature_loss(self, feats: Tensor, labels: Tensor) -> Tensor:
        """Mean over the batch's classes of |mean C-features of generated images - running real mean|^2."""
        counts = torch.bincount(labels, minlength=self.model.num_classes)
        present = counts > 0
        sums = torch.zeros(self.model.num_classes, feats.shape[1], device=feats.device).index_add(0, labels, feats)
        return F.mse_loss(sums[present] / counts[present, None], self.class_means[present])

    def _step_cvaegan(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        cfg, m = self.cfg, self.model
        logits, _ = m.classifier(random_shift(x, cfg.classifier_shift))
        loss_c = F.cross_entropy(logits, y)
        self._update("classifier", loss_c)
        with torch.no_grad():
            _, real_c = m.classifier(x)
        self._update_class_means(real_c, y)

        mu, logvar, code_hat = m.encoder(x)
        codes = m.class_codes(y)
        # One generator call for reconstructions and prior samples: BatchNorm sees (and keeps running statistics
        # of) both, so prior samples drawn in eval mode meet the statistics they were trained with.
        z = torch.cat([mu + torch.randn_like(mu) * (0.5 * logvar).exp(), torch.randn_like(mu)])
        recon, prior = m.generator(z, codes.repeat(2, 1)).chunk(2)
        d_real, real_d = m.discriminator(x)
        d_recon, _ = m.discriminator(recon.detach())
        d_prior, _ = m.discriminator(prior.detach())
        loss_d = _bce_real(d_real) + 0.5 * (_bce_fake(d_recon) + _bce_fake(d_prior))
        self._update("discriminator", loss_d)

        real_d = real_d.detach()
        with _frozen(m.discriminator, m.classifier):
            d_recon, recon_d = m.discriminator(recon)
            d_prior, prior_d = m.discriminator(prior)
            _, recon_c = m.classifier(recon)
            prior_logits, prior_c = m.classifier(prior)
        parts = {
            "kl": _kl(mu, logvar),
            "recon": F.mse_loss(recon, x),
            "pair_feature": F.mse_loss(recon_d, real_d) + F.mse_loss(recon_c, real_c),
            "mean_feature": F.mse_loss(prior_d.mean(0), real_d.mean(0)),
            "class_feature": self._class_feature_loss(prior_c, y),
            "class_ce": F.cross_entropy(prior_logits, y),
            "adversarial": 0.5 * (_bce_real(d_recon) + _bce_real(d_prior)),
            "code": F.mse_loss(code_hat, codes.detach()),
        }
        loss_g = sum(getattr(cfg, f"{name}_weight") * value for name, value in parts.items())
        self._update("generator", loss_g)
        return {"classifier": loss_c, "discriminator": loss_d, "generator": loss_g, **parts}

    def _step_cgan(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        m = self.model
        fake = m.generate(y)
        d_real, _ = m.discriminator(x, y)
        d_fake, _ = m.discriminator(fake.detach(), y)
        loss_d = _bce_real(d_real) + _bce_fake(d_fake)
        self._update("discriminator", loss_d)
        with _frozen(m.discriminator):
            loss_g = _bce_real(m.discriminator(fake, y)[0])
        self._update("generator", loss_g)
        return {"discriminator": loss_d, "generator": loss_g}

    def _step_cvae(self, x: Tensor, y: Tensor) -> dict[str, Tensor]:
        cfg, m = self.cfg, self.model
        mu, logvar, code_hat = m.encoder(x)
        codes = m.class_codes(y)
        recon = m.generator(mu + torch.randn_like(mu) * (0.5 * logvar).exp(), codes)
        parts = {"kl": _kl(mu, logvar), "recon": F.mse_loss(recon, x), "code": F.mse_loss(code_hat, codes.detach())}
        loss_g = sum(getattr(cfg, f"{name}_weight") * value for name, value in parts.items())
        self._update("generator", loss_g)
        return {"generator": loss_g, **parts}

    def train_step(self) -> dict[str, float]:
        """One optimisation step of every network of the model's kind; returns the losses."""
        self.model.train()
        x, y = self.batch()
        losses = getattr(self, f"_step_{self.cfg.kind}")(x, y)
        values = {k: float(v.detach()) for k, v in losses.items()}
        bad = [k for k, v in values.items() if not np.isfinite(v)]
        if bad:
            raise FloatingPointError(f"{', '.join(bad)} loss became non-finite at step {self.step + 1}; lower lr")
        self.step += 1
        return values

    # ------------------------------------------------------------------------------------------ checkpoints
    def state(self) -> dict[str, Any]:
        return {
            "step": self.step, "config": to_dict(self.cfg), "model": self.model.state_dict(),
            "optimizers": {k: o.state_dict() for k, o in self.optimizers.items()},
            "class_means": self.class_means, "class_seen": self.class_seen, "history": self.history,
            "torch_rng": torch.get_rng_state(), "class_names": self.class_names,
        }

    def save(self) -> None:
        """Write weights, config (with class names), history and the resumable state; every file atomically."""
        if self.out_dir is None:
            return
        save_generator(self.model, self.out_dir, self.cfg, self.class_names)
        atomic_write_text(self.out_dir / HISTORY_FILE, json.dumps(self.history, indent=1))
        with atomic_path(self.out_dir / STATE_FILE) as tmp:  # last: a crash mid-save resumes from the previous
            torch.save(self.state(), tmp)

    def restore(self) -> bool:
        """Continue from the output folder's state if there is one; False when starting from scratch."""
        path = self.out_dir / STATE_FILE
        if not path.is_file():
            return False
        state = torch.load(path, map_location="cpu", weights_only=True)
        saved, now = state["config"], to_dict(self.cfg)
        changed = sorted(k for k in now.keys() - _RESUME_FREE if saved.get(k) != now[k])
        if changed:
            raise ValueError(f"cannot resume from {path}: options changed since it was written: {', '.join(changed)}")
        if state["class_names"] != self.class_names:
            raise ValueError(f"cannot resume from {path}: it was trained on different classes")
        self.model.load_state_dict(state["model"])
        for name, opt in self.optimizers.items():
            opt.load_state_dict(state["optimizers"][name])
        self.class_means = None if state["class_means"] is None else state["class_means"].to(self.device)
        self.class_seen = state["class_seen"].to(self.device)
        self.history, self.step = state["history"], state["step"]
        torch.set_rng_state(state["torch_rng"])
        return True

    # ------------------------------------------------------------------------------------------ loop
    def run(self, steps: int | None = None) -> GenerativeModel:
        """Train up to `steps` (default: the configured total), logging and saving on the way."""
        cfg = self.cfg
        if cfg.resume and self.restore():
            self.console.print(f"resumed from {self.out_dir / STATE_FILE} at step {self.step}")
        stop = min(cfg.steps, steps if steps is not None else cfg.steps)
        columns = (TextColumn(f"{cfg.kind}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[losses]}"), TimeElapsedColumn(), TimeRemainingColumn())
        window: list[dict[str, float]] = []
        started = time.perf_counter()
        with Progress(*columns, console=self.console, disable=not self.progress, transient=True) as bar:
            task = bar.add_task("train", total=cfg.steps, completed=self.step, losses="")
            while self.step < stop:
                window.append(self.train_step())
                if self.step % cfg.log_every == 0 or self.step == stop:
                    record = {"step": self.step, **{k: float(np.mean([w[k] for w in window])) for k in window[0]},
                              "seconds": time.perf_counter() - started}
                    self.history.append(record)
                    window = []
                    shown = ("classifier", "discriminator", "generator", "recon")
                    bar.update(task, losses=" ".join(f"{k[:4]} {record[k]:.3f}" for k in shown if k in record))
                if self.step % cfg.save_every == 0 or self.step == stop:
                    self.save()
                bar.update(task, completed=self.step)
        self.model.eval()
        return self.model


def save_generator(model: GenerativeModel, out_dir: str | os.PathLike, cfg: GenerativeConfig,
                   class_names: list[str]) -> Path:
    """Write the weights (safetensors) and `generator.yaml` (format, resolved config, class names)."""
    out = Path(out_dir)
    with atomic_path(out / WEIGHTS_FILE) as tmp:
        safetensors.torch.save_model(model, str(tmp))
    save_yaml({"format": OUTPUT_FORMAT, "config": to_dict(cfg), "class_names": list(class_names)}, out / CONFIG_FILE)
    return out


def load_generator(directory: str | os.PathLike, device: str = "cpu") -> tuple[GenerativeModel, list[str],
                                                                               GenerativeConfig]:
    """(model in eval mode, class names, training config) of a generator folder."""
    directory = Path(directory)
    if not is_generator_dir(directory):
        raise FileNotFoundError(f"{directory} is not a generator folder ({CONFIG_FILE} with format "
                                f"{OUTPUT_FORMAT} is missing)")
    info = yaml.safe_load((directory / CONFIG_FILE).read_text(encoding="utf-8"))
    cfg = from_dict(GenerativeConfig, info["config"])
    names = list(info["class_names"])
    model = GenerativeModel(cfg.kind, len(names), cfg.arch)
    weights = directory / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(f"{directory}: {WEIGHTS_FILE} is missing")
    try:
        safetensors.torch.load_model(model, str(weights), strict=True, device="cpu")
    except RuntimeError as err:
        raise ValueError(f"{weights} does not match the architecture in {CONFIG_FILE}: {err}") from err
    return model.to(pick_device(device)).eval(), names, cfg


def class_index(class_names: list[str], name: str) -> int:
    """Position of class `name`; an unknown name is an error listing close matches."""
    if name in class_names:
        return class_names.index(name)
    close = [c for c in class_names if name.lower() in c.lower()][:5]
    hint = f"; did you mean {', '.join(repr(c) for c in close)}" if close else \
        f"; it knows {len(class_names)} classes, e.g. {', '.join(repr(c) for c in class_names[:3])}"
    raise KeyError(f"unknown class {name!r}{hint}")


def train_generator(dataset: FineGrainedDataset, cfg: GenerativeConfig, out_dir: str | os.PathLike | None = None,
                    *, force: bool = False, progress: bool = True,
                    data: ImageTensor | None = None) -> tuple[GenerativeModel, GeneratorTrainer]:
    """Train a generator of `cfg.kind` on the labelled images of `dataset` (decoded here unless `data` is given).

    `out_dir` receives `generator.yaml` (the resolved config), weights, history and the resumable state; a
    non-empty folder that is not a generator output is refused unless `force`.
    """
    if out_dir is not None:
        check_output_dir(out_dir, force)
    if data is None:
        data = load_images(dataset, cfg.arch.image_size, cfg.max_images_per_class, cfg.seed, cfg.workers)
    trainer = GeneratorTrainer(cfg, data, dataset.classes, out_dir, progress)
    if data.skipped:
        trainer.console.print(f"[yellow]{dataset.name}: skipped {data.skipped} unreadable image(s)")
    return trainer.run(), trainer

