"""The model's string options as Enums (`beta_schedule="cosine"`, `upsample="bilinear"`, ...).

Standard library only, so the CLI types its options with them without importing torch.

Configs accept the string or the member and store the member, a `str` Enum, so code dispatches
on it and `json.dumps` still writes the plain string; `plain_dict` turns a config into the
lists, strings and numbers that `torch.load(weights_only=True)` accepts. An unknown value
fails with the valid ones.
"""
from __future__ import annotations

import dataclasses
from enum import Enum
from typing import Any, TypeVar

E = TypeVar("E", bound=Enum)


def parse_choice(enum_type: type[E], value: object, argument: str) -> E:
    """`enum_type(value)`, or a ValueError naming `argument` and listing the valid values."""
    if isinstance(value, enum_type):
        return value
    try:
        return enum_type(value)
    except ValueError:
        valid = ", ".join(repr(member.value) for member in enum_type)
        raise ValueError(f"{argument}: {value!r} is not one of {valid}") from None


def plain(value: Any) -> Any:
    """Enum members -> their values, tuples -> lists, recursively; everything else as is."""
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    return value


def plain_dict(config: Any) -> dict[str, Any]:
    """A flat config dataclass as {field: plain value}."""
    return {f.name: plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


class BetaSchedule(str, Enum):
    """How beta_t grows with t."""

    LINEAR = "linear"  # Ho et al. 2020 (arXiv 2006.11239), sec. 4
    COSINE = "cosine"  # Nichol & Dhariwal 2021 (arXiv 2102.09672), eq. 17


class UpsampleMode(str, Enum):
    """How the up path doubles the resolution. Interpolation + 3x3 convolution avoids the
    checkerboard artefacts of a strided transposed convolution (Odena et al. 2016)."""

    BILINEAR = "bilinear"
    BICUBIC = "bicubic"
    NEAREST = "nearest"
    CONV_TRANSPOSE = "conv_transpose"  # the original nn.ConvTranspose2d(k=4, s=2, p=1)


class Prediction(str, Enum):
    """What the network outputs."""

    EPS = "eps"  # the added noise (Ho et al. 2020, eq. 14)
    V = "v"      # v = sqrt(alpha_bar) eps - sqrt(1 - alpha_bar) x0 (Salimans & Ho 2022, sec. 4)


class NoiseDistribution(str, Enum):
    """Which noise levels training draws."""

    UNIFORM = "uniform"      # t uniform over the T steps (Ho et al. 2020, algorithm 1)
    LOGNORMAL = "lognormal"  # ln sigma ~ N(P_mean, P_std^2), nearest step (Karras et al. 2022, sec. 5)


class Sampler(str, Enum):
    DDPM = "ddpm"  # ancestral sampling over all T steps (Ho et al. 2020, algorithm 2)
    DDIM = "ddim"  # `steps` evenly spaced steps, stochasticity eta (Song et al. 2021, eq. 12)
    DPMPP_2M = "dpmpp-2m"  # `steps` steps, second-order multistep (Lu et al. 2022, arXiv 2211.01095)
