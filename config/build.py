"""Strict conversion of a parsed YAML tree into the frozen dataclasses of ``config.schema``.

Unknown keys and wrong types are errors naming the dotted key (LiveKit decodes its YAML
strictly too, ``pkg/config/config.go``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import difflib
import re
import types
import typing
from collections.abc import Iterator, Mapping
from typing import Any, TypeVar

T = TypeVar("T")

_TRUE = {"true", "1", "yes", "on"}
_FALSE = {"false", "0", "no", "off"}


class SchemaError(ValueError):
    """A value that does not fit the schema; the message names the dotted key."""


def field_types(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def build(cls: type[T], raw: object, path: str = "") -> T:
    """Build ``cls`` from ``raw`` (a mapping), refusing unknown keys and wrong types."""
    if raw is None:
        return cls()
    if not isinstance(raw, Mapping):
        raise SchemaError(f"{path or 'config'}: expected a mapping, got {shown(raw)}")
    hints = field_types(cls)
    values: dict[str, Any] = {}
    for key, value in raw.items():
        dotted = f"{path}.{key}" if path else str(key)
        if key not in hints:
            raise SchemaError(f'unknown config key "{dotted}"')
        values[key] = convert(hints[key], value, dotted)
    return cls(**values)


def unknown_keys(cls: type, raw: object, path: str = "") -> list[str]:
    """Every key of ``raw`` the schema lacks, each with a "did you mean" when a sibling is
    close, so a config with several typos is fixed in one go."""
    if not isinstance(raw, Mapping):
        return []
    hints = field_types(cls)
    found: list[str] = []
    for key, value in raw.items():
        dotted = f"{path}.{key}" if path else str(key)
        hint = hints.get(key)
        if hint is None:
            close = difflib.get_close_matches(str(key), list(hints), n=1)
            suggestion = (
                f' (did you mean "{path + "." if path else ""}{close[0]}"?)' if close else ""
            )
            found.append(f'"{dotted}"{suggestion}')
        elif dataclasses.is_dataclass(hint) and isinstance(hint, type):
            found += unknown_keys(hint, value, dotted)
    return found


def convert(hint: Any, value: object, path: str) -> Any:
    """Convert ``value`` to the type ``hint``; strings are parsed (they come from env vars)."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint) and isinstance(hint, type):
        return build(hint, value, path)
    if origin is tuple:
        return _convert_tuple(hint, value, path)
    if origin is Mapping or hint is Mapping:
        return _convert_mapping(value, path)
    if hint is bool:
        return _convert_bool(value, path)
    if hint is int:
        return _convert_number(int, value, path)
    if hint is float:
        return float(_convert_number(float, value, path))
    if hint is str:
        if isinstance(value, bool) or not isinstance(value, str | int | float):
            raise SchemaError(f"{path}: expected a string, got {shown(value)}")
        return str(value)
    raise SchemaError(f"{path}: unsupported type {hint}")  # a schema bug, not user input


def _convert_tuple(hint: Any, value: object, path: str) -> tuple[Any, ...]:
    (item_hint, _ellipsis) = typing.get_args(hint)
    if not isinstance(value, list | tuple):
        # A YAML string where a list belongs is a mistake ("bind_addresses: 127.0.0.1" would
        # otherwise bind nothing useful); env vars are split by the loader.
        raise SchemaError(f"{path}: expected a list, got {shown(value)}")
    return tuple(convert(item_hint, item, f"{path}[{i}]") for i, item in enumerate(value))


def _convert_mapping(value: object, path: str) -> Mapping[str, str]:
    if not isinstance(value, Mapping):
        raise SchemaError(f"{path}: expected a mapping, got {shown(value)}")
    result: dict[str, str] = {}
    for key, item in value.items():
        if item is None or isinstance(item, list | dict):
            raise SchemaError(f"{path}.{key}: expected a string, got {shown(item)}")
        result[str(key)] = str(item)
    return types.MappingProxyType(result)


def _convert_bool(value: object, path: str) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in _TRUE | _FALSE:
        return value.lower() in _TRUE
    raise SchemaError(f"{path}: expected true or false, got {shown(value)}")


def _convert_number(kind: type[int] | type[float], value: object, path: str) -> int | float:
    # bool is an int subclass in Python, but "port: true" is a mistake, not 1.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if kind is float and isinstance(value, float):
        return value
    if isinstance(value, str):
        with contextlib.suppress(ValueError):
            return kind(value.strip())
    name = "an integer" if kind is int else "a number"
    raise SchemaError(f"{path}: expected {name}, got {shown(value)}")


_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|\u00b5s|\u03bcs|ms|s|m|h)")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "\u00b5s": 1e-6, "\u03bcs": 1e-6}
_DURATION_UNITS.update({"ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0})


def duration_seconds(text: str) -> float:
    """Seconds in a Go duration such as "30s" or "1m30s" (Go's ``time.ParseDuration``, which
    LiveKit's YAML uses for every duration key); raises ValueError for anything else."""
    body = text.strip()
    sign = -1.0 if body.startswith("-") else 1.0
    if body.startswith(("-", "+")):
        body = body[1:]
    if body == "0":
        return 0.0
    parts = list(_DURATION_PART.finditer(body))
    if not parts or "".join(part[0] for part in parts) != body:
        raise ValueError(f'expected a duration such as "30s", got {shown(text)}')
    return sign * sum(float(part[1]) * _DURATION_UNITS[part[2]] for part in parts)


def shown(value: object) -> str:
    """A short, one-line rendering of a user's value for an error message."""
    if isinstance(value, str):
        text = " ".join(value.split())
        return '"' + (text if len(text) <= 40 else text[:37] + "...") + '"'
    if value is None:
        return "nothing"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, list | tuple):
        return "a list"
    return "a mapping" if isinstance(value, Mapping) else type(value).__name__


def scalar_paths(cls: type, prefix: str = "") -> Iterator[tuple[str, Any]]:
    """Every scalar key of the schema as (dotted path, type): LiveKit generates an env var
    (``LIVEKIT_<PATH>``) for each."""
    for name, hint in field_types(cls).items():
        dotted = f"{prefix}{name}"
        if dataclasses.is_dataclass(hint) and isinstance(hint, type):
            yield from scalar_paths(hint, dotted + ".")
        elif typing.get_origin(hint) is None and hint in (bool, int, float, str):
            yield dotted, hint


def leaf_paths(raw: object, prefix: str = "") -> Iterator[str]:
    """Dotted paths of every value set in a raw tree (lists count as one leaf)."""
    if isinstance(raw, Mapping):
        for key, value in raw.items():
            yield from leaf_paths(value, f"{prefix}{key}.")
    else:
        yield prefix.rstrip(".")
