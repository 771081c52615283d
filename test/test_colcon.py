"""`colcon build` of the package in a throw-away workspace (colcon from PyPI, as on a ROS install).

Checks what a ROS user relies on: the ament index marker, package.xml, launch/ and config/ under
share/weak_template_ros, and every console script under lib/weak_template_ros (where `ros2 run`
looks).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
COLCON = Path(sys.executable).with_name("colcon")


def _console_scripts() -> list[str]:
    import ast

    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Dict) and any(
                isinstance(k, ast.Constant) and k.value == "console_scripts" for k in node.keys):
            scripts = node.values[[k.value for k in node.keys].index("console_scripts")]
            return [e.value.split("=")[0].strip() for e in scripts.elts]
    raise AssertionError("no console_scripts in setup.py")


@pytest.mark.skipif(not COLCON.exists(), reason="colcon is installed by make (requirements.in)")
def test_colcon_build_installs_the_ros_layout(tmp_path):
    files = subprocess.run(["git", "ls-files"], cwd=ROOT, capture_output=True, text=True, check=True)
    src = tmp_path / "src" / "weak_template_ros"
    for rel in files.stdout.split():
        if (ROOT / rel).is_file():
            (src / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / rel, src / rel, follow_symlinks=False)
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTEST")}
    out = subprocess.run([str(COLCON), "build", "--base-paths", "src"], cwd=tmp_path, capture_output=True,
                         text=True, timeout=300, env=env)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    inst = tmp_path / "install" / "weak_template_ros"
    assert (inst / "share/ament_index/resource_index/packages/weak_template_ros").is_file()
    assert (inst / "share/weak_template_ros/package.xml").is_file()
    for sub, pattern in (("launch", "*.launch.py"), ("config", "*.yaml")):
        want = sorted(p.name for p in (ROOT / sub).glob(pattern))
        got = sorted(p.name for p in (inst / "share/weak_template_ros" / sub).glob(pattern))
        assert got == want, (sub, got, want)
    for script in _console_scripts():
        assert (inst / "lib/weak_template_ros" / script).is_file(), script
