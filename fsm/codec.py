"""Dataclass <-> JSON-compatible values, driven by the type hints. Pure; used for the controller
state (crash recovery), observation traces and MQTT/status payloads.

Supports: dataclasses and named tuples (both as JSON objects), str/int/float/bool/None,
StrEnum/IntEnum, tuple[X, ...], list[X], Mapping[K, V] / dict[K, V] (int keys become strings in
JSON), X | None, and typing.Any (as is).
"""

from __future__ import annotations

import dataclasses
import enum
import math
import types
import typing
from collections.abc import Mapping
from functools import cache
from typing import Any, TypeVar, get_args, get_origin

T = TypeVar("T")


class DecodeError(ValueError):
    """A value does not fit the type; `path` says where (dotted)."""

    def __init__(self, path: str, message: str) -> None:
        super().__init__(f"{path or '<root>'}: {message}")
        self.path = path


def encode(value: Any) -> Any:
    if value is None or isinstance(value, bool | str):
        return value
    if isinstance(value, enum.Enum):
        return value.value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        # JSON has no NaN/inf; they never belong in state anyway.
        return value if math.isfinite(value) else None
    cls: Any = type(value)
    if _is_record(cls):  # a dataclass or a named tuple instance
        return {name: encode(getattr(value, name)) for name, _ in _fields(cls)}
    if isinstance(value, Mapping):
        return {str(encode(k)): encode(v) for k, v in value.items()}
    if isinstance(value, tuple | list | frozenset | set):
        items = sorted(value) if isinstance(value, frozenset | set) else value
        return [encode(v) for v in items]
    raise TypeError(f"cannot encode {type(value).__name__}")


@cache
def _fields(cls: type) -> tuple[tuple[str, bool], ...]:
    """A record type's fields as (name, required), for a dataclass or a named tuple."""
    if dataclasses.is_dataclass(cls):
        return tuple(
            (f.name, f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)
            for f in dataclasses.fields(cls)
            if f.init and not f.name.startswith("_")
        )
    defaults = getattr(cls, "_field_defaults", {})
    return tuple((name, name not in defaults) for name in getattr(cls, "_fields", ()))


@cache
def _is_record(tp: Any) -> bool:
    """A dataclass or a named tuple type: written and read as a JSON object of its fields."""
    return isinstance(tp, type) and (dataclasses.is_dataclass(tp) or (issubclass(tp, tuple) and hasattr(tp, "_fields")))


@cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def decode(tp: Any, data: Any, path: str = "") -> Any:
    """Build a value of type `tp` from JSON data; raises DecodeError naming the path."""
    if tp is Any:
        return data
    origin = get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = get_args(tp)
        if data is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return decode(a, data, path)
            except DecodeError as e:
                errors.append(str(e))
        raise DecodeError(path, f"matches none of {tp}: {'; '.join(errors)}")
    if tp is type(None):
        if data is not None:
            raise DecodeError(path, "expected null")
        return None
    if _is_record(tp):
        if not isinstance(data, dict):
            raise DecodeError(path, f"expected an object for {tp.__name__}, got {type(data).__name__}")
        hints = _hints(tp)
        known = {name for name, _ in _fields(tp)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise DecodeError(path, f"unknown field(s) {', '.join(unknown)} for {tp.__name__}")
        kwargs = {}
        for name, required in _fields(tp):
            if name in data:
                kwargs[name] = decode(hints[name], data[name], f"{path}.{name}" if path else name)
            elif required:
                raise DecodeError(path, f"missing field {name!r} of {tp.__name__}")
        return tp(**kwargs)
    if isinstance(tp, type) and issubclass(tp, enum.Enum):
        try:
            return tp(data)
        except ValueError:
            raise DecodeError(path, f"{data!r} is not one of {[m.value for m in tp]}") from None
    if tp is bool:
        if not isinstance(data, bool):
            raise DecodeError(path, f"expected a boolean, got {data!r}")
        return data
    if tp is int:
        if isinstance(data, bool) or not isinstance(data, int):
            raise DecodeError(path, f"expected an integer, got {data!r}")
        return data
    if tp is float:
        if isinstance(data, bool) or not isinstance(data, int | float):
            raise DecodeError(path, f"expected a number, got {data!r}")
        try:
            f = float(data)
        except OverflowError:  # an integer beyond a double's range (JSON's integers are unbounded)
            raise DecodeError(path, f"a number out of range ({len(str(data))} digits)") from None
        if not math.isfinite(f):  # encode() writes null for NaN and the infinities: a file with
            # NaN or Infinity in it was not written by it (a NaN time disabled every comparison)
            raise DecodeError(path, f"{f!r} is no finite number")
        return f
    if tp is str:
        if not isinstance(data, str):
            raise DecodeError(path, f"expected a string, got {data!r}")
        return data
    if origin in (tuple, list):
        args = get_args(tp)
        if not isinstance(data, list):
            raise DecodeError(path, f"expected a list, got {type(data).__name__}")
        if origin is tuple and len(args) == 2 and args[1] is Ellipsis:
            return tuple(decode(args[0], v, f"{path}[{i}]") for i, v in enumerate(data))
        if origin is tuple:
            if len(args) != len(data):
                raise DecodeError(path, f"expected {len(args)} items, got {len(data)}")
            return tuple(decode(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, data, strict=True)))
        return [decode(args[0], v, f"{path}[{i}]") for i, v in enumerate(data)]
    if origin in (dict, Mapping, typing.Mapping) or tp in (dict, Mapping):
        args = get_args(tp) or (str, Any)
        if not isinstance(data, dict):
            raise DecodeError(path, f"expected an object, got {type(data).__name__}")
        kt, vt = args
        out = {}
        for k, v in data.items():
            key: Any = k
            if kt is int:
                try:
                    key = int(k)
                except (TypeError, ValueError):
                    raise DecodeError(f"{path}.{k}", "expected an integer key") from None
            else:
                key = decode(kt, k, f"{path}.{k}")
            out[key] = decode(vt, v, f"{path}.{k}")
        return out
    if origin in (frozenset, set):
        (arg,) = get_args(tp)
        if not isinstance(data, list):
            raise DecodeError(path, "expected a list")
        return frozenset(decode(arg, v, f"{path}[{i}]") for i, v in enumerate(data))
    raise DecodeError(path, f"unsupported type {tp}")


def decode_as(cls: type[T], data: Any, path: str = "") -> T:
    return typing.cast(T, decode(cls, data, path))
