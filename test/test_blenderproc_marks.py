"""BlenderProc mark scenes: the job (no Blender) and tiny real renders measured by the aligner.

The render tests run BlenderProc for real (Cycles, 1 sample, 96x96) in the environment that
`make sim-setup` builds; without it they are skipped locally and fail under CI (CI=true).
"""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
from typer.testing import CliRunner

from weak_template_ros.align import align
from weak_template_ros.cli import app
from weak_template_ros.twin import blenderproc as bp
from weak_template_ros.twin.marks import Degradations, MarkSpec, write_mark_dataset

runner = CliRunner()
SPEC = MarkSpec(kind="cross", size=48.0, line_width=6.0)
SHAPE = (96, 96)



def test_mark_poses_are_those_of_the_embedded_mark_dataset(tmp_path):
    truth = write_mark_dataset(tmp_path, 3, SPEC, Degradations(), SHAPE, seed=9, max_shift=4.0,
                               max_angle=0.05)
    poses, _ = bp.mark_poses(3, seed=9, max_shift=4.0, max_angle=0.05)
    for rec, pose in zip(truth["images"], poses, strict=True):
        assert (rec["dx"], rec["dy"], rec["dtheta"], rec["scale"]) == (pose.tx, pose.ty, pose.theta,
                                                                      pose.scale)


def test_mark_job_moves_the_wafer_as_the_similarity_says(tmp_path):
    poses, _ = bp.mark_poses(2, seed=1, max_shift=4.0, max_angle=0.05)
    cfg = bp.MarkRenderConfig(samples=1, pixel_size_m=20e-6, focal_px=5000.0, supersample=2)
    job = bp.build_mark_job(SPEC, SHAPE, poses, cfg, tmp_path)
    assert job["camera"]["height_m"] == pytest.approx(0.1)
    K = np.asarray(job["camera"]["K"]).reshape(3, 3)
    assert (K[0, 2], K[1, 2]) == (47.5, 47.5)  # the image centre is the optical axis
    for f, pose in zip(job["frames"], poses, strict=True):
        # Image x = world x, image y = -world y; on-screen CCW = right-handed about world +z.
        np.testing.assert_allclose(f["location"], [pose.tx * 20e-6, -pose.ty * 20e-6, 0.0])
        assert f["angle"] == pose.theta
    with np.load(job["texture"]["path"]) as z:
        cov = z["coverage"]
    # The mark's exact area at 2 texels per pixel, centred on the texture.
    n = cov.shape[0]
    assert cov.sum() * (job["texture"]["pitch_m"] / 20e-6) ** 2 == pytest.approx(
        2 * 48 * 6 - 6 * 6, rel=1e-9)
    ys, xs = np.nonzero(cov)
    assert (xs.min() + xs.max()) / 2 == pytest.approx((n - 1) / 2, abs=0.5)
    assert (ys.min() + ys.max()) / 2 == pytest.approx((n - 1) / 2, abs=0.5)


def test_marks_cli_refuses_unknown_backend_and_missing_environment(tmp_path, monkeypatch):
    res = runner.invoke(app, ["generate", "marks", "--out", str(tmp_path / "a"), "--backend", "mitsuba"])
    assert res.exit_code == 2 and "'embedded' or 'blenderproc'" in res.output
    monkeypatch.setenv(bp.ENV_VAR, str(tmp_path / "nowhere"))
    res = runner.invoke(app, ["generate", "marks", "--out", str(tmp_path / "b"), "--backend", "blenderproc"])
    assert res.exit_code == 2 and "make sim-setup" in res.output
    assert not (tmp_path / "b").exists()


def _check_aligned(out, truth):
    """Every image's mark found by the classical aligner within the bound below."""
    tpl = cv2.imread(str(out / "template.png"), cv2.IMREAD_UNCHANGED)
    for rec in truth["images"]:
        img = cv2.imread(str(out / rec["image"]), cv2.IMREAD_UNCHANGED)
        assert img.dtype == np.uint16 and img.shape == SHAPE
        r = align(img, tpl)
        assert r.found, r.reason
        sd = np.sqrt(np.diag(r.covariance)[:3])
        # One Cycles sample per pixel is the noise (a random point of each pixel's filter footprint
        # and one light path): the aligner's covariance is estimated from those residuals, so the
        # error stays within 4 of its standard deviations. Added to that, what is systematic: the
        # mark texture is the twin's exact coverage at 1/4 px, read with bilinear interpolation
        # (symmetric about each edge: no shift, < 0.02 px left from float32 UVs and positions), and
        # the pixel filter is symmetric, so the design template (Gaussian 0.5 px) holds no offset.
        # A wrong sign or axis would be off by 2 |dx| (up to 8 px) or 2 |dtheta| (up to 0.17 rad).
        assert abs(r.dx - rec["dx"]) <= 4 * sd[0] + 0.02, (r.dx, rec, sd)
        assert abs(r.dy - rec["dy"]) <= 4 * sd[1] + 0.02, (r.dy, rec, sd)
        assert abs(r.dtheta - rec["dtheta"]) <= 4 * sd[2] + 0.001, (r.dtheta, rec, sd)


def test_cli_specular_wafer_under_coaxial_light_is_aligned(tmp_path, blenderproc_env):
    out = tmp_path / "wafer"
    res = runner.invoke(app, ["generate", "marks", "--out", str(out), "--n", "2", "--width", "96",
                              "--height", "96", "--size", "48", "--line-width", "6", "--max-shift", "4",
                              "--snr", "0", "--seed", "3", "--backend", "blenderproc", "--samples", "1",
                              "--surface", "wafer", "--light", "coaxial"])
    assert res.exit_code == 0, res.output
    truth = json.loads((out / "ground_truth.json").read_text())
    assert truth["format"] == "weak_template_ros.marks/1" and truth["renderer"]["surface"] == "wafer"
    # Same seed, same placements as the embedded marks.
    ref = write_mark_dataset(tmp_path / "ref", 2, SPEC, Degradations(), SHAPE, seed=3, max_shift=4.0,
                             max_angle=0.0873)
    assert [r["dx"] for r in truth["images"]] == [r["dx"] for r in ref["images"]]
    # Bright field: the rougher, brighter aluminium catches the coaxial lamp as the mirror does.
    assert truth["mark"]["polarity"] == 1 and truth["renderer"]["contrast"] > 0.2
    _check_aligned(out, truth)
    assert not (out / ".blenderproc_work").exists()


def test_pcb_under_ring_light_is_aligned(tmp_path, blenderproc_env):
    env = blenderproc_env
    cfg = bp.MarkRenderConfig(surface="pcb", light="ring", samples=1, timeout_s=300.0)
    truth = bp.write_mark_dataset_blenderproc(tmp_path, 2, SPEC, SHAPE, seed=4, max_shift=4.0,
                                              max_angle=math.radians(5), cfg=cfg, env=env)
    # Low ring light: the gold fiducial mirrors the lamps away from the camera, the solder mask
    # scatters them: a dark mark.
    assert truth["mark"]["polarity"] == -1
    _check_aligned(tmp_path, truth)
