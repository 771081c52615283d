"""Test-wide setup: every process that may start a ROS node uses the loopback-only Fast DDS
profile and a test domain id (one per xdist worker, so parallel workers never see each other)."""

from __future__ import annotations

import os

from weak_template_ros.ros.loopback import use_loopback_env

_worker = os.environ.get("PYTEST_XDIST_WORKER", "gw0")
TEST_DOMAIN_ID = 120 + int("".join(ch for ch in _worker if ch.isdigit()) or 0)
use_loopback_env(domain_id=TEST_DOMAIN_ID)
