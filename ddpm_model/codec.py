"""Frozen dataclass configs <-> JSON, driven by the field annotations.

`to_jsonable(config)` gives plain dicts, lists, strings and numbers; `from_jsonable(Kind, data)`
rebuilds `Kind` (nested dataclasses, enums, paths, tuples, optionals) and names the field and the
file's fix when a value does not fit. A config written by one version and read by the next
keeps working when fields are added (they take their defaults); unknown keys are refused.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from enum import Enum
from pathlib import Path
from typing import Any


class CodecError(ValueError):
    """A JSON value does not fit the config field it is read into; the message names the field."""


def to_jsonable(value: Any) -> Any:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, Enum):
        return value.value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    return value


def from_jsonable(kind: Any, value: Any, where: str = "config",
                  namespace: dict[str, Any] | None = None) -> Any:
    """`value` (parsed JSON) as an instance of the annotation `kind`; `where` names the field in
    errors, e.g. 'run.train.lr'. `namespace` resolves annotations that name classes imported
    only for type checking (e.g. {"ReaderConfig": ReaderConfig})."""
    if value is None:
        return None
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        inner = [a for a in args if a is not type(None)]
        return from_jsonable(inner[0], value, where, namespace) if len(inner) == 1 else value
    if origin in (tuple, list):
        if not isinstance(value, list):
            raise CodecError(f"{where}: expected a list, got {value!r}")
        homogeneous = origin is list or (len(args) == 2 and args[1] is Ellipsis)
        if not homogeneous and len(args) != len(value):
            raise CodecError(f"{where}: expected {len(args)} items, got {value!r}")
        kinds = [args[0]] * len(value) if homogeneous else list(args)
        return origin(from_jsonable(k, v, f"{where}[{i}]", namespace)
                      for i, (k, v) in enumerate(zip(kinds, value)))
    if origin is dict:
        if not isinstance(value, dict):
            raise CodecError(f"{where}: expected an object, got {value!r}")
        return dict(value)
    if dataclasses.is_dataclass(kind):
        return _dataclass_from(kind, value, where, namespace)
    if isinstance(kind, type) and issubclass(kind, Enum):
        try:
            return kind(value)
        except ValueError:
            valid = ", ".join(str(m.value) for m in kind)
            raise CodecError(f"{where}: {value!r} unknown; valid: {valid}") from None
    if kind is Path:
        if not isinstance(value, str):
            raise CodecError(f"{where}: expected a path string, got {value!r}")
        return Path(value)
    return _scalar(kind, value, where)


def _dataclass_from(kind: type, value: Any, where: str, namespace: dict[str, Any] | None) -> Any:
    if not isinstance(value, dict):
        raise CodecError(f"{where}: expected an object, got {value!r}")
    hints = typing.get_type_hints(kind, localns=namespace)
    unknown = sorted(set(value) - set(hints))
    if unknown:
        raise CodecError(f"{where}: unknown field(s) {', '.join(unknown)}")
    fields = {k: from_jsonable(hints[k], v, f"{where}.{k}", namespace) for k, v in value.items()}
    try:
        return kind(**fields)
    except (TypeError, ValueError) as error:
        raise CodecError(f"{where}: {error}") from None


def _scalar(kind: Any, value: Any, where: str) -> Any:
    """int, float, bool and str checked (JSON has no int/float distinction for 1.0 vs 1)."""
    if kind is bool and not isinstance(value, bool):
        raise CodecError(f"{where}: expected true or false, got {value!r}")
    if kind is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise CodecError(f"{where}: expected an integer, got {value!r}")
    if kind is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise CodecError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if kind is str and not isinstance(value, str):
        raise CodecError(f"{where}: expected a string, got {value!r}")
    return value
