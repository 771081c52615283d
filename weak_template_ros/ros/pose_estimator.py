"""pose_estimator node: 6D poses of one part from an RGB-D camera, on standard topics.

Subscribes (relative names: a namespace or remapping moves them; defaults follow common camera
drivers):

* ``camera/color/image_raw``: sensor_msgs/Image (rgb8, bgr8, mono8; padded rows accepted);
* ``camera/aligned_depth_to_color/image_raw``: sensor_msgs/Image (32FC1 metres, 16UC1 mm);
* ``camera/color/camera_info``: sensor_msgs/CameraInfo (binning and ROI applied).

The three are synchronised by stamp (:class:`~weak_template_ros.ros.sync.SyncedSubscriptions`:
message_filters when importable, ours otherwise). Images use the sensor-data QoS (best effort,
keep last ``image_queue_depth`` = 1 by default) so that a slow estimator never reads old frames.

Publishes, in the colour image's frame (``frame_id`` parameter to override), stamped with the
colour image's stamp:

* ``~/poses``: geometry_msgs/PoseArray, every accepted estimate (best first); published for
  every processed frame, empty when the part was not found;
* ``~/pose``: geometry_msgs/PoseStamped, the best estimate (only when there is one);
* ``~/detections``: vision_msgs/Detection3DArray (class id = object name, score, pose, box),
  only when vision_msgs is importable (a ROS install; not from PyPI);
* TF ``<frame_id>`` -> ``<object_name>[_<i>]`` when tf2_ros is importable and ``publish_tf``;
* ``~/overlay``: sensor_msgs/Image rgb8, the colour image with the model silhouette and axes at
  each estimate, at most ``overlay_rate_hz`` per second (0: none);
* ``/diagnostics``: rate, per-stage latency (transport, queue, convert, detect, refine,
  best_prepare / best_icp / best_verify, compute, publish, latency = camera stamp to result
  publish), drops by reason (busy,
  bad_input, out_of_order, unmatched, sync_overflow) and the last error.

Compute slower than the camera builds no backlog: the synchronised set waits in a one-slot
mailbox; a newer set replaces it (counted as a ``busy`` drop) while the worker thread computes.
Bad input (wrong encoding, sizes that disagree, all-invalid depth, zero-size images, a missing
or mismatching camera_info) is logged, reported in diagnostics and dropped; the node keeps
serving the next frame. Stamps that go back in time are dropped as ``out_of_order``; when every
input keeps arriving late (a recording that loops, a clock reset) the synchroniser is reset.

Parameters: :class:`PoseEstimatorConfig`; ``pose.*`` are the pipeline's
(:class:`~weak_template_ros.pose.PoseConfig`), ``matcher.*`` LINEMOD's
(:class:`~weak_template_ros.linemod.MatcherConfig`). ``model_path`` / ``templates_path`` can be
changed at run time: both are loaded and checked against each other before the change is
accepted.

Console script: ``pose_estimator = weak_template_ros.ros.pose_estimator:main``.
"""

from __future__ import annotations

import collections
import contextlib
import dataclasses
import sys
import threading
import time
from dataclasses import dataclass, field

import numpy as np
from geometry_msgs.msg import PoseArray, PoseStamped
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.config import param
from weak_template_ros.errors import InputError
from weak_template_ros.linemod.matcher import Matcher, MatcherConfig
from weak_template_ros.linemod.templates import TemplateLibrary
from weak_template_ros.models import PartModel, load_mesh
from weak_template_ros.pose import (
    PoseConfig,
    PoseEstimate,
    check_frame,
    estimate_poses,
    hypothesis_matcher_config,
)
from weak_template_ros.ros.conversions import (
    camera_info_to_intrinsics,
    image_to_depth,
    image_to_rgb,
    matrices_to_pose_array,
    matrix_to_pose_stamped,
    matrix_to_transform_stamped,
    rgb_to_image,
    stamp_to_ns,
)
from weak_template_ros.ros.diagnostics import NodeDiagnostics
from weak_template_ros.ros.node_main import node_main
from weak_template_ros.ros.params import ConfigParameters
from weak_template_ros.ros.qos import image_qos, result_qos
from weak_template_ros.ros.sync import SyncedSubscriptions

COLOR_TOPIC = "camera/color/image_raw"
DEPTH_TOPIC = "camera/aligned_depth_to_color/image_raw"
INFO_TOPIC = "camera/color/camera_info"
POSES_TOPIC = "~/poses"
POSE_TOPIC = "~/pose"
DETECTIONS_TOPIC = "~/detections"
OVERLAY_TOPIC = "~/overlay"
#: Per-frame timing records kept on the node (for benches, the demo and tests).
FRAME_LOG_SIZE = 2000
#: GIL slice of this process (s). The worker's Python code holds the GIL for 5 ms slices by
#: default, and the executor thread that deserialises and synchronises the images waits up to a
#: slice per hand-off: 0.5 ms slices halved the input latency (11.3 -> 5.4 ms median, 640x480 at
#: 2 Hz, 2 cores at load 7; docs/benchmarks/ros_latency.md).
GIL_SWITCH_INTERVAL_S = 0.0005


@dataclass
class PoseEstimatorConfig:
    """Parameters of the pose_estimator node (same names as its ROS parameters)."""

    model_path: str = param("", "part mesh (PLY/OBJ/STL) the template library was built from")
    model_units: str = param("auto", "units of the mesh file: auto (bounding-box size decides), m "
                             "or mm", choices=("auto", "m", "mm"))
    templates_path: str = param("", "LINEMOD template library (.wtl) built from model_path for this "
                                "camera (weak-template templates build)")
    object_name: str = param("", "name in detections and the TF child frame (empty: the model "
                             "file's stem)")
    frame_id: str = param("", "frame of the published poses (empty: the colour image's frame_id, "
                          "the camera optical frame)")
    image_reliability: str = param("best_effort", "QoS reliability of the image subscriptions "
                                   "(fixed at start)", choices=("best_effort", "reliable"))
    image_queue_depth: int = param(1, "QoS keep-last depth of the image subscriptions (fixed at "
                                   "start)", lo=1, hi=100)
    sync_queue_size: int = param(5, "messages per input the synchroniser keeps while waiting for "
                                 "partners (fixed at start)", lo=1, hi=100)
    sync_slop: float = param(0.02, "largest stamp difference within a colour/depth/camera_info set "
                             "(fixed at start)", lo=0.0, hi=10.0, unit="s")
    input_timeout_s: float = param(2.0, "an input silent this long while the others arrive is "
                                   "reported as missing", lo=0.1, hi=3600.0, unit="s")
    overlay_rate_hz: float = param(2.0, "overlay debug images per second at most (0: none)",
                                   lo=0.0, hi=100.0, unit="Hz")
    publish_tf: bool = param(True, "broadcast T_cam_obj on TF (when tf2_ros is importable)")
    diagnostics_period_s: float = param(1.0, "diagnostics publishing period and averaging window "
                                        "(fixed at start)", lo=0.05, hi=60.0, unit="s")
    pose: PoseConfig = field(default_factory=PoseConfig)
    matcher: MatcherConfig = field(default_factory=MatcherConfig)


#: Parameters fixed at start (QoS, synchroniser, diagnostics timer).
READ_ONLY = ("image_reliability", "image_queue_depth", "sync_queue_size", "sync_slop",
             "diagnostics_period_s")


# ----------------------------------------------------------------------------------------------
# The ROS-free part: model, library, matcher; messages in, estimates out (node and replay)


@dataclass
class PoseAssets:
    """What a pose pipeline loads once: the part, its templates and the matcher over them."""

    model: PartModel
    library: TemplateLibrary
    matcher: Matcher
    object_name: str

    @classmethod
    def load(cls, cfg: PoseEstimatorConfig) -> PoseAssets:
        """Load ``model_path`` and ``templates_path`` and check that they belong together.

        Raises
        ------
        InputError
            Naming ``model_path`` / ``templates_path``: empty, missing, unreadable, or a library
            built from another model.
        """
        if not cfg.model_path:
            raise InputError("model_path", "a part mesh file (PLY/OBJ/STL)", "''")
        if not cfg.templates_path:
            raise InputError("templates_path", "a template library file (.wtl, weak-template "
                             "templates build)", "''")
        try:
            model = load_mesh(cfg.model_path, units=cfg.model_units)
        except InputError as e:
            raise InputError(f"model_path: {e.name}", e.expected, e.got) from e
        try:
            library = TemplateLibrary.load(cfg.templates_path, model_checksum=model.checksum)
        except InputError as e:
            raise InputError(f"templates_path: {e.name}", e.expected, e.got) from e
        return cls(model, library, Matcher(library, matcher_config(cfg)), cfg.object_name or model.name)

    def with_matcher(self, matcher_cfg: MatcherConfig) -> PoseAssets:
        """The same model and library with a matcher of another configuration."""
        return dataclasses.replace(self, matcher=Matcher(self.library, matcher_cfg))


def matcher_config(cfg: PoseEstimatorConfig) -> MatcherConfig:
    """The LINEMOD configuration the node runs: ``matcher.*`` with the pose stage's hypothesis
    settings (``pose.linemod_*``, :func:`~weak_template_ros.pose.hypothesis_matcher_config`), so
    the node gets the hypotheses :func:`~weak_template_ros.pose.estimate_poses` would use."""
    return hypothesis_matcher_config(cfg.matcher, cfg.pose)


@dataclass
class PoseFrame:
    """One processed frame: inputs as arrays, estimates, and where the time went.

    Attributes
    ----------
    header : std_msgs/Header
        Stamp of the colour image; frame id of the published poses.
    rgb : (H, W, 3) uint8 RGB
    camera : CameraIntrinsics
    estimates : list of PoseEstimate
        Accepted estimates, best first.
    timings_ms : dict
        ``convert`` (messages to arrays), ``detect`` (LINEMOD), ``refine`` (ICP and verification
        of every hypothesis), ``compute`` (detect + refine + checks); with an estimate also
        ``best_prepare``, ``best_icp``, ``best_verify`` (the best estimate's own stages,
        :attr:`~weak_template_ros.pose.PoseEstimate.timings_ms`).
    """

    header: Header
    rgb: np.ndarray
    camera: CameraIntrinsics
    estimates: list[PoseEstimate]
    timings_ms: dict[str, float]


def frame_arrays(color: Image, depth: Image, info: CameraInfo) -> tuple[np.ndarray, np.ndarray,
                                                                         CameraIntrinsics]:
    """(RGB uint8, depth float32 metres, intrinsics) of a colour/depth/camera_info set.

    Raises InputError for an encoding we do not read, a zero-size image, an uncalibrated
    camera_info, or images whose sizes disagree with each other or with the camera_info.
    """
    rgb = image_to_rgb(color, "color")
    d = image_to_depth(depth, "depth")
    camera = camera_info_to_intrinsics(info, "camera_info")
    if d.shape != rgb.shape[:2]:
        raise InputError("depth", f"the colour image's size {rgb.shape[1]}x{rgb.shape[0]} (depth "
                         "aligned to colour)", f"{d.shape[1]}x{d.shape[0]}")
    return rgb, d, camera


def estimate_frame(assets: PoseAssets, cfg: PoseEstimatorConfig, color: Image, depth: Image,
                   info: CameraInfo) -> PoseFrame:
    """Run the pose pipeline on one synchronised set of messages.

    The node and ``weak-template replay`` both call this: conversion, checks, LINEMOD
    hypotheses from ``assets.matcher``, then :func:`~weak_template_ros.pose.estimate_poses`.

    Raises
    ------
    InputError
        Bad messages (see :func:`frame_arrays`), a frame :func:`~weak_template_ros.pose.
        check_frame` refuses (all-invalid depth, depth not in metres...), or a camera the
        template library was not built for.
    """
    t0 = time.perf_counter()
    rgb, d, camera = frame_arrays(color, depth, info)
    t1 = time.perf_counter()
    check_frame(rgb, d, camera)
    assets.library.check_compatible(assets.model.checksum, camera, where="templates_path")
    hyps = assets.matcher.match(rgb, d, camera)
    t2 = time.perf_counter()
    estimates = estimate_poses(rgb, d, camera, assets.library, assets.model, cfg.pose,
                               hypotheses=hyps)
    t3 = time.perf_counter()
    header = Header(stamp=color.header.stamp, frame_id=cfg.frame_id or color.header.frame_id)
    timings = {"convert": (t1 - t0) * 1e3, "detect": (t2 - t1) * 1e3, "refine": (t3 - t2) * 1e3,
               "compute": (t3 - t1) * 1e3}
    for e in estimates:
        e.timings_ms["detect"] = timings["detect"]
    if estimates:  # the pose pipeline's own stage times of the hypothesis that won
        timings.update({f"best_{k}": estimates[0].timings_ms[k] for k in ("prepare", "icp", "verify")
                        if k in estimates[0].timings_ms})
    return PoseFrame(header, rgb, camera, estimates, timings)


def pose_messages(frame: PoseFrame) -> tuple[PoseArray, PoseStamped | None]:
    """PoseArray of every estimate and PoseStamped of the best (None without one)."""
    h = frame.header
    poses = matrices_to_pose_array([e.T_cam_obj for e in frame.estimates], h.stamp, h.frame_id)
    best = (matrix_to_pose_stamped(frame.estimates[0].T_cam_obj, h.stamp, h.frame_id)
            if frame.estimates else None)
    return poses, best


def vision_msgs_available() -> bool:
    """True when vision_msgs can be imported (a ROS install; it is not on PyPI)."""
    try:
        import vision_msgs.msg  # noqa: F401
    except ImportError:
        return False
    return True


def detection_array(frame: PoseFrame, object_name: str, model: PartModel):
    """vision_msgs/Detection3DArray of a frame (requires vision_msgs): one Detection3D per
    estimate with the object name as class id, the verification score, the pose and the model's
    bounding box (centred on its box centre, axes of the object frame)."""
    from vision_msgs.msg import Detection3D, Detection3DArray, ObjectHypothesisWithPose

    lo, hi = model.mesh.bounds
    centre_obj = np.eye(4)
    centre_obj[:3, 3] = (lo + hi) / 2
    out = Detection3DArray(header=frame.header)
    for e in frame.estimates:
        det = Detection3D(header=frame.header, id=object_name)
        hyp = ObjectHypothesisWithPose()
        hyp.hypothesis.class_id = object_name
        hyp.hypothesis.score = float(e.score)
        hyp.pose.pose = matrix_to_pose_stamped(e.T_cam_obj).pose
        det.results.append(hyp)
        det.bbox.center = matrix_to_pose_stamped(e.T_cam_obj @ centre_obj).pose
        det.bbox.size.x, det.bbox.size.y, det.bbox.size.z = (float(v) for v in hi - lo)
        out.detections.append(det)
    return out


def overlay_image(frame: PoseFrame, model: PartModel, renderer_cache: dict | None = None,
                  note: str = "") -> np.ndarray:
    """The colour image with each estimate's silhouette (tinted, outlined) and object axes.

    Parameters
    ----------
    renderer_cache : dict, optional
        Keeps one renderer (the model's BVH) per camera between calls.
    note : str
        Appended to the label (e.g. the compute time).
    """
    from weak_template_ros import viz
    from weak_template_ros.twin.renderer import Renderer

    cache = {} if renderer_cache is None else renderer_cache
    key = (frame.camera, model.checksum)
    renderer = cache.get(key)
    if renderer is None:
        cache.clear()
        renderer = Renderer(frame.camera)
        renderer.add_mesh("model", model.mesh)
        cache[key] = renderer
    masks = [renderer.cast_object("model", e.T_cam_obj)[0] > 0 for e in frame.estimates]
    out = viz.overlay_masks(frame.rgb, masks)
    for e in frame.estimates:
        out = viz.draw_axes(out, frame.camera, e.T_cam_obj, 0.5 * model.diameter)
    text = (f"{model.name}: score {frame.estimates[0].score:.3f}" if frame.estimates
            else f"{model.name}: not found")
    return viz.label(out, text + (f", {note}" if note else ""))


def prepare_part_files(part: PartModel, camera: CameraIntrinsics, out_dir, template_cfg=None,
                       stem: str | None = None) -> tuple[str, str]:
    """Mesh file and template library of a part for this node (sim-in-the-loop, demo, tests).

    Writes ``<out_dir>/<stem>.ply`` (millimetres, as BOP models) and builds the library from
    that file as the node will load it (the checksum is the file's), unless a library there
    already matches the file and the camera.

    Returns
    -------
    (model_path, templates_path) : str
    """
    from pathlib import Path

    from weak_template_ros.linemod.templates import build_templates
    from weak_template_ros.models import save_mesh

    out = Path(out_dir)
    stem = stem or part.name
    model_path = save_mesh(part, out / f"{stem}.ply", units="mm")
    model = load_mesh(model_path, units="mm")
    templates_path = out / f"{stem}.wtl"
    if templates_path.exists():
        try:
            TemplateLibrary.load(templates_path, model_checksum=model.checksum, camera=camera)
            return str(model_path), str(templates_path)
        except InputError:
            pass
    build_templates(model, camera, template_cfg).save(templates_path)
    return str(model_path), str(templates_path)


# ----------------------------------------------------------------------------------------------
# Node


@dataclass
class FrameRecord:
    """Where the time of one processed frame went (ROS clock nanoseconds, milliseconds).

    ``transport`` = received - stamp (camera stamp to the synchronised set, through DDS),
    ``queue`` = start - received (waiting for the worker), ``publish`` = result messages built
    and published, ``latency`` = published - stamp.
    """

    stamp_ns: int
    received_ns: int
    start_ns: int
    published_ns: int
    detections: int
    timings_ms: dict[str, float]

    @property
    def latency_ms(self) -> float:
        return (self.published_ns - self.stamp_ns) / 1e6


class PoseEstimatorNode(Node):
    """The pose_estimator node (see the module docstring for topics and behaviour)."""

    def __init__(self, node_name: str = "pose_estimator", **kwargs):
        super().__init__(node_name, **kwargs)
        self._candidate: tuple[PoseEstimatorConfig, PoseAssets] | None = None
        self._params = None
        self._assets_lock = threading.Lock()
        self._params = ConfigParameters(self, PoseEstimatorConfig, read_only=READ_ONLY,
                                         check=self._check, on_change=self._on_change)
        cfg = self.config
        self._assets = self._take_candidate(cfg)
        self.diagnostics = NodeDiagnostics(self, hardware_id="weak_template_ros pose_estimator",
                                           period_s=cfg.diagnostics_period_s)
        self.pub_poses = self.create_publisher(PoseArray, POSES_TOPIC, result_qos())
        self.pub_pose = self.create_publisher(PoseStamped, POSE_TOPIC, result_qos())
        self.pub_overlay = self.create_publisher(Image, OVERLAY_TOPIC, image_qos(1))
        self.pub_detections = None
        if vision_msgs_available():
            from vision_msgs.msg import Detection3DArray

            self.pub_detections = self.create_publisher(Detection3DArray, DETECTIONS_TOPIC,
                                                        result_qos())
        self.tf_broadcaster = None
        try:
            from tf2_ros import TransformBroadcaster

            self.tf_broadcaster = TransformBroadcaster(self)
        except ImportError:
            pass
        self.diagnostics.set_value("detection3d", "on" if self.pub_detections else
                                   "off (vision_msgs not importable)")
        self.diagnostics.set_value("tf", "on" if self.tf_broadcaster else "off (tf2_ros not importable)")
        self.frame_log: collections.deque[FrameRecord] = collections.deque(maxlen=FRAME_LOG_SIZE)
        self.processed = 0
        self._renderers: dict = {}
        self._last_overlay = -float("inf")
        # One-slot mailbox between the synchroniser and the worker: never a backlog.
        self._mailbox_cv = threading.Condition()
        self._mailbox: tuple | None = None
        self._stop = False
        self._sync = None
        self._make_sync()
        self._sync_seen = self._sync_counts()
        self._sync_emitted_t = -float("inf")
        self._arrived_t = [-float("inf")] * 3
        self._late_streak = 0
        self._housekeeping = self.create_timer(min(cfg.input_timeout_s, 1.0) / 2, self._check_inputs)
        sys.setswitchinterval(min(sys.getswitchinterval(), GIL_SWITCH_INTERVAL_S))
        self._worker = threading.Thread(target=self._work, name="pose_estimator_worker", daemon=True)
        self._worker.start()
        self._describe_assets()
        self.get_logger().info(
            f"estimating poses of {self._assets.object_name!r} ({len(self._assets.library)} "
            f"templates) from {self._sync.subscriptions[0].topic_name}, "
            f"{self._sync.subscriptions[1].topic_name}, {self._sync.subscriptions[2].topic_name} "
            f"(sync: {self._sync.backend})")

    @property
    def config(self) -> PoseEstimatorConfig:
        """The configuration in force."""
        return self._params.config

    @property
    def assets(self) -> PoseAssets:
        """Model, template library and matcher in use."""
        return self._assets

    # -- parameters -------------------------------------------------------------------------------
    @staticmethod
    def _assets_changed(old: PoseEstimatorConfig, new: PoseEstimatorConfig) -> bool:
        return (old.model_path, old.model_units, old.templates_path) != \
            (new.model_path, new.model_units, new.templates_path)

    def _check(self, cfg: PoseEstimatorConfig) -> None:
        if self._params is not None and not self._assets_changed(self._params.config, cfg):
            return
        self._candidate = (cfg, PoseAssets.load(cfg))  # raises InputError: change refused

    def _take_candidate(self, cfg: PoseEstimatorConfig) -> PoseAssets:
        if self._candidate is None or self._candidate[0] is not cfg:
            self._candidate = (cfg, PoseAssets.load(cfg))
        assets = self._candidate[1]
        self._candidate = None
        return assets

    def _on_change(self, old: PoseEstimatorConfig, new: PoseEstimatorConfig, names: set[str]) -> None:
        self.get_logger().info(f"parameters changed: {sorted(names)}")
        with self._assets_lock:
            if self._assets_changed(old, new):
                self._assets = self._take_candidate(new)
            if matcher_config(new) != self._assets.matcher.config:  # matcher.* or pose.linemod_*
                self._assets = self._assets.with_matcher(matcher_config(new))
            if new.object_name != old.object_name:
                self._assets = dataclasses.replace(
                    self._assets, object_name=new.object_name or self._assets.model.name)
        self._describe_assets()

    def _describe_assets(self) -> None:
        a = self._assets
        self.diagnostics.set_value("model", f"{a.model.name} ({self.config.model_path})")
        self.diagnostics.set_value("templates", f"{len(a.library)} ({self.config.templates_path})")

    # -- input ------------------------------------------------------------------------------------
    def _make_sync(self) -> None:
        cfg = self.config
        images = image_qos(cfg.image_queue_depth, cfg.image_reliability)
        # camera_info: best effort matches every publisher (drivers' sensor-data QoS, latched).
        self._sync = SyncedSubscriptions(
            self, [(Image, COLOR_TOPIC, images), (Image, DEPTH_TOPIC, images),
                   (CameraInfo, INFO_TOPIC, image_qos(cfg.sync_queue_size))],
            self._on_set, queue_size=cfg.sync_queue_size, slop=cfg.sync_slop)
        self._sync_started_t = time.monotonic()
        self.diagnostics.set_value("sync", self._sync.backend)

    def _on_set(self, color: Image, depth: Image, info: CameraInfo) -> None:
        received = self.get_clock().now().nanoseconds
        self._sync_emitted_t = time.monotonic()
        with self._mailbox_cv:
            if self._mailbox is not None:
                self.diagnostics.drop("busy")  # the worker is slower than the camera
            self._mailbox = (color, depth, info, received)
            self._mailbox_cv.notify()

    def _sync_counts(self) -> tuple[list[int], list[int], list[int], int] | None:
        st = self._sync.stats
        if st is None:  # message_filters keeps no counters
            return None
        return list(st.dropped_late), list(st.dropped_overflow), list(st.dropped_unmatched), st.emitted

    def _check_inputs(self) -> None:
        """Sync drops into diagnostics; missing inputs and stamps going back in time reported."""
        now_counts = self._sync_counts()
        if now_counts is None:
            return
        late0, over0, unm0, emitted0 = self._sync_seen
        late, over, unm, emitted = now_counts
        self._sync_seen = now_counts
        d_late = [b - a for a, b in zip(late0, late, strict=True)]
        d_over = [b - a for a, b in zip(over0, over, strict=True)]
        d_unm = sum(unm) - sum(unm0)
        topics = [s.topic_name for s in self._sync.subscriptions]
        t = time.monotonic()
        for i, n in enumerate(d_over):
            if n:  # a full queue still receiving: this input arrives
                self._arrived_t[i] = t
        if sum(d_late):
            self.diagnostics.drop("out_of_order", sum(d_late))
            self.get_logger().warning(
                f"{sum(d_late)} message(s) older than the last synchronised set dropped "
                f"(out-of-order stamps) on {[k for k, n in zip(topics, d_late, strict=True) if n]}",
                throttle_duration_sec=5.0)
        if d_unm:
            self.diagnostics.drop("unmatched", d_unm)
        if sum(d_over):
            self.diagnostics.drop("sync_overflow", sum(d_over))
        # Every input arriving late and nothing emitted, twice in a row: the stamps jumped back
        # (a looping recording, a restarted clock). Synchronise afresh rather than wait for the
        # old time to come back.
        all_late = all(n > 0 for n in d_late) and emitted == emitted0
        self._late_streak = self._late_streak + 1 if all_late else 0
        if self._late_streak >= 2:
            self._report("stamps went back in time on every input: synchroniser reset")
            self._reset_sync()
            return
        timeout = self.config.input_timeout_s
        silent = t - max(self._sync_emitted_t, self._sync_started_t)
        arriving = [t - a < timeout for a in self._arrived_t]
        if silent < timeout or not any(arriving):
            return
        missing = [name for name, ok in zip(topics, arriving, strict=True) if not ok]
        if missing:
            self._report(
                f"{', '.join(missing)}: expected messages (the other inputs arrive), got none "
                f"for {timeout:g} s: nothing to estimate from")
        else:
            self._report(
                f"{', '.join(topics)}: expected stamps within sync_slop = {self.config.sync_slop:g}"
                f" s of each other, got no matching set for {silent:.1f} s")

    def _reset_sync(self) -> None:
        """Forget the synchroniser's queues and last stamps; keep the subscriptions.

        Destroying subscriptions from a callback races the multi-threaded executor's wait set
        (rclpy raises InvalidHandle in the spinning thread and the executor stops), so
        the synchroniser alone is replaced (:meth:`SyncedSubscriptions.reset`).
        """
        self._sync.reset()
        self._sync_seen = self._sync_counts()
        self._sync_started_t = time.monotonic()
        self._late_streak = 0

    def _report(self, message: str) -> None:
        """An input problem in diagnostics (every time) and the log (at most every 5 s)."""
        self.diagnostics.error(message, log=False)
        self.get_logger().error(message, throttle_duration_sec=5.0)

    # -- work -------------------------------------------------------------------------------------
    def _work(self) -> None:
        while True:
            with self._mailbox_cv:
                while self._mailbox is None and not self._stop:
                    self._mailbox_cv.wait()
                if self._stop:
                    return
                item, self._mailbox = self._mailbox, None
            with self.diagnostics.guard("input"):
                self._process(*item)

    def _process(self, color: Image, depth: Image, info: CameraInfo, received_ns: int) -> None:
        start_ns = self.get_clock().now().nanoseconds
        cfg = self.config
        with self._assets_lock:
            assets = self._assets
        frame = estimate_frame(assets, cfg, color, depth, info)
        t0 = time.perf_counter()
        poses, best = pose_messages(frame)
        self.pub_poses.publish(poses)
        if best is not None:
            self.pub_pose.publish(best)
        if self.pub_detections is not None:
            self.pub_detections.publish(detection_array(frame, assets.object_name, assets.model))
        if self.tf_broadcaster is not None and cfg.publish_tf and frame.estimates:
            h = frame.header
            self.tf_broadcaster.sendTransform([
                matrix_to_transform_stamped(e.T_cam_obj, h.stamp, h.frame_id,
                                            assets.object_name + (f"_{i}" if i else ""))
                for i, e in enumerate(frame.estimates)])
        published_ns = self.get_clock().now().nanoseconds
        frame.timings_ms["publish"] = (time.perf_counter() - t0) * 1e3
        stamp_ns = stamp_to_ns(color.header.stamp)
        record = FrameRecord(stamp_ns, received_ns, start_ns, published_ns, len(frame.estimates),
                             dict(frame.timings_ms))
        record.timings_ms.update(transport=(received_ns - stamp_ns) / 1e6,
                                 queue=(start_ns - received_ns) / 1e6, latency=record.latency_ms)
        self.frame_log.append(record)
        self.processed += 1
        d = self.diagnostics
        for stage, ms in record.timings_ms.items():
            d.record(stage, ms / 1e3)
        d.frame()
        d.set_value("detections_last", len(frame.estimates))
        if frame.estimates:
            d.set_value("score_last", f"{frame.estimates[0].score:.3f}")
        self._publish_overlay(frame, assets, cfg)

    def _publish_overlay(self, frame: PoseFrame, assets: PoseAssets, cfg: PoseEstimatorConfig) -> None:
        if cfg.overlay_rate_hz <= 0 or self.pub_overlay.get_subscription_count() == 0:
            return
        now = time.monotonic()
        if now - self._last_overlay < 1.0 / cfg.overlay_rate_hz:
            return
        self._last_overlay = now
        with self.diagnostics.stage("overlay"):
            img = overlay_image(frame, assets.model, self._renderers,
                                note=f"{frame.timings_ms['compute']:.0f} ms")
            self.pub_overlay.publish(rgb_to_image(img, "rgb8", frame.header.stamp,
                                                  frame.header.frame_id))

    def destroy_node(self) -> None:
        with contextlib.suppress(AttributeError):
            with self._mailbox_cv:
                self._stop = True
                self._mailbox_cv.notify_all()
            self._worker.join(timeout=10.0)
        super().destroy_node()


# ----------------------------------------------------------------------------------------------
# Sim-in-the-loop run (demo)


@dataclass
class TwinPoseReport:
    """Poses of the twin's part estimated through twin_camera and pose_estimator.

    Per compared frame (a result whose stamp has ground truth): rotation error (deg),
    translation error (mm) and ADD-S / diameter, all symmetry-aware, NaN when not found; and the
    node's latency (camera stamp to publish) and compute time (ms).
    """

    rot_deg: list[float]
    trans_mm: list[float]
    adds_d: list[float]
    latency_ms: list[float]
    compute_ms: list[float]
    templates: int
    seconds: float
    overlay: Image | None

    @property
    def found(self) -> int:
        return int(np.isfinite(self.rot_deg).sum())


def run_twin_pose(work_dir, frames: int = 10, twin: dict | None = None, pose: dict | None = None,
                  template_cfg=None, timeout_s: float = 180.0) -> TwinPoseReport:
    """Run twin_camera + pose_estimator in-process on a moving hex nut; compare with ground truth.

    twin_camera starts from config/twin_camera.yaml (640x480, parts turning and sliding) with one
    hex nut (seed 0) among three distractors at 0.5-0.6 m, at 5 Hz; pose_estimator from
    config/pose_estimator.yaml with the part's mesh and templates written to ``work_dir``.
    ``twin`` / ``pose`` override parameters (nested or dotted names).
    """
    from geometry_msgs.msg import PoseArray
    from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data

    from weak_template_ros.linemod.templates import TemplateConfig
    from weak_template_ros.metrics import adi, re_te_sym
    from weak_template_ros.ros.conversions import pose_array_to_matrices
    from weak_template_ros.ros.params import (
        config_from_parameters,
        file_parameters,  # the package's params files
    )
    from weak_template_ros.ros.testing import TopicRecorder, ros_session, wait_until
    from weak_template_ros.ros.twin_camera import GT_POSES_TOPIC, TwinCameraConfig, TwinCameraNode
    from weak_template_ros.twin.scenes import make_part_set

    twin_params = file_parameters("twin_camera.yaml", "twin_camera", **{
        "families": ["hex_nut"], "seed": 0, "rate_hz": 5.0,
        "scene": {"parts_per_scene": 1, "distractors": 3, "distance_min": 0.5, "distance_max": 0.6},
        **(twin or {})})
    twin_cfg = config_from_parameters(TwinCameraConfig, {p.name: p.value for p in twin_params})
    part = make_part_set(list(twin_cfg.families), seed=twin_cfg.seed)[1]
    template_cfg = template_cfg or TemplateConfig(subdivisions=0, distances=(0.55,), inplane_steps=12)
    model_path, templates_path = prepare_part_files(part, twin_cfg.scene.camera, work_dir, template_cfg)
    pose_params = file_parameters("pose_estimator.yaml", "pose_estimator", **{
        "model_path": model_path, "templates_path": templates_path, "overlay_rate_hz": 100.0,
        **(pose or {})})
    reliable = QoSProfile(depth=1000, reliability=ReliabilityPolicy.RELIABLE)
    t0 = time.monotonic()
    with ros_session() as s:
        node = s.add(PoseEstimatorNode(context=s.context, parameter_overrides=pose_params))
        probe = s.node("twin_pose_probe")
        gt = TopicRecorder(probe, PoseArray, GT_POSES_TOPIC, reliable)
        results = TopicRecorder(probe, PoseArray, node.pub_poses.topic_name, reliable)
        overlay = TopicRecorder(probe, Image, node.pub_overlay.topic_name, qos_profile_sensor_data)
        s.add(TwinCameraNode(context=s.context, parameter_overrides=twin_params))

        def compared() -> list:
            truth = {stamp_to_ns(m.header.stamp): m for m in gt.messages}
            return [(m, truth[stamp_to_ns(m.header.stamp)]) for m in results.messages
                    if stamp_to_ns(m.header.stamp) in truth]

        if not wait_until(lambda: len(compared()) >= frames and overlay.messages, timeout_s, interval=0.1):
            raise InputError("pose_estimator", f"{frames} results of the twin's frames within "
                             f"{timeout_s:g} s", f"{len(compared())} (last error: "
                             f"{node.diagnostics.last_error or 'none'})")
        pairs = compared()[:frames]
        log = {r.stamp_ns: r for r in node.frame_log}
        last_overlay = overlay.messages[-1]
    syms = part.symmetry_transforms(1e-3)
    pts = part.sample_points(1000, seed=0)[0]
    rot, trans, adds, lat, comp = [], [], [], [], []
    for res, g in pairs:
        T_gt = pose_array_to_matrices(g)[0]
        P = pose_array_to_matrices(res)
        if len(P):
            T = P[0]
            r, t = re_te_sym(T[:3, :3], T[:3, 3], T_gt[:3, :3], T_gt[:3, 3], syms)
            rot.append(float(np.degrees(r)))
            trans.append(1e3 * t)
            adds.append(adi(T[:3, :3], T[:3, 3], T_gt[:3, :3], T_gt[:3, 3], pts) / part.diameter)
        else:
            rot.append(np.nan)
            trans.append(np.nan)
            adds.append(np.nan)
        rec = log.get(stamp_to_ns(res.header.stamp))
        lat.append(rec.latency_ms if rec else np.nan)
        comp.append(rec.timings_ms["compute"] if rec else np.nan)
    n_templates = len(TemplateLibrary.load(templates_path))
    return TwinPoseReport(rot, trans, adds, lat, comp, n_templates, time.monotonic() - t0, last_overlay)


main = node_main(PoseEstimatorNode)

if __name__ == "__main__":
    main()
