import math

import pytest
import torch

from ddpm_model.schedule import NoiseSchedule, cosine_betas, linear_betas


def test_linear_betas_match_ho_et_al():
    betas = linear_betas(1000)
    assert betas[0].item() == pytest.approx(1e-4)
    assert betas[-1].item() == pytest.approx(0.02)
    assert torch.allclose(betas.diff(), torch.full((999,), (0.02 - 1e-4) / 999,
                                                   dtype=torch.float64))
    # Fewer steps keep the same total noise: beta scaled by 1000 / T.
    assert linear_betas(250)[-1].item() == pytest.approx(0.08)


BETAS = {"linear": linear_betas, "cosine": cosine_betas}


def cosine_alpha_bar_reference(t: int, total: int, s: float = 0.008) -> float:
    """Nichol & Dhariwal 2021, eq. 17, in plain float arithmetic."""
    f = lambda u: math.cos((u / total + s) / (1 + s) * math.pi / 2) ** 2  # noqa: E731
    return f(t) / f(0)


@pytest.mark.parametrize("total", [1000, 20])
def test_cosine_alpha_bar_matches_closed_form(total):
    schedule = NoiseSchedule(total, "cosine")
    alpha_bar = schedule.alphas_cumprod.double()
    unclipped = cosine_betas(total) < 0.999
    for t in range(total):
        if unclipped[: t + 1].all():
            # Index t is the paper's step t + 1.
            assert alpha_bar[t].item() == pytest.approx(
                cosine_alpha_bar_reference(t + 1, total), rel=1e-5, abs=1e-7)
    assert schedule.betas.max().item() <= 0.999 + 1e-6
    assert alpha_bar[-1].item() < 1e-4  # ends in (almost) pure noise
    # Reference numbers for T = 1000 (first step is nearly noise-free).
    if total == 1000:
        assert schedule.betas[0].item() == pytest.approx(4.1273e-5, rel=1e-3)
        assert schedule.alphas_cumprod[499].item() == pytest.approx(
            cosine_alpha_bar_reference(500, 1000), rel=1e-5)


def test_linear_alpha_bar_is_cumulative_product():
    schedule = NoiseSchedule(1000, "linear")
    expected = torch.cumprod(1 - linear_betas(1000), 0)
    assert torch.allclose(schedule.alphas_cumprod.double(), expected, rtol=1e-5)
    assert schedule.alphas_cumprod[-1].item() == pytest.approx(4.04e-5, rel=1e-2)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_noising_identities(kind):
    schedule = NoiseSchedule(1000, kind)
    g = torch.Generator().manual_seed(0)
    x0 = torch.rand(8, 3, 4, 4, generator=g) * 2 - 1
    noise = torch.randn(8, 3, 4, 4, generator=g)
    t = torch.tensor([0, 1, 10, 100, 500, 900, 998, 999])
    x_t = schedule.q_sample(x0, t, noise)
    # Reference in float64 (1 - alpha_bar near t = 0 cancels badly in float32).
    a = torch.cumprod(1 - BETAS[kind](1000), 0)[t].reshape(-1, 1, 1, 1)
    assert torch.allclose(x_t.double(), a.sqrt() * x0.double() + (1 - a).sqrt() * noise.double(),
                          atol=1e-6)
    # Each parameterisation inverts the others (x0 from eps divides by sqrt(alpha_bar), which
    # is ~1e-3 at the last steps, so compare where float32 keeps the precision).
    assert torch.allclose(schedule.x0_from_eps(x_t[:6], t[:6], noise[:6]), x0[:6], atol=1e-3)
    assert torch.allclose(schedule.eps_from_x0(x_t, t, x0), noise, atol=1e-3)
    v = schedule.v_target(x0, t, noise)
    assert torch.allclose(schedule.x0_from_v(x_t, t, v), x0, atol=1e-5)
    # The forward process preserves variance: x0 ~ N(0, 1) gives x_t ~ N(0, 1) at every t.
    big_x0 = torch.randn(20000, generator=g)
    big_noise = torch.randn(20000, generator=g)
    for step in (0, 300, 999):
        xs = schedule.q_sample(big_x0, torch.full((20000,), step), big_noise)
        assert xs.std().item() == pytest.approx(1.0, abs=0.03)


def test_posterior_matches_bayes_rule():
    """q(x_{t-1} | x_t, x_0) ∝ q(x_{t-1} | x_0) q(x_t | x_{t-1}): a product of two Gaussians."""
    schedule = NoiseSchedule(1000, "cosine")
    x0 = torch.tensor([0.3, -0.7, 0.9])
    x_t = torch.tensor([1.2, -0.1, 0.4])
    for step in (1, 50, 500, 999):
        t = torch.full((3,), step)
        mean, var = schedule.posterior(x0, x_t, t)
        betas = cosine_betas(1000)
        a_prev = torch.cumprod(1 - betas, 0)[step - 1]
        beta = betas[step]
        precision = 1 / (1 - a_prev) + (1 - beta) / beta
        ref_mean = (a_prev.sqrt() * x0.double() / (1 - a_prev)
                    + (1 - beta).sqrt() * x_t.double() / beta) / precision
        assert torch.allclose(mean.double(), ref_mean, rtol=1e-4, atol=1e-5)
        assert var.double().flatten()[0].item() == pytest.approx(1 / precision.item(), rel=1e-4)


def test_alpha_bar_before_first_step_is_one():
    schedule = NoiseSchedule(10, "linear")
    values = schedule.alpha_bar_at(torch.tensor([-1, 0, 9]), 1)
    assert values[0].item() == 1.0
    assert values[1].item() == pytest.approx(schedule.alphas_cumprod[0].item())
    assert values[2].item() == pytest.approx(schedule.alphas_cumprod[9].item())


def test_sigmas_are_the_variance_exploding_noise_levels():
    schedule = NoiseSchedule(1000, "cosine")
    a = torch.cumprod(1 - cosine_betas(1000), dim=0)  # float64: 1 - a keeps its digits near t = 0
    assert torch.allclose(schedule.sigmas().double(), ((1 - a) / a).sqrt(), rtol=1e-5)
    assert (schedule.sigmas().diff() > 0).all()


def test_nearest_timesteps_picks_the_step_nearest_in_log_sigma():
    schedule = NoiseSchedule(1000, "cosine")
    sigmas = schedule.sigmas()
    steps = torch.tensor([0, 1, 17, 500, 998, 999])
    assert torch.equal(schedule.nearest_timesteps(sigmas[steps]), steps)
    # geometric midpoints a little towards either side; far beyond both ends
    mid = (sigmas[500] * sigmas[501]).sqrt()
    towards = torch.stack([mid * 0.999, mid * 1.001, sigmas[0] / 100, sigmas[-1] * 100])
    assert schedule.nearest_timesteps(towards).tolist() == [500, 501, 0, 999]


def test_schedule_buffers_follow_the_module_but_stay_out_of_checkpoints():
    schedule = NoiseSchedule(10, "cosine")
    assert schedule.state_dict() == {}
    assert schedule.to(torch.float64).betas.dtype == torch.float64


def test_bad_schedule_arguments():
    with pytest.raises(ValueError, match=r"beta_schedule: 'quadratic' is not one of 'linear', "
                                         r"'cosine'"):
        NoiseSchedule(1000, "quadratic")
    with pytest.raises(ValueError, match="num_timesteps"):
        NoiseSchedule(0, "cosine")
