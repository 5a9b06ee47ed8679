"""Class-conditional U-Net that predicts the noise (or v) of a noisy image.

Layout (Ho et al. 2020; Dhariwal & Nichol 2021): stage i runs at image_size / 2^i with
model_channels * channel_multipliers[i] channels and `num_res_blocks` residual blocks, then a
strided convolution halves the resolution for the next stage; the middle (res, attention, res)
runs at the smallest resolution; the up path mirrors it with one extra block per stage, each
block taking a skip connection, and ends each stage with interpolation + convolution.
Timestep, class and (optionally) augmentation parameters enter every residual block through a
scale-shift of its second GroupNorm.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.checkpoint import checkpoint

from .choices import UpsampleMode, parse_choice, plain_dict  # noqa: F401 (UpsampleMode re-exported)


@dataclass(frozen=True)
class UNetConfig:
    """The architecture of the U-Net: the one place its settings are declared. A preset
    (`ddpm_model.presets.PRESETS`) is an instance; an override is `dataclasses.replace`.
    Validated on construction (ValueError naming the field and the fix)."""

    image_size: int                      # height = width, pixels; divisible by 2^(stages-1)
    model_channels: int                  # width of stage 1; the embedding is 4x as wide
    channel_multipliers: tuple[int, ...]  # stage i: model_channels * m[i] ch at image_size / 2^i
    num_res_blocks: int                  # per down stage; up stages get one more (extra skip)
    use_attention: tuple[bool, ...]      # per stage; cost grows with pixels^2: low resolutions
    num_classes: int = 2                 # labels 0..num_classes-1; num_classes = null (guidance)
    in_channels: int = 3                 # 1 (grey) or 3 (RGB); the output has as many
    dropout: float = 0.1                 # in residual blocks; small data sets overfit without it
    upsample: UpsampleMode = UpsampleMode.BILINEAR  # interpolation + conv: no checkerboards
    aug_dim: int = 0                     # augmentation parameters fed to the embedding; 0 = none
    norm_groups: int = 32                # GroupNorm groups; must divide every stage's channels
    attention_head_channels: int = 64    # channels per head; heads = channels / this
    zero_init: bool = True               # each residual branch starts as the identity (ADM); False: PyTorch's init

    def __post_init__(self) -> None:
        # Accept lists (from JSON), 0/1 flags (from the CLI) and strings; store tuples and the Enum.
        object.__setattr__(self, "channel_multipliers",
                           tuple(int(m) for m in self.channel_multipliers))
        object.__setattr__(self, "use_attention", tuple(bool(a) for a in self.use_attention))
        object.__setattr__(self, "upsample", parse_choice(UpsampleMode, self.upsample, "upsample"))
        self._validate()

    def to_dict(self) -> dict[str, Any]:
        """Plain data (lists, strings, numbers) for JSON and `torch.load(weights_only=True)`;
        `UNetConfig(**d)` reads it back."""
        return plain_dict(self)

    def _validate(self) -> None:
        mults, attention = self.channel_multipliers, self.use_attention
        if not mults or any(m < 1 for m in mults):
            raise ValueError(f"channel_multipliers: {mults} must be a non-empty tuple of "
                             f"positive integers, e.g. (1, 2, 2, 4)")
        if len(attention) != len(mults):
            raise ValueError(
                f"use_attention: {len(attention)} flags {tuple(int(a) for a in attention)} but "
                f"channel_multipliers {mults} has {len(mults)} stages; give one flag per stage, "
                f"e.g. {tuple([0] * (len(mults) - 1) + [1])}")
        factor = 2 ** (len(mults) - 1)
        if self.image_size < factor or self.image_size % factor:
            raise ValueError(
                f"image_size: {self.image_size} is not divisible by 2^(stages-1) = {factor} "
                f"for {len(mults)} stages {mults}; use a multiple of {factor} or fewer stages")
        if self.num_classes < 1:
            raise ValueError(f"num_classes: {self.num_classes} must be >= 1")
        for name in ("model_channels", "num_res_blocks", "in_channels", "norm_groups",
                     "attention_head_channels"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name}: {getattr(self, name)} must be >= 1")
        if self.aug_dim < 0:
            raise ValueError(f"aug_dim: {self.aug_dim} must be >= 0 (0 = no augmentation input)")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout: {self.dropout} must be in [0, 1)")
        for i, channels in enumerate(self.stage_channels):
            if channels % self.norm_groups:
                raise ValueError(
                    f"model_channels: stage {i + 1} has {self.model_channels} x {mults[i]} = "
                    f"{channels} channels, not divisible into norm_groups={self.norm_groups} "
                    f"GroupNorm groups; use a model_channels that is a multiple of "
                    f"{self.norm_groups} or change norm_groups")
            if attention[i] and channels > self.attention_head_channels \
                    and channels % self.attention_head_channels:
                raise ValueError(
                    f"attention_head_channels: {self.attention_head_channels} does not divide "
                    f"the {channels} channels of attention stage {i + 1}")
        if self.stage_channels[-1] > self.attention_head_channels \
                and self.stage_channels[-1] % self.attention_head_channels:
            raise ValueError(
                f"attention_head_channels: {self.attention_head_channels} does not divide the "
                f"{self.stage_channels[-1]} channels of the middle attention")

    @property
    def stage_channels(self) -> tuple[int, ...]:
        return tuple(self.model_channels * m for m in self.channel_multipliers)

    @property
    def stage_sizes(self) -> tuple[int, ...]:
        return tuple(self.image_size // 2 ** i for i in range(len(self.channel_multipliers)))

    @property
    def embedding_dim(self) -> int:
        return 4 * self.model_channels


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal embedding of (N,) timesteps -> (N, dim) (Vaswani et al. 2017, sec. 3.5)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period)
                      * torch.arange(half, device=t.device, dtype=torch.float32) / half)
    args = t.float()[:, None] * freqs[None]
    embedding = torch.cat([torch.cos(args), torch.sin(args)], dim=1)
    return F.pad(embedding, (0, dim % 2))


def _zero(module: nn.Module, enabled: bool = True) -> nn.Module:
    """Zero a layer's parameters (when `enabled`), so a residual branch starts as the identity."""
    if enabled:
        for p in module.parameters():
            nn.init.zeros_(p)
    return module


class ResBlock(nn.Module):
    """GroupNorm-SiLU-conv, scale-shift by the embedding, GroupNorm-SiLU-dropout-conv, + skip.
    (N, in_ch, H, W) -> (N, out_ch, H, W)."""

    def __init__(self, in_ch: int, out_ch: int, emb_dim: int, dropout: float, groups: int,
                 zero_init: bool):
        super().__init__()
        self.norm1 = nn.GroupNorm(groups, in_ch)
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, padding=1)
        self.emb_proj = nn.Linear(emb_dim, 2 * out_ch)
        self.norm2 = nn.GroupNorm(groups, out_ch)
        self.dropout = nn.Dropout(dropout)
        self.conv2 = _zero(nn.Conv2d(out_ch, out_ch, 3, padding=1), zero_init)
        self.skip = nn.Conv2d(in_ch, out_ch, 1) if in_ch != out_ch else nn.Identity()

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        """emb: (N, emb_dim), already passed through SiLU."""
        h = self.conv1(F.silu(self.norm1(x)))
        scale, shift = self.emb_proj(emb)[:, :, None, None].chunk(2, dim=1)
        h = torch.addcmul(shift, self.norm2(h), 1 + scale)  # norm(h) (1 + scale) + shift
        h = self.conv2(self.dropout(F.silu(h)))
        return self.skip(x) + h


class SelfAttention(nn.Module):
    """Multi-head self-attention over the H*W positions, residual. (N, C, H, W) -> same.

    Works on (N, H*W, C) tokens, which is a free view of a channels_last tensor, and uses the
    fused F.scaled_dot_product_attention kernel."""

    def __init__(self, channels: int, head_channels: int, groups: int, zero_init: bool):
        super().__init__()
        self.heads = max(1, channels // head_channels)
        self.norm = nn.GroupNorm(groups, channels)
        self.qkv = nn.Linear(channels, 3 * channels)
        self.proj = _zero(nn.Linear(channels, channels), zero_init)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        tokens = self.norm(x).flatten(2).transpose(1, 2)
        q, k, v = self.qkv(tokens).view(n, h * w, 3, self.heads, c // self.heads).permute(
            2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v)  # (N, heads, H*W, C/heads)
        out = self.proj(out.transpose(1, 2).reshape(n, h * w, c))
        return x + out.transpose(1, 2).reshape(n, c, h, w)


class Downsample(nn.Module):
    """Strided 3x3 convolution: (N, C, H, W) -> (N, C, H/2, W/2)."""

    def __init__(self, channels: int):
        super().__init__()
        self.conv = nn.Conv2d(channels, channels, 3, stride=2, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(x)


class Upsample(nn.Module):
    """(N, C, H, W) -> (N, C, 2H, 2W) by interpolation + 3x3 conv, or a transposed conv."""

    def __init__(self, channels: int, mode: UpsampleMode):
        super().__init__()
        self.mode = mode
        if mode is UpsampleMode.CONV_TRANSPOSE:
            self.conv = nn.ConvTranspose2d(channels, channels, 4, stride=2, padding=1)
        else:
            self.conv = nn.Conv2d(channels, channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mode is not UpsampleMode.CONV_TRANSPOSE:
            # align_corners=False keeps the 2x grid aligned with the stride-2 downsampling grid;
            # True would stretch it by (2n-1)/(2n-2) and shift features towards the borders.
            align = None if self.mode is UpsampleMode.NEAREST else False
            x = F.interpolate(x, scale_factor=2.0, mode=self.mode.value, align_corners=align)
        return self.conv(x)


class Checkpointed(nn.Module):
    """A part of the U-Net that calls its residual and attention blocks through `run`, which
    recomputes their activations in the backward pass instead of keeping them when
    `gradient_checkpointing` is set (Chen et al. 2016, arXiv 1604.06174)."""

    gradient_checkpointing = False  # set by UNet.enable_gradient_checkpointing

    def run(self, block: nn.Module, *args: torch.Tensor) -> torch.Tensor:
        if self.gradient_checkpointing and self.training and torch.is_grad_enabled():
            # Non-reentrant: works under DDP and torch.compile; the RNG state is replayed, so
            # dropout draws the same mask in the recomputation and gradients are unchanged.
            return checkpoint(block, *args, use_reentrant=False)
        return block(*args)


class DownStage(Checkpointed):
    """Res blocks (+ attention) at one resolution, then optionally a downsample.
    Appends every block output and the downsampled output to `skips`."""

    def __init__(self, blocks: list[nn.Module], attentions: list[nn.Module] | None,
                 downsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.downsample = downsample

    def forward(self, x: torch.Tensor, emb: torch.Tensor, skips: list[torch.Tensor]
                ) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = self.run(block, x, emb)
            if self.attentions is not None:
                x = self.run(self.attentions[i], x)
            skips.append(x)
        if self.downsample is not None:
            x = self.downsample(x)
            skips.append(x)
        return x


class UpStage(Checkpointed):
    """Res blocks (+ attention), each on [x, skip] concatenated, then optionally an upsample."""

    def __init__(self, blocks: list[nn.Module], attentions: list[nn.Module] | None,
                 upsample: nn.Module | None):
        super().__init__()
        self.blocks = nn.ModuleList(blocks)
        self.attentions = nn.ModuleList(attentions) if attentions else None
        self.upsample = upsample

    def forward(self, x: torch.Tensor, emb: torch.Tensor, skips: list[torch.Tensor]
                ) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = self.run(block, torch.cat([x, skips.pop()], dim=1), emb)
            if self.attentions is not None:
                x = self.run(self.attentions[i], x)
        if self.upsample is not None:
            x = self.upsample(x)
        return x


class Middle(Checkpointed):
    """Res block, self-attention, res block at the smallest resolution."""

    def __init__(self, channels: int, config: UNetConfig):
        super().__init__()
        args = (config.embedding_dim, config.dropout, config.norm_groups, config.zero_init)
        self.block1 = ResBlock(channels, channels, *args)
        self.attention = SelfAttention(channels, config.attention_head_channels,
                                       config.norm_groups, config.zero_init)
        self.block2 = ResBlock(channels, channels, *args)

    def forward(self, x: torch.Tensor, emb: torch.Tensor) -> torch.Tensor:
        x = self.run(self.block1, x, emb)
        return self.run(self.block2, self.run(self.attention, x), emb)


class UNet(nn.Module):
    """eps (or v) = UNet(x_t, t, labels, aug_params).

    x_t (N, C, H, W) float; t (N,) timesteps; labels (N,) long in [0, num_classes], where
    num_classes is the null class of classifier-free guidance; aug_params (N, aug_dim) float or
    None (= zeros = no augmentation; the projection has no bias, so both give the same output).
    Returns (N, C, H, W).
    """

    def __init__(self, config: UNetConfig):
        super().__init__()
        self.config = config
        c = config
        emb_dim = c.embedding_dim
        mode = c.upsample
        block_args = (emb_dim, c.dropout, c.norm_groups, c.zero_init)

        def attention(channels: int) -> SelfAttention:
            return SelfAttention(channels, c.attention_head_channels, c.norm_groups, c.zero_init)

        self.time_embed = nn.Sequential(
            nn.Linear(c.model_channels, emb_dim), nn.SiLU(), nn.Linear(emb_dim, emb_dim))
        self.class_embed = nn.Embedding(c.num_classes + 1, emb_dim)
        # Zero-initialised, so adding the augmentation input leaves an untrained model unchanged
        # (Karras et al. 2022, "augmentation regularisation", appendix C.5).
        self.aug_embed = _zero(nn.Linear(c.aug_dim, emb_dim, bias=False)) if c.aug_dim else None
        self.conv_in = nn.Conv2d(c.in_channels, c.model_channels, 3, padding=1)

        channels, skip_channels = c.model_channels, [c.model_channels]
        last = len(c.channel_multipliers) - 1
        self.down = nn.ModuleList()
        for i, out_ch in enumerate(c.stage_channels):
            blocks, attentions = [], []
            for _ in range(c.num_res_blocks):
                blocks.append(ResBlock(channels, out_ch, *block_args))
                if c.use_attention[i]:
                    attentions.append(attention(out_ch))
                channels = out_ch
                skip_channels.append(channels)
            downsample = Downsample(channels) if i != last else None
            if downsample is not None:
                skip_channels.append(channels)
            self.down.append(DownStage(blocks, attentions, downsample))

        self.middle = Middle(channels, c)

        self.up = nn.ModuleList()
        for i, out_ch in reversed(list(enumerate(c.stage_channels))):
            blocks, attentions = [], []
            for _ in range(c.num_res_blocks + 1):
                blocks.append(ResBlock(channels + skip_channels.pop(), out_ch, *block_args))
                if c.use_attention[i]:
                    attentions.append(attention(out_ch))
                channels = out_ch
            upsample = Upsample(channels, mode) if i != 0 else None
            self.up.append(UpStage(blocks, attentions, upsample))

        self.norm_out = nn.GroupNorm(c.norm_groups, channels)
        self.conv_out = _zero(nn.Conv2d(channels, c.in_channels, 3, padding=1), c.zero_init)

    def enable_gradient_checkpointing(self, enabled: bool = True) -> None:
        """Recompute the residual and attention blocks' activations in backward instead of
        storing them (training with gradients only; sampling is unaffected): the same
        gradients and less memory, for a second forward pass through those blocks.
        (The name is diffusers'.)"""
        for module in self.modules():
            if isinstance(module, Checkpointed):
                module.gradient_checkpointing = enabled

    @property
    def is_gradient_checkpointing(self) -> bool:
        return self.middle.gradient_checkpointing

    def embed(self, t: torch.Tensor, labels: torch.Tensor,
              aug_params: torch.Tensor | None) -> torch.Tensor:
        """(N, emb_dim) conditioning vector: timestep + class (+ augmentation) embeddings."""
        emb = self.time_embed(timestep_embedding(t, self.config.model_channels))
        emb = emb + self.class_embed(labels)
        if aug_params is not None:
            if self.aug_embed is None:
                raise ValueError(
                    f"aug_params: given with shape {tuple(aug_params.shape)} but the model was "
                    f"built with aug_dim=0; pass aug_dim={aug_params.shape[-1]} to create_ddpm "
                    f"or omit aug_params")
            if aug_params.shape != (labels.shape[0], self.config.aug_dim):
                raise ValueError(f"aug_params: shape {tuple(aug_params.shape)}, expected "
                                 f"({labels.shape[0]}, aug_dim={self.config.aug_dim})")
            emb = emb + self.aug_embed(aug_params.to(emb.dtype))
        return emb

    def forward(self, x: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                aug_params: torch.Tensor | None = None) -> torch.Tensor:
        emb = F.silu(self.embed(t, labels, aug_params)).to(x.dtype)
        h = self.conv_in(x)
        skips = [h]
        for stage in self.down:
            h = stage(h, emb, skips)
        h = self.middle(h, emb)
        for stage in self.up:
            h = stage(h, emb, skips)
        return self.conv_out(F.silu(self.norm_out(h)))


def _numel(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def count_parameters(config: UNetConfig) -> int:
    """Parameters of `UNet(config)`, built on the meta device: no memory, no initialisation."""
    with torch.device("meta"):
        return _numel(UNet(config))


def describe(config: UNetConfig) -> str:
    """Text diagram of the U-Net's resolution flow with parameter counts, built from the model
    itself (so it cannot drift from the code). Built on the meta device: no memory, instant."""
    with torch.device("meta"):
        unet = UNet(config)
    c = config
    sizes, chans = c.stage_sizes, c.stage_channels
    mode = c.upsample

    def res(s: int) -> str:
        return f"{s}×{s}"

    def millions(module: nn.Module) -> str:
        return f"{_numel(module) / 1e6:.2f}M"

    lines = [f"Input: {res(c.image_size)}×{c.in_channels} → conv {c.in_channels}→"
             f"{c.model_channels}"]
    previous = c.model_channels
    for i, stage in enumerate(unet.down):
        text = (f"├─ Down{i + 1}: {res(sizes[i])}, {previous} → {chans[i]} ch, "
                f"{c.num_res_blocks} res blocks")
        text += " + attention" if c.use_attention[i] else ""
        text += f", then ↓ {res(sizes[i] // 2)}" if stage.downsample is not None else ""
        lines.append(f"{text:<76}{millions(stage):>8}")
        previous = chans[i]
    text = f"├─ Middle: {res(sizes[-1])}, {chans[-1]} ch, res + attention + res"
    lines.append(f"{text:<76}{millions(unet.middle):>8}")
    for stage, i in zip(unet.up, reversed(range(len(sizes)))):
        text = (f"├─ Up{i + 1}: {res(sizes[i])}, → {chans[i]} ch, "
                f"{c.num_res_blocks + 1} res blocks")
        text += " + attention" if c.use_attention[i] else ""
        if stage.upsample is not None:
            text += f", then ↑ {res(sizes[i] * 2)} ({mode.value})"
        lines.append(f"{text:<76}{millions(stage):>8}")
    embeddings = [unet.time_embed, unet.class_embed, unet.conv_in, unet.norm_out, unet.conv_out]
    if unet.aug_embed is not None:
        embeddings.append(unet.aug_embed)
    rest = sum(_numel(m) for m in embeddings)
    lines.append(f"{'└─ Embeddings, conv in/out':<76}{rest / 1e6:>7.2f}M")
    lines.append(f"Output: {res(c.image_size)}×{c.in_channels}")
    total = _numel(unet)
    lines.append(f"Parameters: {total:,} ({total / 1e6:.1f}M); "
                 f"bottleneck {res(sizes[-1])} = {sizes[-1] ** 2} pixels; attention at "
                 + (", ".join(res(s) for s, a in zip(sizes, c.use_attention) if a) or "none")
                 + " and the middle")
    return "\n".join(lines)
