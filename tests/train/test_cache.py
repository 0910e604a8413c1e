"""The frozen-trunk cache: what it stores, when it is reused, and training on it."""

from __future__ import annotations

import fcntl
from dataclasses import replace

import numpy as np
import pytest
import torch
from torchvision.transforms import v2

from fgia.data.images import load_image
from fgia.data.samples import Sample
from fgia.models import create_model
from fgia.train import cache as cache_module
from fgia.train import fit
from fgia.train.cache import trunk_cache

FROZEN = {"backbone": "test_resnet", "head": "cosine", "frozen_stages": None}


def _model(num_classes: int = 4, **kw):
    torch.manual_seed(0)
    return create_model("cnnets", num_classes=num_classes, **{**FROZEN, **kw})


@pytest.fixture(autouse=True)
def _empty_memo():
    cache_module._MEMO.clear()
    yield
    cache_module._MEMO.clear()


def _normalised(path, size, mean, std) -> torch.Tensor:
    image = v2.Compose([v2.ToImage(), v2.Resize((size, size), antialias=True)])(load_image(path))
    x = v2.functional.to_dtype(image, torch.float32, scale=True)
    return v2.functional.normalize(x, list(mean), list(std))[None]


def test_views_are_the_lower_trunk_of_the_image_and_its_mirror(one_category):
    model = _model()
    samples = one_category.samples[:5]
    cache = trunk_cache(model.lower_trunk(), samples, image_size=48, mean=model.mean, std=model.std,
                        views=("resize", "hflip"), batch_size=4)
    assert cache.maps.shape[:2] == (5, 2) and cache.maps.dtype == np.float16
    x = _normalised(samples[3].path, 48, model.mean, model.std)
    with torch.no_grad():
        plain, mirrored = model.lower_trunk()(x), model.lower_trunk()(x.flip(-1))
    row = cache.rows[str(samples[3].path)]
    np.testing.assert_allclose(cache.maps[row, 0], plain[0].numpy(), atol=2e-2, rtol=1e-2)
    np.testing.assert_allclose(cache.maps[row, 1], mirrored[0].numpy(), atol=2e-2, rtol=1e-2)
    # The top on a cached view gives the model's own embedding of that image.
    with torch.no_grad():
        expected = model.eval()(x).embedding.numpy()
    np.testing.assert_allclose(cache.embeddings(model, [samples[3]]), expected, atol=5e-2, rtol=5e-2)


def test_a_disk_cache_is_reused_by_later_runs_and_subsets(one_category, tmp_path, monkeypatch):
    model = _model()
    options = dict(image_size=48, mean=model.mean, std=model.std, cache_dir=tmp_path)
    first = trunk_cache(model.lower_trunk(), one_category.samples, **options)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".json", ".npy"]
    cache_module._MEMO.clear()
    monkeypatch.setattr(cache_module, "_build", lambda *a, **k: pytest.fail("rebuilt a cache that covers"))
    again = trunk_cache(model.lower_trunk(), one_category.samples[:3], **options)
    assert again.key == first.key and np.array_equal(np.asarray(again.maps), np.asarray(first.maps))


def test_a_build_removes_what_killed_builds_left_but_not_a_live_one(one_category, tmp_path):
    model = _model()
    key = cache_module.cache_key(model.lower_trunk(), 48, model.mean, model.std, ("resize", "hflip"))
    abandoned, live, other = (tmp_path / f".trunk-{key}.npy.x1.tmp", tmp_path / f".trunk-{key}.npy.x2.tmp",
                              tmp_path / ".trunk-otherkey.npy.x3.tmp")
    for path in (abandoned, live, other):
        path.write_bytes(b"half-written maps")
    with open(live, "rb") as writer:  # a build still writing holds the lock
        fcntl.flock(writer, fcntl.LOCK_EX)
        trunk_cache(model.lower_trunk(), one_category.samples[:3], image_size=48, mean=model.mean, std=model.std,
                    cache_dir=tmp_path)
    assert not abandoned.exists() and live.exists() and other.exists()
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.endswith(".tmp")) == [f"trunk-{key}.json",
                                                                                        f"trunk-{key}.npy"]


def test_the_key_follows_the_frozen_weights_and_views(one_category):
    samples = one_category.samples[:4]
    a, b = _model(), _model()
    with torch.no_grad():
        next(b.lower_trunk().parameters()).add_(1.0)
    options = dict(image_size=48, mean=a.mean, std=a.std)
    key = trunk_cache(a.lower_trunk(), samples, **options).key
    assert trunk_cache(a.lower_trunk(), samples, views=("resize",), **options).key != key
    assert trunk_cache(b.lower_trunk(), samples, **options).key != key


def test_unreadable_images_are_left_out_and_bad_settings_refused(one_category, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(b"not an image")
    samples = [*one_category.samples[:3], Sample(broken, 0)]
    model = _model()
    options = dict(image_size=48, mean=model.mean, std=model.std)
    cache = trunk_cache(model.lower_trunk(), samples, **options)
    assert len(cache.rows) == 3 and cache.covers(samples)
    assert cache.dataset(samples).sample_index == [0, 1, 2]
    with pytest.raises(ValueError, match="budget"):
        trunk_cache(model.lower_trunk(), samples, budget_gb=1e-9, views=("crop",), **options)
    with pytest.raises(ValueError, match="views"):
        trunk_cache(model.lower_trunk(), samples, views=("rotate",), **options)


def test_training_on_the_cache_matches_the_image_path_for_frozen_stages(one_category, tiny_config):
    """The frozen stages never change, and the cached run trains only the top."""
    cfg = tiny_config(model_kwargs=FROZEN, epochs=2, cache_views=("resize",))
    cached = fit(cfg, one_category, progress=False, model=_model()).model
    before = _model()
    lower_before = {k: v.clone() for k, v in before.lower_trunk().state_dict().items()}
    for key, value in cached.lower_trunk().state_dict().items():
        torch.testing.assert_close(value, lower_before[key])
    tops = [p for n, p in cached.named_parameters() if n.startswith("heads.")]
    assert tops and all(p.requires_grad for p in tops)
    assert not any(p.requires_grad for p in cached.lower_trunk().parameters())
    # Without the cache the same model still trains (images through the frozen stages every step).
    uncached = fit(replace(cfg, cache_trunk=False), one_category, progress=False, model=_model()).model
    assert not torch.equal(uncached.heads["cosine"].weight, before.heads["cosine"].weight)
