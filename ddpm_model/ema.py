"""Exponential moving average of a model's weights, the copy that samples best."""
from __future__ import annotations

import copy

import torch
from torch import nn


class EMA:
    """ema <- d * ema + (1 - d) * weights after every optimizer step.

    With `warmup`, d = min(decay, (1 + n) / (10 + n)) after n updates, so the average forgets
    the random initialisation within the first few hundred steps instead of ~1/(1 - decay)
    (the schedule of TensorFlow's ExponentialMovingAverage with num_updates). Buffers (none in
    our U-Net, but e.g. BatchNorm statistics elsewhere) are copied, not averaged.
    `ema.module` is a frozen copy of the model in eval mode, usable for sampling.
    """

    def __init__(self, model: nn.Module, decay: float = 0.9999, warmup: bool = True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"decay: {decay} must be in [0, 1) (0.9999 is usual)")
        self.decay = decay
        self.warmup = warmup
        self.num_updates = 0
        self.module = copy.deepcopy(model).eval()
        self.module.requires_grad_(False)

    def current_decay(self) -> float:
        """The decay the next update will use."""
        if not self.warmup:
            return self.decay
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Move the average towards `model`'s current weights (same architecture)."""
        weight = 1.0 - self.current_decay()
        ema_params = [p for p in self.module.parameters()]
        params = [p.detach() for p in model.parameters()]
        if len(ema_params) != len(params):
            raise ValueError(f"model: {len(params)} parameter tensors, the EMA holds "
                             f"{len(ema_params)}; update with the model the EMA was made from")
        floating = [(e, p) for e, p in zip(ema_params, params) if e.dtype.is_floating_point]
        if floating:
            torch._foreach_lerp_([e for e, _ in floating],
                                 [p.to(device=e.device, dtype=e.dtype) for e, p in floating],
                                 weight)
        for e, p in zip(self.module.buffers(), model.buffers()):
            e.copy_(p.to(e.device))
        self.num_updates += 1

    @torch.no_grad()
    def copy_to(self, model: nn.Module) -> None:
        """Overwrite `model`'s weights with the average (e.g. before exporting)."""
        model.load_state_dict(self.module.state_dict())

    def to(self, device: torch.device | str) -> "EMA":
        self.module.to(device)
        return self

    def state_dict(self) -> dict:
        """Plain tensors and numbers, loadable with torch.load(weights_only=True)."""
        return {"module": self.module.state_dict(), "decay": self.decay,
                "warmup": self.warmup, "num_updates": self.num_updates}

    def load_state_dict(self, state: dict) -> None:
        self.module.load_state_dict(state["module"])
        self.decay = float(state["decay"])
        self.warmup = bool(state["warmup"])
        self.num_updates = int(state["num_updates"])
