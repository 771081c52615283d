"""Real rclpy over the loopback-only Fast DDS profile, in a child process as every node runs.

Checks: messages flow; the DDS discovery/user ports of the domain are bound on 127.0.0.1 only
(without the profile Fast DDS binds them on 0.0.0.0); and, traced with strace, every packet the
process sends or connects to goes to 127.0.0.1. (Fast DDS also opens output sockets bound to other
interfaces; the trace shows they carry nothing.)
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.ros
PROBE = Path(__file__).with_name("ros_probe.py")


def _dds_ports(domain: int) -> set[int]:
    base = 7400 + 250 * domain  # RTPS well-known ports: PB + DG * domain + offsets d0..d3
    return {base, base + 1, base + 10, base + 11}


def _run(prefix: list[str], env: dict) -> subprocess.CompletedProcess:
    return subprocess.run([*prefix, sys.executable, str(PROBE), "5"], capture_output=True, text=True,
                          timeout=120, env=env)


def test_nodes_talk_and_dds_ports_are_loopback_only():
    env = dict(os.environ)
    out = _run([], env)
    assert out.returncode == 0, out.stderr
    assert "received 5" in out.stdout, out.stdout + out.stderr
    bound = [line.split()[1:] for line in out.stdout.splitlines() if line.startswith("udp ")]
    dds = {(ip, int(p)) for ip, p in bound if int(p) in _dds_ports(int(env["ROS_DOMAIN_ID"]))}
    assert dds, bound
    assert {ip for ip, _ in dds} == {"127.0.0.1"}, dds


@pytest.mark.skipif(shutil.which("strace") is None, reason="strace not installed (make installs it as root)")
def test_every_packet_goes_to_loopback(tmp_path):
    trace = tmp_path / "trace.log"
    out = _run(["strace", "-f", "-qq", "-e", "trace=sendto,sendmsg,connect", "-o", str(trace)],
               dict(os.environ))
    if out.returncode != 0 and "ptrace" in out.stderr:
        pytest.skip(f"ptrace not permitted here: {out.stderr.strip()[:200]}")
    assert "received 5" in out.stdout, out.stdout + out.stderr
    text = trace.read_text()
    dests = re.findall(r'sin_addr=inet_addr\("([0-9.]+)"\)', text)
    assert dests, "no IPv4 traffic traced"
    assert set(dests) == {"127.0.0.1"}, sorted(set(dests))
    assert set(re.findall(r'inet_pton\(AF_INET6, "([^"]+)"', text)) <= {"::1"}
