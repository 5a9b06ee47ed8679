"""Where a run executes: device choice, torchrun's distributed set-up, and autocast precision.

Everything here reads the process environment (torchrun's RANK, WORLD_SIZE, LOCAL_RANK) or the
hardware; the training loop gets the results as plain objects and knows nothing of either.
"""
from __future__ import annotations

import contextlib
import os
from typing import Any, Callable, TypeVar

import torch

from .config import Precision

Autocast = Callable[[], contextlib.AbstractContextManager]

T = TypeVar("T")


def pick_device(name: str, local_rank: int = 0) -> torch.device:
    """'auto' = this process's GPU (torchrun's LOCAL_RANK) when CUDA is available, else the CPU."""
    if name == "auto":
        return torch.device(f"cuda:{local_rank}" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, ValueError):
        raise ValueError(f"--device: {name!r} is not a device; use auto, cpu, cuda or cuda:N") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device: {name!r} requested but CUDA is not available; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        count = torch.cuda.device_count()
        raise ValueError(f"--device: {name!r}: this machine has {count} CUDA device(s), cuda:0 to cuda:{count - 1}")
    if device.type not in ("cpu", "cuda", "mps"):
        raise ValueError(f"--device: {name!r} is not supported; use auto, cpu, cuda or cuda:N")
    return device


class Distributed:
    """Rank, world size and the few collectives the loop needs; a no-op for one process."""

    def __init__(self, rank: int = 0, world_size: int = 1):
        self.rank, self.world_size = rank, world_size
        self.is_main = rank == 0

    def on_main(self, work: Callable[..., T], *args: Any) -> T:
        """`work(*args)` on rank 0 only (it reads the run folder), its answer or its error on every
        rank. ValueError and OSError cross as they are; anything else stays a bug on rank 0."""
        outcome: Any = None
        if self.is_main:
            try:
                outcome = work(*args)
            except (OSError, ValueError) as error:
                outcome = error
        outcome = self.broadcast(outcome)
        if isinstance(outcome, Exception):
            raise outcome
        return outcome

    def all_reduce_sum(self, tensor: torch.Tensor) -> torch.Tensor:
        if self.world_size > 1:
            torch.distributed.all_reduce(tensor)
        return tensor

    def gather(self, obj: Any) -> list[Any]:
        """Every rank's `obj` on every rank (small objects: RNG and reader states)."""
        if self.world_size == 1:
            return [obj]
        out: list[Any] = [None] * self.world_size
        torch.distributed.all_gather_object(out, obj)
        return out

    def barrier(self) -> None:
        """Wait for every rank: no rank may leave the process group while another still works in it
        (gloo aborts a process whose peer has hung up)."""
        if self.world_size > 1:
            torch.distributed.barrier()

    def broadcast(self, value: Any) -> Any:
        """Rank 0's `value` on every rank."""
        if self.world_size == 1:
            return value
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]


def setup_distributed(device_name: str) -> tuple[Distributed, torch.device]:
    """Rank and world size from torchrun's environment (RANK, WORLD_SIZE, LOCAL_RANK); joins the
    process group (NCCL on CUDA, gloo on the CPU) when there is more than one process."""
    rank, world_size = int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))
    device = pick_device(device_name, int(os.environ.get("LOCAL_RANK", 0)))
    if world_size > 1 and not torch.distributed.is_initialized():
        if device.type == "cuda":
            torch.cuda.set_device(device)
        torch.distributed.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Distributed(rank, world_size), device


def teardown_distributed(dist: Distributed) -> None:
    if dist.world_size > 1 and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def resolve_precision(precision: Precision, device: torch.device) -> Precision:
    """AUTO = bf16 on CUDA, fp32 elsewhere (CPU autocast is slower than fp32 for this model)."""
    if precision is Precision.AUTO:
        return Precision.BF16 if device.type == "cuda" else Precision.FP32
    return precision


def autocast_for(precision: Precision, device: torch.device) -> tuple[Precision, Autocast]:
    """(resolved precision, a factory of the autocast context for the forward pass)."""
    precision = resolve_precision(precision, device)
    if precision is Precision.FP32:
        return precision, contextlib.nullcontext
    dtype = torch.bfloat16 if precision is Precision.BF16 else torch.float16
    return precision, lambda: torch.autocast(device.type, dtype=dtype)
