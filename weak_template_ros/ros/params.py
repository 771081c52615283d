"""ROS 2 parameters from the core's config dataclasses (``weak_template_ros.config``).

Every field made with :func:`weak_template_ros.config.param` becomes a parameter of the same
name (nested dataclass fields get dotted names: ``scene.sensor.read_noise``) with a
``ParameterDescriptor`` carrying its type, range, unit, choices and description. Values are read
back into the dataclass and validated with :func:`weak_template_ros.config.validate`; at run time
an on-set callback refuses a bad value with the validation message as its reason, and the node
keeps its old value. The same names work in a ROS parameter YAML file (nested mappings or dotted
keys) and in the core's YAML files.
"""

from __future__ import annotations

import array
import dataclasses
import math
import sys
import threading
import typing
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, get_type_hints

import yaml
from rcl_interfaces.msg import (
    FloatingPointRange,
    IntegerRange,
    ParameterDescriptor,
    SetParametersResult,
)
from rclpy.exceptions import InvalidParameterTypeException, InvalidParameterValueException
from rclpy.parameter import Parameter

from weak_template_ros.config import from_mapping
from weak_template_ros.errors import InputError

T = typing.TypeVar("T")
_INT64 = (-(2**63), 2**63 - 1)
_ARRAY_TYPES = {bool: Parameter.Type.BOOL_ARRAY, int: Parameter.Type.INTEGER_ARRAY,
                float: Parameter.Type.DOUBLE_ARRAY, str: Parameter.Type.STRING_ARRAY}
_SCALAR_TYPES = {bool: Parameter.Type.BOOL, int: Parameter.Type.INTEGER,
                 float: Parameter.Type.DOUBLE, str: Parameter.Type.STRING}


@dataclass(frozen=True)
class ParamSpec:
    """One ROS parameter derived from a config field.

    Attributes
    ----------
    name : str
        Dotted parameter name ("scene.sensor.read_noise").
    type : rclpy.parameter.Parameter.Type
    default : object
        The dataclass default (tuples for array parameters).
    python_type : type
        Python type of the value (for arrays: of the elements); ``container`` says tuple/list.
    container : type or None
    description, unit : str
    lo, hi : float or None
    choices : tuple or None
    """

    name: str
    type: Parameter.Type
    default: Any
    python_type: type
    container: type | None
    description: str
    unit: str
    lo: float | None
    hi: float | None
    choices: tuple | None

    def descriptor(self, read_only: bool = False) -> ParameterDescriptor:
        """ParameterDescriptor: type, description (with unit), range and constraints."""
        text = self.description + (f" [{self.unit}]" if self.unit else "")
        constraints = []
        if self.choices is not None:
            constraints.append(f"one of {list(self.choices)}")
        d = ParameterDescriptor(name=self.name, type=self.type.value, description=text,
                                read_only=read_only)
        lo, hi = self.lo, self.hi
        if self.type == Parameter.Type.DOUBLE and lo is not None and hi is not None:
            d.floating_point_range = [FloatingPointRange(from_value=float(lo), to_value=float(hi), step=0.0)]
        elif self.type == Parameter.Type.INTEGER and lo is not None and hi is not None:
            d.integer_range = [IntegerRange(from_value=max(math.ceil(lo), _INT64[0]),
                                            to_value=min(math.floor(hi), _INT64[1]), step=0)]
        elif lo is not None or hi is not None:  # one-sided: ROS ranges need both ends
            constraints.append(f"in [{'-inf' if lo is None else lo}, {'inf' if hi is None else hi}]")
        d.additional_constraints = "; ".join(constraints)
        return d

    def to_python(self, value: Any) -> Any:
        """A parameter value as the dataclass holds it (arrays -> tuple/list, ints -> float)."""
        if value is None:  # an array parameter declared without default and not set
            return self.default
        if self.container is not None:
            if not isinstance(value, (list, tuple, array.array)):
                raise InputError(self.name, f"a list of {self.python_type.__name__}", repr(value))
            items = [self.python_type(v) for v in value]
            return self.container(items)
        if self.python_type is float and isinstance(value, int) and not isinstance(value, bool):
            return float(value)
        return value


def _element_type(hint, default) -> type | None:
    args = [a for a in typing.get_args(hint) if a is not Ellipsis]
    if args and all(a in _ARRAY_TYPES for a in args) and len(set(args)) == 1:
        return args[0]
    items = list(default)
    if not items:
        return None
    for t in (bool, int, float, str):
        if all(type(v) is t for v in items):
            return t
    if all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in items):
        return float
    return None


def parameter_specs(cls: type, prefix: str = "", instance: Any = None) -> list[ParamSpec]:
    """The ROS parameters of a config dataclass, nested dataclasses flattened with dots.

    Defaults come from ``instance`` (default: ``cls()``), so a parent's ``default_factory`` for a
    nested section wins over the nested class's own defaults. Fields whose type has no ROS
    parameter equivalent (None-able, arrays, dicts) are skipped: they keep their default.
    """
    hints = get_type_hints(cls)
    instance = cls() if instance is None else instance
    specs = []
    for f in dataclasses.fields(cls):
        hint = hints.get(f.name)
        default = getattr(instance, f.name)
        name = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(hint):
            specs.extend(parameter_specs(hint, prefix=f"{name}.", instance=default))
            continue
        meta = f.metadata
        common = dict(description=meta.get("description", ""), unit=meta.get("unit", ""),
                      lo=meta.get("lo"), hi=meta.get("hi"), choices=meta.get("choices"))
        if hint in _SCALAR_TYPES:
            specs.append(ParamSpec(name, _SCALAR_TYPES[hint], default, hint, None, **common))
            continue
        origin = typing.get_origin(hint) or hint
        if origin in (tuple, list) and isinstance(default, (tuple, list)):
            el = _element_type(hint, default)
            if el is not None:
                specs.append(ParamSpec(name, _ARRAY_TYPES[el], origin(el(v) for v in default), el,
                                       origin, **common))
    return specs


def parameter_names(cls: type) -> list[str]:
    """Dotted names of the ROS parameters a config dataclass declares."""
    return [s.name for s in parameter_specs(cls)]


def nest(flat: Mapping[str, Any]) -> dict:
    """``{"a.b": 1}`` -> ``{"a": {"b": 1}}`` (ROS dotted names to the core's nested mappings)."""
    out: dict = {}
    for key, value in flat.items():
        node = out
        *parents, leaf = key.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[leaf] = value
    return out


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict:
    """Nested mappings to dotted names (inverse of :func:`nest`)."""
    out = {}
    for key, value in mapping.items():
        if isinstance(value, Mapping):
            out.update(flatten(value, f"{prefix}{key}."))
        else:
            out[f"{prefix}{key}"] = value
    return out


def _coerce(spec: ParamSpec, value: Any) -> Any:
    """Integers given for double (array) parameters as floats, as YAML writes ``10`` for 10.0."""
    if spec.type == Parameter.Type.DOUBLE and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if (spec.type == Parameter.Type.DOUBLE_ARRAY and isinstance(value, (list, tuple))
            and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)):
        return [float(v) for v in value]
    return value


class ConfigParameters:
    """Declare a config dataclass as a node's parameters and keep ``config`` current.

    Parameters
    ----------
    node : rclpy.node.Node
    cls : dataclass type
        Its fields (``config.param``) define the parameters.
    read_only : iterable of str
        Parameter names that cannot change at run time (e.g. QoS settings).
    check : callable, optional
        ``check(cfg)`` raising InputError for problems beyond ranges (e.g. a folder that does not
        exist); run at start and before every change is accepted.
    on_change : callable, optional
        ``on_change(old_cfg, new_cfg, changed_names)`` after a change was accepted.

    Attributes
    ----------
    config : the dataclass instance in force.

    Raises
    ------
    InputError
        At construction, when a value given to the node (parameter file, ``-p``) is invalid.
    """

    def __init__(self, node, cls: type, read_only: Iterable[str] = (),
                 check: Callable[[Any], None] | None = None,
                 on_change: Callable[[Any, Any, set[str]], None] | None = None):
        self.node = node
        self.cls = cls
        self.specs = {s.name: s for s in parameter_specs(cls)}
        self.read_only = set(read_only)
        self.check = check
        self.on_change = on_change
        self._lock = threading.Lock()
        self._pending: tuple[Any, dict] | None = None
        overrides = getattr(node, "_parameter_overrides", {})  # rclpy keeps no public accessor
        values = {}
        for name, spec in self.specs.items():
            descriptor = spec.descriptor(read_only=name in self.read_only)
            try:
                if not spec.default and spec.container is not None:
                    # An empty default has no inferable element type: declare the type itself.
                    p = node.declare_parameter(name, spec.type, descriptor)
                elif name in overrides and _coerce(spec, overrides[name].value) is not overrides[name].value:
                    # YAML's "10" for a double: declare the converted value (rclpy would refuse
                    # the type); the type itself always comes from the dataclass default.
                    p = node.declare_parameter(name, _coerce(spec, overrides[name].value), descriptor,
                                               ignore_override=True)
                else:
                    p = node.declare_parameter(name, _ros_value(spec.default), descriptor)
            except InvalidParameterValueException as e:
                got = overrides[name].value if name in overrides else spec.default
                raise InputError(name, _expected(spec), repr(got)) from e
            except (InvalidParameterTypeException, TypeError) as e:
                got = overrides[name].value if name in overrides else spec.default
                raise InputError(name, f"a parameter of type {spec.type.name.lower()}", repr(got)) from e
            values[name] = spec.to_python(p.value)
        self._flat = values
        self.config = self._build(values)
        if self.check is not None:
            self.check(self.config)
        if hasattr(node, "add_pre_set_parameters_callback"):  # Iron and later
            node.add_pre_set_parameters_callback(self._pre_set)
        node.add_on_set_parameters_callback(self._on_set)
        self._has_post = hasattr(node, "add_post_set_parameters_callback")
        if self._has_post:
            node.add_post_set_parameters_callback(self._post_set)

    def _build(self, flat: Mapping[str, Any]):
        return config_from_parameters(self.cls, flat, source=f"{self.node.get_name()} parameters")

    def _pre_set(self, parameters: list[Parameter]) -> list[Parameter]:
        out = []
        for p in parameters:
            spec = self.specs.get(p.name)
            if spec is not None and p.type_ != spec.type:
                value = _coerce(spec, p.value)
                if value is not p.value:
                    p = Parameter(p.name, value=value)
            out.append(p)
        return out

    def _on_set(self, parameters: list[Parameter]) -> SetParametersResult:
        ours = [p for p in parameters if p.name in self.specs]
        if not ours:
            return SetParametersResult(successful=True)
        with self._lock:
            flat = dict(self._flat)
            for p in ours:
                flat[p.name] = self.specs[p.name].to_python(p.value)
            try:
                cfg = self._build(flat)
                if self.check is not None:
                    self.check(cfg)
            except (InputError, TypeError, ValueError) as e:
                reason = str(e)
                self.node.get_logger().warning(f"parameter change refused: {reason}")
                return SetParametersResult(successful=False, reason=reason)
            self._pending = (cfg, flat)
        if not self._has_post:
            self._commit({p.name for p in ours})
        return SetParametersResult(successful=True)

    def _post_set(self, parameters: list[Parameter]) -> None:
        names = {p.name for p in parameters if p.name in self.specs}
        if names:
            self._commit(names)

    def _commit(self, names: set[str]) -> None:
        with self._lock:
            if self._pending is None:
                return
            cfg, flat = self._pending
            self._pending = None
            old, self.config, self._flat = self.config, cfg, flat
        if self.on_change is not None:
            self.on_change(old, cfg, names)


def config_from_parameters(cls: type[T], flat: Mapping[str, Any], source: str = "parameters") -> T:
    """Config dataclass from dotted parameter names and values, validated.

    Values are converted as the node reads them (lists to tuples, integers for doubles to
    floats), then built and validated by :func:`weak_template_ros.config.from_mapping`.

    Raises
    ------
    InputError
        Unknown names (listing the known ones) or a bad value, named with its dotted name.
    """
    specs = {s.name: s for s in parameter_specs(cls)}
    unknown = sorted(set(flat) - set(specs))
    if unknown:
        raise InputError(source, f"only the parameters {sorted(specs)}", f"unknown name(s) {unknown}")
    typed = {k: specs[k].to_python(_coerce(specs[k], v)) if isinstance(v, (list, tuple, int, float))
             else v for k, v in flat.items()}
    return from_mapping(cls, nest(typed), source=source)


def _ros_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _expected(spec: ParamSpec) -> str:
    if spec.choices is not None:
        return f"one of {list(spec.choices)}"
    if spec.lo is not None or spec.hi is not None:
        unit = f" {spec.unit}" if spec.unit else ""
        return f"a value in [{'-inf' if spec.lo is None else spec.lo}, " \
               f"{'inf' if spec.hi is None else spec.hi}]{unit}"
    return f"a valid {spec.type.name.lower()}"


def ros_params_section(data: Mapping, node_name: str, namespace: str = "/") -> dict:
    """The ``ros__parameters`` of ``node_name`` in a ROS parameter file's content, dotted names.

    Matches the keys ROS matches: ``/**``, the node name, ``/name``, ``/ns/name`` (later ones
    take precedence, as rcl applies the most specific last).
    """
    ns = "/" + namespace.strip("/") if namespace.strip("/") else ""
    keys = ["/**", "**", node_name, f"/{node_name}", f"{ns}/{node_name}", f"/**/{node_name}"]
    out: dict = {}
    for key in dict.fromkeys(keys):
        section = data.get(key)
        if isinstance(section, Mapping) and isinstance(section.get("ros__parameters"), Mapping):
            out.update(flatten(section["ros__parameters"]))
    return out


def load_ros_params(cls: type[T], path: str | Path, node_name: str, namespace: str = "/") -> T:
    """Config dataclass from a ROS 2 parameter YAML file (what ``--params-file`` would give).

    Raises InputError for an unreadable file, an unknown parameter name or a bad value.
    """
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as exc:
        raise InputError(str(path), "a readable ROS parameter YAML file", f"{type(exc).__name__}: {exc}") \
            from exc
    flat = ros_params_section(data, node_name, namespace)
    flat = {k: v for k, v in flat.items() if k not in ("use_sim_time",)}
    return config_from_parameters(cls, flat, source=f"{path}:{node_name}")


def config_file(name: str) -> Path:
    """A parameter file of the package: config/ of the source tree, else the installed share/."""
    for root in (Path(__file__).resolve().parents[2], Path(sys.prefix) / "share" / "weak_template_ros"):
        if (root / "config" / name).is_file():
            return root / "config" / name
    raise InputError("config file", f"{name} in the source tree or share/weak_template_ros/config",
                     "not found")


def file_parameters(name: str, node_name: str, **overrides) -> list[Parameter]:
    """A node's parameters from one of the package's ROS parameter files, plus overrides
    (nested mappings or dotted names)."""
    flat = ros_params_section(yaml.safe_load(config_file(name).read_text()) or {}, node_name)
    flat.update(flatten(overrides))
    return [Parameter(k, value=v) for k, v in flat.items()]
