from pathlib import Path

import pytest
import torch

from ddpm_model.presets import PRESETS, describe_presets, preset_for_size
from ddpm_model.unet import UNet, count_parameters

DOCS = Path(__file__).resolve().parents[1] / "docs" / "model.md"


def test_presets_follow_the_analysis_table():
    table = {name: (p.image_size, p.model_channels, p.channel_multipliers, p.num_res_blocks,
                    tuple(int(a) for a in p.use_attention)) for name, p in PRESETS.items()}
    assert table == {
        "40": (40, 64, (1, 2, 4), 2, (0, 0, 1)),
        "96": (96, 64, (1, 2, 2, 4), 2, (0, 0, 1, 1)),
        "128": (128, 64, (1, 2, 2, 4, 8), 2, (0, 0, 0, 1, 1)),
        "256": (256, 64, (1, 2, 2, 4, 4, 8), 2, (0, 0, 0, 0, 1, 1)),
        "tiny": (32, 32, (1, 2, 2), 1, (0, 0, 1)),
    }


@pytest.mark.parametrize("name,parameters", [
    ("40", 16_432_963), ("96", 19_408_835), ("128", 67_293_123), ("256", 77_202_115),
    ("tiny", 1_192_771)])
def test_parameter_counts_quoted_in_the_docs(name, parameters):
    config = PRESETS[name].config(num_classes=2).unet_config()
    with torch.device("meta"):
        assert count_parameters(UNet(config)) == parameters


def test_preset_for_size():
    assert preset_for_size(96) is PRESETS["96"]
    assert preset_for_size(128).channel_multipliers == (1, 2, 2, 4, 8)
    small = preset_for_size(16)
    assert small.name == "tiny" and small.image_size == 16
    with pytest.raises(ValueError, match="size: no preset for 64 px; presets exist for 40, 96, "
                                         "128, 256"):
        preset_for_size(64)


def test_kwargs_and_overrides():
    kwargs = PRESETS["tiny"].kwargs(num_classes=3, image_size=16, aug_dim=6)
    assert kwargs["num_classes"] == 3 and kwargs["image_size"] == 16 and kwargs["aug_dim"] == 6
    assert kwargs["norm_groups"] == 8 and "name" not in kwargs and "estimate" not in kwargs
    model = PRESETS["tiny"].create(num_classes=3, image_size=16, in_channels=1)
    assert model.config.in_channels == 1
    with pytest.raises(ValueError, match=r"overrides: unknown create_ddpm arguments \['colour'\]"):
        PRESETS["tiny"].kwargs(2, colour=True)


def test_docs_show_the_generated_flows():
    """docs/model.md pastes `python -m ddpm_model.presets`; fail when the code changes."""
    text = DOCS.read_text(encoding="utf-8")
    for block in describe_presets().split("```")[1::2]:
        assert block in text, "docs/model.md is stale; paste `python -m ddpm_model.presets`"
