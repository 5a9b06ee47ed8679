import io

import pytest
import torch
from torch import nn

from ddpm_model import EMA, create_ddpm


def test_warmup_decay_schedule():
    ema = EMA(nn.Linear(2, 2), decay=0.999)
    expected = [0.1, 2 / 11, 3 / 12]
    for value in expected:
        assert ema.current_decay() == pytest.approx(value)
        ema.update(nn.Linear(2, 2))
    ema.num_updates = 10_000
    assert ema.current_decay() == 0.999  # capped at decay
    assert EMA(nn.Linear(2, 2), decay=0.9, warmup=False).current_decay() == 0.9


def test_update_is_the_exponential_average():
    model = nn.Linear(3, 1)
    ema = EMA(model, decay=0.5, warmup=False)
    start = model.weight.detach().clone()
    with torch.no_grad():
        model.weight.add_(2.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, start + 1.0)
    ema.update(model)
    assert torch.allclose(ema.module.weight, start + 1.5)
    assert not ema.module.weight.requires_grad and not ema.module.training


def test_average_converges_to_constant_weights_during_warmup():
    model = nn.Linear(4, 4)
    ema = EMA(model, decay=0.9999)
    with torch.no_grad():
        model.weight.fill_(1.0)
    for _ in range(300):
        ema.update(model)
    # Without warm-up a 0.9999 average would still be ~97% the initial weights.
    assert torch.allclose(ema.module.weight, torch.ones(4, 4), atol=0.05)


def test_state_dict_round_trip_with_weights_only_load():
    model = nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2))
    ema = EMA(model, decay=0.99)
    for _ in range(3):
        with torch.no_grad():
            model[0].weight.add_(0.1)
        ema.update(model)
    buffer = io.BytesIO()
    torch.save(ema.state_dict(), buffer)
    buffer.seek(0)
    restored = EMA(nn.Sequential(nn.Linear(2, 2), nn.BatchNorm1d(2)), decay=0.5)
    restored.load_state_dict(torch.load(buffer, weights_only=True))
    assert restored.num_updates == 3 and restored.decay == 0.99
    assert restored.current_decay() == ema.current_decay()
    for a, b in zip(restored.module.state_dict().values(), ema.module.state_dict().values()):
        assert torch.equal(a, b)


def test_copy_to_and_sampling_from_the_average():
    model = create_ddpm(8, 16, (1, 2), 1, (0, 1), 2, num_timesteps=10, norm_groups=8)
    ema = EMA(model, decay=0.9)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.01)
    ema.update(model)
    target = create_ddpm(8, 16, (1, 2), 1, (0, 1), 2, num_timesteps=10, norm_groups=8)
    ema.copy_to(target)
    for a, b in zip(target.parameters(), ema.module.parameters()):
        assert torch.equal(a, b)
    images = ema.module.sample([0, 1], steps=3, generator=torch.Generator().manual_seed(0))
    assert images.shape == (2, 3, 8, 8)


def test_mismatched_model_and_bad_decay():
    ema = EMA(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="model: 4 parameter tensors, the EMA holds 2"):
        ema.update(nn.Sequential(nn.Linear(2, 2), nn.Linear(2, 2)))
    with pytest.raises(ValueError, match=r"decay: 1.0 must be in \[0, 1\)"):
        EMA(nn.Linear(2, 2), decay=1.0)
