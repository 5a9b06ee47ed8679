"""The memory of a training step: estimated on the meta device anywhere, measured on CUDA."""
from __future__ import annotations

import dataclasses

import pytest
import torch

from ddpm_model.diffusion import DDPM, DiffusionConfig
from ddpm_model.memory import (
    StepMemory, estimate_step_memory, format_memory, measure_step_memory, saved_activation_bytes,
)
from ddpm_model.presets import PRESETS
from ddpm_model.unet import count_parameters

SMALL = dataclasses.replace(PRESETS["tiny"], image_size=16, model_channels=16)
PARTS = ("weights_bytes", "gradients_bytes", "adamw_bytes", "ema_bytes", "activations_bytes")


def test_parts_follow_the_parameter_count_and_add_up():
    memory = estimate_step_memory(SMALL, batch_size=4)
    parameters = count_parameters(SMALL)
    assert memory.method == "estimated" and memory.precision == "fp32"
    assert memory.weights_bytes == memory.gradients_bytes == memory.ema_bytes == 4 * parameters
    assert memory.adamw_bytes == 8 * parameters  # exp_avg and exp_avg_sq in fp32
    assert all(getattr(memory, part) > 0 for part in PARTS)
    assert memory.total_bytes == sum(getattr(memory, part) for part in PARTS)


def test_activations_grow_linearly_with_the_batch():
    one = estimate_step_memory(SMALL, batch_size=2).activations_bytes
    two = estimate_step_memory(SMALL, batch_size=4).activations_bytes
    assert two == pytest.approx(2 * one, rel=0.02)


def test_activation_count_matches_a_real_cpu_forward():
    """The meta-device count is the bytes a real forward saves for backward, give or take what
    kernels save differently per device (e.g. attention: its weights on meta, a log-sum-exp on
    the CPU)."""
    torch.manual_seed(0)
    model = DDPM(SMALL, DiffusionConfig()).train()
    saved: dict[int, int] = {}

    def pack(tensor):
        saved[tensor.untyped_storage().data_ptr()] = tensor.untyped_storage().nbytes()
        return tensor

    x, t, labels = torch.randn(3, 3, 16, 16), torch.tensor([1, 2, 3]), torch.tensor([0, 1, 2])
    with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
        loss = torch.nn.functional.mse_loss(model.unet(x, t, labels), x)
    parameters = {p.untyped_storage().data_ptr() for p in model.parameters()}
    real = sum(n for ptr, n in saved.items() if ptr not in parameters)
    assert saved_activation_bytes(SMALL, 3)[0] == pytest.approx(real, rel=0.05)
    del loss


def test_gradient_checkpointing_and_half_precision_lower_activations():
    full = estimate_step_memory(SMALL, batch_size=4)
    checkpointed = estimate_step_memory(SMALL, batch_size=4, gradient_checkpointing=True)
    half = estimate_step_memory(SMALL, batch_size=4, precision="bf16")
    assert checkpointed.activations_bytes < 0.7 * full.activations_bytes
    assert half.activations_bytes < 0.7 * full.activations_bytes
    assert checkpointed.weights_bytes == full.weights_bytes


def test_format_and_errors():
    memory = StepMemory(6, "bf16", False, 2 ** 27, 2 ** 27, 2 ** 28, 2 ** 27, 5 * 2 ** 29,
                        int(3.125 * 2 ** 30), "estimated")
    assert format_memory(memory) == (
        "one training step at batch 6 (bf16): ~3.1 GiB (estimated: weights 0.12, grads 0.12, "
        "AdamW 0.25, EMA 0.12, activations 2.5)")
    with pytest.raises(ValueError, match="precision: 'fp8' is not one of fp32, bf16, fp16"):
        estimate_step_memory(SMALL, 2, precision="fp8")
    with pytest.raises(ValueError, match="batch_size: 0 must be >= 1"):
        estimate_step_memory(SMALL, 0)
    with pytest.raises(ValueError, match="device: cpu is not a CUDA device"):
        measure_step_memory(DDPM(SMALL, DiffusionConfig()), 2, "cpu")


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_estimate_is_near_the_measured_peak(precision):
    config = dataclasses.replace(PRESETS["96"], image_size=64)
    measured = measure_step_memory(DDPM(config, DiffusionConfig()), 8, "cuda", precision)
    estimated = estimate_step_memory(config, 8, precision)
    assert measured.method == "measured" and measured.total_bytes > 0
    assert measured.weights_bytes == estimated.weights_bytes
    assert estimated.total_bytes == pytest.approx(measured.total_bytes, rel=0.5)
