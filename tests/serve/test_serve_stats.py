"""Latency percentiles over the ring buffer, and config validation."""

from __future__ import annotations

import pytest

from fgia.serve import ServeConfig
from fgia.serve.stats import LatencyStats


def test_percentiles_cover_only_the_window():
    stats = LatencyStats(window=10)
    for ms in range(1, 21):
        stats.record(float(ms))
    stats.record_failure()
    summary = stats.summary()
    # The window holds 11..20; numpy's linear interpolation: p50 = 15.5, p90 = 19.1, p99 = 19.91.
    assert summary == {"queries_served": 20, "queries_failed": 1, "window": 10,
                       "p50_ms": 15.5, "p90_ms": 19.1, "p99_ms": 19.91, "mean_ms": 15.5}


def test_empty_stats_have_no_percentiles():
    assert LatencyStats(window=5).summary()["p99_ms"] is None


@pytest.mark.parametrize(("kwargs", "message"), [({"batching": "maybe"}, "batching must be"),
                                                 ({"max_upload_bytes": 0}, "max_upload_bytes"),
                                                 ({"default_top_k": 50, "max_top_k": 20}, "default_top_k=50"),
                                                 ({"max_wait_ms": -1}, "max_wait_ms")])
def test_bad_config_is_refused(kwargs, message):
    with pytest.raises(ValueError, match=message):
        ServeConfig(**kwargs)


def test_config_round_trips_through_yaml(tmp_path):
    from fgia.config import load_yaml, save_yaml

    cfg = ServeConfig(max_pixels=1234, batching="on")
    save_yaml(cfg, tmp_path / "serve.yaml")
    assert load_yaml(ServeConfig, tmp_path / "serve.yaml") == cfg


def test_module_entry_point_refuses_a_missing_index(tmp_path, capsys):
    from fgia.serve.__main__ import main

    with pytest.raises(SystemExit) as exit_info:
        main([str(tmp_path / "nope"), "--port", "1"])
    assert exit_info.value.code == 2
    assert "index directory not found" in capsys.readouterr().err
