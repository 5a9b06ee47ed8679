"""String options of the model (`beta_schedule="cosine"`, `upsample="bilinear"`, ...) as Enums.

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
