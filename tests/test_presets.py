import dataclasses
from pathlib import Path

import pytest

from ddpm_model.diffusion import DiffusionConfig, Prediction
from ddpm_model.presets import (
    NOTES, PRESETS, default_batch_size, describe_presets, preset_for_size, resolve_model,
)
from ddpm_model.unet import UNetConfig, count_parameters

DOCS = Path(__file__).resolve().parents[1] / "docs" / "model.md"


def test_presets_follow_the_design_table():
    table = {name: (p.image_size, p.model_channels, p.channel_multipliers, p.num_res_blocks,
                    tuple(int(a) for a in p.use_attention)) for name, p in PRESETS.items()}
    assert table == {
        "40": (40, 64, (1, 2, 4), 2, (0, 0, 1)),
        "96": (96, 64, (1, 2, 2, 4), 2, (0, 0, 1, 1)),
        "128": (128, 64, (1, 2, 2, 4, 8), 2, (0, 0, 0, 1, 1)),
        "256": (256, 64, (1, 2, 2, 4, 4, 8), 2, (0, 0, 0, 0, 1, 1)),
        "tiny": (32, 32, (1, 2, 2), 1, (0, 0, 1)),
    }
    assert all(isinstance(p, UNetConfig) and p.num_classes == 2 and p.in_channels == 3
               for p in PRESETS.values())
    assert set(NOTES) == set(PRESETS)
    assert {name: n.batch_size for name, n in NOTES.items()} == {
        "40": 8, "96": 6, "128": 4, "256": 2, "tiny": 16}


@pytest.mark.parametrize("name,parameters", [
    ("40", 16_432_963), ("96", 19_408_835), ("128", 67_293_123), ("256", 77_202_115),
    ("tiny", 1_192_771)])
def test_parameter_counts_quoted_in_the_docs(name, parameters):
    assert count_parameters(PRESETS[name]) == parameters


def test_preset_for_size_gives_the_presets():
    assert preset_for_size(96) is PRESETS["96"]
    assert preset_for_size(128).channel_multipliers == (1, 2, 2, 4, 8)
    small = preset_for_size(16)
    assert small == dataclasses.replace(PRESETS["tiny"], image_size=16)
    assert preset_for_size(32) == PRESETS["tiny"]


@pytest.mark.parametrize("size,multipliers,bottleneck", [
    (48, (1, 2, 4), 12),
    (64, (1, 2, 2, 4), 8),
    (80, (1, 2, 2, 4), 10),
    (160, (1, 2, 2, 4, 8), 10),
    (320, (1, 2, 2, 4, 4, 8), 10),
    (512, (1, 2, 2, 4, 4, 8, 8), 8),
])
def test_other_sizes_get_a_derived_preset(size, multipliers, bottleneck):
    config = preset_for_size(size)
    assert config.image_size == size and config.channel_multipliers == multipliers
    assert config.stage_sizes[-1] == bottleneck
    stages = len(multipliers)
    assert config.use_attention == (False,) * (stages - 2) + (True, True)
    assert (config.model_channels, config.num_res_blocks) == (64, 2)


@pytest.mark.parametrize("size,nearby", [(50, "44, 48, 64, 72"), (200, "176, 192, 256, 288"),
                                         (24, "16, 32, 36")])
def test_sizes_without_a_layout_name_nearby_ones(size, nearby):
    with pytest.raises(ValueError, match=f"size: no architecture for {size} px.*nearby sizes "
                                         f"that work: {nearby}"):
        preset_for_size(size)


@pytest.mark.parametrize("given,batch", [
    (40, 8), (96, 6), (128, 4), (256, 2), (16, 16), (32, 16),
    (48, 6), (64, 6), (160, 2), (512, 1),
    (PRESETS["96"], 6), (dataclasses.replace(PRESETS["tiny"], image_size=16), 16),
])
def test_default_batch_size(given, batch):
    assert default_batch_size(given) == batch


def test_resolve_model_applies_data_then_overrides():
    unet, diffusion = resolve_model(16, 1, 3, "tiny", {
        "model_channels": 16, "aug_dim": 9, "num_timesteps": 100, "prediction": "v"})
    assert unet == dataclasses.replace(PRESETS["tiny"], image_size=16, in_channels=1,
                                       num_classes=3, model_channels=16, aug_dim=9)
    assert diffusion == DiffusionConfig(num_timesteps=100, prediction=Prediction.V)
    unet, diffusion = resolve_model(96, 3, 2, None, {})
    assert unet == PRESETS["96"] and diffusion == DiffusionConfig()
    unet, _ = resolve_model(160, 3, 2, None, {"use_attention": (0, 0, 0, 0, 1)})
    assert unet.channel_multipliers == (1, 2, 2, 4, 8) and unet.use_attention[-2:] == (False, True)


def test_resolve_model_errors_list_the_valid_names():
    with pytest.raises(ValueError, match="preset: 'huge' unknown; valid: 40, 96, 128, 256, tiny"):
        resolve_model(96, 3, 2, "huge", {})
    with pytest.raises(ValueError, match=r"overrides: unknown model fields \['colour'\]; valid: "
                                         r"model_channels, .*num_timesteps, .*class_dropout"):
        resolve_model(96, 3, 2, None, {"colour": True})
    with pytest.raises(ValueError, match=r"overrides: \['image_size'\] come from the data"):
        resolve_model(96, 3, 2, None, {"image_size": 64})
    with pytest.raises(ValueError, match="use_attention: 3 flags"):
        resolve_model(96, 3, 2, None, {"use_attention": (0, 0, 1)})


def test_docs_show_the_generated_flows():
    """docs/model.md pastes `python -m ddpm_model.presets`; fail when the code changes."""
    text = DOCS.read_text(encoding="utf-8")
    for block in describe_presets().split("```")[1::2]:
        assert block in text, "docs/model.md is stale; paste `python -m ddpm_model.presets`"
