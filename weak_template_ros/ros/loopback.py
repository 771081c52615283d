"""Loopback-only ROS 2 environment: the one place that decides how our processes talk DDS.

Fast DDS reads its profile and the discovery range when the first participant is created, so
:func:`use_loopback_env` must run before the first ``rclpy.init()`` of a process; every console
script, the test conftest and the Makefile call it (or export the same variables).
:func:`require_loopback_env` is the one-line check nodes run right before ``rclpy.init()``.
"""

from __future__ import annotations

import os
from importlib import resources
from pathlib import Path

PROFILE_NAME = "fastdds_loopback.xml"
DEFAULT_DOMAIN_ID = 77


def profile_path() -> Path:
    """Path of the packaged loopback-only Fast DDS profile."""
    return Path(str(resources.files("weak_template_ros.ros").joinpath(PROFILE_NAME)))


def use_loopback_env(domain_id: int | None = None, env: dict | None = None) -> dict:
    """Set the loopback Fast DDS profile, LOCALHOST discovery and a domain id in ``env``.

    Parameters
    ----------
    domain_id : int, optional
        ROS_DOMAIN_ID to use; keeps an existing one when None (default 77 if unset).
    env : dict, optional
        Environment mapping to modify (``os.environ`` when None), e.g. for a subprocess.

    Returns
    -------
    dict
        The modified mapping.
    """
    env = os.environ if env is None else env
    profile = str(profile_path())
    env.setdefault("FASTRTPS_DEFAULT_PROFILES_FILE", profile)
    env.setdefault("FASTDDS_DEFAULT_PROFILES_FILE", env["FASTRTPS_DEFAULT_PROFILES_FILE"])
    env["ROS_AUTOMATIC_DISCOVERY_RANGE"] = "LOCALHOST"
    env.setdefault("RMW_IMPLEMENTATION", "rmw_fastrtps_cpp")
    if domain_id is not None:
        env["ROS_DOMAIN_ID"] = str(int(domain_id))
    else:
        env.setdefault("ROS_DOMAIN_ID", str(DEFAULT_DOMAIN_ID))
    return env


def require_loopback_env(env: dict | None = None) -> None:
    """Raise RuntimeError unless the loopback profile and LOCALHOST discovery are in place."""
    env = os.environ if env is None else env
    problems = []
    profile = env.get("FASTRTPS_DEFAULT_PROFILES_FILE", "")
    if not profile or not Path(profile).is_file():
        problems.append(
            f"FASTRTPS_DEFAULT_PROFILES_FILE: expected an existing loopback profile, got {profile!r}"
        )
    if env.get("ROS_AUTOMATIC_DISCOVERY_RANGE") != "LOCALHOST":
        problems.append(
            "ROS_AUTOMATIC_DISCOVERY_RANGE: expected 'LOCALHOST', got "
            f"{env.get('ROS_AUTOMATIC_DISCOVERY_RANGE')!r}"
        )
    if "ROS_DOMAIN_ID" not in env:
        problems.append("ROS_DOMAIN_ID: expected a domain id, got nothing")
    if problems:
        raise RuntimeError(
            "refusing to start ROS 2 without the loopback-only environment "
            "(call weak_template_ros.ros.loopback.use_loopback_env()): " + "; ".join(problems)
        )
