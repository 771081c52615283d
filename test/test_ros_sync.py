"""Approximate-time synchroniser: hand-written stamp sequences, invariants, and over the wire."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weak_template_ros.errors import InputError
from weak_template_ros.ros.sync import ApproximateTimeSync

MS = 1_000_000  # nanoseconds per millisecond


class Sink:
    def __init__(self):
        self.sets: list[tuple] = []

    def __call__(self, *msgs):
        self.sets.append(msgs)


def feed(sync: ApproximateTimeSync, events: list[tuple[int, float]]) -> None:
    """events: (input index, stamp in ms); the message is the tuple itself."""
    for i, t in events:
        sync.add(i, (i, t), stamp_ns=round(t * MS))


def test_exact_and_within_slop_sets():
    sink = Sink()
    sync = ApproximateTimeSync(2, queue_size=5, slop=0.010, callback=sink)
    feed(sync, [(0, 0), (1, 0), (0, 100), (1, 105), (1, 200), (0, 209.9)])
    assert sink.sets == [((0, 0), (1, 0)), ((0, 100), (1, 105)), ((0, 209.9), (1, 200))]
    assert sync.stats.emitted == 3 and sync.stats.dropped == 0


def test_beyond_slop_never_matches():
    sink = Sink()
    sync = ApproximateTimeSync(2, queue_size=5, slop=0.010, callback=sink)
    feed(sync, [(0, 0), (1, 15), (0, 100), (1, 111)])
    assert sink.sets == []
    assert sync.queued() == [2, 2]


def test_smallest_span_wins_and_older_partners_are_dropped():
    sink = Sink()
    sync = ApproximateTimeSync(2, queue_size=5, slop=0.010, callback=sink)
    # b arrives out of order (104 before 97); a at 100 has three partners within slop.
    feed(sync, [(1, 92), (1, 104), (1, 97), (0, 100)])
    assert sink.sets == [((0, 100), (1, 97))]      # span 3 ms beats 4 (104) and 8 (92)
    assert sync.stats.dropped_unmatched == [0, 1]  # 92 can never be used any more
    assert sync.queued() == [0, 1]                 # 104 waits for a partner
    feed(sync, [(0, 106)])
    assert sink.sets[-1] == ((0, 106), (1, 104))


def test_late_message_is_dropped():
    sink = Sink()
    sync = ApproximateTimeSync(2, queue_size=5, slop=0.010, callback=sink)
    feed(sync, [(0, 100), (1, 100), (0, 90), (0, 100), (1, 95)])
    assert sink.sets == [((0, 100), (1, 100))]
    assert sync.stats.dropped_late == [2, 1]  # 90 and the repeated 100; 95 on input 1
    assert sync.queued() == [0, 0]


def test_queue_overflow_drops_the_oldest():
    sink = Sink()
    sync = ApproximateTimeSync(2, queue_size=2, slop=0.005, callback=sink)
    feed(sync, [(0, 10), (0, 20), (0, 30), (1, 10)])
    assert sink.sets == []                    # 10 was pushed out before its partner came
    assert sync.stats.dropped_overflow == [1, 0]
    feed(sync, [(1, 21)])
    assert sink.sets == [((0, 20), (1, 21))]
    assert sync.stats.dropped_unmatched == [0, 1]  # b 10 is older than the emitted b 21


def test_three_inputs_and_a_missing_one():
    sink = Sink()
    sync = ApproximateTimeSync(3, queue_size=4, slop=0.004, callback=sink)
    # frame 0 complete; frame 1 lacks input 2 (info dropped); frame 2 complete with jitter
    feed(sync, [(0, 0), (2, 0), (1, 1), (0, 33), (1, 34), (1, 67), (0, 66), (2, 68)])
    assert sink.sets == [((0, 0), (1, 1), (2, 0)), ((0, 66), (1, 67), (2, 68))]
    assert sync.stats.dropped_unmatched == [1, 1, 0]  # frame 1's colour and depth


def test_arrival_order_does_not_matter_for_in_order_streams():
    events = [(0, 0), (1, 2), (2, 1), (0, 50), (1, 51), (2, 49)]
    results = []
    for perm in ([0, 1, 2, 3, 4, 5], [2, 1, 0, 5, 3, 4], [1, 0, 2, 4, 5, 3]):
        sink = Sink()
        feed(ApproximateTimeSync(3, 5, 0.005, sink), [events[k] for k in perm])
        results.append(sink.sets)
    assert results[0] == results[1] == results[2]
    assert len(results[0]) == 2


def test_single_input_passes_through_and_bad_arguments():
    sink = Sink()
    sync = ApproximateTimeSync(1, 3, 0.0, sink)
    feed(sync, [(0, 1), (0, 2)])
    assert sink.sets == [((0, 1),), ((0, 2),)]
    for args in ((0, 3, 0.1), (2, 0, 0.1), (2, 3, -0.1)):
        with pytest.raises(InputError):
            ApproximateTimeSync(*args, callback=sink)
    with pytest.raises(InputError, match="index"):
        sync.add(3, None, stamp_ns=0)


@settings(max_examples=60, deadline=None)
@given(seed=st.integers(0, 2**32 - 1), n_inputs=st.integers(2, 3),
       drop_p=st.floats(0.0, 0.3), swap_p=st.floats(0.0, 0.5))
def test_camera_like_streams_invariants(seed, n_inputs, drop_p, swap_p):
    """Streams at 30 Hz with +-3 ms jitter, random drops and swapped arrivals, slop 8 ms.

    Every set spans <= slop, holds one message of the same frame from every input, is emitted
    once, and stamps increase per input; every frame all inputs delivered is emitted, except
    when a neighbour frame's later-arriving message made it unusable (counted as a drop).
    """
    rng = np.random.default_rng(seed)
    n_frames, period, jitter, slop = 20, 1000 / 30, 3.0, 8.0
    events = []
    for f in range(n_frames):
        for i in range(n_inputs):
            if rng.uniform() >= drop_p:
                events.append((i, f * period + rng.uniform(-jitter, jitter), f))
    for k in range(len(events) - 1):  # neighbour swaps: out-of-order arrival
        if rng.uniform() < swap_p:
            events[k], events[k + 1] = events[k + 1], events[k]
    sink = Sink()
    sync = ApproximateTimeSync(n_inputs, queue_size=5, slop=slop / 1000, callback=sink)
    for i, t, f in events:
        sync.add(i, (i, t, f), stamp_ns=round(t * MS))
    frames = [s[0][2] for s in sink.sets]
    for s in sink.sets:
        stamps = [m[1] for m in s]
        assert max(stamps) - min(stamps) <= slop + 1e-6
        assert [m[0] for m in s] == list(range(n_inputs))
        assert len({m[2] for m in s}) == 1           # jitter << period: never mixes frames
    assert frames == sorted(set(frames))             # once each, in order
    complete = {f for f in range(n_frames)
                if sum(1 for e in events if e[2] == f) == n_inputs}
    received = sum(1 for _ in events)
    accounted = sync.stats.emitted * n_inputs + sync.stats.dropped + sum(sync.queued())
    assert accounted == received
    missed = complete - set(frames)
    assert len(missed) <= sync.stats.dropped  # a complete frame is only lost through a drop


@pytest.mark.ros
def test_synced_subscriptions_over_the_wire():
    """Our backend on real topics: colour/depth/info published with equal stamps pair up."""
    from rclpy.qos import QoSProfile, ReliabilityPolicy
    from sensor_msgs.msg import CameraInfo, Image

    from weak_template_ros.camera import CameraIntrinsics
    from weak_template_ros.ros.conversions import intrinsics_to_camera_info, numpy_to_image
    from weak_template_ros.ros.sync import SyncedSubscriptions
    from weak_template_ros.ros.testing import ros_session, wait_until

    qos = QoSProfile(depth=10, reliability=ReliabilityPolicy.RELIABLE)
    sink = Sink()
    with ros_session() as s:
        sub_node = s.node("sync_sub")
        synced = SyncedSubscriptions(sub_node, [(Image, "s_color", qos), (Image, "s_depth", qos),
                                                (CameraInfo, "s_info", qos)], sink, queue_size=5,
                                     slop=0.005, use_message_filters=False)
        assert synced.backend == "ours"
        pub_node = s.node("sync_pub")
        pubs = [pub_node.create_publisher(t, name, qos)
                for t, name in ((Image, "s_color"), (Image, "s_depth"), (CameraInfo, "s_info"))]
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in pubs), 10)
        cam = CameraIntrinsics.from_fov(8, 6, 60)
        for k in range(5):
            stamp = 1_000_000_000 + k * 100 * MS
            pubs[0].publish(numpy_to_image(np.full((6, 8, 3), k, np.uint8), "rgb8", stamp))
            pubs[1].publish(numpy_to_image(np.full((6, 8), k, np.float32), "32FC1", stamp + MS))
            pubs[2].publish(intrinsics_to_camera_info(cam, stamp))
        assert wait_until(lambda: len(sink.sets) == 5, 10)
    for k, (color, depth, info) in enumerate(sink.sets):
        assert color.data[0] == k and np.frombuffer(depth.data, np.float32)[0] == k
        assert info.header.stamp == color.header.stamp
    assert synced.stats.emitted == 5 and synced.stats.dropped == 0
