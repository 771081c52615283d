"""The QoS profiles our nodes use, chosen once (DESIGN.md §4, issue 6).

* Images: sensor data, best effort, keep last 1-2 (a deeper queue only grows latency behind a
  slow subscriber: ~340 ms with keep-last 10). Configurable: a reliable subscriber (rosbag2
  record, RViz defaults) needs a reliable publisher.
* Results (poses, offsets, ground truth): reliable, keep last 10, volatile.
* Static or slowly changing information (camera_info, templates, calibration): reliable,
  transient local, keep last 1, so a late subscriber gets the last one. A transient-local
  reliable publisher also serves volatile and best-effort subscribers.
"""

from __future__ import annotations

from rclpy.qos import DurabilityPolicy, HistoryPolicy, QoSProfile, ReliabilityPolicy

RELIABILITY = {"best_effort": ReliabilityPolicy.BEST_EFFORT, "reliable": ReliabilityPolicy.RELIABLE}


def image_qos(depth: int = 1, reliability: str = "best_effort") -> QoSProfile:
    """Images: keep last ``depth``, ``reliability`` "best_effort" (default) or "reliable"."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=RELIABILITY[reliability], durability=DurabilityPolicy.VOLATILE)


def result_qos(depth: int = 10) -> QoSProfile:
    """Results every consumer must get: reliable, keep last ``depth``, volatile."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=int(depth),
                      reliability=ReliabilityPolicy.RELIABLE, durability=DurabilityPolicy.VOLATILE)


def latched_qos() -> QoSProfile:
    """Static information: reliable, transient local, keep last 1."""
    return QoSProfile(history=HistoryPolicy.KEEP_LAST, depth=1, reliability=ReliabilityPolicy.RELIABLE,
                      durability=DurabilityPolicy.TRANSIENT_LOCAL)
