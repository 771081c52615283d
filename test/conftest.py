"""Test-wide setup: every process that may start a ROS node uses the loopback-only Fast DDS
profile and a test domain id.

Domain ids are unique per xdist worker *and* per test run: the pytest controller draws a base
from its pid and the workers (which inherit the environment) add their index. Two runs on one
machine (a developer's and CI's, or two clones) then never see each other's nodes; with one fixed
id per worker they did (twin_camera frames of one run arriving in the other's recorder).
"""

from __future__ import annotations

import os

import pytest

from weak_template_ros.ros.loopback import use_loopback_env

# Fast DDS ports are 7400 + 250 * domain (+ offsets): domains above 232 overflow the port range.
_BASE_RANGE = (10, 200)
if "WTR_TEST_DOMAIN_BASE" not in os.environ:
    lo, hi = _BASE_RANGE
    os.environ["WTR_TEST_DOMAIN_BASE"] = str(lo + (os.getpid() * 7) % ((hi - lo) // 4) * 4)
_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")  # up to 4 workers per base (bases step by 4)
_worker_index = int("".join(c for c in _worker if c.isdigit()) or 0)
TEST_DOMAIN_ID = int(os.environ["WTR_TEST_DOMAIN_BASE"]) + _worker_index
os.environ["ROS_DOMAIN_ID"] = str(TEST_DOMAIN_ID)  # overrides a developer's own domain
use_loopback_env(domain_id=TEST_DOMAIN_ID)


@pytest.fixture(scope="session")
def blenderproc_env():
    """The BlenderProc environment (`make sim-setup`). Missing: the test is skipped on a
    developer's machine and fails in CI (``CI`` set), where `make test` builds it."""
    from weak_template_ros.errors import InputError
    from weak_template_ros.twin.blenderproc import BlenderProcEnv

    try:
        return BlenderProcEnv.locate()
    except InputError as e:
        if os.environ.get("CI"):
            raise
        pytest.skip(f"no BlenderProc environment: {e}")
