"""torch.distributed plumbing for `fit` under `torchrun`: process group from the environment, samplers."""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DistributedSampler, Sampler

from fgia.runtime import pick_device


@dataclass(frozen=True)
class DistContext:
    """Where this process stands: its rank among `world_size` processes and its device."""

    rank: int
    world_size: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world_size > 1


def init_distributed(device: str = "auto") -> DistContext:
    """Join the process group `torchrun` describes (WORLD_SIZE > 1), else a single-process context.

    NCCL with one GPU per local rank when CUDA is used, gloo on CPU. An existing process group is reused.
    """
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size <= 1:
        return DistContext(rank=0, world_size=1, device=pick_device(device))
    use_cuda = device != "cpu" and torch.cuda.is_available()
    if use_cuda:
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        torch.cuda.set_device(local_rank)
        target = torch.device("cuda", local_rank)
    else:
        target = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return DistContext(rank=dist.get_rank(), world_size=dist.get_world_size(), device=target)


class BalancedSampler(Sampler[int]):
    """Class-balanced sampling with replacement (each class equally likely), split across ranks.

    Like `WeightedRandomSampler` with weights 1/count(class), but the draw depends only on (seed, epoch), so
    every rank agrees on it and takes its own slice, and a resumed run draws the same epochs again.
    """

    def __init__(self, labels: Sequence[int], rank: int = 0, world_size: int = 1, seed: int = 0) -> None:
        counts = torch.bincount(torch.as_tensor(labels))
        self.weights = 1.0 / counts[torch.as_tensor(labels)].double()
        self.per_rank = math.ceil(len(labels) / world_size)
        self.rank, self.world_size, self.seed, self.epoch = rank, world_size, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.per_rank

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed + self.epoch)
        draw = torch.multinomial(self.weights, self.per_rank * self.world_size, True, generator=generator)
        return iter(draw[self.rank :: self.world_size].tolist())


def make_sampler(labels: Sequence[int], ctx: DistContext, *, balanced: bool, seed: int, batch_size: int,
                 pk_images: int = 0) -> Sampler[int]:
    """The training sampler: shuffled (DistributedSampler, also for one process), class-balanced, or P x K
    batches (P = batch_size / pk_images classes, pk_images images each) when `pk_images` > 0.

    All reshuffle from (seed, epoch) via `set_epoch`, which makes resumed runs repeat uninterrupted ones.
    """
    if pk_images:
        return PKSampler(labels, batch_size // pk_images, pk_images, ctx.rank, ctx.world_size, seed)
    if balanced:
        return BalancedSampler(labels, ctx.rank, ctx.world_size, seed)
    return DistributedSampler(labels, num_replicas=ctx.world_size, rank=ctx.rank, shuffle=True, seed=seed)


class PKSampler(Sampler[int]):
    """Class-balanced P x K batches: P distinct classes, K images each (with replacement only when a class
    has fewer than K), in consecutive runs of P*K indices; use it with batch_size = P*K and drop_last.

    Unlike pytorch-metric-learning's MPerClassSampler (which draws from the global NumPy RNG), the draw
    depends only on (seed, epoch) via `set_epoch`, as the trainer's samplers do; under DDP each rank takes
    every world_size-th batch.
    """

    def __init__(self, labels: Sequence[int], p: int, k: int, rank: int = 0, world_size: int = 1, seed: int = 0,
                 batches: int | None = None):
        labels = np.asarray(labels)
        if p < 2 or k < 1:
            raise ValueError(f"P x K sampling needs p >= 2 classes and k >= 1 images each, got p={p}, k={k}")
        if np.any(labels < 0):
            raise ValueError("P x K sampling needs labelled images only (found label -1)")
        self.by_class = [np.flatnonzero(labels == c) for c in np.unique(labels)]
        if len(self.by_class) < p:
            raise ValueError(f"P x K sampling with p={p} needs at least {p} classes, "
                             f"the data have {len(self.by_class)}")
        self.p, self.k, self.rank, self.world_size, self.seed, self.epoch = p, k, rank, world_size, seed, 0
        total = batches or max(1, len(labels) // (p * k))
        self.batches = math.ceil(total / world_size)

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.batches * self.p * self.k

    def __iter__(self) -> Iterator[int]:
        rng = np.random.default_rng([self.seed, self.epoch])
        out: list[int] = []
        for batch in range(self.batches * self.world_size):
            picked = [self._images(rng, c) for c in rng.choice(len(self.by_class), self.p, replace=False)]
            if batch % self.world_size == self.rank:
                out.extend(int(i) for chosen in picked for i in chosen)
        return iter(out)

    def _images(self, rng: np.random.Generator, cls: int) -> np.ndarray:
        pool = self.by_class[cls]
        return rng.choice(pool, self.k, replace=len(pool) < self.k)


def all_reduce_sum(ctx: DistContext, values: Sequence[float]) -> list[float]:
    """Sum `values` over ranks (identity for one process)."""
    if not ctx.distributed:
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=ctx.device)
    dist.all_reduce(t)
    return t.tolist()


def gather_objects(ctx: DistContext, obj: Any) -> list[Any]:
    """Every rank's `obj`, in rank order (a one-element list for one process)."""
    if not ctx.distributed:
        return [obj]
    out: list[Any] = [None] * ctx.world_size
    dist.all_gather_object(out, obj)
    return out


def barrier(ctx: DistContext) -> None:
    """Wait for every rank (no-op for one process)."""
    if ctx.distributed:
        dist.barrier()
