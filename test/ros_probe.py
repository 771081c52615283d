"""Helper process for test_ros_loopback: two real nodes exchange N String messages, then exit.

Run as ``python test/ros_probe.py N``; prints ``received K`` and the process's bound UDP sockets.
"""

from __future__ import annotations

import sys
import time

import psutil

from weak_template_ros.ros.loopback import require_loopback_env, use_loopback_env


def main(n: int) -> None:
    use_loopback_env()
    require_loopback_env()
    import os

    import rclpy
    from rclpy.executors import SingleThreadedExecutor
    from std_msgs.msg import String

    ctx = rclpy.Context()
    rclpy.init(context=ctx, domain_id=int(os.environ["ROS_DOMAIN_ID"]))
    talker = rclpy.create_node("wtr_talker", context=ctx)
    listener = rclpy.create_node("wtr_listener", context=ctx)
    got: list[str] = []
    listener.create_subscription(String, "wtr_smoke", lambda m: got.append(m.data), 10)
    pub = talker.create_publisher(String, "wtr_smoke", 10)
    ex = SingleThreadedExecutor(context=ctx)
    ex.add_node(talker)
    ex.add_node(listener)
    deadline = time.monotonic() + 20.0
    k = 0
    while len(got) < n and time.monotonic() < deadline:
        pub.publish(String(data=f"hello {k}"))
        k += 1
        ex.spin_once(timeout_sec=0.05)
    print(f"received {len(got)}")
    for c in psutil.Process().net_connections(kind="udp4"):
        print(f"udp {c.laddr.ip} {c.laddr.port}")
    ex.shutdown()
    rclpy.shutdown(context=ctx)


if __name__ == "__main__":
    main(int(sys.argv[1]))
