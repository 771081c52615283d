"""Package metadata: package.xml (catkin_pkg), setup.py data files, console script, loopback profile."""

from __future__ import annotations

import subprocess
import sys
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from catkin_pkg.package import parse_package

from weak_template_ros.ros.loopback import profile_path, require_loopback_env, use_loopback_env

ROOT = Path(__file__).resolve().parents[1]


def test_package_xml_is_valid_format3_ament_python():
    pkg = parse_package(ROOT / "package.xml")  # raises InvalidPackage on any spec violation
    pkg.validate()
    assert pkg.package_format == 3
    assert pkg.name == "weak_template_ros"
    assert pkg.get_build_type() == "ament_python"
    exec_deps = {d.name for d in pkg.exec_depends}
    for dep in ("rclpy", "sensor_msgs", "geometry_msgs", "std_msgs", "diagnostic_msgs",
                "visualization_msgs", "std_srvs", "python3-numpy", "python3-opencv"):
        assert dep in exec_deps, dep


def test_layout_and_resource_marker():
    for p in ("setup.py", "setup.cfg", "resource/weak_template_ros", "README.md", "launch", "config",
              "sim", "bench", "docs/architecture.md", "Makefile", ".ci/run", "constraints.txt"):
        assert (ROOT / p).exists(), p
    assert "make test" in (ROOT / ".ci/run").read_text()


def test_console_script_help_runs():
    out = subprocess.run([sys.executable, "-m", "weak_template_ros.cli", "--help"], capture_output=True,
                         text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    for cmd in ("generate", "show", "demo"):
        assert cmd in out.stdout


def test_loopback_profile_only_names_loopback():
    root = ET.parse(profile_path()).getroot()
    ns = {"f": "http://www.eprosima.com/XMLSchemas/fastRTPS_Profiles"}
    addresses = [e.text for e in root.iterfind(".//f:address", ns)]
    assert addresses and all(a == "127.0.0.1" for a in addresses)
    assert root.find(".//f:useBuiltinTransports", ns).text == "false"
    seg = root.find(".//f:transport_descriptor[f:type='SHM']/f:segment_size", ns)
    assert int(seg.text) >= 32 * 1024 * 1024
    assert (ROOT / "config/fastdds_loopback.xml").resolve() == profile_path().resolve()


def test_require_loopback_env_refuses_missing_settings():
    env = use_loopback_env(domain_id=5, env={})
    require_loopback_env(env)
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "SUBNET"
    with pytest.raises(RuntimeError, match="ROS_AUTOMATIC_DISCOVERY_RANGE"):
        require_loopback_env(env)
