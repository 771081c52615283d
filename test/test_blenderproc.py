"""BlenderProc backend: environment checks, job building, and tiny real renders end to end.

The render tests run BlenderProc for real (Cycles, 1 sample, 160x120) in the environment that
`make sim-setup` builds; `make test` builds it first. Without it they are skipped locally and fail
under CI (CI=true), so a broken setup cannot pass unnoticed.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from weak_template_ros.cli import app
from weak_template_ros.errors import InputError
from weak_template_ros.twin import blenderproc as bp
from weak_template_ros.twin.bop import BopDataset
from weak_template_ros.twin.renderer import Renderer
from weak_template_ros.twin.scenes import (
    SceneSpec,
    arrange_scene,
    generate_dataset,
    iter_scene_frames,
    make_part_set,
    sample_camera,
    sample_lighting,
)

runner = CliRunner()
TINY = {"width": 160, "height": 120, "frames_per_scene": 2, "parts_per_scene": 2, "distractors": 1}
ONE_SAMPLE = bp.BlenderProcConfig(samples=1, timeout_s=300.0)



@pytest.fixture(scope="module")
def models():
    return make_part_set(["hex_nut", "l_bracket", "flange"], seed=0)


# -- environment --------------------------------------------------------------------------------


def test_missing_environment_names_make_sim_setup(tmp_path, monkeypatch):
    with pytest.raises(InputError, match="make sim-setup") as e:
        bp.BlenderProcEnv.locate(tmp_path / "nowhere")
    assert "no such folder" in str(e.value)

    broken = tmp_path / "broken"
    (broken / "blender").mkdir(parents=True)
    (broken / "stamp.json").write_text("{}")
    with pytest.raises(InputError, match="make sim-setup") as e:
        bp.BlenderProcEnv.locate(broken)
    assert "blender/blender" in str(e.value) and "custom-python-packages" in str(e.value)

    # The command line says the same, exit status 2, before writing anything.
    monkeypatch.setenv(bp.ENV_VAR, str(tmp_path / "nowhere"))
    out = tmp_path / "ds"
    res = runner.invoke(app, ["generate", "scenes", "--out", str(out), "--backend", "blenderproc"])
    assert res.exit_code == 2, res.output
    assert "make sim-setup" in res.output and not out.exists()


def test_unknown_backend_is_refused(tmp_path):
    res = runner.invoke(app, ["generate", "scenes", "--out", str(tmp_path), "--backend", "povray"])
    assert res.exit_code == 2 and "'embedded' or 'blenderproc'" in res.output
    res = runner.invoke(app, ["generate", "scenes", "--out", str(tmp_path / "e"), "--physics"])
    assert res.exit_code == 2 and "--backend blenderproc" in res.output and not (tmp_path / "e").exists()


def _load_shim():
    path = bp.SIM_DIR / "blender_shim.py"
    spec = importlib.util.spec_from_file_location("blender_shim", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_blender_shim_reads_blenderprocs_command_line():
    shim = _load_shim()
    argv = ["--background", "--python-use-system-env", "--python-exit-code", "2", "--python", "s.py",
            "--", "s.py", "/tmp/x", "job.json", "out"]
    assert shim.parse(argv) == ("s.py", 2)
    with pytest.raises(SystemExit, match="unsupported option '--render-anim'"):
        shim.parse(["--render-anim", "--python", "s.py"])
    with pytest.raises(SystemExit, match="no --python FILE"):
        shim.parse(["--background", "--", "--python", "s.py"])  # after -- belongs to the script


# -- job building (no Blender) ------------------------------------------------------------------


def test_job_holds_the_embedded_scene(tmp_path, models):
    spec = SceneSpec(**TINY, occlusion_min=0.3, occlusion_max=0.3)
    job, layout = bp.build_job(models, spec, 7, 3, ONE_SAMPLE, tmp_path)
    # Same seeded arrangement as the embedded backend.
    ref = arrange_scene(models, spec, 7, 3, Renderer(spec.camera))
    assert len(layout.placed) == len(ref)
    for p, q in zip(layout.placed, ref, strict=True):
        np.testing.assert_array_equal(p.T_world_obj, q.T_world_obj)
    parts = [o for o in job["objects"] if o["annotated"]]
    assert [o["T_world_obj"] for o in parts] == [p.T_world_obj.tolist() for p in ref if p.obj_id]
    occluders = [o for o in job["objects"] if o["frames"] is not None]
    assert [o["frames"] for o in occluders] == [[0], [1]]
    for im_id, frame in enumerate(job["frames"]):
        rng = np.random.default_rng([7, 3, 1, im_id])
        T_world_cam = sample_camera(spec, rng)
        lighting = sample_lighting(spec, rng)
        np.testing.assert_array_equal(frame["T_world_cam"], T_world_cam)
        # The sun shines along its -z axis: towards the scene, opposite to `direction`.
        sun = job["lights"][im_id]
        z = np.asarray(sun["T_world_light"])[:3, 2]
        np.testing.assert_allclose(z, T_world_cam[:3, :3] @ lighting.direction, atol=1e-12)
        assert sun["frames"] == [im_id]
        assert sun["energy"] == pytest.approx(lighting.intensity * np.pi)
    for key, path in job["meshes"].items():
        with np.load(path) as z:
            assert z["vertices"].shape[1] == 3 and z["faces"].shape[1] == 3, key
    assert job["render"]["samples"] == 1 and job["render"]["denoiser"] is None


# -- real renders ---------------------------------------------------------------------------------


def test_calibration_same_scene_both_backends(tmp_path, models, blenderproc_env):
    env = blenderproc_env
    spec = SceneSpec(**TINY, occlusion_min=0.2, occlusion_max=0.4)
    report = bp.compare_backends(models, spec, seed=1, scene_id=0, cfg=ONE_SAMPLE, env=env,
                                 work_dir=tmp_path)
    # Blender's object matrices are float32: 1e-5 is 10 micrometres / 1e-5 rad at worst.
    assert report["pose_max_abs"] < 1e-5
    for f in report["frames"]:
        assert f["surface_px"] > 0.3 * spec.width * spec.height
        assert f["depth_max_abs_m"] <= bp.DEPTH_TOLERANCE_M, f
        assert min(f["mask_iou"]) >= bp.MASK_IOU_MIN, f
    assert report["passed"]


def test_tiny_blenderproc_dataset_matches_embedded_dataset(tmp_path, models, blenderproc_env):
    env = blenderproc_env
    spec = SceneSpec(**TINY, noise=False)
    emb = generate_dataset(tmp_path / "embedded", models, spec, n_scenes=1, seed=4)
    bpd = bp.generate_dataset_blenderproc(tmp_path / "bproc", models, spec, n_scenes=1, seed=4,
                                          cfg=ONE_SAMPLE, env=env, keep_work=True)
    scene = Path("test") / "000000"
    for name in ("scene_gt.json", "scene_camera.json"):
        assert json.loads((bpd / scene / name).read_text()) == json.loads((emb / scene / name).read_text())
    assert (bpd / "camera.json").read_text() == (emb / "camera.json").read_text()
    assert (bpd / ".blenderproc_work" / "000000" / "blenderproc.log").is_file()

    a, b = BopDataset(emb), BopDataset(bpd)
    assert b.splits() == ["test"] and b.im_ids("test", 0) == [0, 1]
    info_b = b.scene_gt_info("test", 0)
    for fa, fb in zip(a.iter_frames("test"), b.iter_frames("test"), strict=True):
        assert fb.rgb.shape == (120, 160, 3) and fb.rgb.dtype == np.uint8
        assert fb.rgb.std() > 5  # an image, not a blank
        for oa, ob in zip(fa.objects, fb.objects, strict=True):
            np.testing.assert_array_equal(oa.T_cam_obj, ob.T_cam_obj)
            np.testing.assert_array_equal(oa.mask, ob.mask)
            iou = (oa.mask_visib & ob.mask_visib).sum() / max((oa.mask_visib | ob.mask_visib).sum(), 1)
            assert iou >= bp.MASK_IOU_MIN
        # Depth PNGs (0.1 mm steps) agree within 1 mm on surfaces.
        labels = np.full(fa.depth.shape, -1, np.int16)
        for i, o in enumerate(fa.objects):
            labels[o.mask_visib] = i
        surface = bp._surface_pixels(fa.depth, labels) & (fb.depth > 0)
        assert surface.mean() > 0.3
        assert np.abs(fa.depth - fb.depth)[surface].max() <= bp.DEPTH_TOLERANCE_M
        recs = info_b[fb.im_id]
        assert [r["px_count_visib"] for r in recs] == [int(o.mask_visib.sum()) for o in fb.objects]
        np.testing.assert_array_equal(fb.T_cam_world, fa.T_cam_world)


def test_cli_blenderproc_scenes_with_sensor_noise_and_show(tmp_path, models, blenderproc_env):
    cfg = tmp_path / "spec.yaml"
    cfg.write_text("width: 160\nheight: 120\n")
    args = ["generate", "scenes", "--config", str(cfg), "--scenes", "1", "--frames", "2", "--parts", "2",
            "--distractors", "1", "-f", "hex_nut", "-f", "flange"]
    ds, ref = tmp_path / "ds", tmp_path / "ref"
    res = runner.invoke(app, [*args, "--out", str(ds), "--backend", "blenderproc", "--samples", "1",
                              "--materials", "pbr"])
    assert res.exit_code == 0, res.output
    assert runner.invoke(app, [*args, "--out", str(ref)]).exit_code == 0
    frames = list(BopDataset(ds).iter_frames("test"))
    assert len(frames) == 2
    for f, g in zip(frames, BopDataset(ref).iter_frames("test"), strict=True):
        # The same sensor model with the same random stream: the same pixels lose their depth
        # (edges, grazing angles, dropout) and the noise is the same draw.
        valid, valid_ref = f.depth > 0, g.depth > 0
        assert np.mean(valid == valid_ref) > 0.98
        both = valid & valid_ref
        assert np.median(np.abs(f.depth - g.depth)[both]) < 0.001
    res = runner.invoke(app, ["show", str(ds), "--frames", "2"])
    assert res.exit_code == 0, res.output


def test_a_failing_script_reports_its_log(tmp_path, models, blenderproc_env):
    env = blenderproc_env
    job, _ = bp.build_job(models, SceneSpec(**TINY), 0, 0, ONE_SAMPLE, tmp_path)
    job["meshes"] = {k: str(tmp_path / "missing.npz") for k in job["meshes"]}
    with pytest.raises(bp.BlenderProcError, match="exit 2") as e:
        bp.run_job(job, tmp_path, env, timeout_s=300)
    assert "missing.npz" in str(e.value) and "blenderproc.log" in str(e.value)


def test_timeout_ends_blender_as_well(tmp_path, models, blenderproc_env):
    psutil = pytest.importorskip("psutil")
    env = blenderproc_env
    job, _ = bp.build_job(models, SceneSpec(**TINY), 0, 0, ONE_SAMPLE, tmp_path)
    with pytest.raises(bp.BlenderProcError, match="ran past 0.5 s"):
        bp.run_job(job, tmp_path, env, timeout_s=0.5)
    job_path = str((tmp_path / "job.json").resolve())
    left = [p for p in psutil.process_iter(["cmdline"]) if job_path in (p.info["cmdline"] or [])]
    assert left == []


def test_physics_drop_through_the_cli_gives_bop_ground_truth_of_the_settled_parts(tmp_path, models,
                                                                                  blenderproc_env):
    env = blenderproc_env
    cfg = tmp_path / "spec.yaml"
    cfg.write_text("width: 160\nheight: 120\n")
    ds = tmp_path / "ds"
    res = runner.invoke(app, ["generate", "scenes", "--config", str(cfg), "--scenes", "1", "--frames", "2",
                              "--parts", "2", "--distractors", "1", "-f", "hex_nut", "-f", "l_bracket",
                              "--out", str(ds), "--backend", "blenderproc", "--samples", "1", "--physics",
                              "--no-noise", "--seed", "2"])
    assert res.exit_code == 0, res.output
    spec = SceneSpec(width=160, height=120, frames_per_scene=2, parts_per_scene=2, distractors=1)
    fam = make_part_set(["hex_nut", "l_bracket"], seed=2)
    arranged = [p for p in arrange_scene(fam, spec, 2, 0, Renderer(spec.camera)) if p.obj_id]
    data = BopDataset(ds)
    frames = list(data.iter_frames("test"))
    assert len(frames) == 2
    info = data.scene_gt_info("test", 0)
    for f in frames:
        assert sum(r["px_count_visib"] for r in info[f.im_id]) > 0  # the parts are in view
        for o, p in zip(f.objects, arranged, strict=True):
            T_world_obj = np.linalg.inv(f.T_cam_world) @ o.T_cam_obj
            v = np.asarray(fam[o.obj_id].mesh.vertices) @ T_world_obj[:3, :3].T + T_world_obj[:3, 3]
            # Settled on the table (BOP stores poses to 1e-6 mm / 1e-6): the lowest point at z = 0
            # within the collision margin (0.5 mm) and the solver's slack.
            assert abs(v[:, 2].min()) < 0.003, o.obj_id
            assert not np.allclose(T_world_obj, p.T_world_obj, atol=1e-4)  # it did move
    # The calibration check holds for settled poses: BlenderProc's depth and visible masks agree
    # with the exact render of the ground truth the BOP files state.
    report = bp.compare_backends(fam, spec, seed=2, cfg=replace(ONE_SAMPLE, physics=True), env=env,
                                 work_dir=tmp_path / "cmp")
    assert report["passed"], report
    for f, rec in zip(frames, report["frames"], strict=True):
        assert rec["surface_px"] > 0.3 * 160 * 120
        assert [m.sum() for m in (o.mask_visib for o in f.objects)] != [0, 0]


def test_embedded_gt_pass_skips_cycles_depth_and_takes_the_exact_passes(tmp_path, models, blenderproc_env):
    env = blenderproc_env
    spec = SceneSpec(**TINY, noise=False)
    cfg = replace(ONE_SAMPLE, gt_pass="embedded")
    frames = list(bp.iter_blenderproc_frames(models, spec, 3, 0, cfg, env, tmp_path))
    result = json.loads((tmp_path / "out" / "result.json").read_text())
    assert "gt_render_s" not in result["timing"]  # one render only
    with np.load(tmp_path / "out" / "frame_000000.npz") as z:
        assert set(z.files) == {"radiance"}
    for f, g in zip(frames, iter_scene_frames(models, spec, 3, 0), strict=True):
        np.testing.assert_array_equal(f.depth, g.depth)
        for a, b in zip(f.objects, g.objects, strict=True):
            np.testing.assert_array_equal(a.mask_visib, b.mask_visib)
        assert f.rgb.std() > 5
