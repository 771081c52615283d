"""ROS parameters from config dataclasses: descriptors, start values, run-time changes over the
parameter services (a real client node), refusals with their reasons, ROS parameter files."""

from __future__ import annotations

from dataclasses import dataclass, field

import pytest
from rcl_interfaces.msg import ParameterType
from rclpy.parameter import Parameter

from weak_template_ros.config import param
from weak_template_ros.errors import InputError
from weak_template_ros.ros.params import (
    ConfigParameters,
    load_ros_params,
    nest,
    parameter_names,
    parameter_specs,
)
from weak_template_ros.twin.scenes import SceneSpec

pytestmark = pytest.mark.ros


@dataclass
class Inner:
    gain: float = param(1.0, "signal gain", lo=0.0, hi=10.0)
    mode: str = param("fast", "mode of operation", choices=("fast", "exact"))


@dataclass
class Demo:
    rate: float = param(5.0, "processing rate", lo=0.1, hi=100.0, unit="Hz")
    count: int = param(3, "hypotheses kept", lo=1, hi=10)
    enabled: bool = param(True, "process frames")
    distances: tuple = param((0.5, 0.7), "camera distances", unit="m")
    levels: tuple = param((96, 64), "features per level")
    label: str = param("part", "name of the part")
    margin: float = param(1.0, "safety margin", lo=0.0, unit="m")  # one-sided range
    inner: Inner = field(default_factory=Inner)


def test_specs_flatten_nested_dataclasses_with_dotted_names():
    names = parameter_names(Demo)
    assert names == ["rate", "count", "enabled", "distances", "levels", "label", "margin",
                     "inner.gain", "inner.mode"]
    specs = {s.name: s for s in parameter_specs(Demo)}
    assert specs["distances"].type == Parameter.Type.DOUBLE_ARRAY
    assert specs["levels"].type == Parameter.Type.INTEGER_ARRAY
    assert "scene.sensor.read_noise" in parameter_names(_Wrapped)
    assert nest({"a.b.c": 1, "a.d": 2, "e": 3}) == {"a": {"b": {"c": 1}, "d": 2}, "e": 3}


@dataclass
class _Wrapped:
    scene: SceneSpec = field(default_factory=SceneSpec)


def _node(session, name, overrides=(), **kwargs):
    from rclpy.node import Node

    node = session.add(Node(name, context=session.context, parameter_overrides=list(overrides)))
    changes = []
    params = ConfigParameters(node, Demo, on_change=lambda old, new, names: changes.append((old, new, names)),
                              **kwargs)
    return node, params, changes


def test_descriptors_and_start_values():
    from weak_template_ros.ros.testing import ros_session

    with ros_session() as s:
        overrides = [Parameter("rate", value=12),  # an int, as YAML writes "12", for a double
                     Parameter("inner.mode", value="exact"), Parameter("distances", value=[1, 2])]
        node, params, _ = _node(s, "params_start", overrides)
        cfg = params.config
        assert isinstance(cfg, Demo) and isinstance(cfg.inner, Inner)
        assert cfg.rate == 12.0 and isinstance(cfg.rate, float)
        assert cfg.inner.mode == "exact" and cfg.distances == (1.0, 2.0) and cfg.levels == (96, 64)
        d = node.describe_parameter("rate")
        assert d.type == ParameterType.PARAMETER_DOUBLE
        assert (d.floating_point_range[0].from_value, d.floating_point_range[0].to_value) == (0.1, 100.0)
        assert d.description == "processing rate [Hz]"
        d = node.describe_parameter("count")
        assert d.type == ParameterType.PARAMETER_INTEGER
        assert (d.integer_range[0].from_value, d.integer_range[0].to_value) == (1, 10)
        assert "one of ['fast', 'exact']" in node.describe_parameter("inner.mode").additional_constraints
        assert "in [0.0, inf]" in node.describe_parameter("margin").additional_constraints
        assert node.describe_parameter("levels").type == ParameterType.PARAMETER_INTEGER_ARRAY
        assert node.get_parameter("inner.gain").value == 1.0


@pytest.mark.parametrize(("override", "message"), [
    (Parameter("count", value=50), r"count: expected a value in \[1, 10\], got 50"),
    (Parameter("inner.mode", value="slow"), r"inner.mode: expected one of \['fast', 'exact'\]"),
    (Parameter("margin", value=-1.0), r"margin: expected a value in \[0.0, inf\] m, got -1.0"),
    (Parameter("count", value="three"), r"count: expected a parameter of type integer, got 'three'"),
])
def test_bad_start_values_are_input_errors(override, message):
    from weak_template_ros.ros.testing import ros_session

    with ros_session() as s, pytest.raises(InputError, match=message):
        _node(s, "params_bad", [override])


def test_runtime_changes_over_the_parameter_services():
    from rclpy.parameter_client import AsyncParameterClient

    from weak_template_ros.ros.testing import ros_session, wait_until

    def check(cfg):
        if cfg.label == "forbidden":
            raise InputError("label", "a part known to the node", repr(cfg.label))

    with ros_session() as s:
        node, params, changes = _node(s, "params_live", check=check)
        client = AsyncParameterClient(s.node("params_client"), "params_live")
        assert client.wait_for_services(timeout_sec=10)

        def set_(*ps):
            fut = client.set_parameters(list(ps))
            assert wait_until(fut.done, 10)
            return fut.result().results

        (ok,) = set_(Parameter("rate", value=20.0))
        assert ok.successful
        assert params.config.rate == 20.0 and changes[-1][2] == {"rate"}
        assert changes[-1][0].rate == 5.0 and changes[-1][1] is params.config

        (ok,) = set_(Parameter("inner.gain", value=3))  # int for a double: coerced before checks
        assert ok.successful and params.config.inner.gain == 3.0
        assert node.get_parameter("inner.gain").value == 3.0

        refusals = {
            "rate": (Parameter("rate", value=-1.0), "out of range"),              # ROS range check
            "inner.mode": (Parameter("inner.mode", value="slow"), "inner.mode: expected one of"),
            "margin": (Parameter("margin", value=-0.5), "margin: expected a value in [0.0, inf] m"),
            "label": (Parameter("label", value="forbidden"), "label: expected a part known to the node"),
            "count": (Parameter("count", value="x"), "Wrong parameter type"),
        }
        n_changes = len(changes)
        for name, (p, reason) in refusals.items():
            (res,) = set_(p)
            assert not res.successful, name
            assert reason in res.reason, (name, res.reason)
        assert len(changes) == n_changes
        cfg = params.config
        assert (cfg.rate, cfg.inner.mode, cfg.margin, cfg.label, cfg.count) == (20.0, "fast", 1.0, "part", 3)
        assert node.get_parameter("rate").value == 20.0 and node.get_parameter("label").value == "part"

        (ok,) = set_(Parameter("distances", value=[0.3, 0.4, 0.5]))
        assert ok.successful and params.config.distances == (0.3, 0.4, 0.5)


def test_ros_parameter_file(tmp_path):
    path = tmp_path / "demo.yaml"
    path.write_text(
        "/**:\n  ros__parameters:\n    rate: 7\n    inner:\n      gain: 2.5\n"
        "demo_node:\n  ros__parameters:\n    inner.mode: exact\n    levels: [8, 4]\n"
        "    use_sim_time: false\n")
    cfg = load_ros_params(Demo, path, "demo_node")
    assert (cfg.rate, cfg.inner.gain, cfg.inner.mode, cfg.levels) == (7.0, 2.5, "exact", (8, 4))
    assert load_ros_params(Demo, path, "other").inner.mode == "fast"
    path.write_text("demo_node:\n  ros__parameters:\n    rat: 7\n")
    with pytest.raises(InputError, match=r"unknown name\(s\) \['rat'\]"):
        load_ros_params(Demo, path, "demo_node")


def test_shipped_twin_camera_parameter_file_is_valid():
    from pathlib import Path

    from weak_template_ros.ros.twin_camera import TwinCameraConfig

    path = Path(__file__).parents[1] / "config" / "twin_camera.yaml"
    cfg = load_ros_params(TwinCameraConfig, path, "twin_camera")
    assert cfg.source == "scene" and cfg.scene.width > 0
