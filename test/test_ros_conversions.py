"""Image / CameraInfo / pose conversions: every encoding, padding, byte order, errors, and the wire."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
from geometry_msgs.msg import Pose
from rclpy.qos import QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import CameraInfo, Image

from weak_template_ros.camera import CameraIntrinsics, project
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import make_pose, random_rotation
from weak_template_ros.ros.conversions import (
    ENCODINGS,
    camera_info_to_intrinsics,
    depth_to_image,
    image_to_depth,
    image_to_gray,
    image_to_numpy,
    image_to_rgb,
    intrinsics_to_camera_info,
    matrices_to_pose_array,
    matrix_to_pose,
    matrix_to_pose_stamped,
    matrix_to_transform_stamped,
    ns_to_stamp,
    numpy_to_image,
    pose_array_to_matrices,
    pose_stamped_to_matrix,
    pose_to_matrix,
    rgb_to_image,
    stamp_to_ns,
    transform_to_matrix,
)

H, W = 7, 5  # odd sizes: no accidental alignment


def _sample(encoding: str, rng: np.random.Generator) -> np.ndarray:
    dtype, channels = ENCODINGS[encoding]
    shape = (H, W, channels) if channels > 1 else (H, W)
    if dtype.kind == "f":
        a = rng.uniform(0.1, 5.0, shape).astype(dtype)
        a[0, 0] = np.nan  # invalid depth travels unchanged
        a[1, 1] = 0.0
        return a
    return rng.integers(0, np.iinfo(dtype).max, shape, endpoint=True).astype(dtype)


def _handmade(a: np.ndarray, encoding: str, pad: int, big_endian: bool) -> Image:
    """An Image written independently of numpy_to_image: explicit padding bytes and byte order."""
    dtype = a.dtype.newbyteorder(">" if big_endian else "<")
    rows = np.ascontiguousarray(a.astype(dtype)).reshape(a.shape[0], -1).view(np.uint8)
    padded = np.full((a.shape[0], rows.shape[1] + pad), 0xAB, np.uint8)
    padded[:, : rows.shape[1]] = rows
    return Image(height=a.shape[0], width=a.shape[1], encoding=encoding, is_bigendian=int(big_endian),
                 step=padded.shape[1], data=padded.tobytes())


@pytest.mark.parametrize("encoding", list(ENCODINGS))
def test_round_trip_is_exact(encoding):
    a = _sample(encoding, np.random.default_rng(1))
    msg = numpy_to_image(a, encoding, stamp=123_000_000_456, frame_id="cam")
    assert msg.step == W * a.itemsize * (a.shape[2] if a.ndim == 3 else 1)
    assert len(msg.data) == msg.height * msg.step
    assert stamp_to_ns(msg.header.stamp) == 123_000_000_456 and msg.header.frame_id == "cam"
    back = image_to_numpy(msg, "t")
    assert back.dtype == a.dtype and back.shape == a.shape
    np.testing.assert_array_equal(back, a)


@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize(("pad", "big_endian"), [(0, True), (3, False), (5, True), (64, False)])
def test_padding_and_byte_order(encoding, pad, big_endian):
    a = _sample(encoding, np.random.default_rng(2))
    back = image_to_numpy(_handmade(a, encoding, pad, big_endian), "t")
    assert back.dtype == a.dtype and back.dtype.isnative
    np.testing.assert_array_equal(back, a)


def test_colour_gray_and_depth_views():
    rng = np.random.default_rng(3)
    rgb = rng.integers(0, 256, (H, W, 3), dtype=np.uint8)
    np.testing.assert_array_equal(image_to_rgb(rgb_to_image(rgb, "rgb8")), rgb)
    bgr_msg = rgb_to_image(rgb, "bgr8")
    np.testing.assert_array_equal(image_to_numpy(bgr_msg), rgb[..., ::-1])  # stored as BGR
    np.testing.assert_array_equal(image_to_rgb(bgr_msg), rgb)
    mono = rgb[..., 0].copy()
    np.testing.assert_array_equal(image_to_rgb(numpy_to_image(mono, "mono8")), np.dstack([mono] * 3))
    # ITU-R 601 luma, as OpenCV computes it: 0.299 R + 0.587 G + 0.114 B, rounded.
    luma = np.rint(rgb.astype(float) @ [0.299, 0.587, 0.114])
    assert np.abs(image_to_gray(bgr_msg).astype(float) - luma).max() <= 1
    np.testing.assert_array_equal(image_to_gray(rgb_to_image(rgb)), image_to_gray(bgr_msg))

    mm = np.array([[0, 1, 1234, 65535]], np.uint16)
    depth = image_to_depth(numpy_to_image(mm, "16UC1"))
    assert depth.dtype == np.float32
    np.testing.assert_allclose(depth, mm / 1000.0, rtol=1e-7)
    assert depth[0, 0] == 0  # 0 stays "invalid"


def test_depth_encodings_from_metres():
    d = np.array([[0.0, np.nan, -1.0, 0.0004, 0.0006, 1.2344, 65.535, 70.0]], np.float32)
    msg16 = depth_to_image(d, "16UC1")
    assert msg16.encoding == "16UC1"
    np.testing.assert_array_equal(image_to_numpy(msg16), [[0, 0, 0, 0, 1, 1234, 65535, 0]])
    back = image_to_depth(msg16)
    ok = back > 0
    assert np.abs(back[ok] - d[ok]).max() <= 0.0005 + 1e-6  # half a millimetre
    msg32 = depth_to_image(d, "32FC1")
    np.testing.assert_array_equal(image_to_depth(msg32), d)  # NaN == NaN here, bit for bit
    with pytest.raises(InputError, match="depth encoding"):
        depth_to_image(d, "mono16")


@pytest.mark.parametrize("encoding", ["rgba8", "8UC3", "yuv422", "", "RGB8"])
def test_unknown_encoding_names_topic_and_choices(encoding):
    msg = Image(height=1, width=1, encoding=encoding, step=4, data=b"\0" * 4)
    with pytest.raises(InputError) as e:
        image_to_numpy(msg, "/cam/color")
    text = str(e.value)
    assert text.startswith("/cam/color.encoding: expected one of")
    assert "'rgb8'" in text and "'32FC1'" in text and repr(encoding) in text


def test_encoding_not_accepted_by_the_caller():
    msg = numpy_to_image(np.zeros((2, 2), np.float32), "32FC1")
    with pytest.raises(InputError, match=r"colour.encoding: expected one of \['rgb8', 'bgr8', 'mono8'\]"):
        image_to_rgb(msg, "colour")
    with pytest.raises(InputError, match="depth.encoding"):
        image_to_depth(rgb_to_image(np.zeros((2, 2, 3), np.uint8)), "depth")


def test_size_mismatches():
    good = numpy_to_image(np.zeros((4, 3, 3), np.uint8), "rgb8")
    short = Image(height=4, width=3, encoding="rgb8", step=9, data=bytes(good.data)[:-1])
    with pytest.raises(InputError, match=r"img.data: expected height \* step = 4 \* 9 = 36 bytes, got 35"):
        image_to_numpy(short, "img")
    narrow = Image(height=4, width=3, encoding="rgb8", step=8, data=b"\0" * 32)
    with pytest.raises(InputError, match=r"img.step: expected >= width \* bytes per pixel = 9"):
        image_to_numpy(narrow, "img")
    empty = Image(height=0, width=3, encoding="rgb8", step=9, data=b"")
    with pytest.raises(InputError, match="img.height/width: expected a non-empty image, got 3x0"):
        image_to_numpy(empty, "img")
    with pytest.raises(InputError, match="rgb8"):
        numpy_to_image(np.zeros((4, 3), np.uint8), "rgb8")
    with pytest.raises(InputError, match="32FC1"):
        numpy_to_image(np.zeros((4, 3), np.float64), "32FC1")


def test_camera_info_round_trip_and_errors():
    cam = CameraIntrinsics(612.5, 611.0, 318.25, 241.75, 640, 480)
    msg = intrinsics_to_camera_info(cam, stamp=5, frame_id="opt")
    assert msg.distortion_model == "plumb_bob" and list(msg.d) == [0.0] * 5
    np.testing.assert_array_equal(np.reshape(msg.p, (3, 4))[:, :3], cam.K)
    assert camera_info_to_intrinsics(msg) == cam
    with pytest.raises(InputError, match="ci.k: expected a calibrated 3x3 matrix"):
        camera_info_to_intrinsics(CameraInfo(width=640, height=480), "ci")
    with pytest.raises(InputError, match="ci.width/height"):
        camera_info_to_intrinsics(CameraInfo(k=list(cam.K.ravel())), "ci")
    skew = intrinsics_to_camera_info(cam)
    skew.k[1] = 3.0
    with pytest.raises(InputError, match="ci.k: expected .*no skew"):
        camera_info_to_intrinsics(skew, "ci")


def test_camera_info_roi_and_binning_move_projections_consistently():
    full = CameraIntrinsics(600.0, 590.0, 320.3, 239.6, 640, 480)
    msg = intrinsics_to_camera_info(full)
    msg.roi.x_offset, msg.roi.y_offset, msg.roi.width, msg.roi.height = 100, 60, 400, 300
    msg.binning_x, msg.binning_y = 2, 2
    cam = camera_info_to_intrinsics(msg)
    assert (cam.width, cam.height) == (200, 150)
    pts = np.random.default_rng(4).uniform([-0.1, -0.1, 0.5], [0.1, 0.1, 1.0], (20, 3))
    uv_full = project(pts, full)
    # Crop shifts pixel coordinates; binning by 2 maps pixel centre k to (k + 0.5) / 2 - 0.5.
    expected = (uv_full - [100, 60] + 0.5) / 2 - 0.5
    np.testing.assert_allclose(project(pts, cam), expected, atol=1e-9)


def test_poses_round_trip():
    rng = np.random.default_rng(5)
    Ts = [make_pose(random_rotation(rng), rng.uniform(-2, 2, 3)) for _ in range(20)]
    for T in Ts:
        np.testing.assert_allclose(pose_to_matrix(matrix_to_pose(T)), T, atol=1e-12)
        np.testing.assert_allclose(pose_stamped_to_matrix(matrix_to_pose_stamped(T, 7, "c")), T, atol=1e-12)
        ts = matrix_to_transform_stamped(T, 7, "parent", "child")
        assert ts.header.frame_id == "parent" and ts.child_frame_id == "child"
        np.testing.assert_allclose(transform_to_matrix(ts), T, atol=1e-12)
    arr = matrices_to_pose_array(Ts, stamp=9, frame_id="c")
    assert arr.header.frame_id == "c" and len(arr.poses) == 20
    np.testing.assert_allclose(pose_array_to_matrices(arr), np.stack(Ts), atol=1e-12)
    assert pose_array_to_matrices(matrices_to_pose_array([])).shape == (0, 4, 4)


def test_quaternion_convention_and_bad_quaternions():
    Rz90 = np.array([[0.0, -1, 0], [1, 0, 0], [0, 0, 1]])
    q = matrix_to_pose(make_pose(Rz90)).orientation
    np.testing.assert_allclose([q.x, q.y, q.z, q.w], [0, 0, np.sqrt(0.5), np.sqrt(0.5)], atol=1e-12)
    p = Pose()
    p.orientation.z, p.orientation.w = 2.0, 2.0  # not unit: normalised
    np.testing.assert_allclose(pose_to_matrix(p)[:3, :3], Rz90, atol=1e-12)
    p.orientation.z = p.orientation.w = 0.0
    with pytest.raises(InputError, match="det.orientation: expected a non-zero finite quaternion"):
        pose_to_matrix(p, "det")
    with pytest.raises(InputError, match="pose"):
        matrix_to_pose(np.diag([1.0, 1.0, -1.0, 1.0]))


def test_stamps():
    for ns in (0, 1, 999_999_999, 1_000_000_000, 1_795_000_000_123_456_789):
        assert stamp_to_ns(ns_to_stamp(ns)) == ns
    with pytest.raises(InputError):
        ns_to_stamp(-1)


@pytest.mark.skipif(importlib.util.find_spec("cv_bridge") is None, reason="cv_bridge not installed")
@pytest.mark.parametrize("encoding", list(ENCODINGS))
@pytest.mark.parametrize("pad", [0, 3])
def test_same_arrays_as_cv_bridge(encoding, pad):
    from cv_bridge import CvBridge

    a = _sample(encoding, np.random.default_rng(6))
    msg = _handmade(a, encoding, pad, big_endian=False)
    np.testing.assert_array_equal(image_to_numpy(msg), CvBridge().imgmsg_to_cv2(msg, "passthrough"))


@pytest.mark.ros
def test_every_encoding_over_the_wire():
    """Real publisher -> subscriber over loopback: padded and big-endian messages arrive intact."""
    from weak_template_ros.ros.testing import TopicRecorder, ros_session, wait_until

    rng = np.random.default_rng(7)
    cases = [(enc, pad, big) for enc in ENCODINGS for pad, big in ((0, False), (3, True))]
    arrays = [_sample(enc, rng) for enc, _, _ in cases]
    qos = QoSProfile(depth=len(cases), reliability=ReliabilityPolicy.RELIABLE)
    with ros_session() as s:
        sub = s.node("conv_sub")
        rec = TopicRecorder(sub, Image, "conv_test", qos)
        pub = s.node("conv_pub").create_publisher(Image, "conv_test", qos)
        assert wait_until(lambda: pub.get_subscription_count() > 0, 10)
        for a, (enc, pad, big) in zip(arrays, cases, strict=True):
            pub.publish(_handmade(a, enc, pad, big))
        got = rec.wait_for(len(cases), 10)
    assert len(got) == len(cases)
    for a, msg, (enc, pad, _) in zip(arrays, got, cases, strict=True):
        assert msg.encoding == enc and msg.step == W * a.itemsize * (a.shape[2] if a.ndim == 3 else 1) + pad
        np.testing.assert_array_equal(image_to_numpy(msg), a)
