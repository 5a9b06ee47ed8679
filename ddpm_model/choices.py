"""String options of the model (`beta_schedule="cosine"`, `upsample="bilinear"`, ...) as Enums.

Configs store the plain string so they serialise to JSON and to `torch.load(weights_only=True)`
checkpoints; the code dispatches on the Enum, and an unknown value fails with the valid ones.
"""
from __future__ import annotations

from enum import Enum
from typing import TypeVar

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
