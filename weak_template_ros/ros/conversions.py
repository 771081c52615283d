"""ROS message <-> core types: images, camera info, poses and stamps.

The one place where ``sensor_msgs/Image``, ``sensor_msgs/CameraInfo`` and the geometry messages
turn into NumPy arrays, :class:`~weak_template_ros.camera.CameraIntrinsics` and 4x4 poses (metres)
and back. Our own code rather than cv_bridge because cv_bridge is not installable from PyPI; on a
ROS install the tests check that both give the same arrays.

Images: every encoding users send is read (rgb8, bgr8, mono8, mono16, 16UC1 depth in mm, 32FC1
depth in metres), with row padding (``step`` > width * bytes per pixel) and either byte order.
Anything else is an :class:`~weak_template_ros.errors.InputError` naming the topic and field.
Messages are written with ``bytes`` in ``msg.data``: assigning a NumPy array there is ~150x slower
(79 ms vs 0.5 ms for a 640x480 RGB image, DESIGN.md §4).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence

import cv2
import numpy as np
from builtin_interfaces.msg import Time as TimeMsg
from geometry_msgs.msg import Pose, PoseArray, PoseStamped, Transform, TransformStamped
from scipy.spatial.transform import Rotation
from sensor_msgs.msg import CameraInfo, Image
from std_msgs.msg import Header

from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.errors import InputError, describe_array
from weak_template_ros.geometry import check_pose, make_pose

#: encoding -> (NumPy dtype, channels), the encodings we read and write.
ENCODINGS: dict[str, tuple[np.dtype, int]] = {
    "rgb8": (np.dtype(np.uint8), 3),
    "bgr8": (np.dtype(np.uint8), 3),
    "mono8": (np.dtype(np.uint8), 1),
    "mono16": (np.dtype(np.uint16), 1),
    "16UC1": (np.dtype(np.uint16), 1),
    "32FC1": (np.dtype(np.float32), 1),
}
COLOUR_ENCODINGS = ("rgb8", "bgr8", "mono8")
DEPTH_ENCODINGS = ("32FC1", "16UC1")
GRAY_ENCODINGS = ("mono8", "mono16", "rgb8", "bgr8")
#: metres per unit of a 16UC1 depth image (the ROS convention: millimetres).
DEPTH_16UC1_SCALE = 0.001
_NATIVE_BIG_ENDIAN = sys.byteorder == "big"


# ----------------------------------------------------------------------------------------------
# Stamps and headers


def stamp_to_ns(stamp) -> int:
    """Nanoseconds of a ``builtin_interfaces/Time`` (or anything with sec/nanosec)."""
    return int(stamp.sec) * 1_000_000_000 + int(stamp.nanosec)


def ns_to_stamp(ns: int) -> TimeMsg:
    """``builtin_interfaces/Time`` of a non-negative nanosecond count."""
    ns = int(ns)
    if ns < 0:
        raise InputError("stamp", "a non-negative time in nanoseconds", ns)
    return TimeMsg(sec=ns // 1_000_000_000, nanosec=ns % 1_000_000_000)


def make_header(stamp=None, frame_id: str = "") -> Header:
    """A Header from a Time message, an ``rclpy.time.Time``, integer nanoseconds or None (zero)."""
    if stamp is None:
        stamp = TimeMsg()
    elif isinstance(stamp, (int, np.integer)):
        stamp = ns_to_stamp(int(stamp))
    elif hasattr(stamp, "to_msg"):
        stamp = stamp.to_msg()
    return Header(stamp=stamp, frame_id=str(frame_id))


# ----------------------------------------------------------------------------------------------
# Images


def _encoding_info(msg: Image, topic: str, accepted: Sequence[str]) -> tuple[np.dtype, int]:
    if msg.encoding not in accepted:
        raise InputError(f"{topic}.encoding", f"one of {list(accepted)}", repr(msg.encoding))
    return ENCODINGS[msg.encoding]


def image_to_numpy(msg: Image, topic: str = "image", accepted: Sequence[str] | None = None) -> np.ndarray:
    """Pixels of an Image as stored: no channel reordering, no unit change.

    Like cv_bridge's ``imgmsg_to_cv2(msg, "passthrough")``: bgr8 stays BGR, 16UC1 stays uint16.

    Parameters
    ----------
    msg : sensor_msgs/Image
    topic : str
        Named in error messages ("<topic>.encoding: expected ...").
    accepted : sequence of str, optional
        Encodings the caller accepts (default: every one in :data:`ENCODINGS`).

    Returns
    -------
    (H, W) or (H, W, 3) array of the encoding's dtype, native byte order
        A view of ``msg.data`` when the rows are unpadded and the byte order is native, a copy
        otherwise.

    Raises
    ------
    InputError
        Unknown encoding, zero size, ``step`` too small, or ``len(data) != height * step``.
    """
    dtype, channels = _encoding_info(msg, topic, tuple(accepted or ENCODINGS))
    h, w, step = int(msg.height), int(msg.width), int(msg.step)
    if h <= 0 or w <= 0:
        raise InputError(f"{topic}.height/width", "a non-empty image", f"{w}x{h}")
    row_bytes = w * channels * dtype.itemsize
    if step < row_bytes:
        raise InputError(f"{topic}.step", f">= width * bytes per pixel = {row_bytes} ({msg.encoding})",
                         step)
    buf = np.frombuffer(msg.data, dtype=np.uint8)
    if buf.size != h * step:
        raise InputError(f"{topic}.data", f"height * step = {h} * {step} = {h * step} bytes", buf.size)
    big = bool(msg.is_bigendian)
    wire = dtype.newbyteorder(">" if big else "<") if dtype.itemsize > 1 else dtype
    shape = (h, w, channels) if channels > 1 else (h, w)
    strides = (step, channels * dtype.itemsize, dtype.itemsize)[: len(shape)]
    arr = np.ndarray(shape, dtype=wire, buffer=buf, strides=strides)
    if dtype.itemsize > 1 and big != _NATIVE_BIG_ENDIAN:
        return arr.astype(dtype)  # byte swap (copies)
    return np.ascontiguousarray(arr)  # copies only padded rows


def image_to_rgb(msg: Image, topic: str = "image") -> np.ndarray:
    """Colour image as (H, W, 3) uint8 RGB (the core's convention) from rgb8, bgr8 or mono8."""
    arr = image_to_numpy(msg, topic, COLOUR_ENCODINGS)
    if msg.encoding == "bgr8":
        return cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)  # 0.1 ms vs 0.85 ms for a NumPy copy, 640x480
    if msg.encoding == "mono8":
        return np.repeat(arr[..., None], 3, axis=2)
    return arr


def image_to_gray(msg: Image, topic: str = "image") -> np.ndarray:
    """Single-channel image: mono8/mono16 as stored, rgb8/bgr8 to uint8 luma (ITU-R 601, OpenCV)."""
    arr = image_to_numpy(msg, topic, GRAY_ENCODINGS)
    if msg.encoding == "rgb8":
        return cv2.cvtColor(arr, cv2.COLOR_RGB2GRAY)
    if msg.encoding == "bgr8":
        return cv2.cvtColor(arr, cv2.COLOR_BGR2GRAY)
    return arr


def image_to_depth(msg: Image, topic: str = "depth") -> np.ndarray:
    """Depth image as (H, W) float32 metres; 0 or NaN = invalid.

    32FC1 is taken as metres, 16UC1 as millimetres (the ROS depth conventions, REP-118).
    """
    arr = image_to_numpy(msg, topic, DEPTH_ENCODINGS)
    if msg.encoding == "16UC1":
        return arr.astype(np.float32) * np.float32(DEPTH_16UC1_SCALE)
    return arr


def numpy_to_image(array: np.ndarray, encoding: str, stamp=None, frame_id: str = "",
                   name: str = "image") -> Image:
    """Image message holding ``array`` exactly as given (no channel reordering, no unit change).

    Parameters
    ----------
    array : (H, W) or (H, W, 3) array
        Its dtype and channel count must match ``encoding`` (see :data:`ENCODINGS`).
    encoding : str
    stamp, frame_id :
        Header (see :func:`make_header`).
    name : str
        Named in error messages.
    """
    if encoding not in ENCODINGS:
        raise InputError(f"{name}.encoding", f"one of {list(ENCODINGS)}", repr(encoding))
    dtype, channels = ENCODINGS[encoding]
    a = np.asarray(array)
    shape_ok = (a.ndim == 2 and channels == 1) or (a.ndim == 3 and a.shape[2] == channels)
    if not shape_ok or a.dtype.kind != dtype.kind or a.dtype.itemsize != dtype.itemsize:
        want = f"(H, W{', 3' if channels == 3 else ''}) {dtype.name}"
        raise InputError(name, f"an array {want} for encoding {encoding}", describe_array(a))
    if a.shape[0] == 0 or a.shape[1] == 0:
        raise InputError(name, "a non-empty image", describe_array(a))
    a = np.ascontiguousarray(a, dtype=dtype)  # native byte order, C order
    msg = Image()
    msg.header = make_header(stamp, frame_id)
    msg.height, msg.width = int(a.shape[0]), int(a.shape[1])
    msg.encoding = encoding
    msg.is_bigendian = int(_NATIVE_BIG_ENDIAN)
    msg.step = int(a.shape[1] * channels * dtype.itemsize)
    msg.data = a.tobytes()
    return msg


def rgb_to_image(rgb: np.ndarray, encoding: str = "rgb8", stamp=None, frame_id: str = "") -> Image:
    """Image message from an (H, W, 3) uint8 RGB array (rgb8 or bgr8) or an (H, W) uint8 (mono8)."""
    if encoding not in COLOUR_ENCODINGS:
        raise InputError("encoding", f"one of {list(COLOUR_ENCODINGS)}", repr(encoding))
    a = np.asarray(rgb)
    if encoding == "bgr8" and a.ndim == 3 and a.shape[2] == 3 and a.dtype == np.uint8:
        a = cv2.cvtColor(a, cv2.COLOR_RGB2BGR)
    return numpy_to_image(a, encoding, stamp, frame_id, name="rgb")


def depth_to_image(depth: np.ndarray, encoding: str = "32FC1", stamp=None, frame_id: str = "") -> Image:
    """Image message from (H, W) float depth in metres (0 or NaN invalid).

    32FC1 keeps the float32 metres as they are. 16UC1 stores rounded millimetres; invalid pixels
    (NaN, <= 0) and depths beyond the 16-bit range (65.535 m) become 0, the 16UC1 "no data".
    """
    d = np.asarray(depth)
    if d.ndim != 2 or d.dtype.kind != "f":
        raise InputError("depth", "an (H, W) float array in metres", describe_array(d))
    if encoding == "32FC1":
        return numpy_to_image(d.astype(np.float32, copy=False), encoding, stamp, frame_id, "depth")
    if encoding == "16UC1":
        # float32 is exact enough (millimetres up to 65535 need 16 bits of its 24) and 4x faster.
        with np.errstate(invalid="ignore"):
            mm = np.rint(d.astype(np.float32, copy=False) * np.float32(1.0 / DEPTH_16UC1_SCALE))
            mm[~((mm > 0) & (mm <= np.iinfo(np.uint16).max))] = 0  # NaN compares False: 0 too
        return numpy_to_image(mm.astype(np.uint16), encoding, stamp, frame_id, "depth")
    raise InputError("depth encoding", f"one of {list(DEPTH_ENCODINGS)}", repr(encoding))


# ----------------------------------------------------------------------------------------------
# Camera info


def camera_info_to_intrinsics(msg: CameraInfo, topic: str = "camera_info") -> CameraIntrinsics:
    """Intrinsics of the images that go with a CameraInfo, binning and ROI applied.

    ``k``, ``width`` and ``height`` describe the full-resolution calibrated camera; when
    ``roi`` is set the images are that sub-window, and ``binning_x/y`` > 1 shrink them (REP-104).
    Distortion (``d``) is not applied: the core expects rectified or distortion-free images.

    Raises
    ------
    InputError
        Zero size (an uncalibrated camera), an all-zero or skewed ``k``.
    """
    w, h = int(msg.width), int(msg.height)
    if w <= 0 or h <= 0:
        raise InputError(f"{topic}.width/height", "a calibrated camera size", f"{w}x{h}")
    K = np.asarray(msg.k, dtype=np.float64).reshape(-1)
    if K.size != 9 or not np.any(K):
        raise InputError(f"{topic}.k", "a calibrated 3x3 matrix", K.tolist())
    try:
        cam = CameraIntrinsics.from_K(K, w, h)
    except InputError as e:
        raise InputError(f"{topic}.k", e.expected, e.got) from e
    roi = msg.roi
    fx, fy, cx, cy = cam.fx, cam.fy, cam.cx, cam.cy
    if roi.width > 0 and roi.height > 0:
        cx, cy, w, h = cx - roi.x_offset, cy - roi.y_offset, int(roi.width), int(roi.height)
    bx, by = max(int(msg.binning_x), 1), max(int(msg.binning_y), 1)
    # Binning by b merges b pixels: pixel centres move from k to (k + 0.5) / b - 0.5.
    return CameraIntrinsics(fx / bx, fy / by, (cx + 0.5) / bx - 0.5, (cy + 0.5) / by - 0.5,
                            w // bx, h // by)


def intrinsics_to_camera_info(camera: CameraIntrinsics, stamp=None, frame_id: str = "") -> CameraInfo:
    """CameraInfo of a distortion-free pinhole camera (plumb_bob, D = 0, R = I, P = [K | 0])."""
    msg = CameraInfo()
    msg.header = make_header(stamp, frame_id)
    msg.width, msg.height = int(camera.width), int(camera.height)
    msg.distortion_model = "plumb_bob"
    msg.d = [0.0] * 5
    msg.k = camera.K.reshape(-1).tolist()
    msg.r = np.eye(3).reshape(-1).tolist()
    msg.p = np.hstack([camera.K, np.zeros((3, 1))]).reshape(-1).tolist()
    return msg


# ----------------------------------------------------------------------------------------------
# Poses


def _quat_xyzw(T: np.ndarray) -> np.ndarray:
    return Rotation.from_matrix(T[:3, :3]).as_quat()  # scipy's order is (x, y, z, w), as ROS


def _matrix_from(position, orientation, name: str) -> np.ndarray:
    q = np.array([orientation.x, orientation.y, orientation.z, orientation.w], dtype=np.float64)
    t = np.array([position.x, position.y, position.z], dtype=np.float64)
    n = np.linalg.norm(q)
    if not (np.all(np.isfinite(q)) and n > 1e-6):
        raise InputError(f"{name}.orientation", "a non-zero finite quaternion", q.tolist())
    if not np.all(np.isfinite(t)):
        raise InputError(f"{name}.position", "finite metres", t.tolist())
    return make_pose(Rotation.from_quat(q / n).as_matrix(), t)


def matrix_to_pose(T: np.ndarray, name: str = "pose") -> Pose:
    """geometry_msgs/Pose of a rigid 4x4 transform (metres)."""
    T = check_pose(T, name)
    q = _quat_xyzw(T)
    msg = Pose()
    msg.position.x, msg.position.y, msg.position.z = (float(v) for v in T[:3, 3])
    msg.orientation.x, msg.orientation.y, msg.orientation.z, msg.orientation.w = (float(v) for v in q)
    return msg


def pose_to_matrix(msg: Pose, name: str = "pose") -> np.ndarray:
    """4x4 transform of a geometry_msgs/Pose (the quaternion is normalised)."""
    return _matrix_from(msg.position, msg.orientation, name)


def matrix_to_pose_stamped(T: np.ndarray, stamp=None, frame_id: str = "") -> PoseStamped:
    """geometry_msgs/PoseStamped of a 4x4 pose expressed in ``frame_id``."""
    return PoseStamped(header=make_header(stamp, frame_id), pose=matrix_to_pose(T))


def pose_stamped_to_matrix(msg: PoseStamped, name: str = "pose") -> np.ndarray:
    """4x4 transform of a PoseStamped (its frame is ``msg.header.frame_id``)."""
    return pose_to_matrix(msg.pose, name)


def matrix_to_transform_stamped(T: np.ndarray, stamp=None, parent_frame: str = "",
                                child_frame: str = "") -> TransformStamped:
    """TransformStamped ``T_parent_child`` (maps child-frame points into the parent frame)."""
    T = check_pose(T, "transform")
    msg = TransformStamped(header=make_header(stamp, parent_frame), child_frame_id=str(child_frame))
    tr = msg.transform
    tr.translation.x, tr.translation.y, tr.translation.z = (float(v) for v in T[:3, 3])
    q = _quat_xyzw(T)
    tr.rotation.x, tr.rotation.y, tr.rotation.z, tr.rotation.w = (float(v) for v in q)
    return msg


def transform_to_matrix(msg: Transform | TransformStamped, name: str = "transform") -> np.ndarray:
    """4x4 transform of a Transform or TransformStamped."""
    tr = msg.transform if isinstance(msg, TransformStamped) else msg
    return _matrix_from(tr.translation, tr.rotation, name)


def matrices_to_pose_array(poses: Sequence[np.ndarray] | np.ndarray, stamp=None,
                           frame_id: str = "") -> PoseArray:
    """PoseArray of N 4x4 poses (an (N, 4, 4) array or a list), in ``frame_id``."""
    return PoseArray(header=make_header(stamp, frame_id),
                     poses=[matrix_to_pose(T, f"poses[{i}]") for i, T in enumerate(poses)])


def pose_array_to_matrices(msg: PoseArray, name: str = "poses") -> np.ndarray:
    """(N, 4, 4) float64 poses of a PoseArray (N may be 0)."""
    out = np.zeros((len(msg.poses), 4, 4))
    for i, p in enumerate(msg.poses):
        out[i] = pose_to_matrix(p, f"{name}[{i}]")
    return out
