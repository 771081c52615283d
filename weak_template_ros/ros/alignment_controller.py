"""alignment_controller node: the reference measure -> move loop over ROS topics.

Takes the aligner's measurements, commands the stage by the measured offset (in stage axes, as
the aligner's calibration gives them) and repeats until the offset is within tolerance; the
decision rule is that of :func:`weak_template_ros.align.closed_loop.run_closed_loop`
(:class:`LoopController` below is that rule one measurement at a time: averaging
``fine_frames`` frames near the target, backlash compensation on reversal, the mark carried by
a rotation about the axis).

Subscribes (relative names):

* ``alignment/result`` (std_msgs/Float64MultiArray, the aligner's per-image result). Only
  images stamped after the last move was acknowledged count.
* ``stage/moved`` (geometry_msgs/TransformStamped, reliable, transient local): the stage's
  acknowledgement of a move, matched by its ``child_frame_id``.

Publishes:

* ``stage/move`` (geometry_msgs/TransformStamped, reliable): relative moves, frame
  ``stage_frame``, translation x, y (m), rotation about z (rad); ``child_frame_id`` is the
  command id ``run<R>_move<K>``.
* ``alignment/convergence`` (diagnostic_msgs/DiagnosticStatus, reliable, transient local): the
  state of the current run after every measurement, move and verdict. ``level`` OK = converged,
  WARN = running, ERROR = failed; ``message`` a sentence; ``values``: run, state (idle, measuring,
  moving, converged, failed), moves, measured_px, measured_theta_rad, frames, history_px (the
  measured |offset| after 0, 1, ... moves) and reason.
* ``/diagnostics``: rate of measurements used, run state, moves, residual.

Services (std_srvs/Trigger): ``~/start`` (start a new run; restarts a running one), ``~/stop``.
With ``autostart`` a run starts with the node.

Parameters: :class:`ControllerNodeConfig`: :class:`~weak_template_ros.align.closed_loop.LoopConfig`
as ``loop.<name>`` (``loop.max_moves``, ``loop.done_px``, ``loop.done_theta``,
``loop.fine_below_px``, ``loop.fine_frames``, ``loop.backlash_*``, ``loop.mark_offset_*``; read at
the start of each run), ``autostart``, timeouts, ``not_found_limit``, ``stage_frame``.

Console script: ``alignment_controller = weak_template_ros.ros.alignment_controller:main``.
"""

from __future__ import annotations

import math
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from diagnostic_msgs.msg import DiagnosticStatus, KeyValue
from geometry_msgs.msg import TransformStamped
from rclpy.node import Node
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from weak_template_ros.align.closed_loop import LoopConfig
from weak_template_ros.config import param
from weak_template_ros.errors import InputError
from weak_template_ros.ros.aligner import RESULT_TOPIC, planar_transform, result_from_message
from weak_template_ros.ros.conversions import stamp_to_ns
from weak_template_ros.ros.diagnostics import ERROR, OK, WARN, NodeDiagnostics
from weak_template_ros.ros.node_main import node_main
from weak_template_ros.ros.params import ConfigParameters, config_from_parameters, file_parameters
from weak_template_ros.ros.qos import latched_qos, result_qos
from weak_template_ros.ros.twin_stage import MOVE_TOPIC, MOVED_TOPIC

CONVERGENCE_TOPIC = "alignment/convergence"
START_SERVICE = "~/start"
STOP_SERVICE = "~/stop"
#: The fields :class:`LoopController` averages, in the order of :meth:`LoopController.decide`.
MEASUREMENT_FIELDS = ("dx_px", "dy_px", "dtheta_rad", "dx_m", "dy_m", "dtheta_stage_rad")


# ----------------------------------------------------------------------------------------------
# The decision rule (ROS-free)


@dataclass
class Decision:
    """What to do after a measurement: ``action`` "move" (with ``command`` = (dx m, dy m,
    dtheta rad)), "converged" or "max_moves"."""

    action: str
    command: np.ndarray | None = None


@dataclass
class LoopController:
    """:func:`~weak_template_ros.align.closed_loop.run_closed_loop`'s rule, one measurement at a time.

    Feed :meth:`decide` ``frames_needed`` measurements (rows of :data:`MEASUREMENT_FIELDS`,
    every one found); it says whether to move (and by how much, backlash compensated), or that
    the loop is done. Same inputs, same commands as ``run_closed_loop`` (tested).
    """

    config: LoopConfig = field(default_factory=LoopConfig)
    moves: int = 0
    frames_needed: int = 1
    measured_px: list[float] = field(default_factory=list)
    measured_theta: list[float] = field(default_factory=list)
    last_dir: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def decide(self, measurements) -> Decision:
        """Average the measurements (N, 6) and decide; counts the move when it says "move"."""
        cfg = self.config
        m = np.mean(np.atleast_2d(np.asarray(measurements, np.float64)), axis=0)
        self.measured_px.append(float(math.hypot(m[0], m[1])))
        self.measured_theta.append(abs(float(m[2])))
        if self.measured_px[-1] <= cfg.done_px and abs(m[2]) <= cfg.done_theta:
            return Decision("converged")
        if self.moves >= cfg.max_moves:
            return Decision("max_moves")
        # Move so the mark returns to the target; rotating about the axis also carries the mark.
        o = np.array([cfg.mark_offset_x, cfg.mark_offset_y])
        dth = -m[5]
        cs, sn = math.cos(dth), math.sin(dth)
        carry = np.array([cs * o[0] - sn * o[1], sn * o[0] + cs * o[1]]) - o
        cmd = np.array([-m[3] - carry[0], -m[4] - carry[1], dth])
        direction = np.sign(cmd)
        reverse = (direction != 0) & (self.last_dir != 0) & (direction != self.last_dir)
        comp = np.array([cfg.backlash_xy, cfg.backlash_xy, cfg.backlash_theta])
        cmd = cmd + np.where(reverse, direction * comp, 0.0)
        self.last_dir = np.where(direction != 0, direction, self.last_dir)
        self.moves += 1
        # After a move from far away the residual is ~calibration error x distance: average
        # near the target only (predicted residual 2 % of the last offset), as run_closed_loop.
        self.frames_needed = cfg.fine_frames if 0.02 * self.measured_px[-1] <= cfg.fine_below_px else 1
        return Decision("move", cmd)


# ----------------------------------------------------------------------------------------------
# Node


@dataclass
class ControllerNodeConfig:
    """Parameters of the alignment_controller node: the loop's (:class:`LoopConfig`, as
    ``loop.<name>``, read at the start of each run) and the node's."""

    loop: LoopConfig = field(default_factory=LoopConfig)
    autostart: bool = param(True, "start an alignment run when the node starts (else: call ~/start)")
    measure_timeout_s: float = param(15.0, "a run fails when no usable measurement arrives for this "
                                     "long", lo=0.1, hi=3600.0, unit="s")
    move_timeout_s: float = param(15.0, "a run fails when the stage does not acknowledge a move for "
                                  "this long", lo=0.1, hi=3600.0, unit="s")
    not_found_limit: int = param(3, "consecutive not-found measurements that end a run", lo=1, hi=1000)
    stage_frame: str = param("stage", "frame_id of stage/move")


class AlignmentControllerNode(Node):
    """The alignment_controller node (see the module docstring)."""

    def __init__(self, node_name: str = "alignment_controller", **kwargs):
        super().__init__(node_name, **kwargs)
        self._lock = threading.RLock()
        self._closing = False
        self._params = ConfigParameters(self, ControllerNodeConfig)
        self.diagnostics = NodeDiagnostics(self, hardware_id="weak_template_ros alignment loop")
        self.run = 0
        self.state = "idle"
        self.reason = ""
        self.loop: LoopController | None = None
        self._frames: list[list[float]] = []
        self._frames_total = 0
        self._not_found = 0
        self._since_ns = 0  # only images stamped after this count
        self._pending_id = ""
        self._pending_cmd: np.ndarray | None = None
        self._deadline = math.inf
        self.move_publisher = self.create_publisher(TransformStamped, MOVE_TOPIC, result_qos())
        self.status_publisher = self.create_publisher(DiagnosticStatus, CONVERGENCE_TOPIC, latched_qos())
        self.result_subscription = self.create_subscription(Float64MultiArray, RESULT_TOPIC,
                                                            self._on_result, result_qos())
        self.moved_subscription = self.create_subscription(TransformStamped, MOVED_TOPIC, self._on_moved,
                                                           latched_qos())
        self.create_service(Trigger, START_SERVICE, self._on_start)
        self.create_service(Trigger, STOP_SERVICE, self._on_stop)
        self._timer = self.create_timer(0.1, self._on_timer)
        if self.config.autostart:
            self.start()
        else:
            self._publish_status()

    @property
    def config(self) -> ControllerNodeConfig:
        """The configuration in force."""
        return self._params.config

    def connected(self) -> bool:
        """An aligner publishes results to us, and a stage takes our moves and acknowledges them."""
        return (self.result_subscription.get_publisher_count() > 0
                and self.moved_subscription.get_publisher_count() > 0
                and self.move_publisher.get_subscription_count() > 0)

    # -- runs -------------------------------------------------------------------------------------
    def start(self) -> str:
        """Start a new run (a running one is abandoned); returns a sentence saying so."""
        with self._lock:
            self.run += 1
            self.loop = LoopController(self.config.loop)
            self._frames, self._frames_total, self._not_found = [], 0, 0
            self._since_ns = self.get_clock().now().nanoseconds
            self._pending_id, self._pending_cmd = "", None
            self.reason = ""
            self._set_state("measuring", self.config.measure_timeout_s)
            text = f"run {self.run} started"
        self.get_logger().info(text)
        self._publish_status()
        return text

    def stop(self, reason: str = "stopped") -> None:
        """End the current run as failed with ``reason``."""
        with self._lock:
            if self.state in ("measuring", "moving"):
                self._finish("failed", reason)

    def _set_state(self, state: str, timeout_s: float | None = None) -> None:
        self.state = state
        self._deadline = time.monotonic() + timeout_s if timeout_s is not None else math.inf
        self.diagnostics.set_value("state", state)

    def _finish(self, state: str, reason: str) -> None:
        self._set_state(state)
        self.reason = reason
        loop = self.loop
        text = (f"run {self.run} {state} after {loop.moves} moves: {reason}; measured "
                f"{loop.measured_px[-1] if loop.measured_px else math.nan:.4f} px")
        if state == "converged":
            self.get_logger().info(text)
        else:
            self.diagnostics.error(text)
        self._publish_status()

    # -- callbacks --------------------------------------------------------------------------------
    def _on_result(self, msg: Float64MultiArray) -> None:
        with self.diagnostics.guard("result"), self._lock:
            r = result_from_message(msg)
            if self.state != "measuring" or r["stamp_ns"] <= self._since_ns:
                return  # not waiting, or an image taken before the last move settled
            if r["found"] < 0.5:
                self._not_found += 1
                self.diagnostics.drop("not_found")
                if self._not_found >= self.config.not_found_limit:
                    self._finish("failed", f"mark not found in {self._not_found} images in a row")
                return
            self._not_found = 0
            self._frames.append([r[k] for k in MEASUREMENT_FIELDS])
            self._frames_total += 1
            self.diagnostics.frame()
            self._set_state("measuring", self.config.measure_timeout_s)
            if len(self._frames) < self.loop.frames_needed:
                return
            decision = self.loop.decide(self._frames)
            self._frames = []
            self.diagnostics.set_value("measured_px", f"{self.loop.measured_px[-1]:.4f}")
            if decision.action == "converged":
                self._finish("converged", f"|offset| <= {self.loop.config.done_px} px and "
                                          f"|dtheta| <= {self.loop.config.done_theta} rad")
            elif decision.action == "max_moves":
                self._finish("failed", f"not within tolerance after max_moves = {self.loop.moves}")
            else:
                self._pending_cmd = decision.command
                self._pending_id = f"run{self.run}_move{self.loop.moves}"
                self._set_state("moving", self.config.move_timeout_s)
                self._send_move()
                self._publish_status()

    def _send_move(self) -> None:
        if self._pending_cmd is None or self._closing:
            return
        if self.move_publisher.get_subscription_count() == 0:
            return  # no stage listening yet: a relative move must not be lost (the timer retries)
        x, y, th = self._pending_cmd
        self.move_publisher.publish(planar_transform(x, y, th, self.get_clock().now().to_msg(),
                                                     self.config.stage_frame, self._pending_id))
        self._pending_cmd = None
        self.diagnostics.set_value("moves", self.loop.moves)

    def _on_moved(self, msg: TransformStamped) -> None:
        with self._lock:
            expected = self.state == "moving" and self._pending_cmd is None
            if not expected or msg.child_frame_id != self._pending_id:
                return  # an old acknowledgement (transient local) or someone else's move
            self._since_ns = stamp_to_ns(msg.header.stamp)
            self._frames = []
            self._set_state("measuring", self.config.measure_timeout_s)

    def _on_timer(self) -> None:
        with self._lock:
            if self._closing:
                return
            if self.state == "moving" and self._pending_cmd is not None:
                self._send_move()
            if self.state in ("measuring", "moving") and time.monotonic() > self._deadline:
                what = "stage acknowledgement" if self.state == "moving" else "measurement"
                self._finish("failed", f"no {what} within the timeout")

    def _on_start(self, request, response):
        response.success, response.message = True, self.start()
        return response

    def _on_stop(self, request, response):
        with self._lock:
            running = self.state in ("measuring", "moving")
            self.stop("stopped by ~/stop")
        response.success = running
        response.message = (f"run {self.run} stopped" if running
                            else f"no run in progress (state {self.state})")
        return response

    # -- status -----------------------------------------------------------------------------------
    def status(self) -> DiagnosticStatus:
        """The convergence report of the current run."""
        with self._lock:
            loop = self.loop
            history = loop.measured_px if loop else []
            level = {"converged": OK, "failed": ERROR}.get(self.state, WARN)
            px = history[-1] if history else math.nan
            th = loop.measured_theta[-1] if loop and loop.measured_theta else math.nan
            moves = loop.moves if loop else 0
            if self.state in ("converged", "failed"):
                message = f"{self.state} after {moves} moves: {px:.4f} px, {th:.2e} rad ({self.reason})"
            else:
                message = f"{self.state}: {moves} moves so far"
            values = {"run": self.run, "state": self.state, "moves": moves, "measured_px": f"{px:.6f}",
                      "measured_theta_rad": f"{th:.3e}", "frames": self._frames_total,
                      "history_px": ",".join(f"{v:.6f}" for v in history), "reason": self.reason}
        return DiagnosticStatus(level=level, name=self.get_fully_qualified_name(), message=message,
                                hardware_id="weak_template_ros alignment loop",
                                values=[KeyValue(key=k, value=str(v)) for k, v in values.items()])

    def _publish_status(self) -> None:
        if not self._closing:
            self.status_publisher.publish(self.status())

    def destroy_node(self) -> None:
        # rclpy's executor shutdown does not wait for running callbacks: finish the one in flight.
        with self._lock:
            self._closing = True
            super().destroy_node()


# ----------------------------------------------------------------------------------------------
# The closed loop against the twin, in-process (demo, benches)


class LoopRecorder:
    """Records what the closed loop publishes and reads the TRUE residual after every move.

    Parameters
    ----------
    node : rclpy Node (a probe of the caller's)
    """

    def __init__(self, node):
        from geometry_msgs.msg import PoseStamped
        from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
        from sensor_msgs.msg import Image

        from weak_template_ros.ros.testing import TopicRecorder
        from weak_template_ros.ros.twin_stage import TRUE_OFFSET_TOPIC

        reliable = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
        latched = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                             durability=DurabilityPolicy.TRANSIENT_LOCAL)
        self.results = TopicRecorder(node, Float64MultiArray, RESULT_TOPIC, reliable)
        self.truth = TopicRecorder(node, PoseStamped, TRUE_OFFSET_TOPIC, reliable)
        self.moved = TopicRecorder(node, TransformStamped, MOVED_TOPIC, latched)
        self.status = TopicRecorder(node, DiagnosticStatus, CONVERGENCE_TOPIC, latched)
        self.debug = TopicRecorder(node, Image, "alignment/debug_image", qos_profile_sensor_data)

    def connected(self) -> bool:
        """Every recorded topic has a publisher matched (acknowledgements published before the
        match would be lost: the stage keeps only the last one)."""
        recorders = (self.results, self.truth, self.moved, self.status, self.debug)
        return all(r.subscription.get_publisher_count() > 0 for r in recorders)

    def verdict(self, run: int) -> DiagnosticStatus | None:
        """The final status of run ``run`` (converged or failed), None while it runs."""
        for st in self.status.messages:
            v = {kv.key: kv.value for kv in st.values}
            if v["run"] == str(run) and v["state"] in ("converged", "failed"):
                return st
        return None

    def true_after(self, stamp_ns: int) -> tuple[float, float, float]:
        """True mark offset (dx px, dy px, dtheta rad) in the first frame stamped after ``stamp_ns``."""
        from weak_template_ros.ros.aligner import pose_to_offset_px

        for m in sorted(self.truth.messages, key=lambda m: stamp_to_ns(m.header.stamp)):
            if stamp_to_ns(m.header.stamp) > stamp_ns:
                return pose_to_offset_px(m.pose)
        raise InputError("ground truth", f"a frame stamped after {stamp_ns} ns", "none yet")

    def true_per_move(self, run: int, start_ns: int, moves: int) -> list[tuple[float, float, float]]:
        """True offsets before the first move (frames after ``start_ns``) and after each move."""
        acks = {m.child_frame_id: stamp_to_ns(m.header.stamp) for m in self.moved.messages}
        times = [start_ns] + [acks[f"run{run}_move{k}"] for k in range(1, moves + 1)]
        return [self.true_after(t) for t in times]


@dataclass
class TwinLoopReport:
    """One closed-loop run through the three nodes (see :func:`run_twin_loop`)."""

    verdict: str  # the controller's: "converged" or "failed"
    reason: str
    moves: int
    measured_px: list[float]  # the controller's measured |offset| before each move and at the end
    true_px: list[float]  # the TRUE |offset| in the first frame after each move (0: the start)
    true_theta: list[float]  # the TRUE |dtheta| (rad), same frames
    seconds: float  # wall time from start to verdict
    first_debug: object | None  # aligner debug images (sensor_msgs/Image) of the run's first ...
    last_debug: object | None  # ... and last measured frames

    def moves_to(self, target_px: float) -> int | None:
        """Moves after which the TRUE residual was first <= ``target_px`` (None: never)."""
        return next((k for k, r in enumerate(self.true_px) if r <= target_px), None)


def run_twin_loop(template_path: str | Path, stage: dict | None = None, aligner: dict | None = None,
                  controller: dict | None = None, timeout_s: float = 120.0) -> TwinLoopReport:
    """Run twin_stage + aligner + alignment_controller in-process until the loop's verdict.

    Each node starts from its parameter file in config/ (twin_stage.yaml: SNR 5, 1 % / 0.5 deg
    calibration error) plus the overrides given (nested or dotted names). The golden template
    is rendered from the stage's mark and written to ``template_path``.
    """
    import cv2

    from weak_template_ros.ros.aligner import AlignerNode
    from weak_template_ros.ros.testing import ros_session, wait_until
    from weak_template_ros.ros.twin_stage import TwinStageConfig, TwinStageNode
    from weak_template_ros.twin.marks import golden_template, to_uint16

    stage_params = file_parameters("twin_stage.yaml", "twin_stage", **(stage or {}))
    cfg = config_from_parameters(TwinStageConfig, {p.name: p.value for p in stage_params})
    cv2.imwrite(str(template_path), to_uint16(golden_template(cfg.mark, (cfg.height, cfg.width),
                                                              cfg.degradations)))
    with ros_session() as s:
        probe = s.node("twin_loop_probe")
        rec = LoopRecorder(probe)
        s.add(TwinStageNode(context=s.context, parameter_overrides=stage_params))
        s.add(AlignerNode(context=s.context, parameter_overrides=file_parameters(
            "aligner_node.yaml", "aligner", **{"template_path": str(template_path),
                                               "debug_image_rate_hz": 100.0, **(aligner or {})})))
        ctl = s.add(AlignmentControllerNode(context=s.context, parameter_overrides=file_parameters(
            "alignment_controller.yaml", "alignment_controller", **{**(controller or {}),
                                                                   "autostart": False})))
        if not wait_until(lambda: rec.connected() and ctl.connected() and len(rec.results.messages) >= 1
                          and len(rec.debug.messages) >= 1, timeout_s):
            raise InputError("aligner", "measurements of the twin's images", "none in time")
        start_ns = probe.get_clock().now().nanoseconds
        t0 = time.monotonic()
        ctl.start()
        if not wait_until(lambda: rec.verdict(1) is not None, timeout_s):
            raise InputError("alignment_controller", f"a verdict within {timeout_s} s", ctl.state)
        seconds = time.monotonic() - t0
        v = {kv.key: kv.value for kv in rec.verdict(1).values}
        moves = int(v["moves"])
        wait_until(lambda: any(stamp_to_ns(m.header.stamp) > start_ns for m in rec.debug.messages), 5.0)
        truth = rec.true_per_move(1, start_ns, moves)
        debug = [m for m in rec.debug.messages if stamp_to_ns(m.header.stamp) > start_ns]
        return TwinLoopReport(v["state"], v["reason"], moves, [float(x) for x in v["history_px"].split(",")],
                              [math.hypot(dx, dy) for dx, dy, _ in truth], [abs(t) for _, _, t in truth],
                              seconds, debug[0] if debug else None, rec.debug.messages[-1])
    # Frames keep coming after the verdict: the last debug image shows the aligned mark.


main = node_main(AlignmentControllerNode)

if __name__ == "__main__":
    main()
