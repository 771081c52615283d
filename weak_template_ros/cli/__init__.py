"""`weak-template` command line. Each module below attaches its commands to the apps in apps.py."""

from __future__ import annotations

# Command modules register themselves on import (one module per concept).
from weak_template_ros.cli import (
    align_cmds,  # noqa: F401  generate marks, align
    eval_cmds,  # noqa: F401  eval (BOP metrics of the pose pipeline)
    linemod_cmds,  # noqa: F401  templates build, detect
    nets_cmds,  # noqa: F401  train detector|refiner
    ros_cmds,  # noqa: F401  replay
    twin_cmds,  # noqa: F401  generate parts|scenes, show, demo
)
from weak_template_ros.cli.apps import app


def main() -> None:
    """Console-script entry point (loopback ROS environment set before anything can start DDS)."""
    from weak_template_ros.ros.loopback import use_loopback_env

    use_loopback_env()
    app()


__all__ = ["app", "main"]
