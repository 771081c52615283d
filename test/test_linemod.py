"""LINEMOD template library and matcher on rendered views of a procedural part.

A small library (12 sphere views x 1 distance x 8 in-plane angles, 320x240 camera) keeps the
module at a few seconds on 2 cores.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import make_pose, rotation_angle
from weak_template_ros.linemod import (
    Matcher,
    MatcherConfig,
    TemplateConfig,
    TemplateLibrary,
    build_templates,
    coarse_pose,
    nms,
    sample_viewpoints,
)
from weak_template_ros.linemod.matcher import template_specificity
from weak_template_ros.models import make_part
from weak_template_ros.twin.renderer import Lighting, Renderer, SceneObject

DIST = 0.3
CAM = CameraIntrinsics.from_fov(320, 240, 60)
# The scene camera: same focal length and size, principal point elsewhere, so a template pose
# (object origin on the optical axis) lands away from the image centre at exactly (CX, CY).
CX, CY = 120.0, 130.0
SCENE_CAM = CameraIntrinsics(CAM.fx, CAM.fy, CX, CY, CAM.width, CAM.height)


@pytest.fixture(scope="module")
def part():
    return make_part("l_bracket", 0)


@pytest.fixture(scope="module")
def library(part):
    cfg = TemplateConfig(subdivisions=0, distances=(DIST,), inplane_steps=8,
                         grad_features=(64, 48, 24), depth_features=(24, 16, 8))
    return build_templates(part, CAM, cfg)


def _render(part, T, camera=SCENE_CAM):
    r = Renderer(camera)
    r.add_mesh("p", part.mesh)
    light = Lighting(direction=(-0.2, -0.4, -1.0), intensity=0.7, ambient=0.3, background=0.25)
    return r.render([SceneObject("p", T, albedo=0.75)], lighting=light)


def _informative(library, count=3):
    """Templates with the most gradient features at level 0 (views that show the part well)."""
    n = (library.grad[0][..., 0] >= 0).sum(1)
    first_inplane = library.meta[:, 2] == 0
    return [int(i) for i in np.argsort(-n * first_inplane, kind="stable")[:count]]


def test_viewpoints_and_poses(library):
    assert len(sample_viewpoints(0)) == 12 and len(sample_viewpoints(2)) == 162
    hemi = sample_viewpoints(2, hemisphere=True)
    assert np.all(hemi[:, 2] >= -1e-9) and 80 <= len(hemi) < 162
    assert len(library) == 12 * 8
    # Every template looks at the object origin from its distance.
    np.testing.assert_allclose(library.poses[:, :3, 3], np.broadcast_to([0, 0, DIST], (96, 3)), atol=1e-12)
    # Features per level are not capped at 63 and sit around the anchor, inside the silhouette box.
    assert library.grad[0].shape[1] == 64 and (library.grad[0][..., 0] >= 0).sum(1).max() == 64
    g = library.grad[0][library.grad[0][..., 0] >= 0]
    box = np.abs(library.bboxes).max()
    assert g[:, 0].max() <= 7 and np.abs(g[:, 1:]).max() <= box + 3
    assert library.has_depth


@pytest.mark.parametrize("k", [0, 1, 2])
def test_own_template_found_at_exact_position_with_top_score(part, library, k):
    i = _informative(library)[k]
    out = _render(part, library.poses[i])
    hyps = Matcher(library, MatcherConfig(device="cpu")).match(out.rgb, camera=SCENE_CAM)
    best = hyps[0]
    assert best.template_id == i
    assert (best.x, best.y) == (round(CX), round(CY))
    # Nearly every feature agrees (noise-free render on another background); the score carries
    # the template's orientation-specificity factor.
    assert best.score > 0.9 * template_specificity(library, MatcherConfig().specificity_scale)[i]
    # The pose comes back: the template's rotation and distance at the matched ray.
    np.testing.assert_allclose(best.T_cam_obj, library.poses[i], atol=1e-9)
    # With depth as well (normal features + measured distance).
    hyps = Matcher(library, MatcherConfig(device="cpu")).match(out.rgb, out.depth, camera=SCENE_CAM)
    assert hyps[0].template_id == i and (hyps[0].x, hyps[0].y) == (round(CX), round(CY))
    assert abs(hyps[0].T_cam_obj[2, 3] - DIST) < 0.003 and abs(hyps[0].scale - 1) < 0.01


@pytest.mark.parametrize("k", [0, 1])
def test_rotated_30_degrees_in_plane_picks_the_nearest_inplane_template(part, library, k):
    i = _informative(library)[k]
    # The in-plane family of this view: 8 templates 45 degrees apart.
    family = np.flatnonzero(library.meta[:, 0] == library.meta[i, 0])
    assert len(family) == 8
    a = math.radians(30.0)
    Rz = np.array([[math.cos(a), math.sin(a), 0], [-math.sin(a), math.cos(a), 0], [0, 0, 1]])
    out = _render(part, make_pose(Rz) @ library.poses[i])
    best = Matcher(library.subset(family), MatcherConfig(device="cpu", score_threshold=0.0)).match(
        out.rgb, camera=SCENE_CAM)[0]
    # 45 degrees is 15 degrees away from the view, 0 degrees is 30 away: 45 wins.
    assert library.meta[family[best.template_id], 2] == pytest.approx(math.radians(45.0))
    # A template 15 degrees off fits best a few pixels away (its features at ~50 px from the
    # anchor are displaced by ~13 px): 6 px is a tenth of the part's extent.
    assert (abs(best.x - CX) <= 6) and (abs(best.y - CY) <= 6)


def test_off_axis_pose_rotates_with_the_ray():
    T = make_pose(np.eye(3), [0, 0, 0.5])
    P = coarse_pose(T, CAM.cx + 100, CAM.cy, CAM, 0.5)
    assert np.linalg.norm(P[:3, 3]) == pytest.approx(0.5)
    ray = P[:3, 3] / 0.5
    assert rotation_angle(P[:3, :3]) == pytest.approx(math.acos(ray[2]))
    # The pose projects back onto the pixel it was found at.
    uv = CAM.K @ P[:3, 3]
    assert uv[0] / uv[2] == pytest.approx(CAM.cx + 100) and uv[1] / uv[2] == pytest.approx(CAM.cy)


def test_nms_keeps_the_best_of_overlapping_boxes():
    boxes = np.array([[0, 0, 10, 10], [1, 1, 11, 11], [20, 20, 30, 30], [0, 0, 10, 10]])
    keep = nms(boxes, np.array([0.5, 0.9, 0.7, 0.4]), iou=0.4, keep_max=10)
    np.testing.assert_array_equal(keep, [1, 2])
    assert len(nms(boxes, np.array([0.5, 0.9, 0.7, 0.4]), iou=0.4, keep_max=1)) == 1


def test_save_load_round_trip_is_exact_and_checked(part, library, tmp_path):
    path = library.save(tmp_path / "part.wtl")
    back = TemplateLibrary.load(path, model_checksum=part.checksum, camera=CAM)
    assert back.config == library.config and back.camera == library.camera
    assert back.model_checksum == library.model_checksum and back.model_name == library.model_name
    for name in ("poses", "meta", "bboxes", "probes"):
        np.testing.assert_array_equal(getattr(back, name), getattr(library, name))
        assert getattr(back, name).dtype == getattr(library, name).dtype
    for a, b in zip(back.grad + back.depth, library.grad + library.depth, strict=True):
        np.testing.assert_array_equal(a, b)
    # Another model, another camera, a damaged file, not a library, missing: clear errors.
    other = make_part("l_bracket", 1)
    with pytest.raises(InputError, match="model checksum: expected"):
        TemplateLibrary.load(path, model_checksum=other.checksum)
    with pytest.raises(InputError, match="camera: expected 320x240 with fx="):
        TemplateLibrary.load(path, camera=CameraIntrinsics.from_fov(320, 240, 50))
    data = bytearray(path.read_bytes())
    pos = data.find(b"grad_0.npy") + 300  # inside the array payload
    data[pos] ^= 0xFF
    bad = tmp_path / "bad.wtl"
    bad.write_bytes(bytes(data))
    with pytest.raises(InputError, match="damaged"):
        TemplateLibrary.load(bad)
    bad.write_bytes(b"not a zip at all")
    with pytest.raises(InputError, match="expected a template library"):
        TemplateLibrary.load(bad)
    with pytest.raises(InputError, match="no such file"):
        TemplateLibrary.load(tmp_path / "missing.wtl")


def test_bad_inputs_are_clear_errors(part, library):
    m = Matcher(library, MatcherConfig(device="cpu"))
    rgb = np.zeros((240, 320, 3), np.uint8)
    with pytest.raises(InputError, match="rgb: expected a uint8, uint16 or float image"):
        m.match(rgb.astype(np.int64))
    with pytest.raises(InputError, match="rgb: expected an \\(H, W\\) or \\(H, W, 3\\) image"):
        m.match(np.zeros((240, 320, 2), np.uint8))
    with pytest.raises(InputError, match="rgb: expected an image of 320x240"):
        m.match(np.zeros((480, 640, 3), np.uint8))
    with pytest.raises(InputError, match="depth: expected the image size 320x240"):
        m.match(rgb, np.zeros((240, 300), np.float32))
    with pytest.raises(InputError, match="camera: camera: expected 320x240"):
        m.match(rgb, camera=CameraIntrinsics.from_fov(320, 240, 40))
    with pytest.raises(InputError, match="library: expected a template library with at least one"):
        Matcher(library.subset([]))
    with pytest.raises(InputError, match="spread: expected 3 values"):
        Matcher(library, MatcherConfig(spread=(3, 8)))
    with pytest.raises(InputError, match="grad_features: expected 3 counts"):
        TemplateConfig(grad_features=(64, 32))
    # An empty frame is not an error: no hypothesis above the threshold.
    assert m.match(rgb) == []


def test_cli_build_and_detect(part, tmp_path):
    import cv2

    from weak_template_ros.cli import app
    from weak_template_ros.models import save_mesh

    mesh = save_mesh(part, tmp_path / "part.ply")
    cam_json = tmp_path / "camera.json"
    cam_json.write_text(json.dumps({"fx": SCENE_CAM.fx, "fy": SCENE_CAM.fy, "cx": CX, "cy": CY,
                                    "width": 320, "height": 240, "depth_scale": 0.1}))
    runner = CliRunner()
    lib_path = tmp_path / "part.wtl"
    res = runner.invoke(app, ["templates", "build", "--model", str(mesh), "--out", str(lib_path),
                              "--camera", str(cam_json), "--views", "12", "--inplane", "4",
                              "-d", str(DIST)])
    assert res.exit_code == 0, res.output
    lib = TemplateLibrary.load(lib_path)
    assert len(lib) == 12 * 4 and lib.config.distances == (DIST,)
    i = _informative(lib, 1)[0]
    out = _render(part, lib.poses[i])
    cv2.imwrite(str(tmp_path / "rgb.png"), out.rgb[..., ::-1])
    cv2.imwrite(str(tmp_path / "depth.png"), np.round(out.depth * 10000).astype(np.uint16))
    res = runner.invoke(app, ["detect", "--templates", str(lib_path), "--rgb", str(tmp_path / "rgb.png"),
                              "--depth", str(tmp_path / "depth.png"), "--camera", str(cam_json),
                              "--model", str(mesh), "--device", "cpu", "--json"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    best = data["hypotheses"][0]
    assert best["template_id"] == i and (best["x"], best["y"]) == (round(CX), round(CY))
    assert best["T_cam_obj"]["t_m"][2] == pytest.approx(DIST, abs=0.003)
    assert data["units"]["t"] == "m" and data["units"]["rotvec"] == "rad"
    # A library of another model is refused with a clear message and exit status 2.
    other = save_mesh(make_part("l_bracket", 1), tmp_path / "other.ply")
    res = runner.invoke(app, ["detect", "--templates", str(lib_path), "--rgb", str(tmp_path / "rgb.png"),
                              "--model", str(other)])
    assert res.exit_code == 2 and "model checksum: expected" in " ".join(res.output.split())


def test_shipped_config_matches_the_defaults():
    from pathlib import Path

    from weak_template_ros.config import load_yaml, to_dict

    path = Path(__file__).resolve().parents[1] / "config" / "linemod.yaml"
    assert to_dict(load_yaml(TemplateConfig, path, "templates")) == to_dict(TemplateConfig())
    assert to_dict(load_yaml(MatcherConfig, path, "matcher")) == to_dict(MatcherConfig())
