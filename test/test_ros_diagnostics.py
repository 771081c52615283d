"""NodeDiagnostics: rate, stage latency, drops and errors on /diagnostics, received by a real node."""

from __future__ import annotations

import itertools
import time

import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from rclpy.qos import QoSProfile, ReliabilityPolicy

from weak_template_ros.ros.diagnostics import NodeDiagnostics, status_values
from weak_template_ros.ros.testing import TopicRecorder, ros_session, wait_until

pytestmark = pytest.mark.ros


def test_status_levels_values_and_windows():
    with ros_session() as s:
        diag = NodeDiagnostics(s.node("diag_unit"), period_s=3600.0, error_hold_s=0.3)
        st = diag.status()
        assert st.level == DiagnosticStatus.OK and st.message == "ok" and st.name == "/diag_unit"

        diag.frame(3)
        diag.record("compute", 0.010)
        diag.record("compute", 0.030)
        with diag.stage("convert"):
            time.sleep(0.002)
        diag.drop("not_ready", 2)
        st = diag.status()
        v = status_values(st)
        assert st.level == DiagnosticStatus.WARN and "2 dropped" in st.message
        assert float(v["compute.mean_ms"]) == pytest.approx(20.0)
        assert float(v["compute.max_ms"]) == pytest.approx(30.0)
        assert float(v["convert.mean_ms"]) >= 2.0
        assert v["frames_total"] == "3" and v["drops.not_ready"] == "2" and v["drops_window"] == "2"
        assert float(v["rate_hz"]) > 0

        st = diag.status()  # a new window: no frames, drops or stage samples in it
        v = status_values(st)
        assert st.level == DiagnosticStatus.OK and v["drops_window"] == "0" and v["drops_total"] == "2"
        assert "compute.mean_ms" not in v and float(v["rate_hz"]) == 0.0

        diag.error(ValueError("depth: expected a (H, W) image, got ..."), log=False)
        st = diag.status()
        assert st.level == DiagnosticStatus.ERROR  # an error and no frame in the window
        assert st.message.startswith("depth: expected")
        diag.frame()
        assert diag.status().level == DiagnosticStatus.WARN  # error, but frames still come
        time.sleep(0.35)
        diag.frame()
        st = diag.status()
        assert st.level == DiagnosticStatus.OK  # the error is older than error_hold_s
        assert status_values(st)["last_error"].startswith("depth: expected")
        assert status_values(st)["errors_total"] == "1"


def test_published_on_diagnostics_about_every_period():
    with ros_session() as s:
        listener = s.node("diag_listener")
        rec = TopicRecorder(listener, DiagnosticArray, "/diagnostics",
                            QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE))
        diag = NodeDiagnostics(s.node("diag_pub"), period_s=0.2)
        diag.set_value("backend", "ours")
        assert wait_until(lambda: len([m for m in rec.messages
                                       if m.status[0].name == "/diag_pub"]) >= 3, 10)
    ours = [m for m in rec.messages if m.status[0].name == "/diag_pub"]
    assert status_values(ours[0].status[0])["backend"] == "ours"
    stamps = [m.header.stamp.sec + 1e-9 * m.header.stamp.nanosec for m in ours]
    assert all(b > a for a, b in itertools.pairwise(stamps))


def test_guard_keeps_a_subscriber_alive_through_bad_images():
    """Bad messages over the wire (wrong encoding, size mismatch, a bug) are reported and dropped;
    the good ones around them are processed."""
    import numpy as np
    from sensor_msgs.msg import Image

    from weak_template_ros.ros.conversions import image_to_rgb, rgb_to_image

    qos = QoSProfile(depth=20, reliability=ReliabilityPolicy.RELIABLE)
    with ros_session() as s:
        node = s.node("guarded")
        diag = NodeDiagnostics(node, period_s=3600.0)
        good = []

        def on_image(msg):
            with diag.guard("image"):
                if msg.header.frame_id == "bug":
                    raise ZeroDivisionError("division by zero")
                good.append(image_to_rgb(msg, "camera/color/image_raw"))

        node.create_subscription(Image, "guard_test", on_image, qos)
        pub = s.node("guard_pub").create_publisher(Image, "guard_test", qos)
        assert wait_until(lambda: pub.get_subscription_count() > 0, 10)
        rgb = np.full((4, 6, 3), 7, np.uint8)
        bad_encoding = rgb_to_image(rgb)
        bad_encoding.encoding = "rgba8"
        short = rgb_to_image(rgb)
        short.data = bytes(short.data)[:-3]
        bug = rgb_to_image(rgb, frame_id="bug")
        for msg in (rgb_to_image(rgb), bad_encoding, short, bug, rgb_to_image(rgb)):
            pub.publish(msg)
        assert wait_until(lambda: diag.errors_total == 3 and len(good) == 2, 10)
        st = diag.status()
    assert all(np.array_equal(g, rgb) for g in good)
    v = status_values(st)
    assert v["drops.bad_image"] == "3" and v["frames_total"] == "0"
    assert v["last_error"] == "image: ZeroDivisionError: division by zero"
    assert st.level == DiagnosticStatus.ERROR  # errors and no output frame in the window
