import copy
import dataclasses
import json

import pytest
import torch
from torch import nn

from ddpm_model import DDPM, DiffusionConfig, UNetConfig, create_ddpm
from ddpm_model.diffusion import configs_from_dict
from ddpm_model.presets import PRESETS
from ddpm_model.schedule import BetaSchedule
from ddpm_model.schedule import cosine_betas


def tiny(**overrides) -> DDPM:
    """A small model whose outputs depend on the input (its zero-initialised output layers get
    random weights), so samplers and guidance have something to act on."""
    base = dict(image_size=8, model_channels=16, channel_multipliers=(1, 2),
                num_res_blocks=1, use_attention=(False, True), num_classes=2,
                num_timesteps=20, norm_groups=8, dropout=0.0)
    model = create_ddpm(**{**base, **overrides})
    torch.manual_seed(0)
    for module in model.unet.modules():
        if isinstance(module, (nn.Conv2d, nn.Linear)) and module.weight.abs().sum() == 0 \
                and module is not model.unet.aug_embed:
            nn.init.normal_(module.weight, std=0.05)
    return model


def seeded(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


class GaussianOracle(nn.Module):
    """The exact eps-predictor for data x0 ~ N(mu[label], sigma^2) per pixel:
    E[eps | x_t] = sqrt(1 - a) (x_t - sqrt(a) mu) / (a sigma^2 + 1 - a), a = alpha_bar_t."""

    def __init__(self, schedule, mu=(-0.3, 0.4), sigma=0.2):
        super().__init__()
        self.schedule, self.mu, self.sigma = schedule, torch.tensor(mu), sigma

    def forward(self, x, t, labels, aug_params=None):
        a = self.schedule.alphas_cumprod[t].reshape(-1, 1, 1, 1)
        mu = self.mu[labels.clamp(max=len(self.mu) - 1)].reshape(-1, 1, 1, 1)
        return (1 - a).sqrt() * (x - a.sqrt() * mu) / (a * self.sigma ** 2 + 1 - a)


class Recorder(nn.Module):
    """Wraps a network and records the labels and batch sizes it is called with."""

    def __init__(self, inner):
        super().__init__()
        self.inner, self.calls = inner, []

    def forward(self, x, t, labels, aug_params=None):
        self.calls.append(labels.clone())
        return self.inner(x, t, labels, aug_params)


# ---------------------------------------------------------------- construction


@pytest.mark.parametrize("overrides,message", [
    (dict(use_attention=(0, 1, 1)), r"use_attention: 3 flags .* channel_multipliers \(1, 2\) "
                                    r"has 2 stages"),
    (dict(image_size=10, channel_multipliers=(1, 2, 2), use_attention=(0, 0, 1)),
     r"image_size: 10 is not divisible by 2\^\(stages-1\) = 4"),
    (dict(beta_schedule="quadratic"), r"beta_schedule: 'quadratic' is not one of 'linear', "
                                      r"'cosine'"),
    (dict(upsample="lanczos"), r"upsample: 'lanczos' is not one of 'bilinear', 'bicubic', "
                               r"'nearest', 'conv_transpose'"),
    (dict(prediction="x0"), r"prediction: 'x0' is not one of 'eps', 'v'"),
    (dict(num_classes=0), r"num_classes: 0 must be >= 1"),
    (dict(model_channels=20), r"model_channels: stage 1 has 20 x 1 = 20 channels, not "
                              r"divisible into norm_groups=8"),
    (dict(model_channels=24, norm_groups=8, channel_multipliers=(1, 3)),
     r"attention_head_channels: 64 does not divide the 72 channels"),
    (dict(class_dropout=1.0), r"class_dropout: 1.0 must be in \[0, 1\)"),
    (dict(num_timesteps=0), r"num_timesteps: 0 must be >= 1"),
])
def test_misconfiguration_is_named(overrides, message):
    with pytest.raises(ValueError, match=message):
        tiny(**overrides)


@pytest.mark.parametrize("fields,message", [
    (dict(noise_distribution="beta"), r"noise_distribution: 'beta' is not one of 'uniform', 'lognormal'"),
    (dict(noise_distribution="lognormal", lognormal_std=0.0), r"lognormal_std 0.0: finite, std > 0"),
    (dict(lognormal_mean=float("nan")), r"lognormal_mean nan"),
])
def test_bad_noise_distribution_is_named(fields, message):
    with pytest.raises(ValueError, match=message):
        DiffusionConfig(**fields)


def with_diffusion(model: DDPM, **fields) -> DDPM:
    """`model`'s network and weights under another DiffusionConfig."""
    other = DDPM(model.unet_config, DiffusionConfig(**fields))
    other.load_state_dict(model.state_dict())
    return other


def test_config_round_trips_through_json():
    model = tiny(use_attention=(0, 1), aug_dim=3, prediction="v", upsample="nearest")
    saved = json.loads(json.dumps(model.to_dict()))
    assert set(saved) == {"unet", "diffusion"} and saved["diffusion"]["prediction"] == "v"
    rebuilt = DDPM.from_dict(saved)
    assert (rebuilt.unet_config, rebuilt.diffusion_config) == (model.unet_config,
                                                               model.diffusion_config)
    rebuilt.load_state_dict(model.state_dict())  # strict: same architecture
    assert set(model.state_dict()) == set(rebuilt.state_dict())
    assert not any(k.startswith("schedule.") for k in model.state_dict())


def test_diffusion_config_stores_enums_and_plain_data():
    config = DiffusionConfig(beta_schedule="linear", prediction="v")
    assert config.beta_schedule is BetaSchedule.LINEAR and config.to_dict() == {
        "num_timesteps": 1000, "beta_schedule": "linear", "prediction": "v", "class_dropout": 0.1,
        "data_mean": [], "data_std": [], "noise_distribution": "uniform", "lognormal_mean": -1.2,
        "lognormal_std": 1.2}
    assert DiffusionConfig(**config.to_dict()) == config


def test_data_normalisation_runs_the_chain_on_zero_mean_data_and_returns_images():
    unet = dataclasses.replace(PRESETS["tiny"], image_size=16, model_channels=16)
    mean, std = (0.7, 0.4, 0.8), (0.2, 0.3, 0.25)
    model = DDPM(unet, DiffusionConfig(num_timesteps=20, data_mean=mean, data_std=std))
    images = torch.tensor(mean).view(1, 3, 1, 1) + torch.tensor(std).view(1, 3, 1, 1) * torch.randn(64, 3, 16, 16)
    z = model.to_model_space(images)
    assert z.mean(dim=(0, 2, 3)).abs().max() < 0.02 and (z.std(dim=(0, 2, 3)) - 0.5).abs().max() < 0.02
    assert torch.allclose(model.to_image_space(z), images, atol=1e-5)
    clipped = model.to_image_space(model.clip_to_image_range(model.to_model_space(images * 3)))
    assert clipped.min() >= -1 - 1e-5 and clipped.max() <= 1 + 1e-5
    # weights are the same tensors with or without normalisation: checkpoints stay interchangeable
    assert set(model.state_dict()) == set(DDPM(unet, DiffusionConfig(num_timesteps=20)).state_dict())
    samples = model.sample([0, 1], steps=3, generator=torch.Generator().manual_seed(0))
    assert samples.shape == (2, 3, 16, 16) and samples.abs().max() <= 1
    with pytest.raises(ValueError, match="data_mean"):
        DiffusionConfig(data_mean=(0.1,), data_std=(0.1, 0.2))


def test_create_ddpm_is_the_two_configs():
    model = tiny(num_timesteps=20, class_dropout=0.2)
    assert model.unet_config == UNetConfig(8, 16, (1, 2), 1, (False, True), num_classes=2,
                                           norm_groups=8, dropout=0.0)
    assert model.diffusion_config == DiffusionConfig(num_timesteps=20, class_dropout=0.2, prediction="eps")


# The model_config of a checkpoint written before the two configs (all fields in one dict).
OLD_FLAT_CONFIG = {
    "image_size": 8, "model_channels": 16, "channel_multipliers": [1, 2], "num_res_blocks": 1,
    "use_attention": [False, True], "num_classes": 2, "num_timesteps": 20,
    "beta_schedule": "cosine", "in_channels": 3, "dropout": 0.0, "upsample": "bilinear",
    "aug_dim": 0, "class_dropout": 0.1, "prediction": "eps", "norm_groups": 8,
    "attention_head_channels": 64}


def test_old_flat_configs_still_load():
    unet, diffusion = configs_from_dict(OLD_FLAT_CONFIG)
    old = tiny(prediction="eps")  # the default before v-prediction; old files name theirs
    assert unet == old.unet_config and diffusion == old.diffusion_config
    model = DDPM.from_dict(OLD_FLAT_CONFIG)
    model.load_state_dict(old.state_dict())
    with pytest.raises(ValueError, match=r"model config: unknown keys \['colour'\]"):
        configs_from_dict({**OLD_FLAT_CONFIG, "colour": 1})
    with pytest.raises(ValueError, match=r"model config: unet: unknown fields \['colour'\]"):
        configs_from_dict({"unet": {**unet.to_dict(), "colour": 1}, "diffusion": {}})


# ---------------------------------------------------------------- loss


def test_loss_is_a_deterministic_scalar_for_a_generator():
    model = tiny()
    images = torch.rand(4, 3, 8, 8) * 2 - 1
    labels = torch.tensor([0, 1, 0, 1])
    first = model.loss(images, labels, generator=seeded(0))
    assert first.shape == () and first.requires_grad
    assert torch.equal(first, model.loss(images, labels, generator=seeded(0)))
    assert not torch.equal(first, model.loss(images, labels, generator=seeded(1)))


def test_lognormal_noise_levels_follow_edm_s_distribution():
    """ln sigma_t of the drawn steps has EDM's mean and std (the cosine schedule's steps are
    dense enough that rounding to the nearest moves neither by more than a few hundredths)."""
    model = with_diffusion(tiny(), noise_distribution="lognormal", lognormal_mean=-1.2, lognormal_std=1.2)
    t = model.draw_timesteps(200_000, seeded(0), torch.device("cpu"))
    assert t.dtype == torch.long and t.min() >= 0 and t.max() < 1000
    log_sigma = model.schedule.sigmas()[t].double().log()
    assert log_sigma.mean().item() == pytest.approx(-1.2, abs=0.03)
    assert log_sigma.std().item() == pytest.approx(1.2, abs=0.03)
    uniform = with_diffusion(tiny()).draw_timesteps(200_000, seeded(0), torch.device("cpu"))
    assert model.schedule.sigmas()[uniform].log().mean() > 0  # uniform t: centred far higher
    assert torch.equal(t, model.draw_timesteps(200_000, seeded(0), torch.device("cpu")))


def test_loss_draws_its_steps_from_the_noise_distribution():
    model = with_diffusion(tiny(), num_timesteps=20, noise_distribution="lognormal").eval()
    images, labels = torch.rand(4, 3, 8, 8) * 2 - 1, torch.tensor([0, 1, 0, 1])
    noise = torch.randn(4, 3, 8, 8)
    generator = seeded(3)
    t = model.draw_timesteps(4, generator, torch.device("cpu"))
    fixed = model.loss(images, labels, t=t, noise=noise)
    generator = seeded(3)
    assert torch.equal(model.loss(images, labels, noise=noise, generator=generator), fixed)


def test_loss_with_fixed_t_and_noise_is_the_eps_mse():
    model = tiny().eval()
    images = torch.rand(3, 3, 8, 8) * 2 - 1
    labels, t, noise = torch.tensor([0, 1, 1]), torch.tensor([0, 7, 19]), torch.randn(3, 3, 8, 8)
    expected = (model.unet(model.schedule.q_sample(images, t, noise), t, labels) - noise
                ).square().mean()
    loss = model.loss(images, labels, t=t, noise=noise, generator=seeded(5))
    assert torch.allclose(loss, expected)


@pytest.mark.parametrize("prediction", ["eps", "v"])
def test_loss_target_follows_the_prediction(prediction):
    """An oracle that knows x0 predicts the target exactly: zero loss for its own target."""
    model = tiny(prediction=prediction)
    x0 = torch.rand(4, 3, 8, 8) * 2 - 1
    schedule = model.schedule

    class Oracle(nn.Module):
        def forward(self, x, t, labels, aug_params=None):
            eps = schedule.eps_from_x0(x, t, x0)
            return eps if prediction == "eps" else schedule.v_target(x0, t, eps)

    model.unet = Oracle()
    t = torch.tensor([1, 5, 10, 15])  # away from t = T-1, where eps_from_x0 loses precision
    assert model.loss(x0, torch.zeros(4), t=t, generator=seeded(0)).item() < 1e-8
    model.diffusion_config = dataclasses.replace(model.diffusion_config,
                                                 prediction="eps" if prediction == "v" else "v")
    assert model.loss(x0, torch.zeros(4), t=t, generator=seeded(0)).item() > 1e-2


def test_label_dropout_uses_the_null_class_only_in_training():
    model = tiny(class_dropout=0.5)
    model.unet = recorder = Recorder(model.unet)
    images, labels = torch.zeros(200, 3, 8, 8), torch.ones(200, dtype=torch.long)
    model.train().loss(images, labels, generator=seeded(0))
    dropped = (recorder.calls[-1] == 2).float().mean().item()
    assert 0.4 < dropped < 0.6 and set(recorder.calls[-1].tolist()) == {1, 2}
    model.eval().loss(images, labels, generator=seeded(0))
    assert set(recorder.calls[-1].tolist()) == {1}


def test_loss_rejects_bad_inputs():
    model = tiny()
    with pytest.raises(ValueError, match=r"images: shape \(2, 1, 8, 8\), expected \(N, 3, 8, 8\)"):
        model.loss(torch.zeros(2, 1, 8, 8), torch.zeros(2))
    with pytest.raises(ValueError, match=r"labels: values must be in \[0, num_classes=2\)"):
        model.loss(torch.zeros(2, 3, 8, 8), torch.tensor([0, 2]))
    with pytest.raises(ValueError, match="labels: 3 labels for 2 images"):
        model.loss(torch.zeros(2, 3, 8, 8), torch.tensor([0, 1, 1]))


@pytest.mark.slow
def test_tiny_model_overfits_a_handful_of_images():
    torch.manual_seed(0)
    model = tiny(num_timesteps=100, class_dropout=0.0)
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, 8), torch.linspace(-1, 1, 8), indexing="ij")
    disc = (xx ** 2 + yy ** 2 < 0.4).float() * 2 - 1
    images = torch.stack([torch.stack([xx, yy, -xx]), torch.stack([disc] * 3),
                          torch.stack([yy, xx * yy, xx]), torch.stack([torch.sign(xx * yy)] * 3)])
    labels = torch.tensor([0, 1, 0, 1])
    g = seeded(0)
    fixed_t = torch.randint(0, 100, (32,), generator=g)
    fixed_noise = torch.randn(32, 3, 8, 8, generator=g)

    def validation_loss() -> float:
        model.eval()
        with torch.no_grad():
            return model.loss(images.repeat(8, 1, 1, 1), labels.repeat(8), t=fixed_t,
                              noise=fixed_noise).item()

    before = validation_loss()
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3, foreach=True)
    model.train()
    for _ in range(150):
        loss = model.loss(images, labels, generator=g)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    after = validation_loss()
    assert after < before / 5, (before, after)


# ---------------------------------------------------------------- sampling


def test_samples_are_in_range_deterministic_and_batched():
    model = tiny()
    model.train()
    first = model.sample([0, 1, 1, 0, 1], steps=5, generator=seeded(0), batch_size=2)
    assert first.shape == (5, 3, 8, 8)
    assert first.min() >= -1 and first.max() <= 1
    assert model.training  # mode restored
    assert torch.equal(first, model.sample([0, 1, 1, 0, 1], steps=5, generator=seeded(0),
                                           batch_size=2))
    assert not torch.equal(first, model.sample([0, 1, 1, 0, 1], steps=5, generator=seeded(1),
                                               batch_size=2))
    model.unet = recorder = Recorder(model.unet)
    model.sample(torch.tensor([0, 1, 1, 0, 1]), steps=5, generator=seeded(0), batch_size=2)
    assert [len(c) for c in recorder.calls] == [2] * 5 + [2] * 5 + [1] * 5


def test_ddim_timesteps():
    model = create_ddpm(8, 16, (1, 2), 1, (0, 1), 2, norm_groups=8)
    pairs = model.ddim_timesteps(50)
    assert len(pairs) == 50 and pairs[0][0] == 999 and pairs[-1] == (0, -1)
    assert all(t > t_prev for t, t_prev in pairs)
    assert [t for t, _ in model.ddim_timesteps(1000)] == list(range(999, -1, -1))


def test_ddim_with_eta_1_over_all_steps_is_ddpm():
    """Song et al. 2021: eta = 1 makes each DDIM step the DDPM posterior step; with the same
    generator both consume the same noise, so samples agree, not just in distribution."""
    model = tiny()
    labels = torch.tensor([0, 1, 1, 0])
    ddpm = model.sample(labels, sampler="ddpm", generator=seeded(3))
    ddim = model.sample(labels, sampler="ddim", steps=20, eta=1.0, generator=seeded(3))
    assert torch.allclose(ddpm, ddim, atol=1e-4)
    ddim_eta0 = model.sample(labels, sampler="ddim", steps=20, eta=0.0, generator=seeded(3))
    assert not torch.allclose(ddpm, ddim_eta0, atol=1e-2)


def chain_moments(alpha_bar: list[float], pairs: list[tuple[int, int]], eta: float, mu: float,
                  sigma: float) -> tuple[float, float]:
    """Exact mean and std of the sampler's output when the network is the Gaussian oracle.

    Every step is linear in x plus independent noise, x' = A x + B + s z, so the moments follow
    m' = A m + B, v' = A^2 v + s^2 from x_T ~ N(0, 1) (Song et al. 2021, eqs. 12 and 16)."""
    m, v = 0.0, 1.0
    for t, t_prev in pairs:
        a, a_prev = alpha_bar[t], (alpha_bar[t_prev] if t_prev >= 0 else 1.0)
        c = a ** 0.5 * sigma ** 2 / (a * sigma ** 2 + 1 - a)  # x0_hat = mu + c (x - sqrt(a) mu)
        s2 = eta ** 2 * (1 - a_prev) / (1 - a) * (1 - a / a_prev)
        k = (1 - a_prev - s2) ** 0.5
        # x' = sqrt(a_prev) x0_hat + k (x - sqrt(a) x0_hat) / sqrt(1 - a) + s z
        slope_x0 = a_prev ** 0.5 - k * a ** 0.5 / (1 - a) ** 0.5
        A = slope_x0 * c + k / (1 - a) ** 0.5
        B = slope_x0 * (mu - c * a ** 0.5 * mu)
        m, v = A * m + B, A * A * v + s2
    return m, v ** 0.5


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_the_chain_with_many_steps_recovers_the_data(eta):
    alpha_bar = torch.cumprod(1 - cosine_betas(1000), 0).tolist()
    pairs = [(t, t - 1) for t in range(999, -1, -1)]
    mean, std = chain_moments(alpha_bar, pairs, eta, 0.4, 0.2)
    assert mean == pytest.approx(0.4, abs=1e-3) and std == pytest.approx(0.2, abs=0.005)


@pytest.mark.parametrize("sampler,steps,eta", [("ddpm", 100, 1.0), ("ddim", 100, 1.0),
                                               ("ddim", 100, 0.0), ("ddim", 25, 1.0),
                                               ("ddim", 10, 0.0), ("ddim", 10, 0.5)])
def test_samplers_match_the_exact_moments_of_their_chain(sampler, steps, eta):
    """With the exact denoiser of Gaussian data N(mu, 0.2^2), each sampler's output moments match
    the closed-form moments of its discretised chain (coarse chains shrink the spread: the mean
    x0 prediction drops Var(x0 | x_t); T = 100 ancestral gives std 0.185 for 0.2)."""
    model = create_ddpm(4, 16, (1,), 1, (0,), 2, num_timesteps=100, norm_groups=8)
    model.unet = GaussianOracle(model.schedule)
    alpha_bar = torch.cumprod(1 - cosine_betas(100), 0).tolist()
    labels = torch.tensor([0, 1]).repeat(200)
    samples = model.sample(labels, sampler=sampler, steps=steps, eta=eta, generator=seeded(0))
    for label, mu in ((0, -0.3), (1, 0.4)):
        mean, std = chain_moments(alpha_bar, model.ddim_timesteps(steps), eta, mu, 0.2)
        values = samples[labels == label]
        assert values.mean().item() == pytest.approx(mean, abs=0.01)
        assert values.std().item() == pytest.approx(std, rel=0.05)


def test_v_prediction_samples_like_eps_prediction():
    """The same oracle expressed as v = sqrt(a) eps - sqrt(1 - a) x0 gives the same samples."""
    eps_model = create_ddpm(4, 16, (1,), 1, (0,), 2, num_timesteps=100, norm_groups=8)
    v_model = create_ddpm(4, 16, (1,), 1, (0,), 2, num_timesteps=100, norm_groups=8,
                          prediction="v")
    oracle = GaussianOracle(eps_model.schedule)
    schedule = eps_model.schedule

    class VOracle(nn.Module):
        def forward(self, x, t, labels, aug_params=None):
            eps = oracle(x, t, labels)
            return schedule.v_target(schedule.x0_from_eps(x, t, eps), t, eps)

    eps_model.unet, v_model.unet = oracle, VOracle()
    labels = torch.tensor([0, 1]).repeat(20)
    for sampler in ("ddpm", "ddim", "dpmpp-2m"):
        a = eps_model.sample(labels, sampler=sampler, steps=10, generator=seeded(0))
        b = v_model.sample(labels, sampler=sampler, steps=10, generator=seeded(0))
        assert torch.allclose(a, b, atol=1e-4)


def test_quadratic_timesteps_are_distinct_and_denser_near_zero():
    model = create_ddpm(4, 16, (1,), 1, (0,), 2, num_timesteps=100, norm_groups=8)
    for steps in (1, 2, 3, 10, 60, 100):
        pairs = model.quadratic_timesteps(steps)
        ts = [t for t, _ in pairs]
        assert len(pairs) == steps and ts[0] == 99 and pairs[-1][1] == -1 and all(t > t_prev for t, t_prev in pairs)
        assert steps == 1 or ts[-1] == 0
    assert [t for t, _ in model.quadratic_timesteps(5)] == [99, 56, 25, 6, 0]  # 99 (1 - i/4)^2


def test_dpmpp_2m_first_order_steps_are_ddim_with_eta_0():
    """Up to three steps DPM-Solver++(2M) only takes its first-order steps (the first, the one into
    t = 0, the one to x_0): on the same time steps that is DDIM with eta 0, sample for sample."""
    model = tiny()
    labels = torch.tensor([0, 1, 1, 0])
    for steps in (2, 3, 6):
        solver = model.sample(labels, sampler="dpmpp-2m", steps=steps, generator=seeded(3))
        on_its_grid = copy.deepcopy(model)
        on_its_grid.ddim_timesteps = on_its_grid.quadratic_timesteps
        ddim = on_its_grid.sample(labels, sampler="ddim", steps=steps, eta=0.0, generator=seeded(3))
        assert torch.allclose(solver, ddim, atol=1e-5) == (steps <= 3)


def ode_error(model: DDPM, sampler: str, steps: int) -> float:
    """Mean |sample - exact| for the Gaussian oracle: the probability-flow ODE maps x_T to
    mu + sigma / s_T (x_T - sqrt(a_T) mu), s_T^2 = a_T sigma^2 + 1 - a_T (it keeps every marginal
    Gaussian, so it maps quantiles to quantiles); a deterministic sampler approximates that map."""
    labels = torch.tensor([0, 1]).repeat(50)
    x_T = torch.randn((100, 3, 4, 4), generator=seeded(0))  # the sampler's first draw
    a = float(model.schedule.alphas_cumprod[-1])
    mu = torch.tensor([-0.3, 0.4])[labels].view(-1, 1, 1, 1)
    exact = mu + 0.2 / (a * 0.04 + 1 - a) ** 0.5 * (x_T - a ** 0.5 * mu)
    return float((model.sample(labels, sampler=sampler, steps=steps, generator=seeded(0)) - exact).abs().mean())


def test_dpmpp_2m_reaches_the_exact_samples_in_fewer_steps_than_ddim():
    model = create_ddpm(4, 16, (1,), 1, (0,), 2, num_timesteps=1000, norm_groups=8)
    model.unet = GaussianOracle(model.schedule)
    ddim = {steps: ode_error(model, "ddim", steps) for steps in (25, 50)}
    solver = {steps: ode_error(model, "dpmpp-2m", steps) for steps in (10, 25, 50)}
    assert solver[10] < ddim[50] < ddim[25]  # 10 evaluations beat DDIM's 50 (measured 0.006, 0.010)
    assert solver[50] < solver[25] / 3 and solver[50] < ddim[50] / 10  # second order: error ~ steps^-2


def test_dpmpp_2m_guides_with_the_two_pass_formula():
    model = tiny()
    model.unet = recorder = Recorder(model.unet)
    labels = torch.tensor([0, 1, 1])
    plain = model.sample(labels, sampler="dpmpp-2m", steps=4, guidance=1.0, generator=seeded(0))
    recorder.calls.clear()
    guided = model.sample(labels, sampler="dpmpp-2m", steps=4, guidance=3.0, generator=seeded(0))
    assert [c.tolist() for c in recorder.calls] == [[0, 1, 1, 2, 2, 2]] * 4
    assert not torch.allclose(plain, guided, atol=1e-3)


def test_ddim_and_ddpm_agree_in_distribution_on_a_network():
    """Different seeds, same model: the moments of many DDIM(eta=1) and DDPM samples agree."""
    model = tiny(image_size=4, channel_multipliers=(1,), use_attention=(1,))
    labels = torch.tensor([0, 1]).repeat(100)
    ddpm = model.sample(labels, sampler="ddpm", generator=seeded(0))
    ddim = model.sample(labels, sampler="ddim", steps=20, eta=1.0, generator=seeded(1))
    assert ddpm.mean().item() == pytest.approx(ddim.mean().item(), abs=0.03)
    assert ddpm.std().item() == pytest.approx(ddim.std().item(), rel=0.05)
    per_pixel = (ddpm.mean(0) - ddim.mean(0)).abs().max().item()
    assert per_pixel < 4 * ddpm.std().item() / 100 ** 0.5


def test_guidance_1_is_the_plain_conditional_model():
    model = tiny()
    model.unet = recorder = Recorder(model.unet)
    labels = torch.tensor([0, 1, 1])
    plain = model.sample(labels, steps=5, guidance=1.0, generator=seeded(0))
    assert [c.tolist() for c in recorder.calls] == [[0, 1, 1]] * 5  # no unconditional pass
    recorder.calls.clear()
    # The two-pass guided formula at (almost) w = 1 gives the same samples.
    guided = model.sample(labels, steps=5, guidance=1.0 + 1e-6, generator=seeded(0))
    assert [c.tolist() for c in recorder.calls] == [[0, 1, 1, 2, 2, 2]] * 5
    assert torch.allclose(plain, guided, atol=1e-3)  # batch-of-6 vs batch-of-3 rounding
    stronger = model.sample(labels, steps=5, guidance=3.0, generator=seeded(0))
    assert not torch.allclose(plain, stronger, atol=1e-3)


def test_guidance_extrapolates_away_from_the_null_class():
    """eps = eps_null + w (eps_label - eps_null), checked on the oracle at one step."""
    model = create_ddpm(4, 16, (1,), 1, (0,), 2, num_timesteps=100, norm_groups=8)
    model.unet = GaussianOracle(model.schedule, mu=(-0.3, 0.4, 0.0))
    x = torch.randn(2, 3, 4, 4)
    labels = torch.tensor([0, 1])
    _, eps_w = model.predict_x0_eps(x, 50, labels, guidance=2.5, clip_denoised=False)
    t = torch.full((2,), 50)
    cond = model.unet(x, t, labels)
    null = model.unet(x, t, torch.full((2,), 2))
    assert torch.allclose(eps_w, null + 2.5 * (cond - null), atol=1e-4)


def test_sample_rejects_bad_arguments():
    model = tiny()
    with pytest.raises(ValueError, match="sampler: 'euler' is not one of 'ddpm', 'ddim', 'dpmpp-2m'"):
        model.sample([0], sampler="euler")
    with pytest.raises(ValueError, match="eta: 0.5; the dpmpp-2m sampler is deterministic"):
        model.sample([0], sampler="dpmpp-2m", steps=5, eta=0.5)
    with pytest.raises(ValueError, match=r"steps: 21 must be in \[1, num_timesteps=20\]"):
        model.sample([0], sampler="dpmpp-2m", steps=21)
    with pytest.raises(ValueError, match=r"steps: 21 must be in \[1, num_timesteps=20\]"):
        model.sample([0], steps=21)
    with pytest.raises(ValueError, match=r"labels: values must be in \[0, num_classes=2\)"):
        model.sample([5])
