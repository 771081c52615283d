"""The alignment graph through real nodes and real messages over loopback (issue 6).

* The controller's rule is ``run_closed_loop``'s: same frames, same moves, same verdict.
* Closed loop: ``twin_stage`` + ``aligner`` (a subprocess started from its console-script module
  with ``config/aligner_node.yaml``) + ``alignment_controller`` (both with their parameter files)
  converge within the alignment issue's move budget (≤ 3 moves to a TRUE residual ≤ 0.05 px, the
  rotation within 4.5 sigma of its measurement noise) at SNR 5 with a true calibration 1 % and
  0.5° off the nominal one, twice (the second from a random start after ``~/reset``).
* The aligner over the wire: wrong encoding, zero-size, NaN 32FC1 and short-data images are
  logged, counted in diagnostics and dropped while the node keeps measuring; a constant image is
  a "not found" result; parameter changes take effect, invalid ones are refused; the
  ``~/reload_template`` service reloads.
* twin_stage: deterministic frames, exact moves and acknowledgements, refused bad commands,
  run-time parameters, reset. The controller's protocol with hand-made messages.
"""

from __future__ import annotations

import math
import signal
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import pytest
import yaml
from diagnostic_msgs.msg import DiagnosticArray, DiagnosticStatus
from geometry_msgs.msg import PoseStamped, PoseWithCovarianceStamped, TransformStamped
from rclpy.parameter import Parameter
from rclpy.qos import DurabilityPolicy, QoSProfile, ReliabilityPolicy
from sensor_msgs.msg import Image
from std_msgs.msg import Float64MultiArray
from std_srvs.srv import Trigger

from weak_template_ros.align import AlignerConfig, AlignmentResult, Calibration, align, prepare_template
from weak_template_ros.align.closed_loop import LoopConfig, run_closed_loop
from weak_template_ros.align.similarity import Similarity
from weak_template_ros.config import load_yaml
from weak_template_ros.ros.aligner import (
    OFFSET_PX_TOPIC,
    OFFSET_TOPIC,
    RESULT_TOPIC,
    AlignerNode,
    AlignerNodeConfig,
    planar_transform,
    pose_to_offset_px,
    result_from_message,
    result_message,
    transform_to_planar,
)
from weak_template_ros.ros.alignment_controller import (
    CONVERGENCE_TOPIC,
    AlignmentControllerNode,
    LoopController,
    LoopRecorder,
)
from weak_template_ros.ros.conversions import ns_to_stamp, numpy_to_image, stamp_to_ns
from weak_template_ros.ros.diagnostics import status_values
from weak_template_ros.ros.params import flatten, load_ros_params, parameter_names, ros_params_section
from weak_template_ros.ros.qos import latched_qos
from weak_template_ros.ros.testing import TopicRecorder, ros_session, wait_until
from weak_template_ros.ros.twin_stage import (
    MOVE_TOPIC,
    MOVED_TOPIC,
    TRUE_OFFSET_TOPIC,
    TRUE_POSE_TOPIC,
    TwinStageConfig,
    TwinStageNode,
    build_stage,
    intensity_to_image,
)
from weak_template_ros.twin.marks import Degradations, MarkSpec, golden_template, make_scene, to_uint16
from weak_template_ros.twin.stage import StageConfig, make_stage

pytestmark = pytest.mark.ros
ROOT = Path(__file__).resolve().parents[1]
RELIABLE = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE)
LATCHED = QoSProfile(depth=50, reliability=ReliabilityPolicy.RELIABLE,
                     durability=DurabilityPolicy.TRANSIENT_LOCAL)
SPEC = MarkSpec("cross", 128, 12)
DEG = Degradations(contrast=0.3, snr=5.0, gradient=0.1, vignetting=0.1)
TIMEOUT = 60.0  # generous: two loaded cores shared by several test workers


def _file_parameters(name: str, node: str, **overrides) -> list[Parameter]:
    """A node's parameters from one of the project's ROS parameter files, plus overrides."""
    flat = ros_params_section(yaml.safe_load((ROOT / "config" / name).read_text()), node)
    flat.update(flatten(overrides))
    return [Parameter(k, value=v) for k, v in flat.items()]


def _write_template(path: Path, spec: MarkSpec = SPEC, d: Degradations = DEG, shape=(256, 256),
                    shift: Similarity | None = None) -> Path:
    """The golden template as a 16-bit PNG (the mark optionally placed off-centre by ``shift``)."""
    if shift is None:
        tpl = golden_template(spec, shape, d)
    else:
        clean = Degradations(background=d.background, contrast=d.contrast, defocus_sigma=d.defocus_sigma)
        tpl = make_scene(spec, shape, clean, rng=0).render_clean(shift)
    cv2.imwrite(str(path), to_uint16(tpl))
    return path


def _call(node, srv_type, name: str, timeout: float = TIMEOUT):
    client = node.create_client(srv_type, name)
    assert client.wait_for_service(timeout_sec=timeout), f"service {name} not available"
    fut = client.call_async(srv_type.Request())
    assert wait_until(fut.done, timeout), f"service {name} did not answer"
    return fut.result()


def _set(node, target: str, *params: Parameter):
    from rclpy.parameter_client import AsyncParameterClient

    client = AsyncParameterClient(node, target)
    assert client.wait_for_services(timeout_sec=TIMEOUT)
    fut = client.set_parameters(list(params))
    assert wait_until(fut.done, TIMEOUT), "parameter service did not answer"
    return fut.result().results


def _values(status: DiagnosticStatus) -> dict[str, str]:
    return status_values(status)


# ----------------------------------------------------------------------------------------------
# The rule


def test_loop_controller_is_run_closed_loops_rule():
    """Driving a stage twin with LoopController gives exactly run_closed_loop's history."""
    prep = prepare_template(golden_template(SPEC, (256, 256), DEG), AlignerConfig(motion="euclidean"))
    nominal = Calibration(pixel_size=1e-6)
    true = Calibration(pixel_size=1e-6, scale=1.01, rotation=math.radians(0.5))
    mech = StageConfig(backlash_xy=0.25e-6)
    start = np.array([18e-6, -12e-6, math.radians(1.5)])
    ref = run_closed_loop(make_stage(SPEC, DEG, true, mech, start=start, rng=1), prep, nominal, LoopConfig(),
                          np.random.default_rng(2))

    stage = make_stage(SPEC, DEG, true, mech, start=start, rng=1)
    rng = np.random.default_rng(2)
    ctl = LoopController(LoopConfig())
    true_px = []
    while True:
        frames = []
        for _ in range(ctl.frames_needed):
            r = align(stage.image(rng), prep, calibration=nominal)
            frames.append((r.dx, r.dy, r.dtheta, r.dx_m, r.dy_m, r.dtheta_stage))
        true_px.append(stage.residual_px())
        decision = ctl.decide(frames)
        if decision.action != "move":
            break
        stage.move(decision.command, rng)
    assert ref.done and decision.action == "converged"
    assert ctl.measured_px == ref.measured_px and true_px == ref.true_px and ctl.moves == ref.moves


def test_parameter_files_match_the_core_files():
    """config/aligner_node.yaml carries config/aligner.yaml's aligner; all three files load."""
    node_cfg = load_ros_params(AlignerNodeConfig, ROOT / "config" / "aligner_node.yaml", "aligner")
    assert node_cfg.aligner == load_yaml(AlignerConfig, ROOT / "config" / "aligner.yaml")
    section = ros_params_section(yaml.safe_load((ROOT / "config" / "aligner_node.yaml").read_text()),
                                 "aligner")
    listed = {k.removeprefix("aligner.") for k in section if k.startswith("aligner.")}
    assert listed == set(parameter_names(AlignerConfig))  # every aligner parameter written out
    stage = load_ros_params(TwinStageConfig, ROOT / "config" / "twin_stage.yaml", "twin_stage")
    assert stage.degradations.snr == 5.0 and stage.true_calibration.scale == 1.01
    assert stage.true_calibration.rotation == pytest.approx(math.radians(0.5))
    from weak_template_ros.ros.alignment_controller import ControllerNodeConfig

    ctl = load_ros_params(ControllerNodeConfig, ROOT / "config" / "alignment_controller.yaml",
                          "alignment_controller")
    assert ctl.loop == LoopConfig(done_theta=6e-4)  # above the rotation noise at SNR 5 (see the file)


# ----------------------------------------------------------------------------------------------
# Closed loop through the three nodes


class LoopListener(LoopRecorder):
    """Everything the closed loop publishes, recorded (LoopRecorder's topics plus the offsets)."""

    def __init__(self, node):
        super().__init__(node)
        self.offsets = TopicRecorder(node, TransformStamped, OFFSET_TOPIC, RELIABLE)
        self.offsets_px = TopicRecorder(node, PoseWithCovarianceStamped, OFFSET_PX_TOPIC, RELIABLE)


def _check_run(rec: LoopListener, run: int, start_ns: int) -> dict:
    verdict = rec.verdict(run)
    v = _values(verdict)
    # The loop's own verdict: done, or (rarely: done_theta is 2.6 sigma of the measured rotation)
    # still chasing rotation noise when max_moves is reached. The budget is judged on the TRUE
    # residual, as the alignment issue's test does.
    assert v["state"] == "converged" or "max_moves" in v["reason"], verdict.message
    assert (verdict.level == DiagnosticStatus.OK) == (v["state"] == "converged")
    moves = int(v["moves"])
    truth = rec.true_per_move(run, start_ns, moves)
    residual = [math.hypot(dx, dy) for dx, dy, _ in truth]
    moves_to = next((k for k, r in enumerate(residual) if r <= 0.05), None)
    assert residual[0] > 1.0  # a real start offset
    assert moves_to is not None and moves_to <= 3, residual  # the alignment issue's move budget
    # Rotation: the loop corrects it with the mean of 4 frames, sigma 2.3e-4 rad = 0.013 deg at
    # SNR 5 (4.7e-4 rad per frame, measured): within 4.5 sigma.
    assert residual[-1] <= 0.05 and abs(truth[-1][2]) < math.radians(0.06), truth[-1]
    return {"verdict": v["state"], "moves": moves, "moves_to_0.05px": moves_to, "true_residual_px": residual}


def test_closed_loop_through_real_nodes_converges(tmp_path):
    tpl = _write_template(tmp_path / "template.png")
    cmd = [sys.executable, "-m", "weak_template_ros.ros.aligner", "--ros-args",
           "--params-file", str(ROOT / "config" / "aligner_node.yaml"),
           "-p", f"template_path:={tpl}", "-p", "debug_image_rate_hz:=5.0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        with ros_session() as s:
            probe = s.node("loop_probe")
            rec = LoopListener(probe)
            stage_params = _file_parameters("twin_stage.yaml", "twin_stage")
            stage = s.add(TwinStageNode(context=s.context, parameter_overrides=stage_params))
            ctl = s.add(AlignmentControllerNode(context=s.context, parameter_overrides=_file_parameters(
                "alignment_controller.yaml", "alignment_controller", autostart=False)))
            assert wait_until(lambda: (rec.connected() and ctl.connected() and len(rec.results.messages) >= 2)
                              or proc.poll() is not None, TIMEOUT), "no results from the aligner"
            assert proc.poll() is None, proc.communicate()[0]

            runs = []
            for run in (1, 2):
                if run == 2:  # a random start: new offset, new wafer, new noise
                    res = _set(probe, "twin_stage", Parameter("start_random_xy", value=20e-6),
                               Parameter("start_random_theta", value=0.02))
                    assert all(r.successful for r in res)
                    assert _call(probe, Trigger, "twin_stage/reset").success
                start_ns = probe.get_clock().now().nanoseconds
                resp = _call(probe, Trigger, "alignment_controller/start")
                assert resp.success and f"run {run} started" in resp.message
                assert wait_until(lambda run=run: rec.verdict(run) is not None, TIMEOUT), \
                    [m.message for m in rec.status.messages]
                runs.append(_check_run(rec, run, start_ns))
            assert stage.resets == 1

            # Found measurements agree with the ground truth of the same frame, in px and metres.
            truth = {stamp_to_ns(m.header.stamp): pose_to_offset_px(m.pose) for m in rec.truth.messages}
            metric = {stamp_to_ns(m.header.stamp): transform_to_planar(m) for m in rec.offsets.messages}
            errors, normalised = [], []
            for m in rec.offsets_px.messages:
                t = stamp_to_ns(m.header.stamp)
                dx, dy, dth = pose_to_offset_px(m.pose.pose)
                cov = np.asarray(m.pose.covariance).reshape(6, 6)
                sd = np.sqrt(np.diag(cov)[[0, 1, 5]])
                assert np.all(sd > 0) and sd[0] < 0.1
                if t in truth:
                    err = np.array([dx, dy, dth]) - truth[t]
                    errors.append(math.hypot(err[0], err[1]))
                    normalised.append(err / sd)
                if t in metric:  # nominal calibration: 1 µm/px, stage y = -image y
                    assert metric[t] == pytest.approx((1e-6 * dx, -1e-6 * dy, dth), abs=1e-12)
            # Errors against the truth of the same frame: as the published covariance says
            # (normalised errors within 5 sigma; their RMS, printed, is ~1), and small.
            normalised = np.asarray(normalised)
            print("measured - true: max", max(errors), "px; RMS normalised (x, y, theta)",
                  np.sqrt(np.mean(normalised ** 2, axis=0)))
            assert len(errors) >= 5 and max(errors) < 0.2, errors
            assert np.abs(normalised).max() < 5.0, normalised
            assert all(result_from_message(r)["found"] == 1.0 for r in rec.results.messages)
            assert rec.debug.messages and rec.debug.messages[-1].encoding == "rgb8"
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
            pytest.fail(f"aligner ignored SIGINT:\n{out}")
    assert proc.returncode == 0, out
    print("closed loop through nodes:", runs)


# ----------------------------------------------------------------------------------------------
# The aligner over the wire


def _mark_image(pose: Similarity, seed: int = 5) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return make_scene(SPEC, (256, 256), DEG, rng).sample(pose, rng)[0]


class AlignerProbe:
    """Sends images to an in-process aligner and waits for what each one causes."""

    def __init__(self, session, aligner: AlignerNode):
        self.aligner = aligner
        self.node = session.node("aligner_probe")
        self.pub = self.node.create_publisher(Image, "camera/image_raw", RELIABLE)
        self.results = TopicRecorder(self.node, Float64MultiArray, RESULT_TOPIC, RELIABLE)
        self.offsets = TopicRecorder(self.node, TransformStamped, OFFSET_TOPIC, RELIABLE)
        self.diags = TopicRecorder(self.node, DiagnosticArray, "/diagnostics", RELIABLE)
        assert wait_until(lambda: self.pub.get_subscription_count() > 0, TIMEOUT)
        self.stamp = 1_000_000_000

    def send(self, msg: Image) -> None:
        self.stamp += 1_000_000
        msg.header.stamp.sec, msg.header.stamp.nanosec = divmod(self.stamp, 1_000_000_000)
        self.pub.publish(msg)

    def measure(self, msg: Image) -> dict:
        """Publish ``msg`` and return its result (with ``offset``: the TransformStamped if found)."""
        self.send(msg)
        stamp = self.stamp
        assert wait_until(lambda: any(result_from_message(r)["stamp_ns"] == stamp
                                      for r in self.results.messages), TIMEOUT)
        r = next(result_from_message(m) for m in self.results.messages
                 if result_from_message(m)["stamp_ns"] == stamp)
        if r["found"]:
            assert wait_until(lambda: any(stamp_to_ns(m.header.stamp) == stamp
                                          for m in self.offsets.messages), TIMEOUT)
            r["offset"] = next(transform_to_planar(m) for m in self.offsets.messages
                               if stamp_to_ns(m.header.stamp) == stamp)
        return r

    def bad(self, msg: Image, expect: str) -> None:
        """Publish a bad image; the aligner must report ``expect`` and publish nothing for it."""
        n = self.aligner.diagnostics.errors_total
        n_results = len(self.results.messages)
        self.send(msg)
        assert wait_until(lambda: self.aligner.diagnostics.errors_total > n, TIMEOUT), expect
        assert expect in self.aligner.diagnostics.last_error, self.aligner.diagnostics.last_error
        assert len(self.results.messages) == n_results


def _aligner(session, template: Path, **extra) -> AlignerNode:
    params = {"template_path": str(template), "image_reliability": "reliable", "image_queue_depth": 10,
              "debug_image_rate_hz": 0.0, **extra}
    return session.add(AlignerNode(context=session.context,
                                   parameter_overrides=[Parameter(k, value=v) for k, v in params.items()]))


def test_aligner_bad_input_is_reported_and_the_node_recovers(tmp_path):
    tpl = _write_template(tmp_path / "template.png")
    truth = Similarity(3.3, -2.2, 0.01)
    img = _mark_image(truth)
    with ros_session() as s:
        aligner = _aligner(s, tpl)
        probe = AlignerProbe(s, aligner)

        good = probe.measure(numpy_to_image(to_uint16(img), "mono16"))
        assert good["found"] == 1.0
        assert (good["dx_px"], good["dy_px"]) == pytest.approx((truth.tx, truth.ty), abs=0.1)

        wrong = numpy_to_image(to_uint16(img), "mono16")
        wrong.encoding = "yuv422"
        probe.bad(wrong, "encoding: expected one of ['mono8', 'mono16', 'rgb8', 'bgr8', '32FC1']")
        probe.bad(Image(encoding="mono8", height=0, width=0, step=0),
                  "height/width: expected a non-empty image")
        nan = img.copy()
        nan[100:110, 100:110] = np.nan
        probe.bad(numpy_to_image(nan, "32FC1"), "image: expected finite pixel values, got 100 NaN/inf pixels")
        short = numpy_to_image(to_uint16(img), "mono16")
        short.data = bytes(short.data)[: len(short.data) // 2]
        probe.bad(short, "data: expected height * step")

        blank = probe.measure(numpy_to_image(np.full((256, 256), 90, np.uint8), "mono8"))
        assert blank["found"] == 0.0 and math.isnan(blank["dx_px"])  # a blank frame: not found

        # Good data again, another encoding: measured as before (8-bit quantisation aside).
        again = probe.measure(numpy_to_image(img, "32FC1"))
        assert again["found"] == 1.0
        assert (again["dx_px"], again["dy_px"]) == pytest.approx((good["dx_px"], good["dy_px"]), abs=0.01)
        rgb = np.repeat(np.clip(np.rint(img * 255), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        colour = probe.measure(numpy_to_image(np.ascontiguousarray(rgb[..., ::-1]), "bgr8"))
        assert (colour["dx_px"], colour["dy_px"]) == pytest.approx((truth.tx, truth.ty), abs=0.1)

        def reported():
            for m in probe.diags.messages:
                for st in m.status:
                    v = _values(st)
                    if st.name.endswith("aligner") and v.get("drops.bad_image") == "4":
                        return st
            return None

        assert wait_until(lambda: reported() is not None, TIMEOUT)
        st = reported()
        v = _values(st)
        assert st.level in (DiagnosticStatus.WARN, DiagnosticStatus.ERROR)
        assert v["errors_total"] == "4" and v["template"] == str(tpl)
        assert int(v["not_found_total"]) >= 1 and int(v["found_total"]) >= 1


def test_aligner_parameters_take_effect_and_reload_service(tmp_path):
    tpl = _write_template(tmp_path / "template.png")
    truth = Similarity(3.3, -2.2, 0.01)
    image = numpy_to_image(to_uint16(_mark_image(truth)), "mono16")
    with ros_session() as s:
        aligner = _aligner(s, tpl)
        probe = AlignerProbe(s, aligner)
        base = probe.measure(image)
        x, y, _ = base["offset"]
        assert (x, y) == pytest.approx((1e-6 * base["dx_px"], -1e-6 * base["dy_px"]), abs=1e-12)

        (res,) = _set(probe.node, "aligner", Parameter("calibration.pixel_size", value=2e-6))
        assert res.successful
        r = probe.measure(image)
        assert r["offset"][:2] == pytest.approx((2 * x, 2 * y), rel=1e-9)  # same image, twice the metres

        for p, reason in [(Parameter("aligner.motion", value="rigid"), "motion: expected one of"),
                          (Parameter("aligner.max_shift", value=-1.0), "max_shift"),
                          (Parameter("template_path", value=str(tmp_path / "none.png")), "template_path"),
                          (Parameter("roi_width", value=-5), "roi_width")]:
            (res,) = _set(probe.node, "aligner", p)
            assert not res.successful and reason in res.reason, (p.name, res.reason)
        assert aligner.config.aligner.motion == "similarity" and aligner.template.path == str(tpl)

        (res,) = _set(probe.node, "aligner", Parameter("aligner.min_score", value=0.99))
        assert res.successful
        assert probe.measure(image)["found"] == 0.0  # the score is below the new threshold
        res = _set(probe.node, "aligner", Parameter("aligner.min_score", value=0.2),
                   Parameter("aligner.motion", value="euclidean"))
        assert all(r.successful for r in res) and aligner.template.prepared.config.motion == "euclidean"
        eu = probe.measure(image)
        assert eu["found"] == 1.0 and eu["scale"] == 1.0  # euclidean: no scale estimated

        # The learned pipeline through the same parameter: the same image measured (CRB of this
        # SNR-5 image ~0.03 px: both methods agree to well within 0.1 px), a motion it cannot do
        # refused with the reason, then back to classical.
        (res,) = _set(probe.node, "aligner", Parameter("method", value="learned"))
        assert res.successful, res.reason
        learned = probe.measure(image)
        assert learned["found"] == 1.0
        assert (learned["dx_px"], learned["dy_px"]) == pytest.approx((truth.tx, truth.ty), abs=0.1)
        (res,) = _set(probe.node, "aligner", Parameter("aligner.motion", value="affine"))
        assert not res.successful and "aligner.motion" in res.reason, res.reason
        (res,) = _set(probe.node, "aligner", Parameter("method", value="classical"))
        assert res.successful and aligner.config.aligner.motion == "euclidean"

        # A template whose mark sits 2 px right of its centre: after reloading, the same image
        # measures 2 px less in x.
        _write_template(tpl, shift=Similarity(2.0, 0.0))
        resp = _call(probe.node, Trigger, "aligner/reload_template")
        assert resp.success and str(tpl) in resp.message
        shifted = probe.measure(image)
        assert shifted["dx_px"] - eu["dx_px"] == pytest.approx(-2.0, abs=0.02)
        assert shifted["dy_px"] == pytest.approx(eu["dy_px"], abs=0.02)

        tpl.unlink()  # reload fails, the template in use stays
        resp = _call(probe.node, Trigger, "aligner/reload_template")
        assert not resp.success and "template_path" in resp.message
        assert probe.measure(image)["dx_px"] == pytest.approx(shifted["dx_px"], abs=1e-9)

        other = _write_template(tmp_path / "centred.png", shape=(160, 160))  # fits the ROI
        res = _set(probe.node, "aligner", Parameter("template_path", value=str(other)),
                   Parameter("roi_x", value=28), Parameter("roi_y", value=28),
                   Parameter("roi_width", value=200), Parameter("roi_height", value=200))
        assert all(r.successful for r in res)
        roi = probe.measure(image)  # ROI centred on the image centre: the same offset
        assert roi["dx_px"] == pytest.approx(eu["dx_px"], abs=0.02)


# ----------------------------------------------------------------------------------------------
# twin_stage


def test_twin_stage_frames_moves_and_parameters():
    overrides = {"seed": 3, "rate_hz": 20.0, "encoding": "mono16", "image_reliability": "reliable",
                 "image_queue_depth": 20, "start_x": 10e-6, "start_y": 5e-6, "start_theta": 0.01,
                 "stage.backlash_xy": 0.0, "stage.backlash_theta": 0.0, "stage.settle_sigma_xy": 0.0,
                 "stage.settle_sigma_theta": 0.0, "degradations.snr": 5.0}
    with ros_session() as s:
        probe = s.node("stage_probe")
        images = TopicRecorder(probe, Image, "camera/image_raw", RELIABLE)
        poses = TopicRecorder(probe, TransformStamped, TRUE_POSE_TOPIC, RELIABLE)
        offsets = TopicRecorder(probe, PoseStamped, TRUE_OFFSET_TOPIC, RELIABLE)
        acks = TopicRecorder(probe, TransformStamped, MOVED_TOPIC, latched_qos())
        mover = probe.create_publisher(TransformStamped, MOVE_TOPIC, RELIABLE)
        params = [Parameter(k, value=v) for k, v in overrides.items()]
        stage = s.add(TwinStageNode(context=s.context, parameter_overrides=params))
        assert wait_until(lambda: len(images.messages) >= 3 and mover.get_subscription_count() > 0, TIMEOUT)

        # Same seed, same bytes: the frames are those of the core twin with the node's streams.
        cfg = stage.config
        twin, rng = build_stage(cfg, 0), np.random.default_rng([cfg.seed, 0, 1])
        reference = [bytes(intensity_to_image(twin.image(rng), "mono16").data) for _ in range(12)]
        first = images.messages[0]
        assert first.encoding == "mono16" and (first.height, first.width) == (256, 256)
        assert bytes(first.data) in reference
        x, y, th = transform_to_planar(poses.messages[0])
        assert (x, y, th) == pytest.approx((10e-6, 5e-6, 0.01), abs=1e-15)
        dx, dy, dth = pose_to_offset_px(offsets.messages[0].pose)  # 1 µm/px, image y = -stage y
        assert (dx, dy, dth) == pytest.approx((10.0, -5.0, 0.01), abs=1e-9)

        mover.publish(planar_transform(-10e-6, -5e-6, -0.01, None, "stage", "cmd_1"))
        assert wait_until(lambda: any(m.child_frame_id == "cmd_1" for m in acks.messages), TIMEOUT)
        ack = next(m for m in acks.messages if m.child_frame_id == "cmd_1")
        assert transform_to_planar(ack) == pytest.approx((-10e-6, -5e-6, -0.01), abs=1e-15)
        t_ack = stamp_to_ns(ack.header.stamp)
        assert wait_until(lambda: any(stamp_to_ns(m.header.stamp) > t_ack for m in poses.messages), TIMEOUT)
        after = [m for m in poses.messages if stamp_to_ns(m.header.stamp) > t_ack]
        before = [m for m in poses.messages if stamp_to_ns(m.header.stamp) < t_ack]
        assert all(transform_to_planar(m) == pytest.approx((10e-6, 5e-6, 0.01), abs=1e-15) for m in before)
        assert transform_to_planar(after[0]) == pytest.approx((0.0, 0.0, 0.0), abs=1e-15)

        tilted = planar_transform(1e-6, 0.0, 0.0, None, "stage", "cmd_tilt")
        tilted.transform.rotation.x, tilted.transform.rotation.w = 0.1, 0.995
        nan = planar_transform(1e-6, 0.0, 0.0, None, "stage", "cmd_nan")
        nan.transform.translation.x = math.nan
        for msg, expect in [(tilted, "planar"), (nan, "finite"),
                            (planar_transform(2e-3, 0.0, 0.0, None, "stage", "cmd_far"), "max_move_xy")]:
            n = stage.diagnostics.errors_total
            mover.publish(msg)
            assert wait_until(lambda n=n: stage.diagnostics.errors_total > n, TIMEOUT)
            assert expect in stage.diagnostics.last_error
        assert stage.moves == 1 and stage.diagnostics.drops_total["bad_move"] == 3
        assert {m.child_frame_id for m in acks.messages} == {"cmd_1"}

        (res,) = _set(probe, "twin_stage", Parameter("mark.line_width", value=100.0))
        assert not res.successful and "line_width" in res.reason
        (res,) = _set(probe, "twin_stage", Parameter("encoding", value="yuv422"))
        assert not res.successful and "encoding" in res.reason
        res = _set(probe, "twin_stage", Parameter("encoding", value="rgb8"),
                   Parameter("degradations.snr", value=0.0))
        assert all(r.successful for r in res)
        n = len(images.messages)
        assert wait_until(lambda: any(m.encoding == "rgb8" for m in images.messages[n:]), TIMEOUT)
        frame = next(m for m in images.messages[n:] if m.encoding == "rgb8")
        rgb = np.frombuffer(bytes(frame.data), np.uint8).reshape(256, 256, 3)
        r = align(rgb, golden_template(SPEC, (256, 256), DEG))  # noise-free now, stage at the target
        assert r.found and math.hypot(r.dx, r.dy) < 0.02

        resp = _call(probe, Trigger, "twin_stage/reset")
        assert resp.success and "reset 1" in resp.message
        assert stage.twin.pose == pytest.approx([10e-6, 5e-6, 0.01], abs=1e-15) and stage.moves == 0


# ----------------------------------------------------------------------------------------------
# The controller's protocol with hand-made messages


def test_controller_protocol():
    """Moves by the measured stage offset, waits for the acknowledgement, ignores frames taken
    before it, averages fine_frames near the target, reports convergence; a lost mark fails."""
    with ros_session() as s:
        probe = s.node("controller_probe")
        results = probe.create_publisher(Float64MultiArray, RESULT_TOPIC, RELIABLE)
        acks = probe.create_publisher(TransformStamped, MOVED_TOPIC, latched_qos())
        moves = TopicRecorder(probe, TransformStamped, MOVE_TOPIC, RELIABLE)
        status = TopicRecorder(probe, DiagnosticStatus, CONVERGENCE_TOPIC, LATCHED)
        ctl = s.add(AlignmentControllerNode(context=s.context, parameter_overrides=[
            Parameter("autostart", value=False), Parameter("loop.fine_frames", value=2),
            Parameter("not_found_limit", value=2)]))
        assert wait_until(lambda: results.get_subscription_count() > 0 and acks.get_subscription_count() > 0
                          and moves.subscription.get_publisher_count() > 0, TIMEOUT)

        def result(dx_px, dy_px, dth, found=True, stamp_ns=None):
            stamp = probe.get_clock().now().nanoseconds if stamp_ns is None else stamp_ns
            r = AlignmentResult(found, dx_px, dy_px, dth, 1.0, 0.9, np.eye(4) * 1e-4,
                                dx_m=dx_px * 1e-6, dy_m=-dy_px * 1e-6, dtheta_stage=dth,
                                covariance_m=np.eye(2) * 1e-16)
            results.publish(result_message(r, ns_to_stamp(stamp)))

        assert _call(probe, Trigger, "alignment_controller/start").success
        result(10.0, -5.0, 0.001)
        assert wait_until(lambda: len(moves.messages) == 1, TIMEOUT)
        move = moves.messages[0]
        assert move.child_frame_id == "run1_move1" and move.header.frame_id == "stage"
        assert transform_to_planar(move) == pytest.approx((-10e-6, -5e-6, -0.001), abs=1e-15)
        assert ctl.state == "moving" and ctl.loop.frames_needed == 2

        t_ack = probe.get_clock().now().nanoseconds
        result(0.0, 0.0, 0.0, stamp_ns=t_ack - 1_000_000)  # before the acknowledgement: ignored
        acks.publish(planar_transform(-10e-6, -5e-6, -0.001, ns_to_stamp(t_ack), "stage", "run1_move1"))
        assert wait_until(lambda: ctl.state == "measuring", TIMEOUT)
        result(0.01, 0.0, 0.0, stamp_ns=t_ack - 5_000_000)  # an image taken before the move settled
        result(0.02, 0.0, 0.0)
        result(0.04, 0.0, 0.0)  # mean 0.03 px < done_px 0.035: converged after 1 move
        assert wait_until(lambda: ctl.state == "converged", TIMEOUT)
        assert len(moves.messages) == 1
        assert wait_until(lambda: any(_values(m)["state"] == "converged" for m in status.messages), TIMEOUT)
        done = next(m for m in status.messages if _values(m)["state"] == "converged")
        v = _values(done)
        assert done.level == DiagnosticStatus.OK and v["moves"] == "1" and v["frames"] == "3"
        assert [float(h) for h in v["history_px"].split(",")] == pytest.approx([math.hypot(10, 5), 0.03])

        assert _call(probe, Trigger, "alignment_controller/start").success  # run 2: the mark is lost
        result(1.0, 1.0, 0.0, found=False)
        result(1.0, 1.0, 0.0, found=False)
        assert wait_until(lambda: ctl.state == "failed", TIMEOUT)
        assert "not found" in ctl.reason
        assert wait_until(lambda: any(_values(m)["state"] == "failed" and m.level == DiagnosticStatus.ERROR
                                      for m in status.messages), TIMEOUT)
        resp = _call(probe, Trigger, "alignment_controller/stop")
        assert not resp.success and "no run in progress" in resp.message


@pytest.mark.parametrize(("node", "args", "message"), [
    (AlignerNode, ["template_path:=/no/such/mark.png"], "template_path: expected an existing image file"),
    (AlignerNode, ["aligner.max_shift:=-3.0"], "aligner.max_shift: expected a value in [0.0, 100000.0] px"),
    (TwinStageNode, ["mark.line_width:=100.0"], "line_width: expected <= size/4"),
    (AlignmentControllerNode, ["loop.max_moves:=-1"], "loop.max_moves: expected a value in [0, 100]"),
])
def test_bad_start_parameters_exit_2_with_the_reason(node, args, message, capsys):
    from weak_template_ros.ros.node_main import run_node

    argv = ["node", "--ros-args"]
    for a in args:
        argv += ["-p", a]
    assert run_node(node, argv) == 2
    assert message in capsys.readouterr().err
