"""Approximate-time synchronisation of several topics (colour, depth, camera_info, ...).

:class:`ApproximateTimeSync` is ours, with message_filters' ``ApproximateTimeSynchronizer``
semantics (a queue per input, ``queue_size``, ``slop`` in seconds, a set is emitted as soon as
it exists); message_filters is not installable from PyPI. :class:`SyncedSubscriptions` uses
message_filters when it is importable (a ROS install) and ours otherwise.

Our algorithm, on every message added:

1. A message older than (or as old as) the last one emitted from its input arrives too late and
   is dropped; otherwise it is inserted in stamp order (out-of-order arrival within the queue is
   fine). A queue longer than ``queue_size`` drops its oldest message.
2. Among all sets with one message per input whose time span (newest - oldest stamp) is at most
   ``slop``, the one with the smallest span is emitted (ties: the older set). Every queued
   message older than the emitted one of its input is dropped: later sets are newer, so it could
   never be used. Step 2 repeats while a set exists.

Differences from message_filters' Python class (not visible with camera-like streams): it takes
the first set within slop it finds rather than the tightest one, and it keeps older messages.
"""

from __future__ import annotations

import bisect
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from weak_template_ros.errors import InputError
from weak_template_ros.ros.conversions import stamp_to_ns


@dataclass
class SyncStats:
    """Counters of a synchroniser: sets emitted and messages dropped per input and reason."""

    emitted: int = 0
    dropped_overflow: list[int] = field(default_factory=list)   # queue longer than queue_size
    dropped_late: list[int] = field(default_factory=list)       # older than the last emitted
    dropped_unmatched: list[int] = field(default_factory=list)  # skipped by an emitted newer set

    @property
    def dropped(self) -> int:
        return sum(self.dropped_overflow) + sum(self.dropped_late) + sum(self.dropped_unmatched)


class ApproximateTimeSync:
    """Group messages from ``n_inputs`` streams whose stamps lie within ``slop`` seconds.

    Parameters
    ----------
    n_inputs : int
        Number of streams (>= 1).
    queue_size : int
        Messages kept per input while waiting for partners (>= 1).
    slop : float
        Largest allowed time span of a set, seconds (>= 0).
    callback : callable
        Called as ``callback(*messages)`` (input order) for every set, from the thread that
        added the set's last message.

    Examples
    --------
    >>> sync = ApproximateTimeSync(2, queue_size=5, slop=0.01, callback=print)
    >>> sync.add(0, "a0", stamp_ns=1_000_000_000)
    >>> sync.add(1, "b0", stamp_ns=1_004_000_000)   # prints: a0 b0
    """

    def __init__(self, n_inputs: int, queue_size: int, slop: float, callback: Callable[..., None]):
        if int(n_inputs) < 1:
            raise InputError("n_inputs", "at least 1 input", n_inputs)
        if int(queue_size) < 1:
            raise InputError("queue_size", "at least 1 message per input", queue_size)
        if not slop >= 0:
            raise InputError("slop", "a time span >= 0 s", slop)
        self.n_inputs = int(n_inputs)
        self.queue_size = int(queue_size)
        self.slop_ns = round(float(slop) * 1e9)
        self.callback = callback
        self._stamps: list[list[int]] = [[] for _ in range(self.n_inputs)]  # sorted
        self._msgs: list[list[object]] = [[] for _ in range(self.n_inputs)]
        self._last_emitted: list[int | None] = [None] * self.n_inputs
        self._lock = threading.Lock()
        z = [0] * self.n_inputs
        self.stats = SyncStats(0, list(z), list(z), list(z))

    def add(self, index: int, msg: object, stamp_ns: int | None = None) -> None:
        """Add ``msg`` to input ``index``; its stamp is ``msg.header.stamp`` unless given."""
        if not 0 <= index < self.n_inputs:
            raise InputError("index", f"an input index in [0, {self.n_inputs - 1}]", index)
        stamp = stamp_to_ns(msg.header.stamp) if stamp_ns is None else int(stamp_ns)
        ready = []
        with self._lock:
            last = self._last_emitted[index]
            if last is not None and stamp <= last:
                self.stats.dropped_late[index] += 1
                return
            stamps, msgs = self._stamps[index], self._msgs[index]
            k = bisect.bisect_right(stamps, stamp)
            stamps.insert(k, stamp)
            msgs.insert(k, msg)
            if len(stamps) > self.queue_size:
                del stamps[0], msgs[0]
                self.stats.dropped_overflow[index] += 1
            while (chosen := self._best_set()) is not None:
                ready.append(self._take(chosen))
        for group in ready:  # outside the lock: a callback may add messages itself
            self.callback(*group)

    def _best_set(self) -> list[int] | None:
        """Positions (one per queue) of the set with the smallest span <= slop, or None.

        The smallest-span set containing a given earliest message takes, from every other
        queue, its oldest message not older than that one; so trying every queued message as
        the earliest one finds the optimum in O(total * inputs * log queue).
        """
        if any(not s for s in self._stamps):
            return None
        best, best_key = None, None
        for q, stamps in enumerate(self._stamps):
            for i, t0 in enumerate(stamps):
                pos, newest = [0] * self.n_inputs, t0
                for r, other in enumerate(self._stamps):
                    if r == q:
                        pos[r] = i
                        continue
                    j = bisect.bisect_left(other, t0)
                    if j == len(other):
                        break
                    pos[r], newest = j, max(newest, other[j])
                else:
                    span = newest - t0
                    key = (span, t0)
                    if span <= self.slop_ns and (best_key is None or key < best_key):
                        best, best_key = pos, key
        return best

    def _take(self, pos: list[int]) -> list[object]:
        group = []
        for r, j in enumerate(pos):
            self._last_emitted[r] = self._stamps[r][j]
            group.append(self._msgs[r][j])
            self.stats.dropped_unmatched[r] += j
            del self._stamps[r][: j + 1], self._msgs[r][: j + 1]
        self.stats.emitted += 1
        return group

    def queued(self) -> list[int]:
        """Number of messages waiting in each input's queue."""
        with self._lock:
            return [len(s) for s in self._stamps]


def message_filters_available() -> bool:
    """True when ROS' message_filters package can be imported (a ROS install)."""
    try:
        import message_filters  # noqa: F401
    except ImportError:
        return False
    return True


class SyncedSubscriptions:
    """Subscribe to several topics and call ``callback(*msgs)`` with approximately synced sets.

    Parameters
    ----------
    node : rclpy.node.Node
    inputs : sequence of (msg_type, topic, qos)
        One entry per synchronised input; ``qos`` is a QoSProfile or a depth.
    callback : callable
        ``callback(*msgs)`` in input order.
    queue_size : int
    slop : float
        Seconds.
    use_message_filters : bool, optional
        Force (True) or forbid (False) message_filters; default: use it when importable.
    callback_group : rclpy callback group, optional
        For our path's subscriptions.

    Attributes
    ----------
    backend : str
        "message_filters" or "ours".
    stats : SyncStats or None
        Our counters (None with message_filters, which keeps none).
    """

    def __init__(self, node, inputs: Sequence[tuple[type, str, object]], callback: Callable[..., None],
                 queue_size: int = 5, slop: float = 0.02, use_message_filters: bool | None = None,
                 callback_group=None):
        use_mf = message_filters_available() if use_message_filters is None else use_message_filters
        self.subscriptions = []
        self.stats: SyncStats | None = None
        if use_mf:
            import message_filters

            self.backend = "message_filters"
            self.subscriptions = [message_filters.Subscriber(node, t, topic, qos_profile=qos)
                                  for t, topic, qos in inputs]
            self._sync = message_filters.ApproximateTimeSynchronizer(self.subscriptions, queue_size,
                                                                     slop)
            self._sync.registerCallback(callback)
            return
        self.backend = "ours"
        self._args = (len(inputs), queue_size, slop, callback)
        self._sync = ApproximateTimeSync(*self._args)
        self.stats = self._sync.stats
        for i, (t, topic, qos) in enumerate(inputs):
            self.subscriptions.append(node.create_subscription(
                t, topic, lambda msg, i=i: self._sync.add(i, msg), qos,
                callback_group=callback_group))

    def reset(self) -> None:
        """Forget queued messages and last stamps (e.g. after stamps jumped back); keep the
        subscriptions. Safe from a callback: destroying subscriptions there races the executor's
        wait set, so only the synchroniser is replaced (subscriptions look it up per message)."""
        if self.backend == "ours":
            self._sync = ApproximateTimeSync(*self._args)
            self.stats = self._sync.stats
        else:  # message_filters keeps one dict of stamped messages per input
            self._sync.queues = [{} for _ in self._sync.queues]
