"""Generation metrics against hand-computed values; consistency, generation helpers and augmented few-shot."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import linalg

from fgia.eval.fewshot import few_shot_episodes
from fgia.eval.generation import (
    augmented_few_shot,
    class_consistency,
    fit_real_classifier,
    frechet_distance,
    generate_images,
    image_features,
    kernel_distance,
    polynomial_mmd2,
    to_uint8,
    vary_images,
)
from fgia.models.backbones import create_trunk
from fgia.models.generative import GenerativeModel, GeneratorArch


def test_frechet_distance_matches_hand_values():
    # 1-d: means 1 and 3, variances 2 and 8: (1 - 3)^2 + 2 + 8 - 2 sqrt(16) = 4 + 2 = 6
    assert frechet_distance(np.array([[0.0], [2.0]]), np.array([[1.0], [5.0]])) == pytest.approx(6.0)
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(50, 3)), rng.normal(1.0, 2.0, size=(40, 3))
    ca, cb = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    expected = ((a.mean(0) - b.mean(0)) ** 2).sum() + np.trace(ca + cb - 2 * linalg.sqrtm(ca @ cb).real)
    assert frechet_distance(a, b) == pytest.approx(expected)
    assert frechet_distance(a, a) == pytest.approx(0.0, abs=1e-6)
    assert frechet_distance(a, b + 5.0) > frechet_distance(a, b)  # shifting the fakes away costs |shift|^2
    with pytest.raises(ValueError, match="equal D"):
        frechet_distance(a, b[:, :2])


def test_polynomial_mmd_matches_a_double_loop():
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(6, 4)), rng.normal(0.5, 1.0, size=(5, 4))
    k = lambda x, y: (x @ y / 4 + 1) ** 3  # noqa: E731
    aa = sum(k(a[i], a[j]) for i in range(6) for j in range(6) if i != j) / (6 * 5)
    bb = sum(k(b[i], b[j]) for i in range(5) for j in range(5) if i != j) / (5 * 4)
    ab = sum(k(a[i], b[j]) for i in range(6) for j in range(5)) / (6 * 5)
    assert polynomial_mmd2(a, b) == pytest.approx(aa + bb - 2 * ab)
    # one subset of every image is a permutation of the full sets: the same value, no spread
    full = kernel_distance(a[:5], b, subsets=3, subset_size=5)
    assert full[0] == pytest.approx(polynomial_mmd2(a[:5], b)) and full[1] == pytest.approx(0.0, abs=1e-12)


def test_kernel_distance_is_near_zero_for_one_distribution_and_grows_with_a_shift():
    rng = np.random.default_rng(2)
    a, b = rng.normal(size=(300, 8)), rng.normal(size=(300, 8))
    same, _ = kernel_distance(a, b, subsets=10, subset_size=100)
    shifted, _ = kernel_distance(a, b + 1.0, subsets=10, subset_size=100)
    assert abs(same) < 0.05 < shifted


def test_consistency_classifier_on_separable_features():
    rng = np.random.default_rng(0)
    centres = np.eye(3) * 5
    labels = np.repeat(np.arange(3), 20)
    feats = centres[labels] + rng.normal(scale=0.3, size=(60, 3))
    clf, cv_top1 = fit_real_classifier(feats, labels, folds=3)
    assert cv_top1 == 1.0
    fake_labels = np.array([0, 1, 2, 2])
    fakes = centres[fake_labels]
    assert class_consistency(clf, fakes, fake_labels) == 1.0
    assert class_consistency(clf, fakes, np.array([1, 2, 0, 0])) == 0.0
    assert class_consistency(clf, fakes, np.array([0, 1, 0, 0])) == 0.5


def _episode_data(seed=0, classes=6, per_class=20, dim=8):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(classes, dim))
    labels = np.repeat(np.arange(classes), per_class)
    return centres, labels, centres[labels] + rng.normal(scale=1.5, size=(len(labels), dim))


def test_augmented_few_shot_reuses_the_fewshot_episodes():
    centres, labels, feats = _episode_data()
    own = np.repeat(feats[:, None, :], 3, axis=1)  # "generated" = the support image itself: prototypes unchanged
    result = augmented_few_shot(feats, labels, own, n_way=3, k_shot=1, n_query=5, episodes=50, k_generated=3)
    assert result["plain"] == pytest.approx(few_shot_episodes(feats, labels, 3, 1, 5, 50, 0)[0])
    assert result["plain"] == pytest.approx(result["fewshot_reference"])
    assert result["augmented"] == pytest.approx(result["plain"]) and result["difference"] == pytest.approx(0.0)


def test_good_generated_images_help_and_bad_ones_hurt():
    centres, labels, feats = _episode_data()
    oracle = np.repeat(centres[labels][:, None, :], 5, axis=1)  # images exactly at their class centre
    noise = np.random.default_rng(3).normal(size=(len(labels), 5, feats.shape[1]))
    kwargs = dict(n_way=5, k_shot=1, n_query=10, episodes=200, k_generated=5)
    helped = augmented_few_shot(feats, labels, oracle, **kwargs)
    hurt = augmented_few_shot(feats, labels, noise, **kwargs)
    assert helped["difference"] - helped["difference_ci95"] > 0
    assert hurt["difference"] + hurt["difference_ci95"] < 0
    assert helped["plain"] == hurt["plain"]  # the same episodes for both


def test_augmented_few_shot_checks_its_input():
    _, labels, feats = _episode_data()
    with pytest.raises(ValueError, match="need 3 per image"):
        augmented_few_shot(feats, labels, feats[:, None, :], k_shot=2, k_generated=5, n_query=5, episodes=2)
    with pytest.raises(ValueError, match="must be"):
        augmented_few_shot(feats, labels, feats, episodes=2)


def test_generation_helpers_are_seeded_and_shaped():
    torch.manual_seed(0)
    model = GenerativeModel("cvaegan", 4, GeneratorArch(image_size=32, width=4, latent_dim=8, code_dim=4)).eval()
    images = generate_images(model, [0, 1, 3], seed=5, batch_size=2)
    assert images.shape == (3, 3, 32, 32) and images.dtype == torch.uint8
    assert torch.equal(images, generate_images(model, [0, 1, 3], seed=5, batch_size=2))
    assert not torch.equal(images, generate_images(model, [0, 1, 3], seed=6))
    varied = vary_images(model, images[:2], per_image=3)
    assert varied.shape == (2, 3, 3, 32, 32) and varied.dtype == torch.uint8
    assert to_uint8(torch.tensor([-1.0, 0.0, 1.0, 3.0])).tolist() == [0, 128, 255, 255]


def test_image_features_accept_uint8_and_float_and_resize():
    torch.manual_seed(0)
    trunk = create_trunk("test_efficientnet").eval()
    uint8 = torch.randint(0, 256, (3, 3, 32, 32), dtype=torch.uint8)
    as_float = uint8.float() / 127.5 - 1
    a = image_features(trunk, uint8, size=48, batch_size=2)
    b = image_features(trunk, as_float, size=48)
    assert a.shape == (3, trunk.out_channels)
    np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-5)


def test_generation_bench_writes_targets_tables_and_grids(tiny_synth, tmp_path):
    import json

    import yaml

    from fgia.eval.generation import run_generation_bench

    config = {
        "datasets": {"synth": tiny_synth.parent.name},
        "generator": {"arch": {"image_size": 32, "width": 4, "latent_dim": 8, "code_dim": 4}, "steps": 2,
                      "batch_size": 8, "workers": 1},
        "feature_backbone": "test_efficientnet", "feature_weights": None, "feature_size": 32,
        "kid_subsets": 2, "kid_subset_size": 10, "classifier_folds": 2, "device": "cpu",
        "augment": {"n_way": 3, "shots": [1, 2], "n_query": 3, "episodes": 4, "k_generated": 2},
    }
    (tmp_path / "bench.yaml").write_text(yaml.safe_dump(config))
    report = run_generation_bench(tiny_synth.parent.parent, config=tmp_path / "bench.yaml",
                                  results_dir=tmp_path / "results", work_dir=tmp_path / "work", progress=False)
    saved = json.loads((tmp_path / "results" / "generation_cpu.json").read_text())
    assert set(saved["targets"]) == {"synth_consistency_over_chance", "cvaegan_minus_baseline_consistency",
                                     "baseline_minus_cvaegan_fd", "elapsed_s"}
    for t in saved["targets"].values():
        assert set(t) == {"value", "threshold", "op", "met"}
        assert t["met"] == (t["value"] >= t["threshold"] if t["op"] == ">=" else t["value"] <= t["threshold"])
    synth = saved["datasets"]["synth"]
    assert synth["classes"] == 6 and synth["chance"] == pytest.approx(1 / 6)
    models = synth["models"]
    assert set(models) == {"cvaegan", "cgan"} and models["cgan"]["steps"] == 2
    assert models["cvaegan"]["consistency_over_chance"] == pytest.approx(models["cvaegan"]["consistency"] * 6)
    assert set(synth["few_shot"]["episodes"]) == {"3-way 1-shot", "3-way 2-shot"}
    assert saved["config"]["generator"]["steps"] == 2 and saved["elapsed_s"] == pytest.approx(report["elapsed_s"])
    page = (tmp_path / "results" / "generation_cpu.md").read_text()
    assert "EfficientNet-Lite0" in page and "| synth | 3-way 1-shot x 4 |" in page
    from PIL import Image

    with Image.open(tmp_path / "results" / "generation_cpu_synth.png") as grid:
        # 6 classes (rows) x (real + 2 models) x 6 images, 32 px tiles with 2 px padding
        assert grid.size == (18 * 34 + 2, 6 * 34 + 2)
    assert (tmp_path / "work" / "synth" / "cvaegan" / "generator.yaml").is_file()


@pytest.mark.parametrize("name", ["generation.yaml", "generation_full.yaml"])
def test_packaged_bench_configs_load(name):
    from fgia.config import load_yaml
    from fgia.eval.generation import GenerationBenchConfig
    from fgia.eval.osfgir import default_config

    cfg = load_yaml(GenerationBenchConfig, default_config(name))
    assert set(cfg.datasets) == {"flowers", "cub"} and cfg.generator.kind == "cvaegan"
    assert cfg.generator.arch.image_size == 64 and cfg.augment.episodes >= 600
