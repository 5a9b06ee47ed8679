"""Noise schedule of the forward process q(x_t | x_0) and the closed forms built on it.

Timesteps are indices t in {0, ..., T-1}; index t is the paper's step t+1, so `alpha_bar[0]` is
the first noising step (almost clean) and `alpha_bar[T-1]` is almost pure noise.
"""
from __future__ import annotations

import math

import torch
from torch import nn

from .choices import BetaSchedule, parse_choice  # noqa: F401 (BetaSchedule re-exported)


def linear_betas(num_timesteps: int) -> torch.Tensor:
    """beta_t evenly spaced in [1e-4, 0.02] for T = 1000; scaled by 1000/T for other T so the
    total amount of noise stays comparable (as in Nichol & Dhariwal 2021). (T,) float64."""
    scale = 1000.0 / num_timesteps
    return torch.linspace(scale * 1e-4, scale * 0.02, num_timesteps, dtype=torch.float64)


def cosine_alpha_bar(s: torch.Tensor, offset: float = 0.008) -> torch.Tensor:
    """alpha_bar at continuous time s in [0, 1]: f(s) / f(0) with
    f(s) = cos^2(((s + offset) / (1 + offset)) * pi / 2)   (Nichol & Dhariwal 2021, eq. 17)."""

    def f(u: torch.Tensor) -> torch.Tensor:
        return torch.cos((u + offset) / (1 + offset) * math.pi / 2) ** 2

    return f(s) / f(torch.zeros_like(s))


def cosine_betas(num_timesteps: int, max_beta: float = 0.999) -> torch.Tensor:
    """beta_t = 1 - alpha_bar((t+1)/T) / alpha_bar(t/T), clipped at `max_beta` to avoid the
    singularity at s = 1 (Nichol & Dhariwal 2021, sec. 3.2). (T,) float64."""
    s = torch.arange(num_timesteps + 1, dtype=torch.float64) / num_timesteps
    alpha_bar = cosine_alpha_bar(s)
    return (1 - alpha_bar[1:] / alpha_bar[:-1]).clamp(max=max_beta)


BETA_SCHEDULES = {BetaSchedule.LINEAR: linear_betas, BetaSchedule.COSINE: cosine_betas}


def _gather(values: torch.Tensor, t: torch.Tensor, ndim: int) -> torch.Tensor:
    """values[t] reshaped to (N, 1, ..., 1) so it broadcasts against an (N, ...) batch of ndim."""
    return values[t].reshape(-1, *([1] * (ndim - 1)))


class NoiseSchedule(nn.Module):
    """Per-timestep constants of a DDPM as (T,) float32 buffers, computed in float64.

    The buffers are not persistent: they follow from (schedule, T), which live in the config,
    so checkpoints carry weights only and `.to(device)` moves them with the model.
    """

    def __init__(self, num_timesteps: int = 1000, beta_schedule: str | BetaSchedule = "cosine"):
        super().__init__()
        if num_timesteps < 1:
            raise ValueError(f"num_timesteps: {num_timesteps} must be >= 1 (1000 is usual)")
        self.kind = parse_choice(BetaSchedule, beta_schedule, "beta_schedule")
        self.num_timesteps = num_timesteps
        betas = BETA_SCHEDULES[self.kind](num_timesteps)
        alphas_cumprod = torch.cumprod(1 - betas, dim=0)
        alphas_cumprod_prev = torch.cat([torch.ones(1, dtype=torch.float64), alphas_cumprod[:-1]])
        # Variance and mean of the posterior q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7).
        posterior_variance = betas * (1 - alphas_cumprod_prev) / (1 - alphas_cumprod)
        constants = {
            "betas": betas,
            "alphas_cumprod": alphas_cumprod,
            "alphas_cumprod_prev": alphas_cumprod_prev,
            "sqrt_alphas_cumprod": alphas_cumprod.sqrt(),
            "sqrt_one_minus_alphas_cumprod": (1 - alphas_cumprod).sqrt(),
            "posterior_variance": posterior_variance,
            "posterior_mean_coef1": betas * alphas_cumprod_prev.sqrt() / (1 - alphas_cumprod),
            "posterior_mean_coef2": (1 - alphas_cumprod_prev) * (1 - betas).sqrt()
            / (1 - alphas_cumprod),
        }
        for name, value in constants.items():
            self.register_buffer(name, value.float(), persistent=False)

    betas: torch.Tensor
    alphas_cumprod: torch.Tensor
    alphas_cumprod_prev: torch.Tensor
    sqrt_alphas_cumprod: torch.Tensor
    sqrt_one_minus_alphas_cumprod: torch.Tensor
    posterior_variance: torch.Tensor
    posterior_mean_coef1: torch.Tensor
    posterior_mean_coef2: torch.Tensor

    def extra_repr(self) -> str:
        return f"{self.kind.value}, T={self.num_timesteps}"

    def q_sample(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """x_t = sqrt(alpha_bar_t) x_0 + sqrt(1 - alpha_bar_t) eps (Ho et al. 2020, eq. 4).
        x0, noise (N, ...); t (N,) long."""
        return (_gather(self.sqrt_alphas_cumprod, t, x0.ndim) * x0
                + _gather(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * noise)

    def v_target(self, x0: torch.Tensor, t: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0 (Salimans & Ho 2022, sec. 4)."""
        return (_gather(self.sqrt_alphas_cumprod, t, x0.ndim) * noise
                - _gather(self.sqrt_one_minus_alphas_cumprod, t, x0.ndim) * x0)

    def x0_from_eps(self, x_t: torch.Tensor, t: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        """Invert q_sample for x_0 given the noise."""
        return ((x_t - _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * eps)
                / _gather(self.sqrt_alphas_cumprod, t, x_t.ndim))

    def eps_from_x0(self, x_t: torch.Tensor, t: torch.Tensor, x0: torch.Tensor) -> torch.Tensor:
        """Invert q_sample for the noise given x_0."""
        return ((x_t - _gather(self.sqrt_alphas_cumprod, t, x_t.ndim) * x0)
                / _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim))

    def x0_from_v(self, x_t: torch.Tensor, t: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        """x_0 = sqrt(alpha_bar_t) x_t - sqrt(1 - alpha_bar_t) v."""
        return (_gather(self.sqrt_alphas_cumprod, t, x_t.ndim) * x_t
                - _gather(self.sqrt_one_minus_alphas_cumprod, t, x_t.ndim) * v)

    def posterior(self, x0: torch.Tensor, x_t: torch.Tensor, t: torch.Tensor
                  ) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and variance of q(x_{t-1} | x_t, x_0) (Ho et al. 2020, eqs. 6-7); variance is
        (N, 1, ..., 1)."""
        mean = (_gather(self.posterior_mean_coef1, t, x_t.ndim) * x0
                + _gather(self.posterior_mean_coef2, t, x_t.ndim) * x_t)
        return mean, _gather(self.posterior_variance, t, x_t.ndim)

    def sigmas(self) -> torch.Tensor:
        """(T,) the noise level of each step on the variance-exploding scale of Karras et al. 2022:
        x_t / sqrt(alpha_bar_t) = x_0 + sigma_t eps, sigma_t = sqrt((1 - alpha_bar_t) / alpha_bar_t);
        increasing in t."""
        return self.sqrt_one_minus_alphas_cumprod / self.sqrt_alphas_cumprod

    def nearest_timesteps(self, sigma: torch.Tensor) -> torch.Tensor:
        """(N,) long: for each noise level in sigma (N,), the step whose sigma_t is nearest in log
        (levels beyond the ends go to step 0 or T - 1)."""
        log_sigmas = self.sigmas().log()
        log_sigma = sigma.log().to(log_sigmas.dtype).contiguous()
        upper = torch.searchsorted(log_sigmas, log_sigma).clamp(max=self.num_timesteps - 1)
        lower = (upper - 1).clamp(min=0)
        closer_lower = (log_sigma - log_sigmas[lower]).abs() <= (log_sigmas[upper] - log_sigma).abs()
        return torch.where(closer_lower, lower, upper)

    def alpha_bar_at(self, t: torch.Tensor, ndim: int) -> torch.Tensor:
        """alpha_bar_t for t in {-1, ..., T-1}, where t = -1 (before the first step) gives 1."""
        padded = torch.cat([self.alphas_cumprod.new_ones(1), self.alphas_cumprod])
        return _gather(padded, t + 1, ndim)
