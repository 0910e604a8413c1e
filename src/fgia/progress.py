"""Progress over batches of images, for training epochs and feature extraction.

On a terminal: a rich bar per task (batches done of total, images/s, the task's numbers such as the loss, ETA),
removed when the task ends. Elsewhere (a log file, CI, a pipe): one plain line every `lines`-th of a task (of at
least `lines` batches) and at its end, so a log shows the run moving without a line per batch. Disabled
(`--quiet`): nothing.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from typing import Any, TypeVar

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeRemainingColumn,
)

T = TypeVar("T")


@dataclass
class _Task:
    description: str
    total: int
    fields: dict[str, float]
    started: float = field(default_factory=time.perf_counter)
    done: int = 0
    images: int = 0
    rich_id: TaskID | None = None

    def rate(self) -> float:
        return self.images / max(time.perf_counter() - self.started, 1e-9)

    def line(self) -> str:
        elapsed = time.perf_counter() - self.started
        eta = elapsed / self.done * (self.total - self.done) if self.done else math.nan
        numbers = "".join(f", {k} {v:.4g}" for k, v in self.fields.items())
        return (f"{self.description}: {self.done}/{self.total} batches, {self.rate():.1f} images/s{numbers}, "
                f"elapsed {elapsed:.0f} s, ETA {eta:.0f} s")


class BatchProgress:
    """Tasks of known batch counts (see the module docstring); use as a context manager.

    `add_task(description, total, **numbers)` starts one, `update(task, images=n, **numbers)` counts a batch of
    n images and sets the numbers shown with it, `remove_task(task)` ends it.
    """

    def __init__(self, console: Console | None = None, *, enabled: bool = True, lines: int = 10,
                 numbers: tuple[str, ...] = ()) -> None:
        self.console = console or Console(stderr=True)
        self.enabled = enabled
        live = (self.console.is_terminal and not self.console.is_dumb_terminal) or self.console.is_jupyter
        self.terminal = enabled and live
        self.lines = max(1, lines)
        self.tasks: dict[int, _Task] = {}
        shown = " ".join(f"{k} {{task.fields[{k}]:.3f}}" for k in numbers)
        columns = [TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[rate]:.1f} img/s"), *([TextColumn(shown)] if shown else []),
                   TimeRemainingColumn()]
        self.bar = Progress(*columns, console=self.console, disable=not self.terminal, transient=True)

    def __enter__(self) -> BatchProgress:
        self.bar.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.bar.stop()

    def add_task(self, description: str, total: int, **numbers: float) -> int:
        task = _Task(description, total, dict(numbers))
        if self.terminal:
            task.rich_id = self.bar.add_task(description, total=total, rate=0.0, **numbers)
        key = len(self.tasks)
        self.tasks[key] = task
        return key

    def update(self, key: int, images: int = 0, **numbers: float) -> None:
        """One more batch of `images` images done; `numbers` replace the task's shown numbers."""
        task = self.tasks[key]
        task.done += 1
        task.images += images
        task.fields.update(numbers)
        if self.terminal:
            self.bar.update(task.rich_id, advance=1, rate=task.rate(), **numbers)
        elif self.enabled:
            every = math.ceil(task.total / self.lines)
            if (task.total >= self.lines and task.done % every == 0) or task.done == task.total:
                self.console.print(task.line(), highlight=False, soft_wrap=True)

    def remove_task(self, key: int) -> None:
        task = self.tasks.pop(key)
        if task.rich_id is not None:
            self.bar.remove_task(task.rich_id)


def track_batches(batches: Iterable[T], description: str, *, enabled: bool = True, total: int | None = None,
                  images: Callable[[T], int] | None = None, console: Console | None = None) -> Iterator[T]:
    """`batches` as they come, shown as one BatchProgress task; `images(batch)` counts a batch's images (default:
    the length of its last element, the sample indices of fgia's loaders)."""
    images = images or (lambda batch: len(batch[-1]))  # type: ignore[index]
    total = len(batches) if total is None else total  # type: ignore[arg-type]
    if not enabled:
        yield from batches
        return
    with BatchProgress(console, enabled=enabled) as bar:
        task = bar.add_task(description, total)
        for batch in batches:
            yield batch
            bar.update(task, images=images(batch))
        bar.remove_task(task)
