"""The diffusion model: a U-Net plus a noise schedule, with the training loss and the samplers.

`DDPM(UNetConfig(...), DiffusionConfig(...))` builds it from its two configs; `create_ddpm(...)`
takes the same settings as keywords (the call in docs/design.md). `model.to_dict()` is the
plain data a checkpoint stores and `DDPM.from_dict(d)` rebuilds the same model from it.
"""
from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .choices import NoiseDistribution, Prediction, Sampler, parse_choice, plain_dict  # noqa: F401 (re-exported)
from .schedule import BetaSchedule, NoiseSchedule
from .unet import UNet, UNetConfig


@dataclass(frozen=True)
class DiffusionConfig:
    """The forward process and the training target; the architecture is `UNetConfig`.
    Validated on construction (ValueError naming the field)."""

    num_timesteps: int = 1000            # T; fewer steps make a coarser chain (docs/model.md)
    # cosine: the linear schedule's last steps are nearly pure noise (Nichol & Dhariwal 2021)
    beta_schedule: BetaSchedule = BetaSchedule.COSINE
    # v stays well scaled at every noise level (Salimans & Ho 2022, sec. 4): at high noise the
    # network predicts the image rather than the noise, so colour and layout come out right on a
    # few hundred images where eps-prediction drifts (docs/benchmarks.md, "Sample quality")
    prediction: Prediction = Prediction.V
    # labels dropped to the null class, so one model gives both guidance terms (Ho & Salimans 2022)
    class_dropout: float = 0.1
    # Per-channel mean and std of the training images in [-1, 1] units; () = 0 and 0.5. The chain
    # runs on (x - data_mean) / data_std * SIGMA_DATA: zero-mean data of the spread the schedule
    # was designed for (Karras et al. 2022, sec. 5, sigma_data), so the network need not learn a
    # large colour offset first. ddpm-train fills both from the manifest (--data-normalization).
    data_mean: tuple[float, ...] = ()
    data_std: tuple[float, ...] = ()
    # Noise levels training draws: uniform over the T steps, or EDM's log-normal in sigma_t
    # (NoiseSchedule.sigmas) with mean and std of ln sigma, mapped to the nearest step; EDM's
    # -1.2 and 1.2 are for data of std 0.5 and weigh low noise (fine detail) more than uniform t
    noise_distribution: NoiseDistribution = NoiseDistribution.UNIFORM
    lognormal_mean: float = -1.2
    lognormal_std: float = 1.2

    def __post_init__(self) -> None:
        object.__setattr__(self, "data_mean", tuple(float(m) for m in self.data_mean))
        object.__setattr__(self, "data_std", tuple(float(v) for v in self.data_std))
        if len(self.data_mean) != len(self.data_std) or any(v <= 0 for v in self.data_std):
            raise ValueError(f"data_mean {self.data_mean} / data_std {self.data_std}: one value "
                             f"per channel each, std > 0 (or both empty)")
        object.__setattr__(self, "beta_schedule",
                           parse_choice(BetaSchedule, self.beta_schedule, "beta_schedule"))
        object.__setattr__(self, "prediction",
                           parse_choice(Prediction, self.prediction, "prediction"))
        object.__setattr__(self, "noise_distribution",
                           parse_choice(NoiseDistribution, self.noise_distribution, "noise_distribution"))
        if not (math.isfinite(self.lognormal_mean) and math.isfinite(self.lognormal_std)
                and self.lognormal_std > 0):
            raise ValueError(f"lognormal_mean {self.lognormal_mean} / lognormal_std {self.lognormal_std}: "
                             f"finite, std > 0 (EDM's -1.2 and 1.2 are usual)")
        if self.num_timesteps < 1:
            raise ValueError(f"num_timesteps: {self.num_timesteps} must be >= 1 (1000 is usual)")
        if not 0.0 <= self.class_dropout < 1.0:
            raise ValueError(f"class_dropout: {self.class_dropout} must be in [0, 1) "
                             f"(0.1 is usual; 0 disables classifier-free guidance training)")

    def to_dict(self) -> dict[str, Any]:
        """Plain data; `DiffusionConfig(**d)` reads it back."""
        return plain_dict(self)


UNET_FIELDS = tuple(f.name for f in dataclasses.fields(UNetConfig))
DIFFUSION_FIELDS = tuple(f.name for f in dataclasses.fields(DiffusionConfig))


def configs_to_dict(unet: UNetConfig, diffusion: DiffusionConfig) -> dict[str, dict[str, Any]]:
    """{"unet": {...}, "diffusion": {...}}: what checkpoints and config.json store."""
    return {"unet": unet.to_dict(), "diffusion": diffusion.to_dict()}


def configs_from_dict(document: Mapping[str, Any]) -> tuple[UNetConfig, DiffusionConfig]:
    """The inverse of `configs_to_dict`. Also reads the flat dict of one key per setting that
    checkpoints written before the split into two configs hold, splitting it by field name."""
    if set(document) == {"unet", "diffusion"}:
        return (_config(UNetConfig, document["unet"], "unet"),
                _config(DiffusionConfig, document["diffusion"], "diffusion"))
    unknown = sorted(set(document) - set(UNET_FIELDS) - set(DIFFUSION_FIELDS))
    if unknown:
        raise ValueError(f"model config: unknown keys {unknown}; expected {{'unet': {{...}}, "
                         f"'diffusion': {{...}}}} or the flat fields of both configs")
    return (UNetConfig(**{k: v for k, v in document.items() if k in UNET_FIELDS}),
            DiffusionConfig(**{k: v for k, v in document.items() if k in DIFFUSION_FIELDS}))


def _config(kind: type, values: Mapping[str, Any], name: str) -> Any:
    valid = [f.name for f in dataclasses.fields(kind)]
    unknown = sorted(set(values) - set(valid))
    if unknown:
        raise ValueError(f"model config: {name}: unknown fields {unknown}; valid: {valid}")
    return kind(**values)


SIGMA_DATA = 0.5  # std of the data the chain runs on (EDM's sigma_data); images in [-1, 1] are about this


def _random(draw: Callable[..., torch.Tensor], *args: Any,
            generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    """`draw(*args)` (torch.randn, rand, randint) from `generator` on its own device, moved to
    `device`; the global RNG on `device` when no generator is given."""
    source = generator.device if generator is not None else device
    return draw(*args, generator=generator, device=source).to(device)


class DDPM(nn.Module):
    """Class-conditional denoising diffusion model: `.unet` (the network), `.schedule`, and the
    configs it was built from, `.unet_config` and `.diffusion_config`."""

    def __init__(self, unet: UNetConfig, diffusion: DiffusionConfig):
        super().__init__()
        self.unet_config, self.diffusion_config = unet, diffusion
        self.unet = UNet(unet)
        self.schedule = NoiseSchedule(diffusion.num_timesteps, diffusion.beta_schedule)
        channels = unet.in_channels
        if diffusion.data_mean and len(diffusion.data_mean) != channels:
            raise ValueError(f"data_mean: {len(diffusion.data_mean)} values for {channels} channels")
        mean = torch.tensor(diffusion.data_mean or (0.0,) * channels).view(1, channels, 1, 1)
        std = torch.tensor(diffusion.data_std or (SIGMA_DATA,) * channels).view(1, channels, 1, 1)
        # Not in the state dict: derived from the config, so older checkpoints load unchanged.
        self.register_buffer("data_mean", mean, persistent=False)
        self.register_buffer("data_scale", SIGMA_DATA / std, persistent=False)

    def to_model_space(self, images: torch.Tensor) -> torch.Tensor:
        """Images in [-1, 1] -> what the chain runs on (see DiffusionConfig.data_mean)."""
        return (images - self.data_mean) * self.data_scale

    def to_image_space(self, z: torch.Tensor) -> torch.Tensor:
        """The inverse of `to_model_space`."""
        return z / self.data_scale + self.data_mean

    def clip_to_image_range(self, z: torch.Tensor) -> torch.Tensor:
        """`z` (model space) clipped per channel to what images in [-1, 1] map to."""
        one = torch.ones_like(self.data_mean)
        return torch.maximum(torch.minimum(z, self.to_model_space(one)), self.to_model_space(-one))

    def to_dict(self) -> dict[str, dict[str, Any]]:
        """{"unet": {...}, "diffusion": {...}} as plain data (JSON, checkpoints)."""
        return configs_to_dict(self.unet_config, self.diffusion_config)

    @classmethod
    def from_dict(cls, document: Mapping[str, Any]) -> "DDPM":
        """The model `to_dict()` describes (or an old flat config; see configs_from_dict)."""
        return cls(*configs_from_dict(document))

    @property
    def prediction(self) -> Prediction:
        return self.diffusion_config.prediction

    @property
    def null_class(self) -> int:
        return self.unet_config.num_classes

    def forward(self, x_t: torch.Tensor, t: torch.Tensor, labels: torch.Tensor,
                aug_params: torch.Tensor | None = None) -> torch.Tensor:
        """The network's raw output (eps or v) for x_t (N, C, H, W) at timesteps t (N,)."""
        return self.unet(x_t, t, labels, aug_params)

    def loss(self, images: torch.Tensor, labels: torch.Tensor,
             aug_params: torch.Tensor | None = None, t: torch.Tensor | None = None,
             noise: torch.Tensor | None = None,
             generator: torch.Generator | None = None) -> torch.Tensor:
        """Mean squared error of the eps (or v) prediction; a scalar.

        images (N, C, H, W) in [-1, 1]; labels (N,) long in [0, num_classes); t (N,) long and
        noise (N, C, H, W) are drawn from `generator` unless given (fix both for a comparable
        validation loss). In training mode, labels are replaced by the null class with
        probability `class_dropout` (Ho & Salimans 2022, classifier-free guidance).
        """
        self._check_images(images, "images")
        n, device = images.shape[0], images.device
        labels = self._check_labels(labels, n, device)
        if t is None:
            t = self.draw_timesteps(n, generator, device)
        if noise is None:
            noise = _random(torch.randn, tuple(images.shape), generator=generator,
                            device=device).to(images.dtype)
        if self.training and self.diffusion_config.class_dropout > 0:
            draws = _random(torch.rand, (n,), generator=generator, device=device)
            dropped = draws < self.diffusion_config.class_dropout
            labels = torch.where(dropped, torch.full_like(labels, self.null_class), labels)
        x0 = self.to_model_space(images)
        x_t = self.schedule.q_sample(x0, t, noise)
        if self.prediction is Prediction.EPS:
            target = noise
        else:
            target = self.schedule.v_target(x0, t, noise)
        return F.mse_loss(self.unet(x_t, t, labels, aug_params).float(), target.float())

    def draw_timesteps(self, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
        """(n,) long training timesteps from `noise_distribution` (one draw per sample)."""
        config = self.diffusion_config
        if config.noise_distribution is NoiseDistribution.UNIFORM:
            return _random(torch.randint, 0, config.num_timesteps, (n,), generator=generator, device=device)
        normal = _random(torch.randn, (n,), generator=generator, device=device)
        sigma = torch.exp(config.lognormal_mean + config.lognormal_std * normal)
        return self.schedule.nearest_timesteps(sigma).to(device)

    @torch.no_grad()
    def sample(self, labels: torch.Tensor | Sequence[int], sampler: str = "ddim", steps: int = 50,
               eta: float = 0.0, guidance: float = 1.0,
               generator: torch.Generator | None = None,
               batch_size: int | None = None, clip_denoised: bool = True) -> torch.Tensor:
        """Draw one image per label; (N, C, H, W) float in [-1, 1], on the model's device.

        sampler: "ddpm" (all num_timesteps steps; `steps` and `eta` are ignored), "ddim"
        (`steps` evenly spaced steps; eta = 0 deterministic, eta = 1 ancestral-like) or
        "dpmpp-2m" (`steps` steps, denser near t = 0, second order, deterministic: eta must be 0).
        guidance: classifier-free guidance scale w, eps = eps_null + w (eps_label - eps_null);
        1.0 is the plain conditional model (and skips the unconditional pass).
        Deterministic for a given `generator` state and `batch_size`; batches of `batch_size`
        (default: all at once) are drawn one after another. Runs in eval mode (no dropout).
        """
        kind = parse_choice(Sampler, sampler, "sampler")
        device = self.schedule.betas.device
        labels = self._check_labels(torch.as_tensor(labels), None, device)
        if kind is not Sampler.DDPM and not 1 <= steps <= self.diffusion_config.num_timesteps:
            raise ValueError(f"steps: {steps} must be in [1, num_timesteps="
                             f"{self.diffusion_config.num_timesteps}]")
        if eta < 0:
            raise ValueError(f"eta: {eta} must be >= 0")
        if kind is Sampler.DPMPP_2M and eta != 0:
            raise ValueError(f"eta: {eta}; the dpmpp-2m sampler is deterministic: pass eta 0, or the ddim sampler")
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size: {batch_size} must be >= 1")
        was_training = self.training
        self.eval()
        try:
            chunks = labels.split(batch_size or max(1, labels.shape[0]))
            images = [self._sample_batch(chunk, kind, steps, eta, guidance, generator,
                                         clip_denoised) for chunk in chunks]
        finally:
            self.train(was_training)
        c, s = self.unet_config.in_channels, self.unet_config.image_size
        return torch.cat(images) if images else torch.empty(0, c, s, s, device=device)

    def _sample_batch(self, labels: torch.Tensor, kind: Sampler, steps: int, eta: float,
                      guidance: float, generator: torch.Generator | None,
                      clip_denoised: bool) -> torch.Tensor:
        n, c, s = labels.shape[0], self.unet_config.in_channels, self.unet_config.image_size
        x = _random(torch.randn, (n, c, s, s), generator=generator, device=labels.device)
        if kind is Sampler.DDPM:
            for t in reversed(range(self.diffusion_config.num_timesteps)):
                x = self._ddpm_step(x, t, labels, guidance, generator, clip_denoised)
        elif kind is Sampler.DPMPP_2M:
            x = self._dpmpp_2m(x, labels, steps, guidance, clip_denoised)
        else:
            for t, t_prev in self.ddim_timesteps(steps):
                x = self._ddim_step(x, t, t_prev, labels, eta, guidance, generator,
                                    clip_denoised)
        return self.to_image_space(x).clamp(-1, 1)

    def ddim_timesteps(self, steps: int) -> list[tuple[int, int]]:
        """(t, t_prev) pairs from T-1 down to 0, `steps` evenly spaced; t_prev = -1 means x_0."""
        total = self.diffusion_config.num_timesteps
        ts = torch.linspace(0, total - 1, steps, dtype=torch.float64).round().long().tolist()
        ts = sorted(set(ts), reverse=True)
        return list(zip(ts, ts[1:] + [-1]))

    def predict_x0_eps(self, x: torch.Tensor, t: int, labels: torch.Tensor, guidance: float,
                       clip_denoised: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Guided prediction of (x_0, eps) at timestep t in model space, with x_0 clipped to the
        image range [-1, 1] and eps made consistent with the clipped x_0."""
        n = x.shape[0]
        t_batch = torch.full((n,), t, device=x.device, dtype=torch.long)
        if guidance == 1.0:
            out = self.unet(x, t_batch, labels)
        else:  # conditional and unconditional passes in one batch
            null = torch.full_like(labels, self.null_class)
            both = self.unet(torch.cat([x, x]), torch.cat([t_batch, t_batch]),
                             torch.cat([labels, null]))
            cond, uncond = both.chunk(2)
            out = uncond + guidance * (cond - uncond)
        out = out.float()
        if self.prediction is Prediction.EPS:
            x0 = self.schedule.x0_from_eps(x, t_batch, out)
        else:
            x0 = self.schedule.x0_from_v(x, t_batch, out)
        if clip_denoised:
            x0 = self.clip_to_image_range(x0)
        return x0, self.schedule.eps_from_x0(x, t_batch, x0)

    def _ddpm_step(self, x: torch.Tensor, t: int, labels: torch.Tensor, guidance: float,
                   generator: torch.Generator | None, clip_denoised: bool) -> torch.Tensor:
        """x_{t-1} ~ q(x_{t-1} | x_t, x0_hat), the posterior with the predicted x_0
        (Ho et al. 2020, eq. 7; variance beta_tilde)."""
        x0, _ = self.predict_x0_eps(x, t, labels, guidance, clip_denoised)
        t_batch = torch.full((x.shape[0],), t, device=x.device, dtype=torch.long)
        mean, variance = self.schedule.posterior(x0, x, t_batch)
        if t == 0:
            return mean
        return mean + variance.sqrt() * _random(torch.randn, tuple(x.shape), generator=generator,
                                                 device=x.device)

    def _ddim_step(self, x: torch.Tensor, t: int, t_prev: int, labels: torch.Tensor,
                   eta: float, guidance: float, generator: torch.Generator | None,
                   clip_denoised: bool) -> torch.Tensor:
        """x_{t_prev} = sqrt(a_prev) x0 + sqrt(1 - a_prev - sigma^2) eps + sigma z with
        sigma = eta sqrt((1 - a_prev) / (1 - a_t) (1 - a_t / a_prev))
        (Song et al. 2021, eqs. 12 and 16)."""
        x0, eps = self.predict_x0_eps(x, t, labels, guidance, clip_denoised)
        a_t = self.schedule.alpha_bar_at(torch.tensor([t], device=x.device), x.ndim)
        a_prev = self.schedule.alpha_bar_at(torch.tensor([t_prev], device=x.device), x.ndim)
        sigma = eta * ((1 - a_prev) / (1 - a_t) * (1 - a_t / a_prev)).sqrt()
        x_prev = a_prev.sqrt() * x0 + (1 - a_prev - sigma ** 2).clamp(min=0).sqrt() * eps
        if eta > 0 and t_prev >= 0:
            x_prev = x_prev + sigma * _random(torch.randn, tuple(x.shape), generator=generator,
                                              device=x.device)
        return x_prev

    def _dpmpp_2m(self, x: torch.Tensor, labels: torch.Tensor, steps: int, guidance: float,
                  clip_denoised: bool) -> torch.Tensor:
        """DPM-Solver++(2M) (Lu et al. 2022, arXiv 2211.01095, algorithm 2) on `quadratic_timesteps`.

        With alpha = sqrt(a_t), sigma = sqrt(1 - a_t), lambda = log(alpha / sigma), h = lambda_prev -
        lambda_t and D the (guided, clipped) x_0 prediction:
            x_prev = sigma_prev / sigma x - alpha_prev (e^-h - 1) (D_t + (D_t - D_last) / (2 r)),
        r = h_last / h. The first step has no D_last and is first order, which is DDIM with eta 0.
        So are the steps into t = 0 and to x_0 itself: lambda jumps there (to 5.1 at t = 0 on the
        cosine schedule, infinity at x_0), and extrapolating D over a step several times longer
        than the last one overshoots (the reference implementation's `lower_order_final`).
        """
        x0_last, h_last = None, None
        for t, t_prev in self.quadratic_timesteps(steps):
            x0, _ = self.predict_x0_eps(x, t, labels, guidance, clip_denoised)
            if t_prev < 0:
                return x0
            (alpha, sigma, lam), (alpha_prev, sigma_prev, lam_prev) = self._log_snr(t), self._log_snr(t_prev)
            h = lam_prev - lam
            second_order = x0_last is not None and t_prev > 0
            d = x0 + (x0 - x0_last) * (h / (2 * h_last)) if second_order else x0
            x = (sigma_prev / sigma) * x - (alpha_prev * math.expm1(-h)) * d
            x0_last, h_last = x0, h
        return x

    def quadratic_timesteps(self, steps: int) -> list[tuple[int, int]]:
        """(t, t_prev) pairs from T-1 down to 0, t_i = (T-1)(1 - i/(steps-1))^2 rounded and kept
        distinct; t_prev = -1 means x_0. Denser near t = 0, where the uniform grid's log-SNR
        steps are longest (the "quadratic" sequence of Song et al. 2021, appendix D.2)."""
        last = self.diffusion_config.num_timesteps - 1
        if steps == 1:
            return [(last, -1)]
        ts = [0] * steps
        for i in range(steps - 2, -1, -1):  # from t = 0 upwards, each at least one above the next
            ts[i] = max(round(last * (1 - i / (steps - 1)) ** 2), ts[i + 1] + 1)
        return list(zip(ts, ts[1:] + [-1]))

    def _log_snr(self, t: int) -> tuple[float, float, float]:
        """(alpha, sigma, lambda) at timestep t >= 0: sqrt(a_t), sqrt(1 - a_t), log(alpha / sigma)."""
        a = float(self.schedule.alphas_cumprod[t])
        alpha, sigma = math.sqrt(a), math.sqrt(1 - a)
        return alpha, sigma, math.log(alpha / sigma)

    def _check_images(self, images: torch.Tensor, name: str) -> None:
        c, s = self.unet_config.in_channels, self.unet_config.image_size
        if images.ndim != 4 or tuple(images.shape[1:]) != (c, s, s):
            raise ValueError(f"{name}: shape {tuple(images.shape)}, expected (N, {c}, {s}, {s}) "
                             f"for in_channels={c}, image_size={s}")

    def _check_labels(self, labels: torch.Tensor, n: int | None,
                      device: torch.device) -> torch.Tensor:
        """(N,) long labels on `device`. Values are range-checked while still on the CPU only:
        on an accelerator the check would wait for the device at every training step."""
        if n is not None and labels.numel() != n:
            raise ValueError(f"labels: {labels.numel()} labels for {n} images")
        if labels.device.type == "cpu" and labels.numel() and (
                labels.min() < 0 or labels.max() >= self.unet_config.num_classes):
            raise ValueError(f"labels: values must be in [0, num_classes="
                             f"{self.unet_config.num_classes}), got min {int(labels.min())}, "
                             f"max {int(labels.max())}")
        return labels.to(device=device, dtype=torch.long).reshape(-1)


def create_ddpm(image_size: int, model_channels: int, channel_multipliers: Sequence[int],
                num_res_blocks: int, use_attention: Sequence[bool | int], num_classes: int,
                num_timesteps: int = 1000, beta_schedule: str = "cosine", in_channels: int = 3,
                dropout: float = 0.1, upsample: str = "bilinear", aug_dim: int = 0,
                class_dropout: float = 0.1, prediction: str = "eps", norm_groups: int = 32,
                attention_head_channels: int = 64, zero_init: bool = True) -> DDPM:
    """`DDPM(UNetConfig(...), DiffusionConfig(...))` from keywords (see the two configs for
    their meaning). Raises ValueError naming the argument when the settings cannot work.

    The call of the design analysis (docs/design.md), with its model's defaults: eps-prediction
    as in the original DDPM. `ddpm-train` builds `DiffusionConfig()` directly, whose default is
    the measured recipe's v-prediction; pass `prediction="v"` here for the same."""
    unet = UNetConfig(
        image_size=image_size, model_channels=model_channels,
        channel_multipliers=tuple(channel_multipliers), num_res_blocks=num_res_blocks,
        use_attention=tuple(use_attention), num_classes=num_classes, in_channels=in_channels,
        dropout=dropout, upsample=upsample, aug_dim=aug_dim, norm_groups=norm_groups,
        attention_head_channels=attention_head_channels, zero_init=zero_init)
    diffusion = DiffusionConfig(num_timesteps=num_timesteps, beta_schedule=beta_schedule,
                                prediction=prediction, class_dropout=class_dropout)
    return DDPM(unet, diffusion)
