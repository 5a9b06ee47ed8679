"""Sampling from a checkpoint: PNGs per class, EMA by default, determinism, and the errors."""
from __future__ import annotations

import dataclasses

import pytest
import torch
from PIL import Image

from ddpm_model import checkpoint as ckpt
from ddpm_model.diffusion import DDPM, DiffusionConfig
from ddpm_model.presets import PRESETS
from ddpm_model.sample import SampleConfig, load_model, sample_to_folder


def write_checkpoint(run_dir, channels: int = 3, flat_config: bool = False):
    torch.manual_seed(0)
    unet = dataclasses.replace(PRESETS["tiny"], image_size=16, model_channels=16, in_channels=channels)
    model = DDPM(unet, DiffusionConfig(num_timesteps=50))
    ema_weights = {k: v + 0.01 for k, v in model.state_dict().items()}
    # flat_config: the one-dict model_config that checkpoints held before the two configs
    model_config = {**unet.to_dict(), **model.diffusion_config.to_dict()} if flat_config else model.to_dict()
    state = {"step": 4, "images_seen": 32, "model_config": model_config,
             "classes": ["abnormal", "normal"], "model": model.state_dict(),
             "ema": {"module": ema_weights, "decay": 0.9, "warmup": True, "num_updates": 4}}
    return ckpt.save_checkpoint(state, ckpt.step_path(run_dir, 4)), model, ema_weights


def config(tmp_path, **changes) -> SampleConfig:
    base = dict(checkpoint=tmp_path / "run", out=tmp_path / "out", n=3, steps=4, batch_size=2, device="cpu")
    return SampleConfig(**{**base, **changes})


def test_writes_pngs_per_class_from_a_run_folder(tmp_path):
    write_checkpoint(tmp_path / "run")
    results = sample_to_folder(config(tmp_path, classes=("normal",)))
    assert list(results) == ["normal"]
    paths, images = results["normal"]
    assert [p.name for p in paths] == ["0000.png", "0001.png", "0002.png"]
    assert images.shape == (3, 3, 16, 16) and images.dtype == torch.uint8
    with Image.open(paths[0]) as image:
        assert image.size == (16, 16) and image.mode == "RGB"
    again = sample_to_folder(config(tmp_path, classes=("normal",), out=tmp_path / "again"))
    assert torch.equal(again["normal"][1], images)  # same seed, same images


def test_every_class_by_default_and_greyscale(tmp_path):
    write_checkpoint(tmp_path / "run", channels=1)
    results = sample_to_folder(config(tmp_path, n=1))
    assert sorted(results) == ["abnormal", "normal"]
    with Image.open(results["abnormal"][0][0]) as image:
        assert image.mode == "L"


def test_ema_weights_by_default(tmp_path):
    _, model, ema_weights = write_checkpoint(tmp_path / "run")
    ema_model, classes, _ = load_model(tmp_path / "run")
    raw_model, _, _ = load_model(tmp_path / "run", ema=False)
    name = next(iter(ema_weights))
    assert torch.equal(ema_model.state_dict()[name], ema_weights[name])
    assert torch.equal(raw_model.state_dict()[name], model.state_dict()[name])
    assert classes == ["abnormal", "normal"] and not ema_model.training


def test_checkpoints_with_the_old_flat_config_still_load(tmp_path):
    _, model, _ = write_checkpoint(tmp_path / "run", flat_config=True)
    loaded, _, _ = load_model(tmp_path / "run", ema=False)
    assert (loaded.unet_config, loaded.diffusion_config) == (model.unet_config, model.diffusion_config)
    assert all(torch.equal(loaded.state_dict()[k], v) for k, v in model.state_dict().items())


def test_unknown_class_lists_the_valid_ones(tmp_path):
    write_checkpoint(tmp_path / "run")
    with pytest.raises(ValueError, match=r"--class: 'tumour' not in .*valid: abnormal, normal"):
        sample_to_folder(config(tmp_path, classes=("tumour",)))


def test_corrupt_and_mismatched_checkpoints(tmp_path):
    path, _, _ = write_checkpoint(tmp_path / "run")
    state = ckpt.load_checkpoint(path)
    state["model_config"]["unet"]["model_channels"] = 24
    bad = ckpt.save_checkpoint(state, tmp_path / "mismatch.pt")
    with pytest.raises(ckpt.CheckpointError, match="mismatch.pt: model does not match its saved config"):
        load_model(bad)
    path.write_bytes(b"garbage")
    with pytest.raises(ckpt.CheckpointError, match="not a readable checkpoint"):
        sample_to_folder(config(tmp_path))


@pytest.mark.parametrize("changes, flag", [({"n": 0}, "--n"), ({"batch_size": 0}, "--batch-size"), ({"steps": 0}, "--steps"),
                                           ({"sampler": "dpmpp-2m", "eta": 1.0}, "--eta 1.0: the dpmpp-2m sampler is deterministic")])
def test_bad_options_name_the_flag(tmp_path, changes, flag):
    with pytest.raises(ValueError, match=flag):
        config(tmp_path, **changes)


def test_the_default_sampler_is_dpmpp_2m_and_ddim_is_selectable(tmp_path):
    write_checkpoint(tmp_path / "run")
    solver = sample_to_folder(config(tmp_path, classes=("normal",)))["normal"][1]
    ddim = sample_to_folder(config(tmp_path, classes=("normal",), sampler="ddim", out=tmp_path / "ddim"))["normal"][1]
    assert solver.shape == ddim.shape and not torch.equal(solver, ddim)
    defaults = SampleConfig(checkpoint=tmp_path, out=tmp_path)
    assert (defaults.sampler.value, defaults.steps, defaults.eta) == ("dpmpp-2m", 25, 0.0)  # half DDIM-50's evaluations


def test_existing_samples_are_kept_unless_overwrite(tmp_path):
    write_checkpoint(tmp_path / "run")
    sample_to_folder(config(tmp_path, classes=("normal",), n=3))
    with pytest.raises(ValueError, match="--overwrite"):
        sample_to_folder(config(tmp_path, classes=("normal",), n=2))
    assert len(list((tmp_path / "out" / "normal").glob("*.png"))) == 3
    sample_to_folder(config(tmp_path, classes=("normal",), n=2, overwrite=True))
    assert sorted(p.name for p in (tmp_path / "out" / "normal").glob("*.png")) == ["0000.png", "0001.png"]


def test_the_runs_checkpoints_folder_is_read_as_its_run_folder(tmp_path):
    file, _, _ = write_checkpoint(tmp_path / "run")
    model, classes, used = load_model(tmp_path / "run" / "checkpoints")
    assert used == file and classes == ["abnormal", "normal"]
    (tmp_path / "empty" / "checkpoints").mkdir(parents=True)
    with pytest.raises(ckpt.CheckpointError, match="has no checkpoints"):
        load_model(tmp_path / "empty" / "checkpoints")


def test_a_guidance_that_overflows_is_refused_and_non_finite_samples_write_nothing(tmp_path, monkeypatch):
    with pytest.raises(ValueError, match=r"--guidance 1e\+308: above 100"):
        config(tmp_path, guidance=1e308)
    write_checkpoint(tmp_path / "run")
    real = DDPM.sample

    def second_class_breaks(self, labels, **options):
        images = real(self, labels, **options)
        return images * float("nan") if int(labels[0]) == 1 else images

    monkeypatch.setattr(DDPM, "sample", second_class_breaks)
    with pytest.raises(ValueError, match="came out not finite"):
        sample_to_folder(config(tmp_path))
    assert not any((tmp_path / "out").rglob("*.png"))  # the first class was not written either
