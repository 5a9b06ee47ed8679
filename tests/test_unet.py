import dataclasses
import json

import pytest
import torch
from torch import nn

from ddpm_model.presets import PRESETS
from ddpm_model.unet import (DownStage, ResBlock, SelfAttention, UNet, UNetConfig, UpsampleMode,
                             count_parameters, describe, timestep_embedding)


def small_config(**overrides) -> UNetConfig:
    base = dict(image_size=16, model_channels=16, channel_multipliers=(1, 2, 2),
                num_res_blocks=1, use_attention=(False, False, True), num_classes=2,
                norm_groups=8, dropout=0.0)
    return UNetConfig(**{**base, **overrides})


def randomise_output(unet: UNet) -> UNet:
    """The output conv is zero-initialised; give it weights so outputs depend on the input."""
    torch.manual_seed(1)
    for module in unet.modules():
        if module is unet.aug_embed:
            continue
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.abs().sum() == 0:
            nn.init.normal_(module.weight, std=0.05)
    return unet


def forward(unet: UNet, n: int, seed: int = 0, **kwargs) -> torch.Tensor:
    c = unet.config
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, c.in_channels, c.image_size, c.image_size, generator=g)
    t = torch.randint(0, 1000, (n,), generator=g)
    labels = torch.randint(0, c.num_classes + 1, (n,), generator=g)
    with torch.no_grad():
        return unet(x, t, labels, **kwargs)


@pytest.mark.parametrize("name,size,batch", [
    ("40", 40, 1), ("96", 96, 1), ("128", 128, 1),
    pytest.param("256", 256, 1, marks=pytest.mark.slow),
    ("tiny", 16, 2), ("tiny", 32, 2)])
def test_preset_output_shape(name, size, batch):
    config = dataclasses.replace(PRESETS[name], image_size=size)
    unet = UNet(config).eval()
    assert forward(unet, batch).shape == (batch, 3, size, size)


@pytest.mark.parametrize("in_channels", [1, 3])
def test_grey_and_rgb(in_channels):
    unet = UNet(small_config(in_channels=in_channels))
    assert forward(unet, 2).shape == (2, in_channels, 16, 16)


def test_stages_halve_the_resolution_and_attend_where_flagged():
    """The 96 px flow: 96 -> 48 -> 24 -> 12, attention at 24, 12 and the middle."""
    config = UNetConfig(image_size=96, model_channels=32, channel_multipliers=(1, 2, 2, 4),
                        num_res_blocks=2, use_attention=(False, False, True, True),
                        num_classes=2)
    unet = UNet(config).eval()
    stage_inputs, attention_inputs = [], []
    for stage in unet.down:
        stage.blocks[0].register_forward_hook(
            lambda m, args, out: stage_inputs.append((out.shape[1], out.shape[-1])))
    for module in unet.modules():
        if isinstance(module, SelfAttention):
            module.register_forward_hook(
                lambda m, args, out: attention_inputs.append(out.shape[-1]))
    forward(unet, 1)
    assert stage_inputs == [(32, 96), (64, 48), (64, 24), (128, 12)]
    # 2 blocks at 24 and 12 down, the middle at 12, 3 blocks at 12 and 24 up.
    assert sorted(attention_inputs) == sorted([24, 24, 12, 12, 12, 12, 12, 12, 24, 24, 24])


@pytest.mark.parametrize("mode", list(UpsampleMode))
def test_upsample_modes(mode):
    unet = UNet(small_config(upsample=mode.value))
    transposed = [m for m in unet.modules() if isinstance(m, nn.ConvTranspose2d)]
    assert len(transposed) == (2 if mode is UpsampleMode.CONV_TRANSPOSE else 0)
    assert forward(randomise_output(unet), 2).shape == (2, 3, 16, 16)


def test_upsample_modes_differ():
    outputs = {}
    for mode in ("bilinear", "nearest"):
        torch.manual_seed(0)
        outputs[mode] = forward(randomise_output(UNet(small_config(upsample=mode))), 2)
    assert not torch.allclose(outputs["bilinear"], outputs["nearest"])


def test_conditioning_changes_the_output():
    unet = randomise_output(UNet(small_config()))
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        base = unet(x, torch.tensor([10, 10]), torch.tensor([0, 0]))
        other_class = unet(x, torch.tensor([10, 10]), torch.tensor([1, 2]))
        other_time = unet(x, torch.tensor([500, 500]), torch.tensor([0, 0]))
    assert not torch.allclose(base, other_class)
    assert not torch.allclose(base, other_time)


def test_augmentation_input_starts_at_zero_and_zeros_mean_identity():
    unet = randomise_output(UNet(small_config(aug_dim=4))).eval()
    aug = torch.randn(2, 4)
    without = forward(unet, 2)
    # Zero-initialised projection: a fresh model ignores the parameters.
    assert torch.equal(forward(unet, 2, aug_params=aug), without)
    nn.init.normal_(unet.aug_embed.weight)
    assert not torch.allclose(forward(unet, 2, aug_params=aug), without)
    # Zeros (no augmentation, as when sampling) equal leaving the input out.
    assert torch.equal(forward(unet, 2, aug_params=torch.zeros(2, 4)), without)


def zeroed_layers(unet: UNet) -> list[str]:
    return [name for name, module in unet.named_modules()
            if isinstance(module, (nn.Conv2d, nn.Linear)) and not module.weight.any()]


def test_zero_init_zeros_each_residual_branch_end_and_the_output():
    torch.manual_seed(0)
    unet = UNet(small_config(aug_dim=4))
    zeroed = zeroed_layers(unet)
    blocks = [m for m in unet.modules() if isinstance(m, ResBlock)]
    attentions = [m for m in unet.modules() if isinstance(m, SelfAttention)]
    assert len(zeroed) == len(blocks) + len(attentions) + 2  # + conv_out + aug_embed
    assert all(not b.conv2.weight.any() and not b.conv2.bias.any() for b in blocks)
    assert all(not a.proj.weight.any() for a in attentions)
    assert torch.equal(forward(unet.eval(), 2), torch.zeros(2, 3, 16, 16))


def test_no_zero_init_keeps_pytorch_init_but_not_for_the_augmentation_input():
    torch.manual_seed(0)
    unet = UNet(small_config(aug_dim=4, zero_init=False)).eval()
    assert zeroed_layers(unet) == ["aug_embed"]  # a fresh model still ignores the augmentation
    out = forward(unet, 2)
    assert out.abs().mean() > 0.01
    assert torch.equal(forward(unet, 2, aug_params=torch.randn(2, 4)), out)


def test_augmentation_input_errors():
    with pytest.raises(ValueError, match="aug_dim=0; pass aug_dim=4"):
        forward(UNet(small_config()), 2, aug_params=torch.zeros(2, 4))
    with pytest.raises(ValueError, match=r"aug_params: shape \(2, 3\)"):
        forward(UNet(small_config(aug_dim=4)), 2, aug_params=torch.zeros(2, 3))


def test_channels_last_matches_contiguous():
    unet = randomise_output(UNet(small_config())).eval()
    x = torch.randn(2, 3, 16, 16)
    t, labels = torch.tensor([3, 700]), torch.tensor([0, 1])
    with torch.no_grad():
        reference = unet(x, t, labels)
        fast = unet.to(memory_format=torch.channels_last)(
            x.to(memory_format=torch.channels_last), t, labels)
    assert torch.allclose(reference, fast, atol=1e-5)


def test_gradients_reach_every_parameter():
    unet = randomise_output(UNet(small_config(aug_dim=2)))
    x = torch.randn(2, 3, 16, 16)
    out = unet(x, torch.tensor([1, 2]), torch.tensor([0, 2]), torch.randn(2, 2))
    out.square().mean().backward()
    missing = [n for n, p in unet.named_parameters() if p.grad is None]
    assert not missing


def test_timestep_embedding():
    emb = timestep_embedding(torch.tensor([0, 1, 999]), 9)
    assert emb.shape == (3, 9)
    assert torch.equal(emb[0, :4], torch.ones(4)) and torch.equal(emb[0, 4:], torch.zeros(5))
    assert not torch.allclose(emb[1], emb[2])


def test_describe_counts_the_real_model():
    config = PRESETS["96"]
    text = describe(config)
    total = count_parameters(config)
    assert f"Parameters: {total:,}" in text
    for fragment in ("Down1: 96×96, 64 → 64 ch", "Down4: 12×12, 128 → 256 ch, 2 res blocks + "
                     "attention", "Middle: 12×12, 256 ch", "then ↑ 96×96 (bilinear)"):
        assert fragment in text
    assert "attention at 24×24, 12×12 and the middle" in text
    # Per-part counts add up to the total (to the printed rounding).
    parts = [float(line.rsplit(None, 1)[-1].rstrip("M")) for line in text.splitlines()
             if line.startswith(("├", "└"))]
    assert sum(parts) == pytest.approx(total / 1e6, abs=0.01 * len(parts))


def test_down_stage_keeps_every_skip():
    unet = UNet(small_config(num_res_blocks=2))
    skips: list[torch.Tensor] = []
    emb = torch.zeros(1, unet.config.embedding_dim)
    h = unet.down[0](torch.zeros(1, 16, 16, 16), emb, skips)
    assert isinstance(unet.down[0], DownStage)
    assert len(skips) == 3 and h.shape[-1] == 8  # two blocks + the downsampled output


def test_config_stores_enums_and_round_trips_as_plain_data():
    config = small_config(upsample="nearest", channel_multipliers=[1, 2, 2],
                          use_attention=[0, 0, 1])
    assert config.upsample is UpsampleMode.NEAREST
    assert config.channel_multipliers == (1, 2, 2) and config.use_attention == (False, False, True)
    plain = config.to_dict()
    assert plain["upsample"] == "nearest" and type(plain["upsample"]) is str
    assert UNetConfig(**json.loads(json.dumps(plain))) == config
    # num_classes and in_channels default to 2 classes of RGB images
    assert UNetConfig(16, 16, (1,), 1, (0,), norm_groups=8).num_classes == 2


@pytest.mark.parametrize("config", [small_config(), small_config(aug_dim=3, in_channels=1),
                                    PRESETS["96"]], ids=["small", "aug-grey", "96"])
def test_count_parameters_on_meta_equals_the_real_count(config):
    real = sum(p.numel() for p in UNet(config).parameters())
    assert count_parameters(config) == real


def _gradients_and_saved_bytes(checkpointing: bool) -> tuple[dict[str, torch.Tensor], int]:
    torch.manual_seed(0)
    unet = randomise_output(UNet(small_config(dropout=0.3, num_res_blocks=2)))
    unet.enable_gradient_checkpointing(checkpointing)
    g = torch.Generator().manual_seed(0)
    x, t = torch.randn(2, 3, 16, 16, generator=g), torch.tensor([3, 700])
    saved: dict[int, int] = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    torch.manual_seed(1)  # the dropout masks
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        out = unet(x, t, torch.tensor([0, 2]))
    out.square().mean().backward()
    parameters = {p.untyped_storage().data_ptr() for p in unet.parameters()}
    kept = sum(n for ptr, n in saved.items() if ptr not in parameters)
    return {name: p.grad for name, p in unet.named_parameters()}, kept


def test_gradient_checkpointing_gives_the_same_gradients_with_less_saved():
    plain, plain_bytes = _gradients_and_saved_bytes(False)
    checkpointed, checkpointed_bytes = _gradients_and_saved_bytes(True)
    assert plain.keys() == checkpointed.keys()
    for name in plain:  # the recomputation replays the RNG state: same dropout masks
        assert torch.allclose(plain[name], checkpointed[name], rtol=0, atol=1e-6), name
    assert checkpointed_bytes < 0.6 * plain_bytes


def test_gradient_checkpointing_only_while_training_with_gradients(monkeypatch):
    import ddpm_model.unet

    calls = []
    checkpoint = ddpm_model.unet.checkpoint
    monkeypatch.setattr(ddpm_model.unet, "checkpoint",
                        lambda *args, **kwargs: calls.append(1) or checkpoint(*args, **kwargs))
    unet = UNet(small_config())
    unet.enable_gradient_checkpointing()
    assert unet.is_gradient_checkpointing
    forward(unet.eval(), 1)  # eval mode without gradients: sampling is untouched
    assert not calls
    unet.train()(torch.zeros(1, 3, 16, 16), torch.tensor([1]), torch.tensor([0]))
    blocks = [m for m in unet.modules() if isinstance(m, (ResBlock, SelfAttention))]
    assert len(calls) == len(blocks) == 15  # each residual and attention block, once
    unet.enable_gradient_checkpointing(False)
    assert not unet.is_gradient_checkpointing
