"""Batch progress: a bar on a terminal, a line every tenth of a task in logs, nothing when quiet."""

from __future__ import annotations

import io

from rich.console import Console

from fgia.progress import BatchProgress, track_batches


def _run(console: Console, batches: int, enabled: bool = True) -> None:
    with BatchProgress(console, enabled=enabled, numbers=("loss",)) as bar:
        task = bar.add_task("epoch 1/1", batches, loss=0.0)
        for k in range(batches):
            bar.update(task, images=8, loss=1.0 / (k + 1))
        bar.remove_task(task)


def test_logs_get_one_line_per_tenth_of_a_task():
    out = io.StringIO()
    _run(Console(file=out, width=200), 40)
    lines = out.getvalue().splitlines()
    assert len(lines) == 10  # every 4th batch of 40
    assert lines[0].startswith("epoch 1/1: 4/40 batches, ") and "images/s, loss 0.25, " in lines[0]
    assert lines[-1].startswith("epoch 1/1: 40/40 batches") and "loss 0.025" in lines[-1] and "ETA 0 s" in lines[-1]


def test_a_short_task_logs_only_its_end():
    out = io.StringIO()
    _run(Console(file=out, width=200), 3)
    assert [line.split(",")[0] for line in out.getvalue().splitlines()] == ["epoch 1/1: 3/3 batches"]


def test_quiet_prints_nothing_and_a_terminal_gets_a_bar():
    quiet, terminal = io.StringIO(), io.StringIO()
    _run(Console(file=quiet, width=200), 20, enabled=False)
    assert quiet.getvalue() == ""
    _run(Console(file=terminal, width=200, force_terminal=True), 20)
    shown = terminal.getvalue()
    assert "img/s" in shown and "loss" in shown and "batches" not in shown  # the rich bar, not log lines


def test_track_batches_yields_every_batch_and_counts_images():
    out = io.StringIO()
    batches = [(None, None, list(range(n))) for n in (4, 4, 2)]
    assert list(track_batches(batches, "extracting", console=Console(file=out, width=200))) == batches
    assert out.getvalue().startswith("extracting: 3/3 batches, ")
    assert list(track_batches(iter(batches), "x", enabled=False, total=3)) == batches
