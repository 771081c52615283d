"""Node health on ``/diagnostics`` (diagnostic_msgs/DiagnosticArray), about once a second.

A node counts its output frames, times its stages, counts drops and records errors through
:class:`NodeDiagnostics`; a timer publishes one ``DiagnosticStatus`` per period with the rate,
per-stage latency (mean and max over the period), drop counts and the last error. Our own small
helper rather than ``diagnostic_updater`` (not installable from PyPI); the message is the
standard one, so ``rqt_runtime_monitor`` and the diagnostic aggregator read it.
"""

from __future__ import annotations

import contextlib
import threading
import time
import traceback
from collections import defaultdict

from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus, KeyValue

from weak_template_ros.errors import InputError
from weak_template_ros.ros.qos import result_qos

DIAGNOSTICS_TOPIC = "/diagnostics"
OK, WARN, ERROR = DiagnosticStatus.OK, DiagnosticStatus.WARN, DiagnosticStatus.ERROR


class NodeDiagnostics:
    """Rate, stage latency, drops and errors of one node, published periodically.

    Parameters
    ----------
    node : rclpy.node.Node
    name : str, optional
        Status name (default: the node's fully qualified name).
    hardware_id : str
    period_s : float
        Publishing period (s); also the window the rate and latencies are computed over.
    error_hold_s : float
        A status stays WARN/ERROR this long after the last error.

    Notes
    -----
    Thread-safe: stages may be timed from worker threads.
    """

    def __init__(self, node, name: str | None = None, hardware_id: str = "", period_s: float = 1.0,
                 error_hold_s: float = 5.0):
        self.node = node
        self.name = name or node.get_fully_qualified_name()
        self.hardware_id = hardware_id
        self.period_s = float(period_s)
        self.error_hold_s = float(error_hold_s)
        self._lock = threading.Lock()
        self._values: dict[str, str] = {}
        self.frames_total = 0
        self.drops_total: dict[str, int] = defaultdict(int)
        self.errors_total = 0
        self.last_error = ""
        self._last_error_t = -float("inf")
        self._reset_window(time.monotonic())
        self.publisher = node.create_publisher(DiagnosticArray, DIAGNOSTICS_TOPIC, result_qos())
        self.timer = node.create_timer(self.period_s, self.publish)

    def _reset_window(self, now: float) -> None:
        self._window_start = now
        self._frames = 0
        self._drops = 0
        self._stage_sum: dict[str, float] = defaultdict(float)
        self._stage_max: dict[str, float] = defaultdict(float)
        self._stage_n: dict[str, int] = defaultdict(int)

    def frame(self, n: int = 1) -> None:
        """Count ``n`` output frames (the published rate)."""
        with self._lock:
            self._frames += n
            self.frames_total += n

    def record(self, stage: str, seconds: float) -> None:
        """Add one latency sample (seconds) of ``stage``."""
        with self._lock:
            self._stage_sum[stage] += seconds
            self._stage_max[stage] = max(self._stage_max[stage], seconds)
            self._stage_n[stage] += 1

    @contextlib.contextmanager
    def stage(self, name: str):
        """Time the enclosed block as one sample of stage ``name``."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            self.record(name, time.perf_counter() - t0)

    def drop(self, reason: str = "dropped", n: int = 1) -> None:
        """Count ``n`` dropped inputs/outputs for ``reason`` (a short key like "not_ready")."""
        with self._lock:
            self._drops += n
            self.drops_total[reason] += n

    def error(self, message: str | BaseException, log: bool = True) -> None:
        """Record an error (shown as the status message and ``last_error``), and log it."""
        text = str(message) if not isinstance(message, BaseException) or str(message) \
            else type(message).__name__
        with self._lock:
            self.errors_total += 1
            self.last_error = text
            self._last_error_t = time.monotonic()
        if log:
            self.node.get_logger().error(text)

    @contextlib.contextmanager
    def guard(self, what: str = "input"):
        """Keep a callback alive through bad input: log it, report it, drop the input.

        An :class:`~weak_template_ros.errors.InputError` (wrong encoding, size mismatch, ...)
        becomes the status message and a ``bad_<what>`` drop; any other exception too, logged
        with its traceback (a bug, but the node keeps serving the next message). Nothing is
        re-raised: an exception escaping a callback would stop the executor.
        """
        try:
            yield
        except InputError as e:
            self.drop(f"bad_{what}")
            self.error(e)
        except Exception as e:
            self.drop(f"bad_{what}")
            self.error(f"{what}: {type(e).__name__}: {e}", log=False)
            self.node.get_logger().error(f"{what}: unexpected {type(e).__name__}\n{traceback.format_exc()}")

    def set_value(self, key: str, value) -> None:
        """An extra key/value shown in every status (e.g. the source or backend in use)."""
        with self._lock:
            self._values[key] = str(value)

    def status(self) -> DiagnosticStatus:
        """The status of the current window; starts a new window."""
        now = time.monotonic()
        with self._lock:
            dt = max(now - self._window_start, 1e-9)
            kv = [("rate_hz", f"{self._frames / dt:.3f}"), ("frames_total", str(self.frames_total)),
                  ("drops_window", str(self._drops)), ("drops_total", str(sum(self.drops_total.values())))]
            kv += [(f"drops.{k}", str(v)) for k, v in sorted(self.drops_total.items())]
            for s in sorted(self._stage_n):
                n = self._stage_n[s]
                kv.append((f"{s}.mean_ms", f"{1e3 * self._stage_sum[s] / n:.3f}"))
                kv.append((f"{s}.max_ms", f"{1e3 * self._stage_max[s]:.3f}"))
            kv += [("errors_total", str(self.errors_total)), ("last_error", self.last_error)]
            kv += sorted(self._values.items())
            recent_error = now - self._last_error_t < self.error_hold_s
            if recent_error and self._frames == 0:
                level, message = ERROR, self.last_error
            elif recent_error:
                level, message = WARN, self.last_error
            elif self._drops:
                level, message = WARN, f"{self._drops} dropped in the last {dt:.1f} s"
            else:
                level, message = OK, "ok"
            self._reset_window(now)
        return DiagnosticStatus(level=level, name=self.name, message=message,
                                hardware_id=self.hardware_id,
                                values=[KeyValue(key=k, value=v) for k, v in kv])

    def publish(self) -> None:
        """Publish the current status (the timer calls this every ``period_s``)."""
        msg = DiagnosticArray(status=[self.status()])
        msg.header.stamp = self.node.get_clock().now().to_msg()
        self.publisher.publish(msg)


def status_values(status: DiagnosticStatus) -> dict[str, str]:
    """The key/values of a DiagnosticStatus as a dict (for tests and tools)."""
    return {kv.key: kv.value for kv in status.values}
