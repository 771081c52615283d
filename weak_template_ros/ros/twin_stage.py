"""twin_stage node: a simulated x/y/theta stage carrying an alignment mark under a fixed camera.

Wraps :class:`~weak_template_ros.twin.stage.StageTwin` (per-axis backlash, settling noise, a TRUE
camera-to-stage calibration that differs from the nominal one the aligner uses) and renders the
mark twin (:mod:`weak_template_ros.twin.marks`) at the stage's true pose.

Publishes (relative names):

* ``camera/image_raw``: sensor_msgs/Image at ``rate_hz``, ``encoding`` mono8 / mono16 / rgb8 /
  bgr8 (full scale 1.0 of the mark twin = 255 or 65535) or 32FC1 (the twin's float intensities);
  QoS ``image_reliability`` / ``image_queue_depth``.
* ``stage/true_pose``: geometry_msgs/TransformStamped ``stage_frame`` -> ``carriage_frame``, the
  carriage's true pose relative to the target (x, y metres, rotation about z), with the stamp of
  the image rendered at that pose. Ground truth, for evaluation only.
* ``stage/true_offset_px``: geometry_msgs/PoseStamped in ``pixel_frame``: where the mark truly is
  in the image, in the convention of the aligner's ``alignment/offset_px`` (position dx, dy px;
  rotation about z by ``-dtheta``), same stamp. Ground truth.
* ``stage/moved``: geometry_msgs/TransformStamped, one per applied move: the commanded move,
  its ``child_frame_id`` echoed (a command id), stamped with the time the move was applied and
  settled. Every image stamped later shows the new pose. Reliable, transient local.
* ``/diagnostics``: rate, render / convert latency, moves, bad commands, true residual.

Subscribes ``stage/move`` (geometry_msgs/TransformStamped, reliable): a RELATIVE move in stage
axes (translation x, y metres; rotation about z rad, from x towards y), in motor units = what the
controller believes are metres and radians. A command that is not planar, not finite or larger
than ``max_move_xy`` / ``max_move_theta`` is refused (logged, counted in diagnostics).

Service ``~/reset`` (std_srvs/Trigger): back to the start pose (``start_*``, plus a uniform
random offset within ``start_random_*`` drawn from the seed and the reset count), a new wafer
(nuisances) and fresh noise.

Parameters: :class:`TwinStageConfig` (nested: ``mark.*`` = MarkSpec, ``degradations.*`` =
Degradations, ``stage.*`` = StageConfig, ``true_calibration.*`` = Calibration). A change of the
mark, optics or mechanics rebuilds the twin at its current pose.

Console script: ``twin_stage = weak_template_ros.ros.twin_stage:main``.
"""

from __future__ import annotations

import dataclasses
import math
import threading
from dataclasses import dataclass, field

import numpy as np
from geometry_msgs.msg import PoseStamped, TransformStamped
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_srvs.srv import Trigger

from weak_template_ros.align.calibration import Calibration
from weak_template_ros.config import param
from weak_template_ros.errors import InputError
from weak_template_ros.ros.aligner import offset_px_pose, planar_transform, transform_to_planar
from weak_template_ros.ros.conversions import make_header, numpy_to_image, rgb_to_image
from weak_template_ros.ros.diagnostics import NodeDiagnostics
from weak_template_ros.ros.node_main import node_main
from weak_template_ros.ros.params import ConfigParameters, parameter_names
from weak_template_ros.ros.qos import image_qos, latched_qos, result_qos
from weak_template_ros.twin.marks import Degradations, MarkSpec, to_uint16
from weak_template_ros.twin.stage import StageConfig, StageTwin, make_stage

IMAGE_TOPIC = "camera/image_raw"
TRUE_POSE_TOPIC = "stage/true_pose"
TRUE_OFFSET_TOPIC = "stage/true_offset_px"
MOVE_TOPIC = "stage/move"
MOVED_TOPIC = "stage/moved"
RESET_SERVICE = "~/reset"
STAGE_ENCODINGS = ("mono8", "mono16", "rgb8", "bgr8", "32FC1")


@dataclass
class TwinStageConfig:
    """Parameters of the twin_stage node (same names as its ROS parameters).

    Nested configs keep their own classes' defaults (an ideal, noise-free, exactly calibrated
    stage); ``config/twin_stage.yaml`` sets the alignment issue's closed-loop case: SNR 5 with a
    light gradient and vignetting, a true calibration 1 % and 0.5 deg off the nominal 1 µm/px.
    """

    rate_hz: float = param(10.0, "camera frames per second", lo=0.1, hi=200.0, unit="Hz")
    encoding: str = param("mono8", "image encoding (full scale 1.0 = 255 / 65535; 32FC1 as rendered)",
                          choices=STAGE_ENCODINGS)
    frame_id: str = param("mark_camera_optical_frame", "frame_id of the images")
    stage_frame: str = param("stage", "frame of stage/true_pose and stage/moved")
    carriage_frame: str = param("carriage", "child frame of stage/true_pose")
    pixel_frame: str = param("image_pixels", "frame of stage/true_offset_px (image plane, px)")
    image_reliability: str = param("best_effort", "QoS reliability of the image topic (fixed at start)",
                                   choices=("best_effort", "reliable"))
    image_queue_depth: int = param(2, "QoS keep-last depth of the image topic (fixed at start)", lo=1,
                                   hi=100)
    seed: int = param(0, "seed of the wafer nuisances, the noise and the random start offsets", lo=0,
                      hi=2**31 - 1)
    width: int = param(256, "image width", lo=16, hi=8192, unit="px")
    height: int = param(256, "image height", lo=16, hi=8192, unit="px")
    mark: MarkSpec = field(default_factory=MarkSpec)
    degradations: Degradations = field(default_factory=Degradations)
    stage: StageConfig = field(default_factory=StageConfig)
    true_calibration: Calibration = field(default_factory=Calibration)
    start_x: float = param(20e-6, "start pose x (relative to the target)", lo=-1.0, hi=1.0, unit="m")
    start_y: float = param(-15e-6, "start pose y", lo=-1.0, hi=1.0, unit="m")
    start_theta: float = param(math.radians(1.5), "start pose rotation", lo=-math.pi, hi=math.pi,
                               unit="rad")
    start_random_xy: float = param(0.0, "add a uniform random start offset within +- this, per axis",
                                   lo=0.0, hi=1.0, unit="m")
    start_random_theta: float = param(0.0, "add a uniform random start rotation within +- this",
                                      lo=0.0, hi=math.pi, unit="rad")
    max_move_xy: float = param(1e-3, "refuse move commands larger than this, per axis", lo=0.0, hi=1.0,
                               unit="m")
    max_move_theta: float = param(0.5, "refuse move commands turning more than this", lo=0.0, hi=math.pi,
                                  unit="rad")


#: Parameters that do not change the twin itself (no rebuild).
LIVE_PARAMETERS = frozenset({"rate_hz", "encoding", "frame_id", "stage_frame", "carriage_frame",
                             "pixel_frame", "image_reliability", "image_queue_depth", "start_x", "start_y",
                             "start_theta", "start_random_xy", "start_random_theta", "max_move_xy",
                             "max_move_theta"})


def declared_parameter_names() -> list[str]:
    """Every parameter the twin_stage node declares (for launch-file checks)."""
    return parameter_names(TwinStageConfig)


def intensity_to_image(image: np.ndarray, encoding: str, stamp=None, frame_id: str = "") -> Image:
    """Image message of a mark-twin frame (float, full scale 1.0).

    mono8 / rgb8 / bgr8 quantise to 0..255 and mono16 to 0..65535 (rounded, clipped); 32FC1
    keeps the float32 values.
    """
    if encoding not in STAGE_ENCODINGS:
        raise InputError("encoding", f"one of {list(STAGE_ENCODINGS)}", repr(encoding))
    if encoding == "32FC1":
        return numpy_to_image(np.asarray(image, np.float32), encoding, stamp, frame_id)
    if encoding == "mono16":
        return numpy_to_image(to_uint16(image), encoding, stamp, frame_id)
    gray8 = np.clip(np.rint(np.asarray(image, np.float64) * 255.0), 0, 255).astype(np.uint8)
    if encoding == "mono8":
        return numpy_to_image(gray8, encoding, stamp, frame_id)
    return rgb_to_image(np.repeat(gray8[..., None], 3, axis=2), encoding, stamp, frame_id)


def start_pose(cfg: TwinStageConfig, reset: int) -> np.ndarray:
    """(x, y, theta) start pose of reset number ``reset`` (random part from seed and reset)."""
    rng = np.random.default_rng([cfg.seed, reset, 2])
    jitter = rng.uniform(-1.0, 1.0, 3) * [cfg.start_random_xy, cfg.start_random_xy, cfg.start_random_theta]
    return np.array([cfg.start_x, cfg.start_y, cfg.start_theta]) + jitter


def build_stage(cfg: TwinStageConfig, reset: int, pose: np.ndarray | None = None) -> StageTwin:
    """The stage twin of a config: wafer nuisances and motor play drawn from (seed, reset)."""
    start = start_pose(cfg, reset) if pose is None else np.asarray(pose, np.float64)
    return make_stage(cfg.mark, cfg.degradations, cfg.true_calibration, cfg.stage, start=start,
                      shape=(cfg.height, cfg.width), rng=np.random.default_rng([cfg.seed, reset, 0]))


class TwinStageNode(Node):
    """The twin_stage node (see the module docstring for topics, services and parameters)."""

    def __init__(self, node_name: str = "twin_stage", **kwargs):
        super().__init__(node_name, **kwargs)
        # Moves, resets, parameter changes and frames never interleave: a frame's stamp and pose
        # are taken together, a move's ack stamp after it is applied.
        self._lock = threading.RLock()
        self._closing = False
        self._params: ConfigParameters | None = None
        self._candidate: tuple[TwinStageConfig, StageTwin] | None = None
        self.resets = 0
        self._params = ConfigParameters(self, TwinStageConfig,
                                        read_only=("image_reliability", "image_queue_depth"),
                                        check=self._check, on_change=self._on_change)
        cfg = self.config
        self.twin = build_stage(cfg, self.resets)
        self.rng = np.random.default_rng([cfg.seed, self.resets, 1])
        self.moves = 0
        self.published = 0
        self.diagnostics = NodeDiagnostics(self, hardware_id="weak_template_ros stage twin")
        self.publishers_ = {
            "image": self.create_publisher(Image, IMAGE_TOPIC,
                                           image_qos(cfg.image_queue_depth, cfg.image_reliability)),
            "true_pose": self.create_publisher(TransformStamped, TRUE_POSE_TOPIC, result_qos()),
            "true_offset": self.create_publisher(PoseStamped, TRUE_OFFSET_TOPIC, result_qos()),
            "moved": self.create_publisher(TransformStamped, MOVED_TOPIC, latched_qos()),
        }
        self.move_subscription = self.create_subscription(TransformStamped, MOVE_TOPIC, self._on_move,
                                                          result_qos())
        self.reset_service = self.create_service(Trigger, RESET_SERVICE, self._on_reset)
        self._timer = self.create_timer(1.0 / cfg.rate_hz, self._tick)
        self.get_logger().info(f"stage twin at {self._pose_text()}, {cfg.rate_hz} Hz {cfg.encoding}")

    @property
    def config(self) -> TwinStageConfig:
        """The configuration in force."""
        return self._params.config

    # -- parameters -------------------------------------------------------------------------------
    def _check(self, cfg: TwinStageConfig) -> None:
        if self._params is None or not _twin_changed(self._params.config, cfg):
            return
        with self._lock:
            self._candidate = (cfg, self._rebuilt(cfg))

    def _rebuilt(self, cfg: TwinStageConfig) -> StageTwin:
        """The twin for a new config at the current pose, the motor where it was."""
        twin = build_stage(cfg, self.resets, pose=self.twin.pose)
        twin.motor = self.twin.motor.copy()
        return twin

    def _on_change(self, old: TwinStageConfig, new: TwinStageConfig, names: set[str]) -> None:
        with self._lock:
            if _twin_changed(old, new):
                cand = self._candidate
                self.twin = cand[1] if cand is not None and cand[0] is new else self._rebuilt(new)
                self._candidate = None
            if new.seed != old.seed:
                self.rng = np.random.default_rng([new.seed, self.resets, 1])
            if new.rate_hz != old.rate_hz:
                self._timer.cancel()
                self.destroy_timer(self._timer)
                self._timer = self.create_timer(1.0 / new.rate_hz, self._tick)
        self.get_logger().info(f"parameters changed: {sorted(names)}")

    # -- frames -----------------------------------------------------------------------------------
    def _tick(self) -> None:
        with self._lock, self.diagnostics.guard("frame"):
            if not self._closing:
                self._publish_frame()

    def destroy_node(self) -> None:
        # rclpy's executor shutdown does not wait for running callbacks: finish the one in flight.
        self._closing = True
        with self._lock:
            super().destroy_node()

    def _publish_frame(self) -> None:
        cfg = self.config
        stamp = self.get_clock().now().to_msg()
        pose = self.twin.pose.copy()
        truth = self.twin.mark_pose_px()
        with self.diagnostics.stage("render"):
            frame = self.twin.image(self.rng)
        with self.diagnostics.stage("convert"):
            image = intensity_to_image(frame, cfg.encoding, stamp, cfg.frame_id)
        true_offset = PoseStamped(header=make_header(stamp, cfg.pixel_frame),
                                  pose=offset_px_pose(truth.tx, truth.ty, truth.theta))
        self.publishers_["true_pose"].publish(planar_transform(pose[0], pose[1], pose[2], stamp,
                                                               cfg.stage_frame, cfg.carriage_frame))
        self.publishers_["true_offset"].publish(true_offset)
        self.publishers_["image"].publish(image)
        self.published += 1
        self.diagnostics.frame()
        self.diagnostics.set_value("true_residual_px", f"{math.hypot(truth.tx, truth.ty):.4f}")

    # -- moves ------------------------------------------------------------------------------------
    def _on_move(self, msg: TransformStamped) -> None:
        with self._lock, self.diagnostics.guard("move"):
            if not self._closing:
                self._move(msg)

    def _move(self, msg: TransformStamped) -> None:
        cfg = self.config
        x, y, yaw = transform_to_planar(msg, MOVE_TOPIC)
        if max(abs(x), abs(y)) > cfg.max_move_xy or abs(yaw) > cfg.max_move_theta:
            raise InputError(MOVE_TOPIC, f"a move within +-{cfg.max_move_xy} m and "
                             f"+-{cfg.max_move_theta} rad (max_move_xy, max_move_theta)",
                             f"x {x:.3g} m, y {y:.3g} m, theta {yaw:.3g} rad")
        self.twin.move(np.array([x, y, yaw]), self.rng)
        self.moves += 1
        stamp = self.get_clock().now().to_msg()  # after the move: later frames show the new pose
        self.publishers_["moved"].publish(planar_transform(x, y, yaw, stamp, cfg.stage_frame,
                                                           msg.child_frame_id))
        text = self._pose_text()
        self.diagnostics.set_value("moves", self.moves)
        self.get_logger().info(f"move {self.moves} ({msg.child_frame_id}): x {x * 1e6:+.3f} µm, "
                               f"y {y * 1e6:+.3f} µm, theta {math.degrees(yaw):+.4f} deg -> {text}")

    def _on_reset(self, request, response):
        with self._lock:
            self.resets += 1
            cfg = self.config
            self.twin = build_stage(cfg, self.resets)
            self.rng = np.random.default_rng([cfg.seed, self.resets, 1])
            self.moves = 0
            text = self._pose_text()
        self.diagnostics.set_value("moves", 0)
        self.diagnostics.set_value("resets", self.resets)
        response.success, response.message = True, f"reset {self.resets}: {text}"
        self.get_logger().info(response.message)
        return response

    def _pose_text(self) -> str:
        x, y, th = self.twin.pose
        p = self.twin.mark_pose_px()
        return (f"pose x {x * 1e6:+.3f} µm, y {y * 1e6:+.3f} µm, theta {math.degrees(th):+.4f} deg "
                f"(mark at {p.tx:+.3f}, {p.ty:+.3f} px)")


def _twin_changed(old: TwinStageConfig, new: TwinStageConfig) -> bool:
    a, b = dataclasses.asdict(old), dataclasses.asdict(new)
    return any(a[k] != b[k] for k in a if k not in LIVE_PARAMETERS)


main = node_main(TwinStageNode)

if __name__ == "__main__":
    main()
