"""Offline runs over recordings: a pipeline over a rosbag2 file, results into a new rosbag2.

``weak-template replay --bag IN --out OUT --pipeline pose|align`` calls :func:`replay_bag`. The
input is read with rosbags (sqlite3 or mcap, no ROS install needed) and deserialised with
rclpy; each frame goes through the same functions as the node (pose:
:func:`~weak_template_ros.ros.pose_estimator.estimate_frame`; align: the aligner node's message
functions), and the result messages are serialised with rclpy and written with rosbags under the
topics the node publishes in the root namespace, stamped (log time and header) with the input
frame's stamp. ``ros2 bag play OUT`` or rclpy's ``deserialize_message`` read them back.

Output topics:

* pose: ``/pose_estimator/poses`` (geometry_msgs/PoseArray, every frame, empty when not found),
  ``/pose_estimator/pose`` (geometry_msgs/PoseStamped, frames with an estimate);
* align: ``/alignment/result`` (std_msgs/Float64MultiArray, every image),
  ``/alignment/offset`` (geometry_msgs/TransformStamped) and ``/alignment/offset_px``
  (geometry_msgs/PoseWithCovarianceStamped) for images where the mark was found.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from weak_template_ros.errors import InputError

PIPELINES = ("pose", "align")
STORAGES = ("mcap", "sqlite3")
POSES_TOPIC = "/pose_estimator/poses"
POSE_TOPIC = "/pose_estimator/pose"
ALIGN_RESULT_TOPIC = "/alignment/result"
ALIGN_OFFSET_TOPIC = "/alignment/offset"
ALIGN_OFFSET_PX_TOPIC = "/alignment/offset_px"


@dataclass
class ReplayTopics:
    """Input topics of the recording (pose: colour, depth, camera_info; align: image)."""

    color: str = "/camera/color/image_raw"
    depth: str = "/camera/aligned_depth_to_color/image_raw"
    info: str = "/camera/color/camera_info"
    image: str = "/camera/image_raw"


@dataclass
class ReplaySummary:
    """What a replay did.

    Attributes
    ----------
    frames : int
        Input frames (pose: colour images grouped with their depth and camera_info by stamp;
        align: images).
    processed : int
        Frames the pipeline ran on.
    found : int
        Frames with a result (a pose estimate / a found mark).
    errors : list of (stamp_ns, message)
        Frames refused as bad input (the replay goes on).
    written : dict topic -> count
    compute_ms : list of float
        Pipeline time per processed frame.
    """

    pipeline: str
    bag: str
    out: str
    storage: str
    frames: int = 0
    processed: int = 0
    found: int = 0
    errors: list[tuple[int, str]] = field(default_factory=list)
    written: Counter = field(default_factory=Counter)
    compute_ms: list[float] = field(default_factory=list)

    def to_dict(self) -> dict:
        ms = sorted(self.compute_ms)
        return {"pipeline": self.pipeline, "bag": self.bag, "out": self.out, "storage": self.storage,
                "frames": self.frames, "processed": self.processed, "found": self.found,
                "bad_frames": len(self.errors), "errors": [e for _, e in self.errors[:10]],
                "written": dict(self.written),
                "median_compute_ms": round(ms[len(ms) // 2], 3) if ms else None}


def ros_type_name(msg_class: type) -> str:
    """'pkg/msg/Name' of an rclpy message class (what rosbag2 records as the type)."""
    return f"{msg_class.__module__.split('.')[0]}/msg/{msg_class.__name__}"


class BagWriter:
    """Write rclpy messages into a new rosbag2 (connections made on first use)."""

    def __init__(self, path: str | Path, storage: str = "mcap"):
        from rosbags.rosbag2 import StoragePlugin, Writer
        from rosbags.typesys import Stores, get_typestore

        if storage not in STORAGES:
            raise InputError("storage", f"one of {list(STORAGES)}", repr(storage))
        self.path = Path(path)
        if self.path.exists():
            raise InputError(str(self.path), "an output path that does not exist yet (rosbag2 "
                             "writes a new folder)", "an existing path")
        plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
        self._typestore = get_typestore(Stores.ROS2_JAZZY)
        self._writer = Writer(self.path, version=9, storage_plugin=plugin)
        self._connections: dict[str, object] = {}
        self.counts: Counter = Counter()

    def __enter__(self) -> BagWriter:
        self._writer.open()
        return self

    def __exit__(self, *exc) -> None:
        self._writer.close()

    def write(self, topic: str, msg, stamp_ns: int) -> None:
        """Serialise ``msg`` with rclpy (CDR) and write it at log time ``stamp_ns``."""
        from rclpy.serialization import serialize_message

        conn = self._connections.get(topic)
        if conn is None:
            conn = self._writer.add_connection(topic, ros_type_name(type(msg)), typestore=self._typestore)
            self._connections[topic] = conn
        self._writer.write(conn, int(stamp_ns), serialize_message(msg))
        self.counts[topic] += 1


def replay_bag(bag: str | Path, out: str | Path, pipeline: str = "pose", *, pose_config=None,
               align_config=None, topics: ReplayTopics | None = None, storage: str = "mcap",
               on_frame: Callable[[int, int], None] | None = None) -> ReplaySummary:
    """Run a pipeline over every frame of a rosbag2 and write its results into a new one.

    Parameters
    ----------
    bag : path
        rosbag2 folder (with metadata.yaml), .db3 or .mcap file.
    out : path
        New rosbag2 folder (must not exist).
    pipeline : {"pose", "align"}
    pose_config : PoseEstimatorConfig
        Pose pipeline: the node's parameters (``model_path`` and ``templates_path`` set).
    align_config : AlignerNodeConfig
        Align pipeline: the aligner node's parameters (``template_path`` set).
    topics : ReplayTopics, optional
    storage : {"mcap", "sqlite3"}
        Storage of the output bag.
    on_frame : callable(done, total), optional
        Progress.

    Raises
    ------
    InputError
        Unknown pipeline, unreadable bag, missing topics, bad model/templates/template, an
        existing output path. Bad frames are not errors: they are counted in the summary.
    """
    if pipeline not in PIPELINES:
        raise InputError("pipeline", f"one of {list(PIPELINES)}", repr(pipeline))
    topics = topics or ReplayTopics()
    summary = ReplaySummary(pipeline, str(bag), str(out), storage)
    run = _replay_pose if pipeline == "pose" else _replay_align
    prepared = _prepare_pose(bag, pose_config, topics) if pipeline == "pose" else \
        _prepare_align(bag, align_config, topics)
    with BagWriter(out, storage) as writer:
        run(prepared, writer, summary, on_frame)
    summary.written = writer.counts
    return summary


# ----------------------------------------------------------------------------------------------
# Pose


_BAG_OPTION = {"bag_color_topic": "color topic", "bag_depth_topic": "depth topic",
               "bag_info_topic": "camera_info topic", "bag_path": "bag"}


def _prepare_pose(bag, cfg, topics: ReplayTopics):
    from weak_template_ros.ros.pose_estimator import PoseAssets, PoseEstimatorConfig
    from weak_template_ros.ros.twin_camera import BagSource, TwinCameraConfig

    cfg = cfg or PoseEstimatorConfig()
    assets = PoseAssets.load(cfg)
    source_cfg = TwinCameraConfig(source="bag", bag_path=str(bag), bag_color_topic=topics.color,
                                  bag_depth_topic=topics.depth, bag_info_topic=topics.info)
    try:
        source = BagSource(source_cfg)  # the recording's frames grouped by stamp, as twin_camera plays them
    except InputError as e:
        raise InputError(_BAG_OPTION.get(e.name, e.name), e.expected, e.got) from e
    return cfg, assets, source, _message_count(bag, topics.color)


def _message_count(bag, topic: str) -> int:
    from rosbags.rosbag2 import Reader

    with Reader(Path(bag)) as reader:
        return sum(int(c.msgcount) for c in reader.connections if c.topic.lstrip("/") == topic.lstrip("/"))


def _replay_pose(prepared, writer: BagWriter, summary: ReplaySummary, on_frame) -> None:
    from weak_template_ros.ros.conversions import stamp_to_ns
    from weak_template_ros.ros.pose_estimator import estimate_frame, pose_messages

    cfg, assets, source, total = prepared
    for frame in source.frames(lambda: 0.0):
        summary.frames += 1
        msgs = frame.messages
        stamp = stamp_to_ns(msgs["color"].header.stamp)
        try:
            missing = [r for r in ("depth", "info") if r not in msgs]
            if missing:
                raise InputError(f"frame {stamp}", "colour, depth and camera_info with one stamp",
                                 f"no {' and no '.join(missing)}")
            t0 = time.perf_counter()
            result = estimate_frame(assets, cfg, msgs["color"], msgs["depth"], msgs["info"])
            summary.compute_ms.append((time.perf_counter() - t0) * 1e3)
        except InputError as e:
            summary.errors.append((stamp, str(e)))
        else:
            summary.processed += 1
            poses, best = pose_messages(result)
            writer.write(POSES_TOPIC, poses, stamp)
            if best is not None:
                summary.found += 1
                writer.write(POSE_TOPIC, best, stamp)
        if on_frame is not None:
            on_frame(summary.frames, max(total, summary.frames))


# ----------------------------------------------------------------------------------------------
# Align


def _prepare_align(bag, cfg, topics: ReplayTopics):
    from rosbags.rosbag2 import Reader

    from weak_template_ros.ros.aligner import AlignerNodeConfig, load_template

    cfg = cfg or AlignerNodeConfig()
    if not cfg.template_path:
        raise InputError("template", "a golden template image (PNG/TIFF)", "''")
    template = load_template(cfg.template_path, cfg.aligner)
    try:
        with Reader(Path(bag)) as reader:
            conns = [c for c in reader.connections if c.topic.lstrip("/") == topics.image.lstrip("/")]
            listing = sorted(f"{c.topic} [{c.msgtype}]" for c in reader.connections)
    except Exception as e:  # rosbags raises FileNotFoundError, ReaderError, KeyError, ...
        raise InputError("bag", "a readable rosbag2 (folder with metadata.yaml, .db3 or .mcap)",
                         f"{bag} ({type(e).__name__}: {e})") from e
    if not conns or conns[0].msgtype != "sensor_msgs/msg/Image":
        raise InputError("image topic", f"a sensor_msgs/msg/Image topic of the bag {listing}",
                         repr(topics.image))
    return cfg, template, Path(bag), conns[0].topic, int(conns[0].msgcount)


def _replay_align(prepared, writer: BagWriter, summary: ReplaySummary, on_frame) -> None:
    from rclpy.serialization import deserialize_message
    from rosbags.rosbag2 import Reader
    from sensor_msgs.msg import Image

    from weak_template_ros.ros.aligner import (
        image_to_intensity,
        measure_intensity,
        offset_px_message,
        offset_transform_message,
        result_message,
    )
    from weak_template_ros.ros.conversions import stamp_to_ns

    cfg, template, bag, topic, total = prepared
    with Reader(bag) as reader:
        conns = [c for c in reader.connections if c.topic == topic]
        for _, _, raw in reader.messages(connections=conns):
            summary.frames += 1
            msg = deserialize_message(bytes(raw), Image)
            stamp_ns = stamp_to_ns(msg.header.stamp)
            try:
                t0 = time.perf_counter()
                result = measure_intensity(image_to_intensity(msg, topic), template, cfg)[0]
                summary.compute_ms.append((time.perf_counter() - t0) * 1e3)
            except InputError as e:
                summary.errors.append((stamp_ns, str(e)))
            else:
                summary.processed += 1
                stamp = msg.header.stamp
                writer.write(ALIGN_RESULT_TOPIC, result_message(result, stamp), stamp_ns)
                if result.found:
                    summary.found += 1
                    writer.write(ALIGN_OFFSET_TOPIC, offset_transform_message(
                        result, stamp, cfg.stage_frame, cfg.mark_frame), stamp_ns)
                    writer.write(ALIGN_OFFSET_PX_TOPIC, offset_px_message(result, stamp, cfg.pixel_frame),
                                 stamp_ns)
            if on_frame is not None:
                on_frame(summary.frames, max(total, summary.frames))


