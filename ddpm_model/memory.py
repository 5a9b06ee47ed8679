"""The accelerator memory one training step needs at a batch size: estimated anywhere from the
architecture alone (`estimate_step_memory`), or measured on a CUDA device (`measure_step_memory`).

    from ddpm_model.memory import estimate_step_memory, format_memory
    print(format_memory(estimate_step_memory(PRESETS["96"], batch_size=6, precision="bf16")))
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from .unet import ResBlock, SelfAttention, UNet, UNetConfig

FP32_BYTES = 4
# Bytes per activation element relative to fp32. Under autocast convolutions and matmuls save
# half-precision inputs, but GroupNorm and softmax run (and save) in fp32, so the true ratio for
# bf16/fp16 lies somewhat above 0.5.
ACTIVATION_SCALE = {"fp32": 1.0, "bf16": 0.5, "fp16": 0.5}
GIB = 2 ** 30


@dataclass(frozen=True)
class StepMemory:
    """Bytes one training step holds at its peak, by what holds them."""

    batch_size: int
    precision: str                    # "fp32" | "bf16" | "fp16" (autocast dtype)
    gradient_checkpointing: bool
    weights_bytes: int                # fp32 parameters (autocast keeps fp32 master weights)
    gradients_bytes: int              # one fp32 gradient per parameter
    adamw_bytes: int                  # AdamW's exp_avg and exp_avg_sq: 2 fp32 tensors per parameter
    ema_bytes: int                    # the fp32 EMA copy of the weights
    activations_bytes: int            # tensors kept for the backward pass
    total_bytes: int
    method: str                       # "estimated" | "measured"


def _check_precision(precision: str) -> str:
    if precision not in ACTIVATION_SCALE:
        raise ValueError(f"precision: {precision!r} is not one of {', '.join(ACTIVATION_SCALE)}")
    return str(getattr(precision, "value", precision))


def _parameter_parts(parameters: int) -> dict[str, int]:
    return {"weights_bytes": FP32_BYTES * parameters, "gradients_bytes": FP32_BYTES * parameters,
            "adamw_bytes": 2 * FP32_BYTES * parameters, "ema_bytes": FP32_BYTES * parameters}


def saved_activation_bytes(unet: UNetConfig, batch_size: int,
                           gradient_checkpointing: bool = False) -> tuple[int, int]:
    """(bytes of the tensors one fp32 training forward + MSE loss saves for backward, the most
    any single residual or attention block saves inside itself), counted on the meta device (no
    memory, no compute) with `torch.autograd.graph.saved_tensors_hooks`. Tensors sharing
    storage count once; the parameters themselves do not count. With `gradient_checkpointing`
    the first is what remains saved: the blocks' inputs and everything outside the blocks
    (and the second is 0, as the blocks save nothing). Meta kernels save what the reference
    implementations do; a fused CUDA kernel may save a little less (attention: a log-sum-exp
    instead of the weights)."""
    with torch.device("meta"):
        model = UNet(unet)
        c, s, n = unet.in_channels, unet.image_size, batch_size
        x, noise = torch.empty(n, c, s, s), torch.empty(n, c, s, s)
        t, labels = torch.zeros(n, dtype=torch.long), torch.zeros(n, dtype=torch.long)
        aug = torch.empty(n, unet.aug_dim) if unet.aug_dim else None
    model.train().enable_gradient_checkpointing(gradient_checkpointing)
    parameters = {p.untyped_storage()._cdata for p in model.parameters()}
    saved: dict[int, int] = {}
    per_block: dict[int, int] = {}
    active: list[nn.Module] = []

    def pack(tensor: torch.Tensor) -> torch.Tensor:
        # Storages stay alive (the graph holds them) until counting ends, so keys are unique.
        storage = tensor.untyped_storage()
        if storage._cdata not in parameters and storage._cdata not in saved:
            saved[storage._cdata] = storage.nbytes()
            if active:  # blocks do not nest, so at most one is active
                per_block[id(active[-1])] = per_block.get(id(active[-1]), 0) + storage.nbytes()
        return tensor

    def enter(module: nn.Module, args: Any) -> None:
        active.append(module)

    def leave(module: nn.Module, args: Any, output: Any) -> None:
        active.pop()

    blocks = [m for m in model.modules() if isinstance(m, (ResBlock, SelfAttention))]
    handles = [m.register_forward_pre_hook(enter) for m in blocks]
    handles += [m.register_forward_hook(leave) for m in blocks]
    try:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda tensor: tensor):
            loss = F.mse_loss(model(x, t, labels, aug), noise)
        del loss
    finally:
        for handle in handles:
            handle.remove()
    return sum(saved.values()), max(per_block.values(), default=0)


def estimate_step_memory(unet: UNetConfig, batch_size: int, precision: str = "fp32",
                         gradient_checkpointing: bool = False) -> StepMemory:
    """Memory of one AdamW training step of `UNet(unet)` at `batch_size` once the optimizer
    state exists (from the second step on), with an EMA copy, under `precision` autocast.

    Exact: weights, gradients, AdamW state and EMA (from the parameter count). Approximate:
    activations, the bytes the forward pass saves for backward (`saved_activation_bytes`),
    counted in fp32 and halved for bf16/fp16 (GroupNorm and softmax stay fp32 under autocast,
    so the real figure is somewhat higher), plus autocast's half-precision copy of the weights.
    With gradient checkpointing, the largest block's recomputed activations are added, as
    backward holds one block's at a time. Not counted: the transient gradients of activations
    during backward, cuDNN workspaces and the allocator's fragmentation; measure on the GPU
    (`measure_step_memory`) before trusting a tight fit.
    """
    precision = _check_precision(precision)
    if batch_size < 1:
        raise ValueError(f"batch_size: {batch_size} must be >= 1")
    with torch.device("meta"):
        parameters = sum(p.numel() for p in UNet(unet).parameters())
    activations, _ = saved_activation_bytes(unet, batch_size, gradient_checkpointing)
    if gradient_checkpointing:
        activations += saved_activation_bytes(unet, batch_size)[1]
    activations = int(activations * ACTIVATION_SCALE[precision])
    if precision != "fp32":
        activations += 2 * parameters  # the half-precision weight copies conv/linear save
    parts = {**_parameter_parts(parameters), "activations_bytes": activations}
    return StepMemory(batch_size, precision, gradient_checkpointing, **parts,
                      total_bytes=sum(parts.values()), method="estimated")


def measure_step_memory(model: Any, batch_size: int, device: str | torch.device,
                        precision: str = "fp32") -> StepMemory:
    """Memory of one AdamW training step of `model` (a DDPM) at `batch_size` on a CUDA
    `device`, with an EMA copy: `torch.cuda.max_memory_allocated` over a step taken after a
    first one (so the AdamW state exists). Everything already on the device counts too. The
    parts but activations come from the parameter count; activations are the rest."""
    from .ema import EMA

    precision = _check_precision(precision)
    device = torch.device(device)
    if device.type != "cuda":
        raise ValueError(f"device: {device} is not a CUDA device; measuring needs one "
                         f"(use estimate_step_memory elsewhere)")
    model = model.to(device).train()
    config = model.unet_config
    ema = EMA(model)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}.get(precision)
    c, s = config.in_channels, config.image_size
    images = torch.rand(batch_size, c, s, s, device=device) * 2 - 1
    labels = torch.zeros(batch_size, dtype=torch.long, device=device)
    aug = torch.zeros(batch_size, config.aug_dim, device=device) if config.aug_dim else None

    def step() -> None:
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = model.loss(images, labels, aug)
        loss.backward()  # fp16's GradScaler only scales the loss: no memory of note
        optimizer.step()
        optimizer.zero_grad(set_to_none=False)  # gradients stay allocated, as in training
        ema.update(model)

    step()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    step()
    torch.cuda.synchronize(device)
    total = torch.cuda.max_memory_allocated(device)
    parameters = sum(p.numel() for p in model.parameters())
    parts = _parameter_parts(parameters)
    return StepMemory(batch_size, precision, model.unet.is_gradient_checkpointing, **parts,
                      activations_bytes=max(0, total - sum(parts.values())), total_bytes=total,
                      method="measured")


def _gib(size_bytes: int) -> str:
    value = size_bytes / GIB
    return f"{value:.2g}" if value >= 0.01 else "<0.01"


def format_memory(memory: StepMemory) -> str:
    """One paragraph, e.g. "one training step at batch 6: ~3.1 GiB (estimated: weights 0.13,
    grads 0.13, AdamW 0.25, EMA 0.13, activations 2.5)"."""
    options = [memory.precision] + (["gradient checkpointing"] if memory.gradient_checkpointing
                                    else [])
    return (f"one training step at batch {memory.batch_size} ({', '.join(options)}): "
            f"~{_gib(memory.total_bytes)} GiB ({memory.method}: "
            f"weights {_gib(memory.weights_bytes)}, grads {_gib(memory.gradients_bytes)}, "
            f"AdamW {_gib(memory.adamw_bytes)}, EMA {_gib(memory.ema_bytes)}, "
            f"activations {_gib(memory.activations_bytes)})")
