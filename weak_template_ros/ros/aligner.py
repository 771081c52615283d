"""aligner node: sub-pixel offset of a mark against its golden template, at camera rate.

Subscribes (relative names: a namespace or ``-r`` remapping moves them):

* ``camera/image_raw``: sensor_msgs/Image, mono8, mono16, rgb8, bgr8 or 32FC1 (intensity, any
  scale: the aligner fits gain and offset); QoS ``image_reliability`` / ``image_queue_depth``
  (default best effort, keep last 1: a slow aligner measures the newest image, never a backlog).

Publishes, every measurement stamped with the image's stamp:

* ``alignment/offset``: geometry_msgs/TransformStamped, only when the mark was found. Frame
  ``stage_frame`` -> ``mark_frame``: the mark's offset from its target in stage axes through the
  node's calibration (``calibration.*``): translation (dx_m, dy_m, 0) metres, rotation about z by
  dtheta_stage (rad, from stage x towards stage y). Commanding the stage by minus this brings the
  mark to its target.
* ``alignment/offset_px``: geometry_msgs/PoseWithCovarianceStamped, only when found, in the
  image's pixel frame (``pixel_frame``; x right, y down, z into the scene, right-handed):
  position (dx, dy, 0) px, orientation a rotation about z by ``-dtheta`` (``dtheta`` is
  counter-clockwise on screen, which is a negative turn about an into-the-scene z), covariance
  over (x, y, z, rot x, rot y, rot z) in px² / px·rad / rad² with the unmeasured entries 0.
* ``alignment/result``: std_msgs/Float64MultiArray, EVERY processed image, found or not (the
  one message a controller needs): one dimension whose label is the comma-separated field names
  (:data:`RESULT_FIELDS`): stamp, ``found`` (1/0), px and stage offsets, scale, score, residual
  noise sigma, covariances. Offsets are NaN when not found. :func:`result_from_message` reads it.
* ``alignment/debug_image``: sensor_msgs/Image rgb8, at most ``debug_image_rate_hz``: the image
  with the found template outline (green), the target (red cross) and the numbers.
* ``/diagnostics``: rate, convert/align latency, drops (``bad_image``, ``no_template``,
  ``not_found``), found / not-found counts, last score, the template in use.

Service ``~/reload_template`` (std_srvs/Trigger): read ``template_path`` again (the file may
have changed); a failure leaves the old template in force and says why. Setting the
``template_path`` parameter loads the new file (refused, old template kept, when it cannot be
read or prepared).

Parameters: :class:`AlignerNodeConfig`: every field of :class:`~weak_template_ros.align.AlignerConfig`
as ``aligner.<name>`` (``aligner.motion``, ``aligner.max_shift``, ...; the names of
``config/aligner.yaml`` and the CLI), plus ``template_path``, ``roi_*``, ``target_*``,
``calibration.*`` (the nominal :class:`~weak_template_ros.align.Calibration`), frames and QoS. A
change that makes the template unusable is refused with the reason; the old values stay.

Console script: ``aligner = weak_template_ros.ros.aligner:main``.
"""

from __future__ import annotations

import dataclasses
import math
import threading
import time
from dataclasses import dataclass, field

import cv2
import numpy as np
from geometry_msgs.msg import Pose, PoseWithCovarianceStamped, TransformStamped
from rclpy.node import Node
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray, MultiArrayDimension
from std_srvs.srv import Trigger

from weak_template_ros.align import AlignerConfig, AlignmentResult, Calibration, align, prepare_template
from weak_template_ros.align.aligner import PreparedTemplate
from weak_template_ros.align.preprocess import as_gray_float
from weak_template_ros.config import param
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import make_pose, rotation_from_rotvec
from weak_template_ros.image_io import read_image
from weak_template_ros.ros.conversions import (
    image_to_gray,
    image_to_numpy,
    matrix_to_pose,
    matrix_to_transform_stamped,
    rgb_to_image,
    transform_to_matrix,
)
from weak_template_ros.ros.diagnostics import NodeDiagnostics
from weak_template_ros.ros.node_main import node_main
from weak_template_ros.ros.params import ConfigParameters
from weak_template_ros.ros.qos import image_qos, result_qos

IMAGE_TOPIC = "camera/image_raw"
OFFSET_TOPIC = "alignment/offset"
OFFSET_PX_TOPIC = "alignment/offset_px"
RESULT_TOPIC = "alignment/result"
DEBUG_IMAGE_TOPIC = "alignment/debug_image"
RELOAD_SERVICE = "~/reload_template"
#: Encodings the aligner measures (32FC1 is intensity here, not depth).
ALIGN_ENCODINGS = ("mono8", "mono16", "rgb8", "bgr8", "32FC1")

_COV_AXES = ("dx", "dy", "dtheta", "scale")
#: Entries of ``alignment/result`` in order (also the label of its one dimension).
RESULT_FIELDS: tuple[str, ...] = (
    "stamp_sec", "stamp_nanosec", "found", "dx_px", "dy_px", "dtheta_rad", "scale", "score",
    "noise_sigma", "dx_m", "dy_m", "dtheta_stage_rad",
    *(f"cov_{a}_{b}" for a in _COV_AXES for b in _COV_AXES),  # px², px·rad, ... (4x4 row-major)
    *(f"cov_m_{a}_{b}" for a in "xy" for b in "xy"),  # m² (2x2 row-major)
)
RESULT_LABEL = ",".join(RESULT_FIELDS)


@dataclass
class AlignerNodeConfig:
    """Parameters of the aligner node (same names as its ROS parameters): the aligner's own
    (:class:`AlignerConfig`, as ``aligner.<name>``) and the node's."""

    aligner: AlignerConfig = field(default_factory=AlignerConfig)
    method: str = param("classical", "classical (align.align), learned (learned detector + refiner, "
                        "shipped weights) or hybrid (learned coarse, classical fine): "
                        "weak_template_ros.nets.MarkPipelineConfig",
                        choices=("classical", "learned", "hybrid"))
    template_path: str = param("", "golden template image (PNG/TIFF, 8 or 16 bit, gray or colour); "
                               "empty: none yet (images are dropped)")
    roi_x: int = param(0, "region of interest, left column (full image when roi_width is 0)", lo=0,
                       hi=2**31 - 1, unit="px")
    roi_y: int = param(0, "region of interest, top row", lo=0, hi=2**31 - 1, unit="px")
    roi_width: int = param(0, "region of interest width (0: the whole image)", lo=0, hi=2**31 - 1,
                           unit="px")
    roi_height: int = param(0, "region of interest height (0: the whole image)", lo=0, hi=2**31 - 1,
                            unit="px")
    target_x: float = param(-1.0, "where the template's centre belongs in the image, x (negative: "
                            "the ROI centre)", lo=-1.0, hi=1e6, unit="px")
    target_y: float = param(-1.0, "where the template's centre belongs in the image, y (negative: "
                            "the ROI centre)", lo=-1.0, hi=1e6, unit="px")
    calibration: Calibration = field(default_factory=Calibration)
    stage_frame: str = param("stage", "frame_id of alignment/offset (stage axes)")
    mark_frame: str = param("mark", "child_frame_id of alignment/offset")
    pixel_frame: str = param("image_pixels", "frame_id of alignment/offset_px (image plane, px)")
    debug_image_rate_hz: float = param(1.0, "debug overlay images per second at most (0: none)",
                                       lo=0.0, hi=1000.0, unit="Hz")
    image_reliability: str = param("best_effort", "QoS reliability of the image subscription (fixed "
                                   "at start)", choices=("best_effort", "reliable"))
    image_queue_depth: int = param(1, "QoS keep-last depth of the image subscription (fixed at start)",
                                   lo=1, hi=100)


# ----------------------------------------------------------------------------------------------
# Messages (pure functions: also used by replay tools and the other alignment nodes)


def image_to_intensity(msg: Image, topic: str = "image") -> np.ndarray:
    """(H, W) intensity of an aligner input: mono8/mono16 as stored, colour to luma, 32FC1 as is.

    Raises
    ------
    InputError
        Any other encoding, zero size, inconsistent ``step`` / data length.
    """
    if msg.encoding not in ALIGN_ENCODINGS:
        raise InputError(f"{topic}.encoding", f"one of {list(ALIGN_ENCODINGS)}", repr(msg.encoding))
    if msg.encoding == "32FC1":
        return image_to_numpy(msg, topic, ("32FC1",))
    return image_to_gray(msg, topic)


def mark_aligner(cfg: AlignerNodeConfig):
    """The learned / hybrid pipeline of ``cfg.method`` with ``cfg.aligner`` (None for classical).

    Loads the shipped weights (once per process and configuration: cached).

    Raises
    ------
    InputError
        A combination the learned stages cannot do (e.g. ``aligner.motion: affine``).
    """
    if cfg.method == "classical":
        return None
    key = (cfg.method, repr(cfg.aligner))
    with _MARK_ALIGNERS_LOCK:
        if key not in _MARK_ALIGNERS:
            from weak_template_ros.nets import MarkAligner, MarkPipelineConfig

            _MARK_ALIGNERS[key] = MarkAligner(MarkPipelineConfig(method=cfg.method, aligner=cfg.aligner))
        return _MARK_ALIGNERS[key]


_MARK_ALIGNERS: dict = {}
_MARK_ALIGNERS_LOCK = threading.Lock()


def measure_intensity(full: np.ndarray, template, cfg: AlignerNodeConfig):
    """What the aligner node does with one intensity image: ROI crop, target position, the
    blank-frame rule (no mark, not bad data) and :func:`~weak_template_ros.align.align` (or the
    learned / hybrid pipeline of ``cfg.method``).

    Returns
    -------
    result : AlignmentResult
    expected : (x, y) px, the target in ROI coordinates
    origin : (x, y) px, the ROI's corner in the full image
    """
    roi, origin = _crop(full, cfg)
    gray = as_gray_float(roi, "image")
    H, W = gray.shape
    expected = ((W - 1) / 2.0 if cfg.target_x < 0 else cfg.target_x - origin[0],
                (H - 1) / 2.0 if cfg.target_y < 0 else cfg.target_y - origin[1])
    if float(gray.max()) == float(gray.min()):
        return AlignmentResult(False, reason="constant image: no mark"), expected, origin
    learned = mark_aligner(cfg)
    if learned is not None:
        return learned.align(gray, template.image, expected, cfg.calibration), expected, origin
    return align(gray, template.prepared, expected=expected, calibration=cfg.calibration), expected, origin


def planar_transform(x: float, y: float, yaw: float, stamp=None, parent_frame: str = "",
                     child_frame: str = "") -> TransformStamped:
    """TransformStamped of a planar pose: translation (x, y, 0), rotation ``yaw`` about z."""
    T = make_pose(rotation_from_rotvec([0.0, 0.0, float(yaw)]), [float(x), float(y), 0.0])
    return matrix_to_transform_stamped(T, stamp, parent_frame, child_frame)


def transform_to_planar(msg: TransformStamped, name: str = "transform", atol: float = 1e-6
                        ) -> tuple[float, float, float]:
    """(x, y, yaw) of a TransformStamped that must be planar (z = 0, rotation about z only).

    Raises
    ------
    InputError
        Non-finite values, a zero quaternion, or a transform leaving the plane.
    """
    T = transform_to_matrix(msg, name)
    if abs(T[2, 3]) > atol or abs(T[2, 2] - 1.0) > atol:
        tilt = math.degrees(math.acos(min(max(T[2, 2], -1.0), 1.0)))
        raise InputError(name, "a planar transform (z = 0, rotation about z only)",
                         f"z = {T[2, 3]:.3g}, tilt {tilt:.3g} deg")
    return float(T[0, 3]), float(T[1, 3]), math.atan2(T[1, 0], T[0, 0])


def offset_px_pose(dx: float, dy: float, dtheta: float) -> Pose:
    """Pose of a pixel-space offset: position (dx, dy, 0) px, rotation ``-dtheta`` about z.

    The pixel frame is right-handed with x right, y down, z into the scene, so an on-screen
    counter-clockwise ``dtheta`` (the core's convention) is a negative turn about z.
    """
    return matrix_to_pose(make_pose(rotation_from_rotvec([0.0, 0.0, -float(dtheta)]),
                                    [float(dx), float(dy), 0.0]))


def pose_to_offset_px(pose: Pose) -> tuple[float, float, float]:
    """(dx px, dy px, dtheta rad CCW on screen) of a pose made by :func:`offset_px_pose`."""
    q = pose.orientation
    yaw = math.atan2(2.0 * (q.w * q.z + q.x * q.y), 1.0 - 2.0 * (q.y * q.y + q.z * q.z))
    return float(pose.position.x), float(pose.position.y), -yaw


def offset_px_message(result: AlignmentResult, stamp, frame_id: str) -> PoseWithCovarianceStamped:
    """``alignment/offset_px`` of a found result (see the module docstring)."""
    msg = PoseWithCovarianceStamped()
    msg.header.stamp = stamp
    msg.header.frame_id = frame_id
    msg.pose.pose = offset_px_pose(result.dx, result.dy, result.dtheta)
    C = np.nan_to_num(np.asarray(result.covariance, np.float64))
    cov = np.zeros((6, 6))
    cov[:2, :2] = C[:2, :2]
    cov[5, 5] = C[2, 2]
    cov[:2, 5] = cov[5, :2] = -C[:2, 2]  # rot z = -dtheta
    msg.pose.covariance = cov.reshape(-1).tolist()
    return msg


def offset_transform_message(result: AlignmentResult, stamp, stage_frame: str, mark_frame: str
                             ) -> TransformStamped:
    """``alignment/offset`` of a found result with stage values (see the module docstring)."""
    return planar_transform(result.dx_m, result.dy_m, result.dtheta_stage, stamp, stage_frame, mark_frame)


def result_message(result: AlignmentResult, stamp) -> Float64MultiArray:
    """``alignment/result``: every field of :data:`RESULT_FIELDS` (NaN where not measured)."""
    nan = math.nan

    def num(v) -> float:
        return nan if v is None else float(v)

    cov_m = result.covariance_m if result.covariance_m is not None else np.full((2, 2), nan)
    values = [float(stamp.sec), float(stamp.nanosec), 1.0 if result.found else 0.0]
    if result.found:
        values += [result.dx, result.dy, result.dtheta, result.scale]
    else:
        values += [nan] * 4
    values += [result.score, result.sigma]
    values += [num(result.dx_m), num(result.dy_m), num(result.dtheta_stage)] if result.found else [nan] * 3
    cov = np.asarray(result.covariance, np.float64) if result.found else np.full((4, 4), nan)
    values += cov.reshape(-1).tolist()
    values += (np.asarray(cov_m, np.float64) if result.found else np.full((2, 2), nan)).reshape(-1).tolist()
    msg = Float64MultiArray()
    msg.layout.dim = [MultiArrayDimension(label=RESULT_LABEL, size=len(values), stride=len(values))]
    msg.data = [float(v) for v in values]
    return msg


def result_from_message(msg: Float64MultiArray, name: str = "alignment/result") -> dict[str, float]:
    """Field name -> value of an ``alignment/result`` message, plus ``stamp_ns`` (int).

    Raises
    ------
    InputError
        A message of another layout.
    """
    dims = list(msg.layout.dim)
    if len(dims) != 1 or dims[0].label != RESULT_LABEL or len(msg.data) != len(RESULT_FIELDS):
        got = dims[0].label[:60] if dims else "no layout"
        raise InputError(name, f"a {len(RESULT_FIELDS)}-entry array labelled {RESULT_FIELDS[:3]}...",
                         f"{len(msg.data)} entries, label {got!r}")
    out = dict(zip(RESULT_FIELDS, (float(v) for v in msg.data), strict=True))
    out["stamp_ns"] = int(out["stamp_sec"]) * 1_000_000_000 + int(out["stamp_nanosec"])
    return out


# ----------------------------------------------------------------------------------------------
# Template and overlay


@dataclass
class LoadedTemplate:
    """A golden template as the node uses it: the file's pixels, prepared, and its outline."""

    path: str
    image: np.ndarray
    prepared: PreparedTemplate
    outline: list[np.ndarray]  # template-pixel polylines (N, 2) of the mark's half-contrast edge


def template_outline(template: np.ndarray) -> list[np.ndarray]:
    """Polylines (N, 2) x/y of the mark's half-contrast edge in template pixels (for overlays)."""
    T = as_gray_float(template, "template")
    border = np.concatenate([T[0], T[-1], T[1:-1, 0], T[1:-1, -1]])
    D = np.abs(T - np.median(border))
    mask = (D > 0.5 * max(float(D.max()), 1e-30)).astype(np.uint8)
    contours, _ = cv2.findContours(mask, cv2.RETR_LIST, cv2.CHAIN_APPROX_SIMPLE)
    return [np.vstack([c[:, 0, :], c[:1, 0, :]]).astype(np.float64) for c in contours]


def load_template(path: str, config: AlignerConfig) -> LoadedTemplate:
    """Read and prepare a golden template file.

    Raises
    ------
    InputError
        Missing or unreadable file, or a template the aligner cannot use (constant, tiny mark).
    """
    image = read_image(path, "template_path")
    return with_config(LoadedTemplate(str(path), image, None, template_outline(image)), config)


def with_config(template: LoadedTemplate, config: AlignerConfig) -> LoadedTemplate:
    """The same template prepared for another AlignerConfig (InputError if it cannot be)."""
    try:
        prepared = prepare_template(template.image, config)
    except InputError as e:
        raise InputError(f"template_path ({template.path}): {e.name}", e.expected, e.got) from e
    return dataclasses.replace(template, prepared=prepared)


def alignment_overlay(image: np.ndarray, template: LoadedTemplate, result: AlignmentResult,
                      expected: tuple[float, float], roi_origin: tuple[int, int] = (0, 0)) -> np.ndarray:
    """RGB picture: the image, the found template outline (green), the target (red), the numbers.

    ``expected`` and ``result`` are in ROI pixels; ``roi_origin`` (x, y) places the ROI in
    ``image``.
    """
    from weak_template_ros import viz

    out = viz.to_rgb(image)
    ox, oy = roi_origin
    ex, ey = expected[0] + ox, expected[1] + oy
    bits = 4  # sub-pixel drawing: OpenCV takes fixed-point coordinates with `bits` fractional bits
    cv2.drawMarker(out, (round(ex), round(ey)), (230, 30, 30), cv2.MARKER_CROSS, 24, 1, cv2.LINE_AA)
    if result.found:
        A = np.asarray(result.affine, np.float64)
        polys = [np.rint((c @ A[:, :2].T + A[:, 2] + (ox, oy)) * (1 << bits)).astype(np.int32)
                 for c in template.outline]
        cv2.polylines(out, polys, True, (40, 220, 40), 1, cv2.LINE_AA, shift=bits)
        lines = [f"dx {result.dx:+.3f} dy {result.dy:+.3f} px",
                 f"dth {math.degrees(result.dtheta):+.4f} deg score {result.score:.2f}"]
    else:
        lines = ["NOT FOUND", result.reason[:60]]
    # Two short lines in a band at the bottom: readable on a 256 px wide ROI.
    h = out.shape[0]
    cv2.rectangle(out, (0, h - 30), (out.shape[1], h), (0, 0, 0), -1)
    for i, line in enumerate(lines):
        cv2.putText(out, line, (4, h - 18 + 13 * i), cv2.FONT_HERSHEY_SIMPLEX, 0.38, (255, 255, 255), 1,
                    cv2.LINE_AA)
    return out


# ----------------------------------------------------------------------------------------------
# Node


class AlignerNode(Node):
    """The aligner node (see the module docstring for topics, services and parameters)."""

    def __init__(self, node_name: str = "aligner", **kwargs):
        super().__init__(node_name, **kwargs)
        self._lock = threading.Lock()
        self._busy = threading.Lock()  # held while an image is measured
        self._closing = False
        self._template: LoadedTemplate | None = None
        self._candidate: tuple[AlignerNodeConfig, LoadedTemplate | None] | None = None
        self._params: ConfigParameters | None = None
        self._params = ConfigParameters(self, AlignerNodeConfig,
                                        read_only=("image_reliability", "image_queue_depth"),
                                        check=self._check, on_change=self._on_change)
        self._template = self._take_candidate(self.config)
        cfg = self.config
        self.diagnostics = NodeDiagnostics(self, hardware_id="weak_template_ros mark aligner")
        self.found_total = 0
        self.not_found_total = 0
        self._last_debug = -math.inf
        self.publishers_ = {
            "offset": self.create_publisher(TransformStamped, OFFSET_TOPIC, result_qos()),
            "offset_px": self.create_publisher(PoseWithCovarianceStamped, OFFSET_PX_TOPIC, result_qos()),
            "result": self.create_publisher(Float64MultiArray, RESULT_TOPIC, result_qos()),
            "debug": self.create_publisher(Image, DEBUG_IMAGE_TOPIC, image_qos(1)),
        }
        self.subscription = self.create_subscription(
            Image, IMAGE_TOPIC, self._on_image, image_qos(cfg.image_queue_depth, cfg.image_reliability))
        self.reload_service = self.create_service(Trigger, RELOAD_SERVICE, self._on_reload)
        self._show_template()
        if self._template is None:
            self.get_logger().warning("no template_path set: images are dropped until one is")
        self.get_logger().info(f"measuring {self.subscription.topic_name} against "
                               f"{self._template.path if self._template else 'no template'}")

    # -- configuration ----------------------------------------------------------------------------
    @property
    def config(self) -> AlignerNodeConfig:
        """The configuration in force (``config.aligner``: the AlignerConfig)."""
        return self._params.config

    @property
    def template(self) -> LoadedTemplate | None:
        """The golden template in use (None before one is set)."""
        with self._lock:
            return self._template

    def _check(self, cfg: AlignerNodeConfig) -> None:
        """Load / prepare the template a new config asks for; InputError refuses the config."""
        old = None if self._params is None else self._params.config
        mark_aligner(cfg)  # loads the learned stages now; InputError refuses the method / motion
        if old is not None and old.template_path == cfg.template_path and old.aligner == cfg.aligner:
            return
        if old is not None and old.template_path == cfg.template_path:
            tpl = self.template
            tpl = None if tpl is None else with_config(tpl, cfg.aligner)
        else:
            tpl = load_template(cfg.template_path, cfg.aligner) if cfg.template_path else None
        self._candidate = (cfg, tpl)

    def _take_candidate(self, cfg: AlignerNodeConfig) -> LoadedTemplate | None:
        if self._candidate is None or self._candidate[0] is not cfg:
            raise RuntimeError("parameter change committed without its checked template")
        tpl = self._candidate[1]
        self._candidate = None
        return tpl

    def _on_change(self, old: AlignerNodeConfig, new: AlignerNodeConfig, names: set[str]) -> None:
        if old.template_path != new.template_path or old.aligner != new.aligner:
            tpl = self._take_candidate(new)
            with self._lock:
                self._template = tpl
            self._show_template()
        self.get_logger().info(f"parameters changed: {sorted(names)}")

    def _show_template(self) -> None:
        tpl = self.template
        if hasattr(self, "diagnostics"):
            self.diagnostics.set_value("template", tpl.path if tpl else "")

    def _on_reload(self, request, response):
        cfg = self.config
        path = cfg.template_path
        if not path:
            response.success, response.message = False, "template_path is empty"
            return response
        try:
            tpl = load_template(path, cfg.aligner)
        except InputError as e:
            self.diagnostics.error(f"reload_template: {e}")
            response.success, response.message = False, str(e)
            return response
        with self._lock:
            self._template = tpl
        self._show_template()
        h, w = tpl.image.shape[:2]
        response.success, response.message = True, f"loaded {path} ({w}x{h} px)"
        self.get_logger().info(response.message)
        return response

    # -- images -----------------------------------------------------------------------------------
    def _on_image(self, msg: Image) -> None:
        with self._busy, self.diagnostics.guard("image"):
            if not self._closing:
                self._measure(msg)

    def destroy_node(self) -> None:
        # rclpy's executor shutdown does not wait for running callbacks: finish the one in flight.
        self._closing = True
        with self._busy:
            super().destroy_node()

    def _measure(self, msg: Image) -> None:
        cfg = self.config
        tpl = self.template
        with self.diagnostics.stage("convert"):
            full = image_to_intensity(msg, self.subscription.topic_name)
        if tpl is None:
            self.diagnostics.drop("no_template")
            self.get_logger().warning("no template_path set: image dropped", throttle_duration_sec=5.0)
            return
        with self.diagnostics.stage("align"):
            result, expected, origin = measure_intensity(full, tpl, cfg)
        self._publish(msg, result, cfg)
        if result.found:
            self.found_total += 1
        else:
            self.not_found_total += 1
            self.diagnostics.drop("not_found")
        d = self.diagnostics
        d.set_value("found_total", self.found_total)
        d.set_value("not_found_total", self.not_found_total)
        d.set_value("last_score", f"{result.score:.4f}")
        d.set_value("last_reason", result.reason)
        d.frame()
        now = time.monotonic()
        if cfg.debug_image_rate_hz > 0 and now - self._last_debug >= 1.0 / cfg.debug_image_rate_hz:
            self._last_debug = now
            with d.stage("debug_image"):
                rgb = alignment_overlay(full, tpl, result, expected, origin)
                self.publishers_["debug"].publish(rgb_to_image(rgb, "rgb8", msg.header.stamp,
                                                               msg.header.frame_id))

    def _publish(self, msg: Image, result: AlignmentResult, cfg: AlignerNodeConfig) -> None:
        stamp = msg.header.stamp
        if result.found:
            self.publishers_["offset"].publish(
                offset_transform_message(result, stamp, cfg.stage_frame, cfg.mark_frame))
            self.publishers_["offset_px"].publish(offset_px_message(result, stamp, cfg.pixel_frame))
        self.publishers_["result"].publish(result_message(result, stamp))


def _crop(image: np.ndarray, cfg: AlignerNodeConfig) -> tuple[np.ndarray, tuple[int, int]]:
    """The ROI of ``image`` and its top-left (x, y); InputError when it leaves the image."""
    if cfg.roi_width == 0 or cfg.roi_height == 0:
        return image, (0, 0)
    H, W = image.shape[:2]
    x0, y0, w, h = cfg.roi_x, cfg.roi_y, cfg.roi_width, cfg.roi_height
    if x0 + w > W or y0 + h > H:
        raise InputError("roi", f"a region inside the {W}x{H} image",
                         f"x {x0}, y {y0}, {w}x{h}")
    return image[y0:y0 + h, x0:x0 + w], (x0, y0)


main = node_main(AlignerNode)

if __name__ == "__main__":
    main()
