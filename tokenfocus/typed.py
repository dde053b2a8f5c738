"""Typed dataclasses from plain mappings (a YAML block): an unknown key or a value of the wrong
kind is an error that names the key, and nested dataclasses (and dicts of them) are built too."""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any


class ConfigError(ValueError):
    """A params block has an unknown key or a value of the wrong kind."""


def build(cls: type, raw: Any, where: str) -> Any:
    """Build a dataclass from a dict, recursing into nested dataclasses and dicts of them.

    Args:
        cls: the dataclass.
        raw: its mapping (None: every field takes its default).
        where: the block's name in errors (``params.yaml.train``).

    Raises:
        ConfigError: on an unknown key or a value of the wrong kind, naming it.
    """
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(raw) - known
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {sorted(unknown)}; known: {sorted(known)}")
    kwargs = {}
    for name, value in raw.items():
        kwargs[name] = coerce(hints[name], value, f"{where}.{name}")
    try:
        return cls(**kwargs)
    except TypeError as exc:
        raise ConfigError(f"{where}: {exc}") from exc
    except ConfigError as exc:  # a block's own check (__post_init__): name the block it is in
        raise ConfigError(f"{where}: {exc}") from exc


def coerce(tp: Any, value: Any, where: str) -> Any:
    """``value`` as type ``tp``: numbers widened to float, dataclasses built, anything else checked."""
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        return build(tp, value, where)
    if origin is dict and args and dataclasses.is_dataclass(args[1]):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a mapping")
        return {k: build(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        tp = next(a for a in args if a is not type(None))
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        return float(value)
    if tp in (int, str, bool) and not isinstance(value, tp):
        raise ConfigError(f"{where}: expected {tp.__name__}, got {value!r}")
    return value
