"""Typed, validated configuration shared by the core, the CLI, YAML files and ROS parameters.

Every component has a dataclass whose fields carry their range and description in
``metadata`` (made with :func:`param`). :func:`from_mapping` fills it from YAML / ROS
parameters and :func:`validate` checks it; the ROS nodes declare their parameters (type, range,
description) from the same metadata, so names and limits exist in one place only.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any, TypeVar, get_type_hints

import yaml

from weak_template_ros.errors import InputError

T = TypeVar("T")


def param(default: Any, description: str, *, lo: float | None = None, hi: float | None = None,
          choices: tuple | None = None, unit: str = "") -> Any:
    """A dataclass field with a description, an optional closed range [lo, hi] and choices."""
    meta = {"description": description, "lo": lo, "hi": hi, "choices": choices, "unit": unit}
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def validate(cfg: Any, prefix: str = "") -> Any:
    """Check every field of ``cfg`` against its range/choices; raise InputError naming it.

    Returns ``cfg`` so it can be chained.
    """
    hints = get_type_hints(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            validate(value, prefix=f"{name}.")
            continue
        meta = f.metadata
        typ = hints.get(f.name)
        if typ in (int, float) and isinstance(value, bool):
            raise InputError(name, f"a number ({typ.__name__})", repr(value))
        if typ is float and isinstance(value, (int, float)):
            if not math.isfinite(float(value)):
                raise InputError(name, "a finite number", value)
        if typ is int and not isinstance(value, int):
            raise InputError(name, "an integer", repr(value))
        lo, hi = meta.get("lo"), meta.get("hi")
        unit = f" {meta['unit']}" if meta.get("unit") else ""
        if (lo is not None and value < lo) or (hi is not None and value > hi):
            rng = f"[{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]{unit}"
            raise InputError(name, f"a value in {rng}", value)
        choices = meta.get("choices")
        if choices is not None and value not in choices:
            raise InputError(name, f"one of {list(choices)}", repr(value))
    return cfg


def from_mapping(cls: type[T], values: Mapping[str, Any] | None, source: str = "config") -> T:
    """Build and validate a config dataclass from a mapping; unknown keys are an error.

    Nested dataclass fields take nested mappings; a bad nested value is named with its dotted
    path ("sensor.read_noise"). Numbers given as int for a float field are converted; lists for
    tuple fields become tuples.
    """
    return validate(_build(cls, values, source))


def _build(cls: type[T], values: Mapping[str, Any] | None, source: str, path: str = "") -> T:
    """Construct (without range validation, done once at the top with full names)."""
    values = dict(values or {})
    hints = get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - names)
    if unknown:
        raise InputError(f"{source}", f"only the keys {sorted(names)}", f"unknown key(s) {unknown}")
    kwargs = {}
    for f in dataclasses.fields(cls):
        if f.name not in values:
            continue
        v = values[f.name]
        typ = hints.get(f.name)
        if dataclasses.is_dataclass(typ):
            v = v if dataclasses.is_dataclass(v) else _build(typ, v, f"{source}.{f.name}", f"{path}{f.name}.")
        elif typ is float and isinstance(v, int) and not isinstance(v, bool):
            v = float(v)
        elif isinstance(v, list) and (typ is tuple or getattr(typ, "__origin__", None) is tuple):
            v = tuple(v)
        kwargs[f.name] = v
    try:
        return cls(**kwargs)
    except InputError as e:  # raised by a __post_init__ check: give it its dotted path
        if not path or e.name.startswith(path):
            raise
        raise InputError(f"{path}{e.name}", e.expected, e.got) from e


def load_yaml(cls: type[T], path: str | Path, section: str | None = None) -> T:
    """Load a config dataclass from a YAML file (optionally one top-level section of it)."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(str(path), "a readable YAML file", f"{type(exc).__name__}: {exc}") from exc
    if section is not None:
        data = data.get(section, {})
    return from_mapping(cls, data, source=f"{path}" + (f":{section}" if section else ""))


def to_dict(cfg: Any) -> dict:
    """Plain dict (YAML/JSON-ready) of a config dataclass."""
    return dataclasses.asdict(cfg)
