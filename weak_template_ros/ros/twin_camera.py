"""twin_camera node: the digital twin (or a recording) as an RGB-D camera on ROS topics.

Publishes, at ``rate_hz``, on the topics common camera drivers use (relative names, so a
namespace or remapping moves them):

* ``camera/color/image_raw``: sensor_msgs/Image rgb8 (mono8 for gray BOP data); QoS from
  ``image_reliability`` / ``image_queue_depth`` (default best effort, keep last 2).
* ``camera/aligned_depth_to_color/image_raw``: sensor_msgs/Image, 32FC1 metres or 16UC1
  millimetres (``depth_encoding``); same QoS.
* ``camera/color/camera_info``, ``camera/aligned_depth_to_color/camera_info``:
  sensor_msgs/CameraInfo, reliable, transient local, keep last 1.
* ``camera/ground_truth/poses``: geometry_msgs/PoseArray of ``T_cam_obj``, reliable, keep last 10.
* ``camera/ground_truth/markers``: visualization_msgs/MarkerArray, reliable, keep last 10.
* ``/diagnostics``: diagnostic_msgs/DiagnosticArray, about 1 Hz.

All messages of one frame carry the same stamp (the publish time, or the recorded stamp of a bag
with ``bag_restamp`` false) and the ``frame_id`` parameter (a bag keeps its recorded frame ids).
Ground truth: the PoseArray lists the annotated
parts in the camera frame; the MarkerArray gives the same poses with their object ids
(namespace ``obj_000001``, ...) and box extents, for evaluation and RViz.

Sources (``source`` parameter):

* ``scene``: a live twin scene (:mod:`weak_template_ros.twin.scenes`). Without motion the frames
  are exactly those ``iter_scene_frames`` yields for the same seed and scene (one per camera
  view, ``scene.frames_per_scene`` of them, cycled; the generator behind
  ``weak-template generate``). With
  ``motion_yaw_deg_s`` or ``motion_shift_m`` set, the camera stays at view ``view_id`` and every
  part turns about the vertical through its centre and slides sideways, advancing 1 / rate_hz of
  simulated time per frame (frame k is the same whatever the wall clock did).
* ``bop``: the frames of a BOP dataset folder (``twin/bop.py``), split ``bop_split``.
* ``bag``: a rosbag2 file or folder (sqlite3 or mcap, read with rosbags): messages of the
  ``bag_*_topic`` topics grouped by header stamp and republished as recorded.

Frames are produced (rendered, read, converted) in a worker thread, up to ``prefetch`` ahead; the
timer only stamps and publishes, so a slow render shows as drops in diagnostics, never as a
backlog. Changing a source parameter at run time rebuilds the source (a bad value is refused
with its reason and the old source keeps running).

Console script: ``twin_camera = weak_template_ros.ros.twin_camera:main``.
"""

from __future__ import annotations

import dataclasses
import math
import queue
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar

import numpy as np
from geometry_msgs.msg import PoseArray
from rclpy.node import Node
from sensor_msgs.msg import CameraInfo, Image
from visualization_msgs.msg import Marker, MarkerArray

from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.config import param
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import invert_pose, make_pose, rotation_from_rotvec
from weak_template_ros.ros.conversions import (
    depth_to_image,
    intrinsics_to_camera_info,
    matrices_to_pose_array,
    matrix_to_pose,
    rgb_to_image,
    stamp_to_ns,
)
from weak_template_ros.ros.diagnostics import NodeDiagnostics
from weak_template_ros.ros.node_main import node_main
from weak_template_ros.ros.params import ConfigParameters
from weak_template_ros.ros.qos import image_qos, latched_qos, result_qos
from weak_template_ros.twin.scenes import SceneSpec

COLOR_TOPIC = "camera/color/image_raw"
DEPTH_TOPIC = "camera/aligned_depth_to_color/image_raw"
COLOR_INFO_TOPIC = "camera/color/camera_info"
DEPTH_INFO_TOPIC = "camera/aligned_depth_to_color/camera_info"
GT_POSES_TOPIC = "camera/ground_truth/poses"
GT_MARKERS_TOPIC = "camera/ground_truth/markers"
_CACHE_BYTES = 512 * 2**20  # static scene frames are kept for looping up to this size
_BAG_PENDING_MAX = 32  # incomplete bag frames held while waiting for their other messages


@dataclass
class TwinCameraConfig:
    """Parameters of the twin_camera node (same names as its ROS parameters)."""

    source: str = param("scene", "where frames come from", choices=("scene", "bop", "bag"))
    rate_hz: float = param(10.0, "frames published per second", lo=0.1, hi=200.0, unit="Hz")
    max_frames: int = param(0, "stop publishing after this many frames (0: no limit)", lo=0, hi=2**31 - 1)
    loop: bool = param(True, "start the source again when it ends (static scene, bop, bag)")
    prefetch: int = param(2, "frames produced ahead of publishing", lo=1, hi=64)
    depth_encoding: str = param("32FC1", "depth image encoding: 32FC1 metres or 16UC1 millimetres",
                                choices=("32FC1", "16UC1"))
    frame_id: str = param("camera_color_optical_frame", "frame_id of every message (optical frame)")
    image_reliability: str = param("best_effort", "QoS reliability of the image topics (fixed at start)",
                                   choices=("best_effort", "reliable"))
    image_queue_depth: int = param(2, "QoS keep-last depth of the image topics (fixed at start)",
                                   lo=1, hi=100)
    seed: int = param(0, "seed of the twin scene (parts, arrangement, views, noise)", lo=0, hi=2**31 - 1)
    scene_id: int = param(0, "scene number (a different arrangement per id)", lo=0, hi=2**31 - 1)
    families: tuple = param(("all",), "part families of the scene's part set "
                            "(weak_template_ros.models.PART_FAMILIES or 'all')")
    view_id: int = param(0, "camera view of a moving scene (the static scene's im_id)", lo=0,
                         hi=2**31 - 1)
    motion_yaw_deg_s: float = param(0.0, "parts turn about the vertical through their centre",
                                    lo=-720.0, hi=720.0, unit="deg/s")
    motion_shift_m: float = param(0.0, "amplitude of a sinusoidal sideways slide of the parts "
                                  "(world x)", lo=0.0, hi=1.0, unit="m")
    motion_period_s: float = param(10.0, "period of the slide", lo=0.1, hi=1e6, unit="s")
    scene: SceneSpec = field(default_factory=SceneSpec)
    bop_root: str = param("", "BOP dataset folder (source bop)")
    bop_split: str = param("test", "BOP split folder (source bop)")
    bag_path: str = param("", "rosbag2 folder, .db3 or .mcap file (source bag)")
    bag_color_topic: str = param("/camera/color/image_raw", "colour topic in the bag")
    bag_depth_topic: str = param("/camera/aligned_depth_to_color/image_raw", "depth topic in the bag "
                                 "(optional)")
    bag_info_topic: str = param("/camera/color/camera_info", "camera_info topic in the bag (optional)")
    bag_gt_topic: str = param("/camera/ground_truth/poses", "ground-truth PoseArray topic in the bag "
                              "(optional)")
    bag_restamp: bool = param(True, "stamp bag messages with the publish time (False: as recorded)")


#: Parameters that change how frames are published, not which frames: no source rebuild.
LIVE_PARAMETERS = frozenset({"rate_hz", "max_frames", "loop", "prefetch", "depth_encoding", "frame_id",
                             "image_reliability", "image_queue_depth", "bag_restamp"})


@dataclass
class CameraFrame:
    """One frame of a source: images, intrinsics and ground truth (or recorded messages).

    Attributes
    ----------
    rgb : (H, W, 3) uint8 RGB or (H, W) uint8, or None (recorded messages instead)
    depth : (H, W) float32 metres (0 invalid) or None
    camera : CameraIntrinsics or None
    obj_ids : list of int
        Object id of each ground-truth pose.
    poses : list of (4, 4) arrays
        ``T_cam_obj`` in metres.
    extents : dict obj_id -> (3,) metres
        Axis-aligned model box sizes, for the markers.
    messages : dict role -> message
        Recorded messages ("color", "depth", "info", "gt") of a bag frame.
    stamp_ns : int or None
        The recorded stamp (bag).
    """

    rgb: np.ndarray | None = None
    depth: np.ndarray | None = None
    camera: CameraIntrinsics | None = None
    obj_ids: list[int] = field(default_factory=list)
    poses: list[np.ndarray] = field(default_factory=list)
    extents: dict[int, np.ndarray] = field(default_factory=dict)
    messages: dict[str, object] = field(default_factory=dict)
    stamp_ns: int | None = None


# ----------------------------------------------------------------------------------------------
# Moving parts


@dataclass(frozen=True)
class PartMotion:
    """Motion of every part of a scene: a turn about the vertical through the part's centre
    (``yaw_deg_s``) and a sinusoidal slide along world x (amplitude ``shift_m``, ``period_s``)."""

    yaw_deg_s: float = 0.0
    shift_m: float = 0.0
    period_s: float = 10.0

    @property
    def moving(self) -> bool:
        return self.yaw_deg_s != 0.0 or self.shift_m != 0.0

    def world_pose(self, T_world_obj: np.ndarray, centre_xy: np.ndarray, t_s: float) -> np.ndarray:
        """``T_world_obj`` at time ``t_s`` of a part resting at ``T_world_obj`` at time 0."""
        about = make_pose(t=[centre_xy[0], centre_xy[1], 0.0])
        turn = make_pose(rotation_from_rotvec([0.0, 0.0, math.radians(self.yaw_deg_s * t_s)]))
        slide = make_pose(t=[self.shift_m * math.sin(2 * math.pi * t_s / self.period_s), 0.0, 0.0])
        return slide @ about @ turn @ invert_pose(about) @ T_world_obj


class MovingPartsScene:
    """A twin scene seen from one fixed camera while its parts move (:class:`PartMotion`).

    Arrangement, camera pose and lighting are those of :func:`~weak_template_ros.twin.scenes.
    iter_scene_frames` for the same ``seed``, ``scene_id`` and ``view_id`` (its occluder is not
    used), so at t = 0 the ground truth is that frame's.
    """

    def __init__(self, models: dict, spec: SceneSpec, seed: int, scene_id: int, view_id: int = 0):
        from weak_template_ros.twin.renderer import Renderer
        from weak_template_ros.twin.scenes import arrange_scene, sample_camera, sample_lighting

        self.spec, self.seed, self.scene_id = spec, int(seed), int(scene_id)
        self.camera = spec.camera
        self.renderer = Renderer(self.camera)
        self.placed = arrange_scene(models, spec, seed, scene_id, self.renderer)
        rng = np.random.default_rng([seed, scene_id, 1, view_id])
        self.T_cam_world = invert_pose(sample_camera(spec, rng))
        self.lighting = sample_lighting(spec, rng)
        self.centres = []
        for p in self.placed:
            v = self.renderer.mesh_vertices(p.key) @ p.T_world_obj[:3, :3].T + p.T_world_obj[:3, 3]
            self.centres.append((v[:, :2].max(0) + v[:, :2].min(0)) / 2)
        self.extents = {int(k): np.asarray(m.mesh.extents, float) for k, m in models.items()}

    def frame(self, t_s: float, motion: PartMotion, index: int) -> CameraFrame:
        """Render the scene at simulated time ``t_s`` (noise drawn from seed, scene, ``index``)."""
        from weak_template_ros.twin.renderer import SceneObject, TablePlane

        objects, ids, poses = [], [], []
        for p, c in zip(self.placed, self.centres, strict=True):
            T_world = motion.world_pose(p.T_world_obj, c, t_s) if p.obj_id is not None else p.T_world_obj
            T_cam_obj = self.T_cam_world @ T_world
            objects.append(SceneObject(p.key, T_cam_obj, albedo=p.albedo, specular=p.specular))
            if p.obj_id is not None:
                ids.append(int(p.obj_id))
                poses.append(T_cam_obj)
        spec = self.spec
        rng = np.random.default_rng([self.seed, self.scene_id, 2, index])
        out = self.renderer.render(objects, table=TablePlane(self.T_cam_world, albedo=spec.table_albedo),
                                   lighting=self.lighting, sensor=spec.sensor if spec.noise else None,
                                   rng=rng)
        return CameraFrame(rgb=out.rgb, depth=out.depth, camera=self.camera, obj_ids=ids, poses=poses,
                           extents=self.extents)


# ----------------------------------------------------------------------------------------------
# Sources


class SceneSource:
    """Frames of a live twin scene (static: the scene's views; moving: :class:`MovingPartsScene`)."""

    def __init__(self, cfg: TwinCameraConfig):
        from weak_template_ros.twin.scenes import make_part_set

        self.cfg = cfg
        self.models = make_part_set(list(cfg.families), seed=cfg.seed)
        if cfg.scene.parts_per_scene > len(self.models):
            raise InputError("scene.parts_per_scene", f"at most the number of parts ({len(self.models)}, "
                             f"families {list(cfg.families)})", cfg.scene.parts_per_scene)
        self.motion = PartMotion(cfg.motion_yaw_deg_s, cfg.motion_shift_m, cfg.motion_period_s)
        self.extents = {int(k): np.asarray(m.mesh.extents, float) for k, m in self.models.items()}
        self._cache: list[CameraFrame] | None = None

    def frames(self, period_s: Callable[[], float]) -> Iterator[CameraFrame]:
        cfg = self.cfg
        if self.motion.moving:
            scene = MovingPartsScene(self.models, cfg.scene, cfg.seed, cfg.scene_id, cfg.view_id)
            t, k = 0.0, 0
            while True:
                yield scene.frame(t, self.motion, k)
                t, k = t + period_s(), k + 1
        if self._cache is not None:
            yield from self._cache
            return
        from weak_template_ros.twin.scenes import iter_scene_frames

        cache, size = [], 0
        for f in iter_scene_frames(self.models, cfg.scene, cfg.seed, cfg.scene_id):
            frame = CameraFrame(rgb=f.rgb, depth=f.depth, camera=f.camera,
                                obj_ids=[o.obj_id for o in f.objects],
                                poses=[o.T_cam_obj for o in f.objects], extents=self.extents)
            size += frame.rgb.nbytes + frame.depth.nbytes
            cache.append(frame)
            yield frame
        if size <= _CACHE_BYTES:
            self._cache = cache


class BopSource:
    """Frames of a BOP dataset split, scene by scene."""

    def __init__(self, cfg: TwinCameraConfig):
        from weak_template_ros.twin.bop import BopDataset

        if not cfg.bop_root:
            raise InputError("bop_root", "a BOP dataset folder (source bop)", "''")
        try:
            self.dataset = BopDataset(cfg.bop_root)
        except InputError as e:
            raise InputError(f"bop_root: {e.name}", e.expected, e.got) from e
        if cfg.bop_split not in self.dataset.splits():
            raise InputError("bop_split", f"one of the dataset's splits {self.dataset.splits()}",
                             repr(cfg.bop_split))
        self.split = cfg.bop_split
        self.extents = {int(k): np.array([info.get(f"size_{a}", 50.0) for a in "xyz"], float) / 1000.0
                        for k, info in self.dataset.models_info.items()}

    def frames(self, period_s: Callable[[], float]) -> Iterator[CameraFrame]:
        for f in self.dataset.iter_frames(self.split, masks=False):
            yield CameraFrame(rgb=f.rgb, depth=f.depth, camera=f.camera,
                              obj_ids=[o.obj_id for o in f.objects],
                              poses=[o.T_cam_obj for o in f.objects], extents=self.extents)


class BagSource:
    """Frames of a rosbag2 recording: colour, depth, camera_info and ground truth grouped by stamp.

    A frame is complete when it has a message of every role recorded with (about) every colour
    image; frames left incomplete when a newer one completes are published with what they have
    (a colour image is required; the last camera_info seen stands in for a missing one, so a
    camera_info recorded once serves every frame).
    """

    ROLES = (("color", "bag_color_topic", "sensor_msgs/msg/Image"),
             ("depth", "bag_depth_topic", "sensor_msgs/msg/Image"),
             ("info", "bag_info_topic", "sensor_msgs/msg/CameraInfo"),
             ("gt", "bag_gt_topic", "geometry_msgs/msg/PoseArray"))
    TYPES: ClassVar[dict[str, type]] = {
        "sensor_msgs/msg/Image": Image, "sensor_msgs/msg/CameraInfo": CameraInfo,
        "geometry_msgs/msg/PoseArray": PoseArray}

    def __init__(self, cfg: TwinCameraConfig):
        from rosbags.rosbag2 import Reader

        if not cfg.bag_path:
            raise InputError("bag_path", "a rosbag2 folder, .db3 or .mcap file (source bag)", "''")
        self.path = Path(cfg.bag_path)
        try:
            with Reader(self.path) as reader:
                conns = list(reader.connections)
        except Exception as e:  # rosbags raises FileNotFoundError, ReaderError, KeyError, ...
            raise InputError("bag_path", "a readable rosbag2 (folder with metadata.yaml, .db3 or .mcap)",
                             f"{self.path} ({type(e).__name__}: {e})") from e
        by_topic = {c.topic.lstrip("/"): c for c in conns}
        listing = sorted(f"{c.topic} [{c.msgtype}]" for c in conns)
        self.roles: dict[str, tuple[str, type]] = {}  # bag topic -> (role, message class)
        self._counts: dict[str, int] = {}
        for role, key, msgtype in self.ROLES:
            topic = getattr(cfg, key).lstrip("/")
            c = by_topic.get(topic)
            if c is None:
                if role == "color":
                    raise InputError(key, f"a {msgtype} topic of the bag {listing}", repr(getattr(cfg, key)))
                continue
            if c.msgtype != msgtype:
                raise InputError(key, f"a {msgtype} topic", f"{c.topic} of type {c.msgtype}")
            if getattr(c.ext, "serialization_format", "cdr") != "cdr":
                raise InputError(key, "CDR-serialised messages", c.ext.serialization_format)
            self.roles[c.topic] = (role, self.TYPES[msgtype])
            self._counts[role] = int(c.msgcount)
        # Roles recorded with (about) every colour frame are waited for; a camera_info recorded
        # once (latched) is not, and stands in for every frame.
        self.per_frame = {r for r, n in self._counts.items() if n >= 0.5 * self._counts["color"]}

    def frames(self, period_s: Callable[[], float]) -> Iterator[CameraFrame]:
        from rclpy.serialization import deserialize_message
        from rosbags.rosbag2 import Reader

        wanted = self.per_frame
        pending: dict[int, dict[str, object]] = {}
        last_info = None

        def finish(stamp: int, msgs: dict) -> CameraFrame:
            if "info" not in msgs and last_info is not None:
                msgs["info"] = last_info
            return CameraFrame(messages=msgs, stamp_ns=stamp)

        with Reader(self.path) as reader:
            conns = [c for c in reader.connections if c.topic in self.roles]
            for conn, _, raw in reader.messages(connections=conns):
                role, cls = self.roles[conn.topic]
                msg = deserialize_message(bytes(raw), cls)
                stamp = stamp_to_ns(msg.header.stamp)
                if role == "info":
                    last_info = msg
                pending.setdefault(stamp, {})[role] = msg
                while len(pending) > _BAG_PENDING_MAX:  # a role recorded once (latched info)
                    s = min(pending)
                    msgs = pending.pop(s)
                    if "color" in msgs:
                        yield finish(s, msgs)
                if stamp in pending and set(pending[stamp]) >= wanted:
                    for s in sorted(pending):
                        msgs = pending.pop(s)
                        if s <= stamp and "color" in msgs:
                            yield finish(s, msgs)
                        elif s > stamp:
                            pending[s] = msgs
            for s in sorted(pending):
                if "color" in pending[s]:
                    yield finish(s, pending[s])


def open_source(cfg: TwinCameraConfig):
    """The frame source a config asks for; raises InputError for a bad one (checked quickly)."""
    return {"scene": SceneSource, "bop": BopSource, "bag": BagSource}[cfg.source](cfg)


# ----------------------------------------------------------------------------------------------
# Frame to messages


def frame_messages(frame: CameraFrame, depth_encoding: str) -> dict[str, object]:
    """Messages of a frame (stamps and frame ids left empty): color, depth, info, gt, markers."""
    if frame.messages:
        return dict(frame.messages)
    msgs: dict[str, object] = {}
    rgb = frame.rgb
    msgs["color"] = rgb_to_image(rgb, "rgb8" if rgb.ndim == 3 else "mono8")
    if frame.depth is not None:
        msgs["depth"] = depth_to_image(frame.depth, depth_encoding)
    msgs["info"] = intrinsics_to_camera_info(frame.camera)
    msgs["gt"] = matrices_to_pose_array(frame.poses)
    markers = MarkerArray()
    for i, (obj_id, T) in enumerate(zip(frame.obj_ids, frame.poses, strict=True)):
        m = Marker(ns=f"obj_{obj_id:06d}", id=i, type=Marker.CUBE, action=Marker.ADD,
                   pose=matrix_to_pose(T), frame_locked=False)
        size = frame.extents.get(obj_id, np.full(3, 0.05))
        m.scale.x, m.scale.y, m.scale.z = (float(v) for v in size)
        m.color.r, m.color.g, m.color.b, m.color.a = 0.1, 0.8, 0.2, 0.5
        markers.markers.append(m)
    msgs["markers"] = markers
    return msgs


def _set_header(msg, stamp, frame_id: str | None) -> None:
    headers = [m.header for m in msg.markers] if isinstance(msg, MarkerArray) else [msg.header]
    for h in headers:
        h.stamp = stamp
        if frame_id is not None:
            h.frame_id = frame_id


# ----------------------------------------------------------------------------------------------
# Worker thread


_END = object()


class FramePump:
    """Produce converted frames in a thread, at most ``depth`` ahead of the consumer.

    ``get()`` returns a dict of messages, None when nothing is ready, the :data:`_END` sentinel
    when the source ended, or the exception that stopped the source.
    """

    def __init__(self, frames: Iterator[CameraFrame], convert: Callable[[CameraFrame], dict],
                 depth: int, diagnostics: NodeDiagnostics | None = None):
        self._frames, self._convert, self._diag = frames, convert, diagnostics
        self._queue: queue.Queue = queue.Queue(maxsize=max(int(depth), 1))
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="twin_camera_frames", daemon=True)
        self._thread.start()

    def _put(self, item) -> None:
        while not self._stop.is_set():
            try:
                self._queue.put(item, timeout=0.1)
                return
            except queue.Full:
                continue

    def _run(self) -> None:
        try:
            while not self._stop.is_set():
                t0 = time.perf_counter()
                try:
                    frame = next(self._frames)
                except StopIteration:
                    self._put(_END)
                    return
                t1 = time.perf_counter()
                msgs = self._convert(frame)
                if self._diag is not None:
                    self._diag.record("produce", t1 - t0)
                    self._diag.record("convert", time.perf_counter() - t1)
                self._put(msgs)
        except Exception as e:  # the source failed: hand the error to the node, which reports it
            self._put(e)

    def get(self):
        try:
            return self._queue.get_nowait()
        except queue.Empty:
            return None

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        self._thread.join(timeout)
        close = getattr(self._frames, "close", None)
        if close is not None and not self._thread.is_alive():
            close()


# ----------------------------------------------------------------------------------------------
# Node


class TwinCameraNode(Node):
    """The twin_camera node (see the module docstring for topics, sources and parameters)."""

    def __init__(self, node_name: str = "twin_camera", **kwargs):
        super().__init__(node_name, **kwargs)
        self._candidate = None
        self._params = None
        # Parameter changes may come from any thread (set_parameters) while the timer runs.
        self._lock = threading.RLock()
        self._params = ConfigParameters(self, TwinCameraConfig,
                                         read_only=("image_reliability", "image_queue_depth"),
                                         check=self._check, on_change=self._on_change)
        cfg = self.config
        images = image_qos(cfg.image_queue_depth, cfg.image_reliability)
        self.publishers_ = {
            "color": self.create_publisher(Image, COLOR_TOPIC, images),
            "depth": self.create_publisher(Image, DEPTH_TOPIC, images),
            "info": self.create_publisher(CameraInfo, COLOR_INFO_TOPIC, latched_qos()),
            "depth_info": self.create_publisher(CameraInfo, DEPTH_INFO_TOPIC, latched_qos()),
            "gt": self.create_publisher(PoseArray, GT_POSES_TOPIC, result_qos()),
            "markers": self.create_publisher(MarkerArray, GT_MARKERS_TOPIC, result_qos()),
        }
        self.diagnostics = NodeDiagnostics(self, hardware_id="weak_template_ros digital twin")
        self.published = 0
        self._ended = False
        self._source = self._take_candidate(cfg)
        self._pump: FramePump | None = None
        self._start_pump()
        self._timer = self.create_timer(1.0 / cfg.rate_hz, self._tick)
        self.get_logger().info(f"publishing {cfg.source} frames at {cfg.rate_hz} Hz")

    @property
    def config(self) -> TwinCameraConfig:
        """The configuration in force."""
        return self._params.config

    # -- parameters -------------------------------------------------------------------------------
    def _check(self, cfg: TwinCameraConfig) -> None:
        if self._params is not None and not _source_changed(self._params.config, cfg):
            return
        self._candidate = (cfg, open_source(cfg))

    def _take_candidate(self, cfg: TwinCameraConfig):
        if self._candidate is None or self._candidate[0] is not cfg:
            self._candidate = (cfg, open_source(cfg))
        source = self._candidate[1]
        self._candidate = None
        return source

    def _on_change(self, old: TwinCameraConfig, new: TwinCameraConfig, names: set[str]) -> None:
        self.get_logger().info(f"parameters changed: {sorted(names)}")
        with self._lock:
            self._apply_change(old, new)

    def _apply_change(self, old: TwinCameraConfig, new: TwinCameraConfig) -> None:
        if new.rate_hz != old.rate_hz:
            self._timer.cancel()
            self.destroy_timer(self._timer)
            self._timer = self.create_timer(1.0 / new.rate_hz, self._tick)
        if _source_changed(old, new):
            self._source = self._take_candidate(new)
            self._start_pump()
        elif new.prefetch != old.prefetch or new.depth_encoding != old.depth_encoding:
            self._start_pump()  # frames already converted used the old encoding
        elif self._ended and new.loop and not old.loop:
            self._start_pump()  # the source had ended: start it again

    # -- frames -----------------------------------------------------------------------------------
    def _start_pump(self) -> None:
        if self._pump is not None:
            self._pump.stop()
        self._ended = False
        frames = self._source.frames(lambda: 1.0 / self.config.rate_hz)
        self._pump = FramePump(frames, lambda f: frame_messages(f, self.config.depth_encoding),
                               self.config.prefetch, self.diagnostics)
        self.diagnostics.set_value("source", self.config.source)

    def _tick(self) -> None:
        with self._lock:
            self._tick_locked()

    def _tick_locked(self) -> None:
        cfg = self.config
        if (cfg.max_frames and self.published >= cfg.max_frames) or self._ended:
            return
        item = self._pump.get()
        if item is None:
            self.diagnostics.drop("not_ready")
            return
        if item is _END:
            if cfg.loop:
                self._start_pump()
            else:
                self._ended = True
                self.get_logger().info(f"source ended after {self.published} frames")
            return
        if isinstance(item, Exception):
            self.diagnostics.error(f"frame source failed: {type(item).__name__}: {item}")
            self._ended = True
            return
        with self.diagnostics.stage("publish"):
            self._publish(item, cfg)
        self.published += 1
        self.diagnostics.frame()

    def _publish(self, msgs: dict, cfg: TwinCameraConfig) -> None:
        recorded = msgs["color"].header.stamp if cfg.source == "bag" else None
        stamp = self.get_clock().now().to_msg() if recorded is None or cfg.bag_restamp else recorded
        frame_id = None if cfg.source == "bag" else cfg.frame_id
        for role in ("info", "depth", "color", "gt", "markers"):
            msg = msgs.get(role)
            if msg is None:
                continue
            _set_header(msg, stamp, frame_id)
            self.publishers_[role].publish(msg)
            if role == "info" and "depth" in msgs:
                self.publishers_["depth_info"].publish(msg)

    def destroy_node(self) -> None:
        if getattr(self, "_pump", None) is not None:
            self._pump.stop()
        super().destroy_node()


def _source_changed(old: TwinCameraConfig, new: TwinCameraConfig) -> bool:
    a, b = dataclasses.asdict(old), dataclasses.asdict(new)
    return any(a[k] != b[k] for k in a if k not in LIVE_PARAMETERS)


main = node_main(TwinCameraNode)

if __name__ == "__main__":
    main()
