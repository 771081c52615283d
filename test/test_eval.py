"""BOP evaluation of the pose pipeline (pose.evaluate, `weak-template eval`) on a tiny twin dataset.

Scene 0: the hex nut (obj 1) alone with two distractors, exact render (no sensor noise), so
LINEMOD + ICP recover its known pose. Scene 1: another part (obj 2) and distractors only: the
nut's library must find nothing there, and anything it finds is a false detection.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from weak_template_ros.cli import app
from weak_template_ros.errors import InputError
from weak_template_ros.models import make_part
from weak_template_ros.pose.evaluate import (
    OCCLUSION_BINS,
    STAGES,
    EvalConfig,
    FrameRecord,
    draw_overlays,
    evaluate_bop,
    load_libraries,
    summarise,
    threshold_sweep,
)
from weak_template_ros.twin.bop import BopDataset, BopWriter
from weak_template_ros.twin.scenes import SceneSpec, iter_scene_frames

templates = pytest.importorskip("weak_template_ros.linemod.templates")
runner = CliRunner()
# ADD-S of a canonical (symmetry-turned) pose of a perfect estimate is the mean nearest-neighbour
# distance between two random samplings of the surface (2000 points): about 2 % of the diameter.
ADD_S_SAMPLING_FLOOR = 0.03


@pytest.fixture(scope="module")
def dataset(tmp_path_factory):
    root = tmp_path_factory.mktemp("bop")
    parts = {1: make_part("hex_nut", seed=0), 2: make_part("t_profile", seed=1)}
    spec = SceneSpec(parts_per_scene=1, distractors=2, frames_per_scene=1, noise=False)
    with BopWriter(root) as w:
        w.write_camera(spec.camera, depth_scale=0.1)
        w.write_models(parts)
        for scene_id, obj_id in ((0, 1), (1, 2)):
            for frame in iter_scene_frames({obj_id: parts[obj_id]}, spec, seed=3, scene_id=scene_id):
                w.write_frame(scene_id, frame.im_id, frame)
    ds = BopDataset(root)
    # 144 templates (12 views x 12 in-plane angles) at the scenes' working distance: ~2 s.
    cfg = templates.TemplateConfig(subdivisions=0, distances=(0.6,), inplane_steps=12)
    lib = templates.build_templates(ds.load_model(1), ds.camera, cfg)
    path = lib.save(root / "nut.wtl")
    return root, path


def test_known_pose_recovered_and_absent_part_not_detected(dataset, tmp_path):
    root, wtl = dataset
    libs = load_libraries(root, [wtl])
    assert list(libs) == [1]  # paired by the model checksum of models/obj_000001.ply
    res = evaluate_bop(root, libs, EvalConfig())
    o = res.objects[1]
    assert (o.targets, o.frames, o.frames_without) == (1, 1, 1)
    assert o.ad_recall == 1.0 and o.ar > 0.95, o
    # Exact render: errors at the ICP / sampling floor (0.01 deg and 0.01 mm measured).
    assert o.median_rot_rad < math.radians(0.5) and o.median_trans_m < 0.5e-3, o
    pos = next(r for r in res.records if r.n_gt)
    assert pos.ad[0, 0] < ADD_S_SAMPLING_FLOOR
    neg = next(r for r in res.records if not r.n_gt)
    assert neg.n_est == 0 and o.false_detections == 0 and o.false_detection_rate == 0.0
    assert o.bins["0-10%"].targets == 1 and o.bins["0-10%"].ad_recall == 1.0
    assert all(o.times_ms[s]["median"] is not None for s in STAGES)
    # At the configured verification threshold the post-hoc sweep reproduces the run.
    at = threshold_sweep(res.records, [res.pose_config.verify.score_threshold])[0]
    assert at["ad_recall"] == o.ad_recall and at["false_detection_rate"] == o.false_detection_rate
    png = draw_overlays(res, root, tmp_path / "overlay.png", n=2)
    assert png.stat().st_size > 5_000
    csv = res.write_bop_results(tmp_path / "res.csv").read_text().splitlines()
    assert csv[0] == "scene_id,im_id,obj_id,score,R,t,time" and len(csv) == 2
    t_mm = [float(v) for v in csv[1].split(",")[5].split()]
    assert 300 < t_mm[2] < 1000  # BOP file: millimetres


def _no_constant(name):
    raise ValueError(f"non-standard JSON constant {name}")


def test_cli_json_keys_and_units(dataset):
    root, wtl = dataset
    res = runner.invoke(app, ["eval", "--dataset", str(root), "--templates", f"1={wtl}",
                              "--json", "--frames"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout, parse_constant=_no_constant)  # strict JSON: no NaN/Infinity
    assert out["units"]["trans"] == "m" and out["units"]["rot"] == "rad" and out["icp"] is True
    o = out["objects"]["1"]
    for key in ("ad_recall", "ar", "ar_vsd", "ar_mssd", "ar_mspd", "median_rot_rad",
                "median_trans_m", "false_detections", "false_detection_rate", "times_ms", "bins"):
        assert key in o, key
    assert set(o["bins"]) == set(OCCLUSION_BINS) and set(o["times_ms"]) == set(STAGES)
    frame = next(f for f in out["frames"] if f["visib_fract"])
    assert 0.3 < frame["estimates"][0]["t_m"][2] < 1.0  # metres
    assert o["median_trans_m"] < 1e-3


def test_cli_without_icp_runs_coarse_poses_only(dataset):
    root, wtl = dataset
    res = runner.invoke(app, ["eval", "--dataset", str(root), "-t", str(wtl), "--no-icp", "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.stdout)
    assert out["icp"] is False and out["pose_config"]["refine"] is False
    assert out["objects"]["1"]["times_ms"]["icp"]["median"] == 0.0


def test_folder_that_is_not_bop(tmp_path, dataset):
    _, wtl = dataset
    res = runner.invoke(app, ["eval", "--dataset", str(tmp_path), "-t", str(wtl)])
    assert res.exit_code == 2
    assert "camera.json" in res.output and "expected" in res.output


def test_templates_of_another_model(dataset, tmp_path):
    root, wtl = dataset
    spec = SceneSpec()
    cfg = templates.TemplateConfig(subdivisions=0, distances=(0.6,), inplane_steps=1)
    other = templates.build_templates(make_part("hex_nut", seed=5), spec.camera, cfg)
    path = other.save(tmp_path / "other_nut.wtl")
    with pytest.raises(InputError, match=f"^{path}: model checksum: expected a library built "
                       "from one of the dataset's models"):
        load_libraries(root, [path])
    # Paired explicitly with the wrong object: the message names the file and the object.
    with pytest.raises(InputError, match=f"^{wtl}: model checksum: expected .*obj_000002.ply"):
        load_libraries(root, [f"2={wtl}"])
    res = runner.invoke(app, ["eval", "--dataset", str(root), "-t", str(path)])
    assert res.exit_code == 2 and "other_nut.wtl: model checksum" in " ".join(res.output.split())


def _record(ad, scores, visib, rejected_ad=None, rejected_scores=(), score_only=(), obj_id=1):
    """A hand-made FrameRecord: only ADD(-S) matters here (other errors copied from it)."""
    ad = np.asarray(ad, float).reshape(len(scores), len(visib))
    n_e, n_g = ad.shape
    eye = np.broadcast_to(np.eye(4), (n_g, 4, 4)).copy()
    return FrameRecord(0, 0, obj_id, eye, np.asarray(visib, float),
                       np.broadcast_to(np.eye(4), (n_e, 4, 4)).copy(), np.asarray(scores, float),
                       ad, ad, ad * 100, np.repeat(ad[..., None], 10, axis=2), ad * 0.1, ad * 0.01,
                       {s: 1.0 for s in STAGES}, rejected=len(rejected_scores),
                       rejected_ad=np.asarray(rejected_ad if rejected_ad is not None
                                              else np.zeros((0, n_g)), float),
                       rejected_scores=np.asarray(rejected_scores, float),
                       rejected_by_score_only=np.asarray(score_only, bool))


def test_summary_matching_bins_and_misses_by_hand():
    """Two instances in one frame (5 % and 40 % occluded), the best-scored estimate on the
    second: recall 1/2, the first is missed with a wrong pose accepted; a frame with one
    instance whose correct pose verification rejected; two negatives, one with a detection."""
    recs = [
        _record([[0.5, 0.02], [0.5, 0.6]], [0.95, 0.93], [0.95, 0.60]),
        _record(np.zeros((0, 1)), [], [0.85], rejected_ad=[[0.03]], rejected_scores=[0.7],
                score_only=[True]),
        _record(np.zeros((1, 0)), [0.92], []),
        _record(np.zeros((0, 0)), [], []),
    ]
    o = summarise(recs)
    assert (o.targets, o.frames, o.frames_without) == (3, 2, 2)
    assert o.ad_recall == pytest.approx(1 / 3)
    assert o.false_detections == 1 and o.false_detection_rate == 0.5
    assert o.wrong_detections == 1  # the second estimate of frame 1 matches nothing
    assert o.misses == {"rejected_correct": 1, "rejected_correct_score_only": 1,
                        "wrong_accepted": 1, "no_correct_pose": 0}
    assert o.median_rot_rad == pytest.approx(0.002) and o.median_trans_m == pytest.approx(0.0002)
    assert (o.bins["0-10%"].targets, o.bins["0-10%"].ad_recall) == (1, 0.0)
    assert (o.bins["10-30%"].targets, o.bins["10-30%"].ad_recall) == (1, 0.0)
    assert (o.bins["30-50%"].targets, o.bins["30-50%"].ad_recall) == (1, 1.0)
    # MSSD errors = ADD errors here: every MSSD threshold >= 0.05 d passes the one correct match.
    assert o.ar_mssd == pytest.approx(1 / 3)
    # Lowering the threshold to 0.7 accepts the rejected correct pose and keeps the detection.
    low = threshold_sweep(recs, [0.7])[0]
    assert low["ad_recall"] == pytest.approx(2 / 3) and low["false_detection_rate"] == 0.5
    assert threshold_sweep(recs, [0.94])[0]["false_detection_rate"] == 0.0
