"""`weak-template replay`: a pipeline over a rosbag2 recording, results into a new rosbag2.

Input bags are written here with rosbags (sqlite3 and mcap) from twin frames with ground truth;
the output bag is read back with rosbags (its own CDR reader and the Jazzy typestore) and each
result message is also deserialised with rclpy (what ``ros2 bag play`` would publish).
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from geometry_msgs.msg import PoseArray, PoseStamped
from rclpy.serialization import deserialize_message, serialize_message
from rosbags.rosbag2 import Reader, StoragePlugin, Writer
from rosbags.typesys import Stores, get_typestore
from std_msgs.msg import Float64MultiArray
from typer.testing import CliRunner

from weak_template_ros.cli import app
from weak_template_ros.linemod.templates import TemplateConfig
from weak_template_ros.metrics import re_te_sym
from weak_template_ros.ros.conversions import (
    depth_to_image,
    intrinsics_to_camera_info,
    matrices_to_pose_array,
    numpy_to_image,
    pose_array_to_matrices,
    pose_stamped_to_matrix,
    rgb_to_image,
    stamp_to_ns,
)
from weak_template_ros.ros.pose_estimator import prepare_part_files
from weak_template_ros.ros.twin_camera import MovingPartsScene, PartMotion
from weak_template_ros.twin.scenes import SceneSpec, make_part_set

pytestmark = pytest.mark.ros
SCENE = SceneSpec(width=320, height=240, parts_per_scene=1, distractors=2, distance_min=0.5,
                  distance_max=0.6)
T0 = 1_700_000_000_000_000_000
STORE = get_typestore(Stores.ROS2_JAZZY)
PLUGINS = {"sqlite3": StoragePlugin.SQLITE3, "mcap": StoragePlugin.MCAP}


@pytest.fixture(scope="module")
def part():
    return make_part_set(["hex_nut"], seed=0)[1]


@pytest.fixture(scope="module")
def files(part, tmp_path_factory):
    return prepare_part_files(part, SCENE.camera, tmp_path_factory.mktemp("replay"),
                              TemplateConfig(subdivisions=0, distances=(0.55,), inplane_steps=12))


@pytest.fixture(scope="module")
def twin_frames(part):
    """Four frames of the moving hex nut (twin_camera's moving scene), 0.25 s apart."""
    scene = MovingPartsScene({1: part}, SCENE, 0, 0, 0)
    motion = PartMotion(yaw_deg_s=30.0, shift_m=0.02, period_s=4.0)
    return [scene.frame(0.25 * k, motion, k) for k in range(4)]


def _write_bag(path, storage: str, messages: list[tuple[str, str, object]]) -> None:
    """(topic, type, rclpy message) in order, log time = header stamp."""
    with Writer(path, version=9, storage_plugin=PLUGINS[storage]) as w:
        conns = {}
        for topic, msgtype, msg in messages:
            if topic not in conns:
                conns[topic] = w.add_connection(topic, msgtype, typestore=STORE)
            w.write(conns[topic], stamp_to_ns(msg.header.stamp), serialize_message(msg))


def _read_bag(path) -> dict[str, list[tuple[int, str, bytes]]]:
    """topic -> [(log time, type, raw CDR)] of a bag."""
    out: dict[str, list] = {}
    with Reader(path) as r:
        for conn, t, raw in r.messages():
            out.setdefault(conn.topic, []).append((t, conn.msgtype, bytes(raw)))
    return out


def _replay(*args) -> dict:
    result = CliRunner().invoke(app, ["replay", *map(str, args), "--json"])
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


@pytest.mark.parametrize(("storage_in", "storage_out"), [("sqlite3", "mcap"), ("mcap", "sqlite3")])
def test_pose_replay_writes_poses_rclpy_and_rosbags_read(tmp_path, part, files, twin_frames,
                                                         storage_in, storage_out):
    messages, truth = [], {}
    for k, f in enumerate(twin_frames):
        stamp = T0 + k * 250_000_000
        depth = f.depth if k != 2 else np.full_like(f.depth, np.nan)  # frame 2: no valid depth
        messages += [("/camera/color/camera_info", "sensor_msgs/msg/CameraInfo",
                      intrinsics_to_camera_info(f.camera, stamp, "cam")),
                     ("/camera/aligned_depth_to_color/image_raw", "sensor_msgs/msg/Image",
                      depth_to_image(depth, "32FC1", stamp, "cam")),
                     ("/camera/color/image_raw", "sensor_msgs/msg/Image",
                      rgb_to_image(f.rgb, "bgr8", stamp, "cam")),
                     ("/camera/ground_truth/poses", "geometry_msgs/msg/PoseArray",
                      matrices_to_pose_array(f.poses, stamp, "cam"))]
        truth[stamp] = f.poses[0]
    bag, out = tmp_path / "in", tmp_path / "out"
    _write_bag(bag, storage_in, messages)
    model_path, templates_path = files
    summary = _replay("--bag", bag, "--out", out, "--model", model_path, "--templates", templates_path,
                      "--storage", storage_out)
    assert (summary["frames"], summary["processed"], summary["bad_frames"]) == (4, 3, 1)
    assert "depth: expected some valid depth" in summary["errors"][0]
    assert summary["found"] == 3
    assert summary["written"] == {"/pose_estimator/poses": 3, "/pose_estimator/pose": 3}

    written = _read_bag(out)
    assert set(written) == {"/pose_estimator/poses", "/pose_estimator/pose"}
    syms = part.symmetry_transforms(1e-3)
    for t, msgtype, raw in written["/pose_estimator/poses"]:
        assert msgtype == "geometry_msgs/msg/PoseArray"
        ours = deserialize_message(raw, PoseArray)  # rclpy reads it
        theirs = STORE.deserialize_cdr(raw, msgtype)  # and so does rosbags' own CDR reader
        assert stamp_to_ns(ours.header.stamp) == t and ours.header.frame_id == "cam"
        (T,) = pose_array_to_matrices(ours)
        p = theirs.poses[0]
        np.testing.assert_allclose([p.position.x, p.position.y, p.position.z, p.orientation.w],
                                   [T[0, 3], T[1, 3], T[2, 3], ours.poses[0].orientation.w], atol=0)
        G = truth[t]
        r, d = re_te_sym(T[:3, :3], T[:3, 3], G[:3, :3], G[:3, 3], syms)
        assert math.degrees(r) < 5.0 and d < 0.005, (math.degrees(r), d)
    for (t, _, raw), (t2, _, raw2) in zip(written["/pose_estimator/pose"], written["/pose_estimator/poses"],
                                          strict=True):
        assert t == t2
        best = pose_stamped_to_matrix(deserialize_message(raw, PoseStamped))
        np.testing.assert_allclose(best, pose_array_to_matrices(deserialize_message(raw2, PoseArray))[0],
                                   atol=1e-12)


def test_align_replay_matches_the_aligner(tmp_path):
    from weak_template_ros.align import align
    from weak_template_ros.align.similarity import Similarity
    from weak_template_ros.ros.aligner import AlignerNodeConfig, load_template, result_from_message
    from weak_template_ros.twin.marks import Degradations, MarkSpec, golden_template, make_scene, to_uint16

    spec, deg = MarkSpec("cross", 128, 12), Degradations(contrast=0.3, snr=5.0, gradient=0.1)
    template = golden_template(spec, (256, 256), deg)
    cv2.imwrite(str(tmp_path / "template.png"), to_uint16(template))
    shifts = [Similarity(1.25, -0.5), Similarity(-3.4, 2.2, math.radians(0.5)), Similarity(0.3, 0.7)]
    images, messages = [], []
    for k, s in enumerate(shifts):
        rng = np.random.default_rng(k)
        img = make_scene(spec, (256, 256), deg, rng).sample(s, rng)[0]
        images.append(img)
        messages.append(("/camera/image_raw", "sensor_msgs/msg/Image",
                         numpy_to_image(img, "32FC1", T0 + k * 100_000_000, "cam")))
    blank = numpy_to_image(np.full((256, 256), 100.0, np.float32), "32FC1", T0 + 10**9, "cam")
    bad = numpy_to_image(np.zeros((256, 256, 3), np.uint8), "rgb8", T0 + 2 * 10**9, "cam")
    bad.encoding = "yuv422"
    messages += [("/camera/image_raw", "sensor_msgs/msg/Image", m) for m in (blank, bad)]
    out = tmp_path / "out"
    _write_bag(tmp_path / "in", "mcap", messages)
    bag = next((tmp_path / "in").glob("*.mcap"))  # a bare .mcap file is accepted too
    summary = _replay("--bag", bag, "--out", out, "--pipeline", "align", "--template",
                      tmp_path / "template.png")
    assert (summary["frames"], summary["processed"], summary["found"], summary["bad_frames"]) == (5, 4, 3, 1)
    assert "encoding" in summary["errors"][0]

    written = _read_bag(out)
    results = [result_from_message(deserialize_message(raw, Float64MultiArray))
               for _, _, raw in written["/alignment/result"]]
    assert len(results) == 4 and [r["found"] for r in results] == [1.0, 1.0, 1.0, 0.0]
    assert len(written["/alignment/offset"]) == len(written["/alignment/offset_px"]) == 3
    node_cfg = AlignerNodeConfig()
    prepared = load_template(str(tmp_path / "template.png"), node_cfg.aligner).prepared
    for img, s, r in zip(images, shifts, results, strict=False):
        # What the aligner node computes with its default parameters.
        direct = align(img, prepared, expected=(127.5, 127.5), calibration=node_cfg.calibration)
        assert (r["dx_px"], r["dy_px"]) == (direct.dx, direct.dy)
        assert abs(r["dx_px"] - s.tx) < 0.3 and abs(r["dy_px"] - s.ty) < 0.3, (r["dx_px"], r["dy_px"], s)


def test_replay_refuses_bad_arguments(tmp_path, files):
    runner = CliRunner()
    cases = [
        (["--pipeline", "fuse"], "--pipeline: expected one of ['pose', 'align']"),
        (["--model", files[0], "--templates", files[1]], "bag: expected a readable rosbag2"),
        ([], "model_path: expected a part mesh file"),
    ]
    for extra, message in cases:
        args = ["replay", "--bag", tmp_path / "none", "--out", tmp_path / "o", *extra]
        r = runner.invoke(app, [str(a) for a in args])
        assert r.exit_code == 2 and message in r.output.replace("\n", " "), (extra, r.output)
