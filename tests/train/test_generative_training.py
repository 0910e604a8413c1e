"""Generator training: decoding, every kind's step, class means, checkpoints, exact resume, output-folder guard."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest
import torch

from fgia.data.samples import FineGrainedDataset
from fgia.models.generative import GeneratorArch
from fgia.train.generative import (
    CONFIG_FILE,
    STATE_FILE,
    GenerativeConfig,
    GeneratorTrainer,
    check_output_dir,
    class_index,
    is_generator_dir,
    load_generator,
    load_images,
    train_generator,
)

ARCH = GeneratorArch(image_size=32, width=4, latent_dim=8, code_dim=4)


def tiny_cfg(**overrides) -> GenerativeConfig:
    base = dict(arch=ARCH, steps=4, batch_size=8, device="cpu", workers=1, log_every=1, save_every=2)
    return GenerativeConfig(**{**base, **overrides})


@pytest.fixture(scope="module")
def images(tiny_ds):
    return load_images(tiny_ds, 32, workers=1)


def test_load_images_decodes_squares_and_skips_broken_files(tiny_ds, tmp_path):
    broken = tmp_path / "broken.jpg"
    broken.write_bytes(shutil.os.urandom(64))
    samples = [*tiny_ds.samples[:5], dataclasses.replace(tiny_ds.samples[5], path=broken)]
    ds = FineGrainedDataset("t", tmp_path, tiny_ds.classes, samples)
    data = load_images(ds, 16, workers=1)
    assert data.images.shape == (5, 3, 16, 16) and data.images.dtype == torch.uint8
    assert data.skipped == 1 and list(data.index) == [0, 1, 2, 3, 4]
    assert data.labels.tolist() == [s.label for s in samples[:5]]
    floats = data.as_float()
    assert floats.min() >= -1 and floats.max() <= 1


def test_max_images_per_class_caps_each_class(tiny_ds):
    data = load_images(tiny_ds, 16, max_images_per_class=3, workers=1)
    assert torch.bincount(data.labels).max() == 3 and len(data) == 3 * len(tiny_ds.classes)


@pytest.mark.parametrize("kind", ["cvaegan", "cgan", "cvae"])
def test_each_kind_trains_with_finite_losses_and_moves_the_generator(kind, images, tiny_ds):
    trainer = GeneratorTrainer(tiny_cfg(kind=kind), images, tiny_ds.classes, progress=False)
    before = [p.detach().clone() for p in trainer.model.generator.parameters()]
    losses = trainer.train_step()
    expected = {"cvaegan": {"classifier", "discriminator", "kl", "class_feature", "code"},
                "cgan": {"discriminator", "generator"}, "cvae": {"kl", "recon", "code"}}[kind]
    assert expected <= set(losses)
    assert any(not torch.equal(a, b) for a, b in zip(before, trainer.model.generator.parameters()))


def test_class_means_follow_the_running_average(images, tiny_ds):
    trainer = GeneratorTrainer(tiny_cfg(class_mean_momentum=0.5), images, tiny_ds.classes, progress=False)
    feats = torch.tensor([[1.0, 0.0], [3.0, 2.0], [5.0, 5.0]])
    trainer._update_class_means(feats, torch.tensor([0, 0, 1]))
    assert torch.equal(trainer.class_means[0], torch.tensor([2.0, 1.0]))  # first batch sets the mean
    assert torch.equal(trainer.class_means[1], torch.tensor([5.0, 5.0]))
    trainer._update_class_means(torch.tensor([[4.0, 3.0]]), torch.tensor([0]))
    assert torch.equal(trainer.class_means[0], torch.tensor([3.0, 2.0]))  # 0.5 * old + 0.5 * new
    assert torch.equal(trainer.class_means[1], torch.tensor([5.0, 5.0]))  # absent classes keep theirs
    loss = trainer._class_feature_loss(torch.tensor([[3.0, 2.0], [5.0, 7.0]]), torch.tensor([0, 1]))
    assert loss.item() == pytest.approx((0 + 0 + 0 + 4) / 4)


def test_checkpoint_round_trip_and_saved_config(images, tiny_ds, tmp_path):
    model, trainer = train_generator(tiny_ds, tiny_cfg(), tmp_path / "gen", progress=False, data=images)
    assert is_generator_dir(tmp_path / "gen")
    loaded, names, cfg = load_generator(tmp_path / "gen")
    assert names == tiny_ds.classes and cfg == tiny_cfg()
    z, y = torch.randn(3, 8), torch.tensor([0, 4, 7])
    with torch.no_grad():
        torch.testing.assert_close(loaded.generate(y, z), model.eval().generate(y, z))
    history = json.loads((tmp_path / "gen" / "history.json").read_text())
    assert [r["step"] for r in history] == [1, 2, 3, 4]


def test_resume_repeats_the_uninterrupted_run(images, tiny_ds, tmp_path):
    cfg = tiny_cfg(steps=4, save_every=2)
    whole = GeneratorTrainer(cfg, images, tiny_ds.classes, tmp_path / "a", progress=False)
    whole.run()
    first = GeneratorTrainer(cfg, images, tiny_ds.classes, tmp_path / "b", progress=False)
    first.run(steps=2)  # "interrupted" after the step-2 checkpoint
    second = GeneratorTrainer(dataclasses.replace(cfg, resume=True), images, tiny_ds.classes, tmp_path / "b",
                              progress=False)
    second.run()
    assert second.step == 4
    for (name, a), b in zip(whole.model.state_dict().items(), second.model.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=0, atol=0, msg=name)
    assert [r["step"] for r in second.history] == [r["step"] for r in whole.history]


def test_resume_refuses_changed_options(images, tiny_ds, tmp_path):
    GeneratorTrainer(tiny_cfg(), images, tiny_ds.classes, tmp_path, progress=False).run(steps=2)
    changed = GeneratorTrainer(tiny_cfg(lr=1e-3, resume=True), images, tiny_ds.classes, tmp_path, progress=False)
    with pytest.raises(ValueError, match="options changed.*lr"):
        changed.run()
    assert (tmp_path / STATE_FILE).is_file()


def test_output_folder_guard(tmp_path):
    foreign = tmp_path / "photos"
    foreign.mkdir()
    (foreign / "holiday.jpg").write_bytes(b"x")
    with pytest.raises(FileExistsError, match="not empty and holds no generator"):
        check_output_dir(foreign)
    assert check_output_dir(foreign, force=True) == foreign
    assert check_output_dir(tmp_path / "new") == tmp_path / "new"
    (tmp_path / "gen").mkdir()
    (tmp_path / "gen" / CONFIG_FILE).write_text("format: fgia-generator/1\n")
    assert check_output_dir(tmp_path / "gen") == tmp_path / "gen"
    with pytest.raises(FileNotFoundError, match="not a generator folder"):
        load_generator(foreign)


def test_unknown_class_names_are_a_clear_error():
    names = ["001.Black_footed_Albatross", "002.Laysan_Albatross", "003.Sooty_Albatross"]
    assert class_index(names, "002.Laysan_Albatross") == 1
    with pytest.raises(KeyError, match="unknown class 'albatross'; did you mean '001.Black_footed_Albatross'"):
        class_index(names, "albatross")
    with pytest.raises(KeyError, match="unknown class 'Penguin'; it knows 3 classes"):
        class_index(names, "Penguin")


def test_bad_configs_are_refused(images, tiny_ds):
    with pytest.raises(ValueError, match="kind must be one of"):
        tiny_cfg(kind="gan")
    with pytest.raises(ValueError, match="batch_size 500 exceeds"):
        GeneratorTrainer(tiny_cfg(batch_size=500), images, tiny_ds.classes, progress=False)
