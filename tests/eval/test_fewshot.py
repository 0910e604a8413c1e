"""Few-shot episodes: separable features score ~1, random ones ~1/N, the interval shrinks with episodes."""

from __future__ import annotations

import numpy as np
import pytest

from fgia.eval.fewshot import (
    FewShotConfig,
    few_shot_checkpoint,
    few_shot_episodes,
    few_shot_report,
    format_few_shot,
)


def _clustered(classes: int = 10, per_class: int = 20, spread: float = 0.05, seed: int = 0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, 16))
    labels = np.repeat(np.arange(classes), per_class)
    return centres[labels] + spread * rng.normal(size=(len(labels), 16)), labels


def test_separable_features_are_classified_perfectly():
    x, y = _clustered()
    mean, ci = few_shot_episodes(x, y, n_way=5, k_shot=1, n_query=5, episodes=50)
    assert mean == 1.0 and ci == 0.0


def test_random_features_score_chance_within_the_interval():
    rng = np.random.default_rng(1)
    y = np.repeat(np.arange(10), 20)
    mean, ci = few_shot_episodes(rng.normal(size=(200, 16)), y, n_way=5, k_shot=1, n_query=5, episodes=400)
    assert abs(mean - 0.2) < max(2 * ci, 0.03) and 0 < ci < 0.03


def test_more_shots_help_on_noisy_clusters():
    x, y = _clustered(spread=1.2, seed=2)
    one = few_shot_episodes(x, y, 5, 1, 5, 200, seed=3)[0]
    five = few_shot_episodes(x, y, 5, 5, 5, 200, seed=3)[0]
    assert 0.3 < one < five


def test_ci95_matches_t_interval_by_hand():
    x, y = _clustered(spread=1.5, seed=4)
    mean, ci = few_shot_episodes(x, y, 3, 1, 2, episodes=30, seed=5)
    assert 0 < ci < mean
    # a larger run narrows the interval roughly as 1/sqrt(episodes)
    _, ci_big = few_shot_episodes(x, y, 3, 1, 2, episodes=480, seed=5)
    assert ci_big < ci / 2.5


def test_unlabelled_ignored_and_bad_requests_rejected():
    x, y = _clustered(classes=4, per_class=6)
    y_with_distractors = np.concatenate([y, -np.ones(10, dtype=int)])
    x_with_distractors = np.concatenate([x, np.zeros((10, 16))])
    assert few_shot_episodes(x_with_distractors, y_with_distractors, 4, 1, 5, 10)[0] == 1.0
    with pytest.raises(ValueError, match="only 4 have that many"):
        few_shot_episodes(x, y, 5, 1, 5, 10)
    with pytest.raises(ValueError, match="only 0 have"):
        few_shot_episodes(x, y, 2, 5, 5, 10)
    with pytest.raises(ValueError, match="one label each"):
        few_shot_episodes(x, y[:-1])
    with pytest.raises(ValueError, match="n_way >= 2"):
        few_shot_episodes(x, y, n_way=1)


def test_report_runs_each_shot():
    x, y = _clustered()
    report = few_shot_report(x, y, FewShotConfig(n_way=5, n_query=5, episodes=20))
    assert list(report) == ["5-way 1-shot", "5-way 5-shot"] and all(m == 1.0 for m, _ in report.values())


def test_few_shot_checkpoint_on_novel_species(tiny_synth, tmp_path):
    from fgia.models import create_model, save_model

    model = create_model("plain", num_classes=6, backbone="resnet18")
    save_model(model, tmp_path, [f"c{i}" for i in range(6)])
    cfg = FewShotConfig(n_way=3, n_query=3, episodes=10, image_size=32, device="cpu")
    report = few_shot_checkpoint(tmp_path, tiny_synth, cfg, shots=(1, 5))
    assert list(report) == ["3-way 1-shot", "3-way 5-shot"]
    assert all(0 <= m <= 1 and ci >= 0 for m, ci in report.values())
    assert "| 3-way 5-shot |" in format_few_shot(report)
    with pytest.raises(ValueError, match="needs 3 classes with >= 13"):
        few_shot_checkpoint(tmp_path, tiny_synth, FewShotConfig(n_way=3, n_query=8, episodes=2, image_size=32,
                                                                device="cpu"), shots=(5,))


def test_accuracy_and_ci95_recomputed_by_hand():
    from scipy import stats

    from fgia.train.episodic import EpisodeSampler

    x, y = _clustered(classes=6, per_class=8, spread=1.4, seed=7)
    mean, ci = few_shot_episodes(x, y, n_way=3, k_shot=2, n_query=3, episodes=40, seed=11)
    # the same episodes, classified by brute force: nearest mean of L2-normalised support features
    unit = x / np.linalg.norm(x, axis=1, keepdims=True)
    sampler, accuracies = EpisodeSampler(y, 3, 2, 3, seed=11), []
    for _ in range(40):
        support, query = sampler.sample()
        prototypes = unit[support].mean(axis=1)
        correct = [np.argmin([np.sum((unit[q] - p) ** 2) for p in prototypes]) == c
                   for c, row in enumerate(query) for q in row]
        accuracies.append(np.mean(correct))
    assert mean == pytest.approx(np.mean(accuracies))
    assert ci == pytest.approx(stats.t.ppf(0.975, 39) * np.std(accuracies, ddof=1) / np.sqrt(40))


def test_target_is_the_smallest_margin_in_half_widths():
    from fgia.eval.fewshot import FewShotBenchConfig, FewShotRow, fewshot_targets

    def row(dataset, method, accuracy, ci, episode="5-way 5-shot"):
        return FewShotRow(dataset, method, episode, 5, 5, accuracy, ci, 600)

    rows = [row("a", "nc-offtheshelf", 0.70, 0.010), row("a", "protonet", 0.75, 0.008),
            row("b", "nc-offtheshelf", 0.90, 0.005), row("b", "protonet", 0.91, 0.004),
            row("b", "protonet", 0.99, 0.001, episode="5-way 1-shot")]
    target = fewshot_targets(rows, FewShotBenchConfig(target_method="protonet"))["min_margin_over_ci"]
    assert target["per_dataset"] == {"a": 5.0, "b": 2.0}  # (0.75-0.70)/0.010, (0.91-0.90)/0.005
    assert target["value"] == 2.0 and target["met"] and target["threshold"] == 1.0


def test_bench_and_eval_command_on_a_tiny_set(tiny_synth, tmp_path):
    import json

    import yaml

    from fgia.cli import app
    from fgia.config import to_dict
    from fgia.data import read_dataset
    from fgia.eval.fewshot import FewShotBenchConfig, bench_fewshot
    from fgia.eval.realdata import Recipe
    from fgia.train.episodic import EpisodicConfig

    cfg = FewShotBenchConfig(n_query=2, episodes=10, ways=(3, 0), target_episode="3-way 5-shot",
                             meta=EpisodicConfig(n_way=3, k_shot=2, n_query=2, episodes=3, warmup_episodes=1,
                                                 device="cpu"),
                             pretrained_meta=EpisodicConfig(n_way=3, k_shot=1, n_query=2, episodes=2,
                                                            warmup_episodes=1, device="cpu"),
                             method_options={"protonet": {"pooling": "gap"},
                                             "protonet-bilinear": {"pooling": "bilinear", "reduce_dim": 4}},
                             recipe=Recipe(backbone="test_efficientnet", weights=None, image_size=48, epochs=1,
                                           batch_size=8, device="cpu"))
    payload = bench_fewshot({"tiny": read_dataset(tiny_synth)}, cfg, log=lambda line: None)
    rows = payload["rows"]
    assert len(rows) == 5 * 2 * 2  # methods x ways x shots
    seconds = {r["method"]: r["train_seconds"] for r in rows}
    assert seconds["protonet-pretrained"] > seconds["nc-finetuned"]  # its time includes the classification training
    all_way = [r for r in rows if r["episode"] == "all-way 5-shot"]
    assert all(r["ways"] == 6 for r in all_way)  # the 6 unseen species all have 8 >= 5 + 2 images
    assert all(0 <= r["accuracy"] <= 1 and r["ci95"] >= 0 for r in rows)
    assert set(payload["targets"]) == {"min_margin_over_ci"}

    (tmp_path / "fs.yaml").write_text(yaml.safe_dump(to_dict(cfg)))
    app(["eval", "--task", "fewshot", "--data", str(tiny_synth), "--config", str(tmp_path / "fs.yaml"),
         "--out", str(tmp_path / "out")], standalone_mode=False)
    report = json.loads((tmp_path / "out" / "fewshot.json").read_text())
    def numbers(rs):
        return [(r["method"], r["episode"], r["accuracy"], r["ci95"]) for r in rs]

    assert numbers(report["rows"]) == numbers(rows)  # the same seeds: the same numbers
    assert (tmp_path / "out" / "models" / "manifest" / "protonet" / "model.yaml").is_file()
    assert (tmp_path / "out" / "models" / "manifest" / "protonet-pretrained" / "model.yaml").is_file()
