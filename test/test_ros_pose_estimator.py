"""pose_estimator through real nodes and real messages over loopback.

* Sim-in-the-loop, three processes: the ``twin_camera`` and ``pose_estimator`` console scripts
  and this test's subscriber. A hex nut turns and slides among distractors; over >= 30
  processed frames the published poses (stamped like the camera frame they come from) agree
  with the twin's ground truth of the same stamp within the pipeline's accuracy (measured
  offline on 200 frames of the same motion: <= 1.9 deg, <= 3.0 mm; here < 5 deg, < 5 mm and
  ADD-S < 0.1 d, symmetry-aware), for at least 80 % of the frames (offline: 95 %).
* Bad input over the wire (wrong encoding, colour/depth size mismatch, camera_info of another
  camera, missing camera_info, all-NaN depth, zero-size image, out-of-order stamps): each is
  logged, reported on /diagnostics, and the next good frame gives a pose again.
* Parameters at run time: accepted changes take effect on the next frame; invalid values,
  read-only parameters and template libraries of another model are refused with their reason
  and the node keeps its configuration.
* Bad start parameters: exit status 2 with the reason.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys

import numpy as np
import pytest
from diagnostic_msgs.msg import DiagnosticArray
from geometry_msgs.msg import PoseArray, PoseStamped
from rclpy.parameter import Parameter
from rclpy.qos import QoSProfile, ReliabilityPolicy, qos_profile_sensor_data
from sensor_msgs.msg import CameraInfo, Image

from weak_template_ros.linemod.templates import TemplateConfig
from weak_template_ros.metrics import adi, re_te_sym
from weak_template_ros.ros.conversions import (
    depth_to_image,
    image_to_rgb,
    intrinsics_to_camera_info,
    ns_to_stamp,
    pose_array_to_matrices,
    pose_stamped_to_matrix,
    rgb_to_image,
    stamp_to_ns,
)
from weak_template_ros.ros.diagnostics import status_values
from weak_template_ros.ros.pose_estimator import (
    PoseAssets,
    PoseEstimatorConfig,
    PoseEstimatorNode,
    estimate_frame,
    prepare_part_files,
)
from weak_template_ros.ros.testing import TopicRecorder, ros_session, wait_until
from weak_template_ros.ros.twin_camera import (
    COLOR_INFO_TOPIC,
    COLOR_TOPIC,
    DEPTH_TOPIC,
    GT_POSES_TOPIC,
    MovingPartsScene,
    PartMotion,
)
from weak_template_ros.twin.scenes import SceneSpec, make_part_set

pytestmark = pytest.mark.ros
RELIABLE = QoSProfile(depth=200, reliability=ReliabilityPolicy.RELIABLE)
SCENE = dict(width=320, height=240, parts_per_scene=1, distractors=2, distance_min=0.5,
             distance_max=0.6)
MOTION = dict(motion_yaw_deg_s=30.0, motion_shift_m=0.02, motion_period_s=4.0)
RATE_HZ = 10.0
# 144 templates (12 views x 12 in-plane angles) at the scenes' working distance: ~1 s to build.
TEMPLATES = TemplateConfig(subdivisions=0, distances=(0.55,), inplane_steps=12)
MAX_ROT_DEG, MAX_TRANS_M = 5.0, 0.005
POSES = "/pose_estimator/poses"


@pytest.fixture(scope="module")
def part():
    return make_part_set(["hex_nut"], seed=0)[1]


@pytest.fixture(scope="module")
def files(part, tmp_path_factory):
    """(model_path, templates_path) of the hex nut for the 320x240 twin camera."""
    return prepare_part_files(part, SceneSpec(**SCENE).camera, tmp_path_factory.mktemp("pose"), TEMPLATES)


def _errors(part, T, T_gt) -> tuple[float, float, float]:
    """(rotation deg, translation m, ADD-S / diameter), symmetry-aware."""
    r, t = re_te_sym(T[:3, :3], T[:3, 3], T_gt[:3, :3], T_gt[:3, 3], part.symmetry_transforms(1e-3))
    pts = part.sample_points(500, seed=0)[0]
    return math.degrees(r), t, adi(T[:3, :3], T[:3, 3], T_gt[:3, :3], T_gt[:3, 3], pts) / part.diameter


def _statuses(diags: TopicRecorder, name: str = "pose_estimator") -> list:
    return [st for m in diags.messages for st in m.status if st.name.endswith(name)]


def _stop(proc: subprocess.Popen, what: str) -> str:
    proc.send_signal(signal.SIGINT)
    try:
        out, _ = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, _ = proc.communicate()
        pytest.fail(f"{what} ignored SIGINT:\n{out}")
    return out


def _script(name: str) -> str:
    path = os.path.join(os.path.dirname(sys.executable), name)
    return path if os.path.exists(path) else shutil.which(name)


def test_sim_in_the_loop_poses_follow_the_moving_part(part, files):
    model_path, templates_path = files
    env = dict(os.environ)
    twin_args = [f"scene.{k}:={v}" for k, v in SCENE.items()] + \
        [f"{k}:={v}" for k, v in MOTION.items()] + ["families:=[hex_nut]", f"rate_hz:={RATE_HZ}"]
    pose_args = [f"model_path:={model_path}", f"templates_path:={templates_path}",
                 "overlay_rate_hz:=2.0", "diagnostics_period_s:=0.5"]
    procs = {}
    try:
        for name, args in (("pose_estimator", pose_args), ("twin_camera", twin_args)):
            cmd = [_script(name), "--ros-args"]
            for a in args:
                cmd += ["-p", a]
            procs[name] = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                           text=True, env=env)
        with ros_session() as s:
            node = s.node("sim_loop_listener")
            gt = TopicRecorder(node, PoseArray, GT_POSES_TOPIC, RELIABLE)
            poses = TopicRecorder(node, PoseArray, POSES, RELIABLE)
            best = TopicRecorder(node, PoseStamped, "/pose_estimator/pose", RELIABLE)
            overlay = TopicRecorder(node, Image, "/pose_estimator/overlay", qos_profile_sensor_data)
            diags = TopicRecorder(node, DiagnosticArray, "/diagnostics", RELIABLE)

            def matched() -> int:
                stamps = {stamp_to_ns(m.header.stamp) for m in gt.messages}
                return sum(stamp_to_ns(m.header.stamp) in stamps for m in poses.messages)

            ok = wait_until(lambda: matched() >= 30 and overlay.messages, 150, interval=0.2)
            alive = {k: p.poll() is None for k, p in procs.items()}
            assert ok, (matched(), len(poses.messages), len(gt.messages), alive)
            assert all(alive.values()), alive
            assert wait_until(lambda: any(float(status_values(st)["rate_hz"]) > 0
                                          for st in _statuses(diags)), 10)
            results, truth = poses.messages, {stamp_to_ns(m.header.stamp): m for m in gt.messages}
            best_msgs = {stamp_to_ns(m.header.stamp): m for m in best.messages}
            overlays = overlay.messages
            status = [st for st in _statuses(diags) if float(status_values(st)["rate_hz"]) > 0][-1]
    finally:
        outs = {k: _stop(p, k) for k, p in procs.items()}
    # pose_estimator ends cleanly on SIGINT (twin_camera's exit is test_ros_twin_camera's subject).
    assert procs["pose_estimator"].returncode == 0, outs["pose_estimator"]

    # Every result carries the stamp and frame of a camera frame the twin published (results of
    # frames before the listener's ground-truth subscription matched cannot be checked: discovery
    # of the two topics is not simultaneous).
    first_truth = min(truth)
    checked = [m for m in results if stamp_to_ns(m.header.stamp) >= first_truth]
    assert len(checked) >= 30 and all(stamp_to_ns(m.header.stamp) in truth for m in checked), \
        "result stamps invented"
    assert {m.header.frame_id for m in results} == {"camera_color_optical_frame"}
    # Which twin frame each result is: the moving scene's ground truth at t_k = k / rate.
    scene = MovingPartsScene(make_part_set(["hex_nut"], seed=0), SceneSpec(**SCENE), 0, 0, 0)
    motion = PartMotion(MOTION["motion_yaw_deg_s"], MOTION["motion_shift_m"], MOTION["motion_period_s"])
    times = np.cumsum([0.0] + [1.0 / RATE_HZ] * 3000)[:-1]  # as twin_camera adds up its periods
    placed = next(p for p in scene.placed if p.obj_id is not None)
    centre = scene.centres[scene.placed.index(placed)]
    reference = np.stack([scene.T_cam_world @ motion.world_pose(placed.T_world_obj, centre, t)
                          for t in times])
    found, errs, centres, missed, first_found = 0, [], [], [], None
    for m in results:
        g = truth.get(stamp_to_ns(m.header.stamp))
        if g is None:
            continue
        T_gt = pose_array_to_matrices(g)[0]
        k = int(np.argmin(np.abs(reference - T_gt).max(axis=(1, 2))))
        assert np.abs(reference[k] - T_gt).max() < 1e-9
        centres.append(T_gt[:3, 3])
        P = pose_array_to_matrices(m)
        if len(P) == 0:
            missed.append(k)
            continue
        found += 1
        first_found = first_found or (k, P[0])
        errs.append(_errors(part, P[0], T_gt))
        # The best pose on ~/pose is the first of ~/poses (once that subscription had matched).
        assert best_msgs, "no best pose published on ~/pose"
        if stamp_to_ns(m.header.stamp) >= min(best_msgs):
            np.testing.assert_allclose(pose_stamped_to_matrix(best_msgs[stamp_to_ns(m.header.stamp)]),
                                       P[0], atol=1e-9)
    n = len(centres)
    assert n >= 30
    # The part moved: its centre travelled over a centimetre in the camera frame.
    assert np.ptp(np.stack(centres), axis=0).max() > 0.01
    rot, trans, adds = np.array(errs).T
    print(f"sim-in-the-loop: {found}/{n} found (missed frames {missed}), rotation {rot.min():.2f}-"
          f"{rot.max():.2f} deg, translation {1e3 * trans.min():.2f}-{1e3 * trans.max():.2f} mm, "
          f"ADD-S <= {adds.max():.3f} d")
    assert rot.max() < MAX_ROT_DEG and trans.max() < MAX_TRANS_M and adds.max() < 0.1, \
        (rot.max(), trans.max(), adds.max())
    # The node is the core behind a wire: the same frame through estimate_frame in this process
    # gives the same pose, and the frames the node missed are missed there too (the pipeline
    # finds the nut in 190 of this motion's first 200 frames; its misses come in pairs).
    cfg = PoseEstimatorConfig(model_path=model_path, templates_path=templates_path)
    assets = PoseAssets.load(cfg)

    def offline(k: int):
        f = scene.frame(times[k], motion, k)
        return estimate_frame(assets, cfg, rgb_to_image(f.rgb), depth_to_image(f.depth),
                              intrinsics_to_camera_info(f.camera)).estimates

    k, T_node = first_found
    np.testing.assert_allclose(offline(k)[0].T_cam_obj, T_node, atol=1e-6)
    assert found >= n // 2, (found, n)
    for k in missed:
        assert not offline(k), f"frame {k}: found offline, missed by the node"
    # The overlay is the camera image with the pose drawn on it.
    img = image_to_rgb(overlays[-1])
    assert img.shape == (SCENE["height"], SCENE["width"], 3)
    v = status_values(status)
    for key in ("transport.mean_ms", "convert.mean_ms", "detect.mean_ms", "refine.mean_ms",
                "best_icp.mean_ms", "compute.mean_ms", "publish.mean_ms", "latency.mean_ms"):
        assert float(v[key]) >= 0, key
    assert v["sync"] == "ours" and v["detection3d"].startswith("off") and v["tf"].startswith("off")


# ----------------------------------------------------------------------------------------------
# Bad input over the wire


class FramePublisher:
    """Publishes colour / depth / camera_info sets with chosen stamps (reliable)."""

    def __init__(self, node):
        self.color = node.create_publisher(Image, COLOR_TOPIC, RELIABLE)
        self.depth = node.create_publisher(Image, DEPTH_TOPIC, RELIABLE)
        self.info = node.create_publisher(CameraInfo, COLOR_INFO_TOPIC, RELIABLE)

    def send(self, stamp_ns: int, color: Image | None, depth: Image | None, info: CameraInfo | None):
        for pub, msg in ((self.info, info), (self.depth, depth), (self.color, color)):
            if msg is not None:
                msg.header.stamp = ns_to_stamp(stamp_ns)
                msg.header.frame_id = "cam"
                pub.publish(msg)


@pytest.fixture(scope="module")
def frame():
    """A twin frame of the hex nut (the sim-in-the-loop scene at t = 0)."""
    models = make_part_set(["hex_nut"], seed=0)
    return MovingPartsScene(models, SceneSpec(**SCENE), 0, 0, 0).frame(0.0, PartMotion(), 0)


def _node_params(files, **extra) -> list[Parameter]:
    model_path, templates_path = files
    values = {"model_path": model_path, "templates_path": templates_path,
              "image_reliability": "reliable", "diagnostics_period_s": 0.2,
              "input_timeout_s": 0.5, "overlay_rate_hz": 0.0, **extra}
    return [Parameter(k, value=v) for k, v in values.items()]


class Harness:
    """A pose_estimator node in this process, a frame publisher and result recorders."""

    def __init__(self, session, files, frame, **params):
        self.node = session.add(PoseEstimatorNode(context=session.context,
                                                  parameter_overrides=_node_params(files, **params)))
        client = session.node("pose_test_client")
        self.pub = FramePublisher(client)
        self.poses = TopicRecorder(client, PoseArray, POSES, RELIABLE)
        self.diags = TopicRecorder(client, DiagnosticArray, "/diagnostics", RELIABLE)
        self.client = client
        self.frame = frame
        self.stamp = 1_800_000_000_000_000_000
        pubs = (self.pub.color, self.pub.depth, self.pub.info)
        assert wait_until(lambda: all(p.get_subscription_count() > 0 for p in pubs)
                          and client.count_publishers(POSES) > 0, 20)

    def messages(self) -> tuple[Image, Image, CameraInfo]:
        f = self.frame
        return (rgb_to_image(f.rgb), depth_to_image(f.depth), intrinsics_to_camera_info(f.camera))

    def next_stamp(self) -> int:
        self.stamp += 100_000_000
        return self.stamp

    def result(self, stamp: int, timeout: float = 60.0) -> PoseArray | None:
        wait_until(lambda: any(stamp_to_ns(m.header.stamp) == stamp for m in self.poses.messages),
                   timeout, interval=0.02)
        got = [m for m in self.poses.messages if stamp_to_ns(m.header.stamp) == stamp]
        return got[0] if got else None

    def good(self) -> PoseArray:
        """Send the good frame; return its result (a pose of the part is required)."""
        stamp = self.next_stamp()
        self.pub.send(stamp, *self.messages())
        res = self.result(stamp)
        assert res is not None, f"no result for a good frame; last error: {self.node.diagnostics.last_error}"
        return res

    def reported(self, text: str, timeout: float = 20.0) -> bool:
        """True once /diagnostics carried ``text`` in a pose_estimator status message or last_error."""
        return wait_until(lambda: any(text in st.message or text in status_values(st)["last_error"]
                                      for st in _statuses(self.diags)), timeout, interval=0.05)


def test_bad_input_over_the_wire_is_reported_and_the_node_recovers(files, frame, part, capfd):
    with ros_session() as s:
        h = Harness(s, files, frame)
        first = h.good()
        assert len(first.poses) == 1
        T0 = pose_array_to_matrices(first)[0]
        rot, trans, _ = _errors(part, T0, frame.poses[0])
        assert rot < MAX_ROT_DEG and trans < MAX_TRANS_M

        color, depth, info = h.messages()
        yuv = Image(height=color.height, width=color.width, encoding="yuv422", step=color.width * 2,
                    data=bytes(color.width * color.height * 2))
        small_depth = depth_to_image(frame.depth[::2, ::2].copy())
        other_info = intrinsics_to_camera_info(frame.camera.scaled(2.0))
        nan_depth = depth_to_image(np.full_like(frame.depth, np.nan))
        empty = Image(height=0, width=0, encoding="rgb8", step=0, data=b"")
        mono_depth = rgb_to_image(frame.rgb[..., 0].copy(), "mono8")
        cases = [
            ("wrong colour encoding", (yuv, depth, info),
             "color.encoding: expected one of ['rgb8', 'bgr8', 'mono8'], got 'yuv422'"),
            ("wrong depth encoding", (color, mono_depth, info),
             "depth.encoding: expected one of ['32FC1', '16UC1'], got 'mono8'"),
            ("colour/depth size mismatch", (color, small_depth, info),
             "depth: expected the colour image's size 320x240 (depth aligned to colour), got 160x120"),
            ("camera_info of another camera", (color, depth, other_info),
             "depth: expected an image of 640x480 (camera size)"),
            ("all-NaN depth", (color, nan_depth, info), "depth: expected some valid depth"),
            ("zero-size image", (empty, depth, info),
             "color.height/width: expected a non-empty image, got 0x0"),
        ]
        for what, msgs, text in cases:
            stamp = h.next_stamp()
            h.pub.send(stamp, *msgs)
            assert h.reported(text), (what, h.node.diagnostics.last_error)
            assert h.node._worker.is_alive()
            res = h.good()  # recovers with the next good frame
            assert len(res.poses) == 1, what
            np.testing.assert_allclose(pose_array_to_matrices(res)[0], T0, atol=1e-6)
        bad_drops = h.node.diagnostics.drops_total["bad_input"]
        assert bad_drops == len(cases)

        # Missing camera_info: colour and depth keep coming, nothing to synchronise with.
        for _ in range(12):
            h.pub.send(h.next_stamp(), color, depth, None)
            wait_until(lambda: False, 0.05)
        assert h.reported("/camera/color/camera_info: expected messages (the other inputs arrive)")
        assert len(h.good().poses) == 1

        # Out-of-order stamps: a set older than the last one processed is dropped and counted.
        late = h.stamp - 50_000_000
        h.pub.send(late, color, depth, info)
        assert wait_until(lambda: h.node.diagnostics.drops_total["out_of_order"] >= 3, 10)
        assert wait_until(lambda: any(int(status_values(st).get("drops.out_of_order", 0)) >= 3
                                      for st in _statuses(h.diags)), 10)
        assert len(h.good().poses) == 1
        assert h.result(late, timeout=0.5) is None
    err = capfd.readouterr().err
    for _, _, text in cases:
        assert text in err, text  # every problem also went to the log
    assert "out-of-order stamps" in err and "camera_info: expected messages" in err


def test_stamps_going_back_in_time_reset_the_synchroniser(files, frame):
    """A recording that loops: every input keeps arriving older than the last set. The node
    reports it, starts synchronising afresh and estimates again."""
    with ros_session() as s:
        h = Harness(s, files, frame)
        h.good()
        h.stamp -= 60_000_000_000  # one minute back, and it stays there

        def keep_sending() -> bool:  # a looping recording goes on publishing
            h.pub.send(h.next_stamp(), *h.messages())
            return h.reported("stamps went back in time on every input: synchroniser reset", 0.1)

        assert wait_until(keep_sending, 60, interval=0.0)
        assert len(h.good().poses) == 1


# ----------------------------------------------------------------------------------------------
# Parameters


def _set(client, *params):
    fut = client.set_parameters(list(params))
    assert wait_until(fut.done, 30), "parameter service did not answer"
    return fut.result().results


def test_parameter_changes_take_effect_and_invalid_ones_are_refused(files, frame, part, tmp_path):
    from rclpy.parameter_client import AsyncParameterClient

    other_model, other_templates = prepare_part_files(
        make_part_set(["flange"], seed=0)[1], SceneSpec(**SCENE).camera, tmp_path,
        TemplateConfig(subdivisions=0, distances=(0.55,), inplane_steps=1))
    copy = tmp_path / "copy.wtl"
    shutil.copy(files[1], copy)
    with ros_session() as s:
        h = Harness(s, files, frame)
        client = AsyncParameterClient(h.client, "pose_estimator")
        assert client.wait_for_services(timeout_sec=20)
        before = h.node.config
        assert len(h.good().poses) == 1

        (r,) = _set(client, Parameter("pose.verify.score_threshold", value=2.0))
        assert not r.successful and "out of range" in r.reason.lower()
        (r,) = _set(client, Parameter("templates_path", value="/no/such/library.wtl"))
        assert not r.successful and "templates_path" in r.reason and "no such file" in r.reason
        (r,) = _set(client, Parameter("templates_path", value=other_templates))
        assert not r.successful and "model checksum" in r.reason, r.reason
        (r,) = _set(client, Parameter("model_path", value=other_model))
        assert not r.successful and "model checksum" in r.reason, r.reason
        (r,) = _set(client, Parameter("pose.icp.iterations", value=[5]))
        assert not r.successful and "icp.max_distances/iterations" in r.reason, r.reason
        (r,) = _set(client, Parameter("image_queue_depth", value=3))
        assert not r.successful and "read-only" in r.reason.lower(), r.reason
        assert h.node.config == before
        assert len(h.good().poses) == 1  # still working with the old configuration

        (r,) = _set(client, Parameter("frame_id", value="tool0"))
        assert r.successful
        res = h.good()
        assert res.header.frame_id == "tool0" and len(res.poses) == 1
        (r,) = _set(client, Parameter("pose.verify.min_inlier_pixels", value=10_000_000))
        assert r.successful
        assert len(h.good().poses) == 0  # no pose can have ten million inlier pixels at 320x240
        (r,) = _set(client, Parameter("pose.verify.min_inlier_pixels", value=100))
        (r2,) = _set(client, Parameter("templates_path", value=str(copy)))
        assert r.successful and r2.successful
        assert len(h.good().poses) == 1
        assert h.node.assets.library is not None and h.node.config.templates_path == str(copy)
        assert wait_until(lambda: any(f"({copy})" in status_values(st).get("templates", "")
                                      for st in _statuses(h.diags)), 10)


@pytest.mark.parametrize(("args", "message"), [
    ([], "model_path: expected a part mesh file (PLY/OBJ/STL), got ''"),
    (["model_path:=/no/such/part.ply", "templates_path:=x.wtl"],
     "model_path: /no/such/part.ply: expected an existing mesh file, got no such file"),
    (["sync_slop:=-1.0"], "sync_slop"),
])
def test_bad_start_parameters_exit_2_with_the_reason(args, message, capsys):
    from weak_template_ros.ros.node_main import run_node

    argv = ["pose_estimator", "--ros-args"]
    for a in args:
        argv += ["-p", a]
    assert run_node(PoseEstimatorNode, argv) == 2
    assert message in capsys.readouterr().err
