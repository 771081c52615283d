"""twin_camera through real nodes and real messages over loopback.

* As a subprocess (the console-script path): static twin scene frames arrive identical to
  ``iter_scene_frames``' (colour, 32FC1 depth, camera_info, GT poses and ids); bad parameters
  are refused with their reason while frames keep coming; a depth-encoding change takes effect;
  SIGINT ends it cleanly.
* In-process: moving parts (GT turns at the set rate, depth agrees with an independent
  ray cast of each part at its GT pose), diagnostics, max_frames; BOP and rosbag2 sources give
  back exactly what the dataset/bag holds; an invalid start parameter exits with status 2.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseArray
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image
from visualization_msgs.msg import MarkerArray

from weak_template_ros.geometry import rotation_angle
from weak_template_ros.ros.conversions import (
    camera_info_to_intrinsics,
    image_to_depth,
    image_to_rgb,
    pose_array_to_matrices,
    stamp_to_ns,
)
from weak_template_ros.ros.diagnostics import status_values
from weak_template_ros.ros.testing import TopicRecorder, ros_session, wait_until
from weak_template_ros.ros.twin_camera import (
    COLOR_INFO_TOPIC,
    COLOR_TOPIC,
    DEPTH_TOPIC,
    GT_MARKERS_TOPIC,
    GT_POSES_TOPIC,
    TwinCameraNode,
)
from weak_template_ros.twin.scenes import SceneSpec, iter_scene_frames, make_part_set

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
SMALL = dict(width=160, height=120, parts_per_scene=2, distractors=1, frames_per_scene=3)


def _small_params(**extra) -> list[Parameter]:
    ps = [Parameter(f"scene.{k}", value=v) for k, v in SMALL.items()]
    return ps + [Parameter(k, value=v) for k, v in extra.items()]


class CameraListener:
    """Records every camera topic of twin_camera and groups messages into frames by stamp."""

    def __init__(self, node, image_qos=qos_profile_sensor_data):
        self.color = TopicRecorder(node, Image, COLOR_TOPIC, image_qos)
        self.depth = TopicRecorder(node, Image, DEPTH_TOPIC, image_qos)
        self.info = TopicRecorder(node, CameraInfo, COLOR_INFO_TOPIC, RELIABLE)
        self.gt = TopicRecorder(node, PoseArray, GT_POSES_TOPIC, RELIABLE)
        self.markers = TopicRecorder(node, MarkerArray, GT_MARKERS_TOPIC, RELIABLE)

    def frames(self) -> list[dict]:
        """Complete frames (colour, depth, info, gt, markers with one stamp), in stamp order."""
        by_stamp: dict[int, dict] = {}
        for role in ("color", "depth", "info", "gt", "markers"):
            for m in getattr(self, role).messages:
                if role == "markers":
                    header = m.markers[0].header if m.markers else None
                else:
                    header = m.header
                if header is not None:
                    by_stamp.setdefault(stamp_to_ns(header.stamp), {})[role] = m
        return [f for _, f in sorted(by_stamp.items()) if len(f) == 5]


def _match_view(gt: np.ndarray, reference) -> int:
    """Index of the reference frame whose GT poses equal ``gt`` (the view a frame shows)."""
    errs = [np.abs(gt - np.stack([o.T_cam_obj for o in f.objects])).max() if len(f.objects) == len(gt)
            else np.inf for f in reference]
    return int(np.argmin(errs))


def _set_params(client, *params):
    fut = client.set_parameters(list(params))
    assert wait_until(fut.done, 15), "parameter service did not answer"
    return fut.result().results


def test_static_scene_subprocess_frames_params_and_sigint():
    from rclpy.parameter_client import AsyncParameterClient

    seed = 3
    spec = SceneSpec(**SMALL)
    reference = list(iter_scene_frames(make_part_set(["all"], seed=seed), spec, seed, 0))
    args = [f"scene.{k}:={v}" for k, v in SMALL.items()] + [f"seed:={seed}", "rate_hz:=15.0"]
    cmd = [sys.executable, "-m", "weak_template_ros.ros.twin_camera", "--ros-args"]
    for a in args:
        cmd += ["-p", a]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            env=dict(os.environ))
    try:
        with ros_session() as s:
            node = s.node("twin_test_listener")
            cam = CameraListener(node)
            assert wait_until(lambda: len(cam.frames()) >= 6, 60), (len(cam.color.messages), proc.poll())
            frames = cam.frames()
            seen = set()
            for f in frames:
                gt = pose_array_to_matrices(f["gt"])
                view = _match_view(gt, reference)
                ref = reference[view]
                seen.add(view)
                np.testing.assert_allclose(gt, np.stack([o.T_cam_obj for o in ref.objects]), atol=1e-9)
                assert [int(m.ns[4:]) for m in f["markers"].markers] == [o.obj_id for o in ref.objects]
                np.testing.assert_array_equal(image_to_rgb(f["color"]), ref.rgb)
                assert f["depth"].encoding == "32FC1"
                np.testing.assert_array_equal(image_to_depth(f["depth"]), ref.depth)
                assert camera_info_to_intrinsics(f["info"]) == ref.camera == spec.camera
                assert {f[r].header.frame_id for r in ("color", "depth", "info", "gt")} == \
                    {"camera_color_optical_frame"}
            assert seen == {0, 1, 2}  # the scene's three views, cycled

            client = AsyncParameterClient(s.node("twin_test_client"), "twin_camera")
            assert client.wait_for_services(timeout_sec=15)
            (res,) = _set_params(client, Parameter("rate_hz", value=-1.0))
            assert not res.successful and "out of range" in res.reason
            res = _set_params(client, Parameter("source", value="bop"),
                              Parameter("bop_root", value="/no/such/dataset"))
            refused = [r for r in res if not r.successful]
            assert refused and "bop_root" in refused[0].reason, [r.reason for r in res]
            (res,) = _set_params(client, Parameter("scene.distance_min", value=5.0))  # > distance_max
            assert not res.successful and "distance_min" in res.reason
            (res,) = _set_params(client, Parameter("depth_encoding", value="16UC1"))
            assert res.successful

            n0 = len(cam.depth.messages)
            assert wait_until(lambda: sum(m.encoding == "16UC1" for m in cam.depth.messages[n0:]) >= 3, 30)
            assert proc.poll() is None, "twin_camera died"
            for f in cam.frames()[-3:]:
                if f["depth"].encoding != "16UC1":
                    continue
                ref = reference[_match_view(pose_array_to_matrices(f["gt"]), reference)]
                d = image_to_depth(f["depth"])
                valid = ref.depth > 0
                assert np.array_equal(d > 0, valid)
                assert np.abs(d[valid] - ref.depth[valid]).max() <= 0.0005 + 1e-6  # mm rounding
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"twin_camera ignored SIGINT:\n{out}")
    assert proc.returncode == 0, out
    assert "parameter change refused" in out


def test_moving_parts_ground_truth_depth_and_diagnostics():
    from weak_template_ros.twin.renderer import Renderer

    rate, yaw, n = 10.0, 90.0, 8
    families = ["flange", "l_bracket"]
    with ros_session() as s:
        node = s.node("twin_moving_listener")
        cam = CameraListener(node, image_qos=RELIABLE)
        diags = TopicRecorder(node, DiagnosticArray, "/diagnostics", RELIABLE)
        twin = s.add(TwinCameraNode(context=s.context, parameter_overrides=_small_params(
            **{"families": families, "seed": 1, "rate_hz": rate, "max_frames": n,
               "motion_yaw_deg_s": yaw, "motion_shift_m": 0.01, "motion_period_s": 2.0,
               "image_reliability": "reliable", "image_queue_depth": 20, "scene.noise": False,
               "scene.distractors": 0})))
        assert wait_until(lambda: len(cam.frames()) >= n, 30), len(cam.frames())
        time.sleep(3 / rate)
        assert twin.published == n and len(cam.color.messages) == n  # max_frames holds
        assert wait_until(lambda: any(st.name.endswith("twin_camera") and float(
            status_values(st)["rate_hz"]) > 0 for m in diags.messages for st in m.status), 5)
        frames = cam.frames()

    spec = SceneSpec(**{**SMALL, "distractors": 0, "noise": False})
    models = make_part_set(families, seed=1)
    first = next(iter_scene_frames(models, spec, 1, 0))
    gts = [pose_array_to_matrices(f["gt"]) for f in frames]
    np.testing.assert_allclose(gts[0], np.stack([o.T_cam_obj for o in first.objects]), atol=1e-9)
    ids = [int(m.ns[4:]) for m in frames[0]["markers"].markers]
    for a, b in itertools.pairwise(gts):
        for Ta, Tb in zip(a, b, strict=True):  # the camera is still: turns show as camera-frame rotations
            assert abs(math.degrees(rotation_angle(Ta[:3, :3], Tb[:3, :3])) - yaw / rate) < 1e-6
    camera = camera_info_to_intrinsics(frames[0]["info"])
    renderer = Renderer(camera)
    for obj_id in ids:
        renderer.add_mesh(obj_id, models[obj_id].mesh)
    for f, gt in zip(frames, gts, strict=True):
        depth = image_to_depth(f["depth"])
        for obj_id, T in zip(ids, gt, strict=True):
            d_obj = renderer.cast_object(obj_id, T)[0]
            sil = d_obj > 0
            assert sil.sum() > 20
            same = np.abs(depth[sil] - d_obj[sil]) < 1e-5
            in_front = depth[sil] < d_obj[sil]  # another part may hide some of it
            assert np.all(same | in_front)
            assert same.mean() > 0.8


def _tiny_bop(tmp_path):
    from weak_template_ros.twin.bop import BopDataset
    from weak_template_ros.twin.scenes import generate_dataset

    spec = SceneSpec(width=96, height=72, parts_per_scene=2, distractors=0, frames_per_scene=2)
    root = generate_dataset(tmp_path / "bop", make_part_set(["hex_nut", "flange"], seed=0), spec, 1)
    return BopDataset(root)


def test_bop_source_publishes_the_dataset(tmp_path):
    ds = _tiny_bop(tmp_path)
    expected = list(ds.iter_frames("test", masks=False))
    with ros_session() as s:
        node = s.node("twin_bop_listener")
        cam = CameraListener(node, image_qos=RELIABLE)
        twin = s.add(TwinCameraNode(context=s.context, parameter_overrides=[
            Parameter("source", value="bop"), Parameter("bop_root", value=str(ds.root)),
            Parameter("loop", value=False), Parameter("rate_hz", value=20.0),
            Parameter("image_reliability", value="reliable"), Parameter("image_queue_depth", value=10)]))
        assert wait_until(lambda: len(cam.frames()) >= 2, 20)
        time.sleep(0.3)
        frames = cam.frames()
        assert twin.published == 2 and len(frames) == 2  # loop false: the source ends
    for f, ref in zip(frames, expected, strict=True):
        np.testing.assert_array_equal(image_to_rgb(f["color"]), ref.rgb)
        np.testing.assert_array_equal(image_to_depth(f["depth"]), ref.depth)
        assert camera_info_to_intrinsics(f["info"]) == ref.camera
        np.testing.assert_allclose(pose_array_to_matrices(f["gt"]),
                                   np.stack([o.T_cam_obj for o in ref.objects]), atol=1e-9)
        assert [int(m.ns[4:]) for m in f["markers"].markers] == [o.obj_id for o in ref.objects]


@pytest.mark.parametrize(("storage", "latched_info"), [("sqlite3", False), ("mcap", False), ("mcap", True)])
def test_bag_source_republishes_the_recording(tmp_path, storage, latched_info):
    """Every recorded message comes back as recorded; a camera_info recorded once (latched)
    serves every frame, with the frame's stamp."""
    from rclpy.serialization import serialize_message
    from rosbags.rosbag2 import StoragePlugin, Writer
    from rosbags.typesys import Stores, get_typestore

    from weak_template_ros.camera import CameraIntrinsics
    from weak_template_ros.geometry import make_pose
    from weak_template_ros.ros.conversions import (
        depth_to_image,
        intrinsics_to_camera_info,
        matrices_to_pose_array,
        rgb_to_image,
    )

    rng = np.random.default_rng(11)
    camera = CameraIntrinsics.from_fov(40, 30, 70)
    recorded = []
    for k in range(3):
        stamp = 1_700_000_000_000_000_000 + k * 100_000_000
        rgb = rng.integers(0, 256, (30, 40, 3), dtype=np.uint8)
        depth = rng.uniform(0.3, 2.0, (30, 40)).astype(np.float32)
        poses = [make_pose(t=[0.01 * k, 0, 0.5])]
        recorded.append({
            "color": rgb_to_image(rgb, "bgr8", stamp, "rec_frame"),
            "depth": depth_to_image(depth, "16UC1", stamp, "rec_frame"),
            "info": intrinsics_to_camera_info(camera, stamp, "rec_frame"),
            "gt": matrices_to_pose_array(poses, stamp, "rec_frame")})
    path = tmp_path / "rec"
    store = get_typestore(Stores.ROS2_JAZZY)
    plugin = StoragePlugin.MCAP if storage == "mcap" else StoragePlugin.SQLITE3
    topics = {"color": ("/camera/color/image_raw", "sensor_msgs/msg/Image"),
              "depth": ("/camera/aligned_depth_to_color/image_raw", "sensor_msgs/msg/Image"),
              "info": ("/camera/color/camera_info", "sensor_msgs/msg/CameraInfo"),
              "gt": ("/camera/ground_truth/poses", "geometry_msgs/msg/PoseArray")}
    with Writer(path, version=9, storage_plugin=plugin) as w:
        conns = {r: w.add_connection(t, mt, typestore=store) for r, (t, mt) in topics.items()}
        for k, frame in enumerate(recorded):
            for role in ("info", "depth", "color", "gt"):
                if role == "info" and latched_info and k > 0:
                    continue
                msg = frame[role]
                w.write(conns[role], stamp_to_ns(msg.header.stamp), serialize_message(msg))

    with ros_session() as s:
        node = s.node("twin_bag_listener")
        cam = CameraListener(node, image_qos=RELIABLE)
        s.add(TwinCameraNode(context=s.context, parameter_overrides=[
            Parameter("source", value="bag"), Parameter("bag_path", value=str(path)),
            Parameter("bag_restamp", value=False), Parameter("loop", value=False),
            Parameter("rate_hz", value=20.0), Parameter("image_reliability", value="reliable"),
            Parameter("image_queue_depth", value=10)]))
        assert wait_until(lambda: len(cam.gt.messages) >= 3, 20)
        time.sleep(0.2)
        got = {r: getattr(cam, r).messages for r in ("color", "depth", "info", "gt")}
    if latched_info:
        for f in recorded[1:]:
            f["info"] = CameraInfo(**{k: getattr(recorded[0]["info"], k)
                                      for k in recorded[0]["info"].get_fields_and_field_types()})
            f["info"].header = f["color"].header
    for role, msgs in got.items():
        assert [m.header for m in msgs] == [f[role].header for f in recorded], role
        assert msgs == [f[role] for f in recorded], role  # every field, data bytes included
    assert not cam.markers.messages  # a bag has no object ids: no markers invented


@pytest.mark.parametrize(("args", "message"), [
    (["rate_hz:=-1.0"], "rate_hz: expected a value in [0.1, 200.0] Hz, got -1.0"),
    (["source:=bag"], "bag_path: expected a rosbag2 folder"),
    (["source:=bop", "bop_root:=/no/such/dataset"], "bop_root: /no/such/dataset: expected a BOP dataset"),
])
def test_bad_start_parameters_exit_2_with_the_reason(args, message, capsys):
    from weak_template_ros.ros.node_main import run_node

    argv = ["twin_camera", "--ros-args"]
    for a in args:
        argv += ["-p", a]
    assert run_node(TwinCameraNode, argv) == 2
    assert message in capsys.readouterr().err


def test_source_failure_is_reported_and_a_good_parameter_recovers():
    """A scene with no room for its parts fails in the frame thread: the node reports it in
    diagnostics and keeps running; a better placement radius set at run time brings frames back."""
    with ros_session() as s:
        node = s.node("twin_fail_listener")
        cam = CameraListener(node, image_qos=RELIABLE)
        diags = TopicRecorder(node, DiagnosticArray, "/diagnostics", RELIABLE)
        twin = s.add(TwinCameraNode(context=s.context, parameter_overrides=_small_params(
            **{"scene.placement_radius": 0.0, "rate_hz": 20.0, "image_reliability": "reliable"})))

        def errors():
            return [st for m in diags.messages for st in m.status
                    if st.name.endswith("twin_camera") and st.level == DiagnosticStatus.ERROR]

        assert wait_until(lambda: errors(), 10)
        assert "placement_radius" in errors()[0].message and "frame source failed" in errors()[0].message
        assert twin.published == 0 and not cam.color.messages
        twin.set_parameters([Parameter("scene.placement_radius", value=0.12)])
        assert wait_until(lambda: len(cam.frames()) >= 2, 20)
