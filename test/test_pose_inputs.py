"""Pose pipeline: bad input gives InputError naming it; config file; scene and model points."""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path

import numpy as np
import pytest
import trimesh

from weak_template_ros.camera import CameraIntrinsics, project
from weak_template_ros.config import from_mapping, load_yaml
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import invert_pose, look_at, make_pose, transform_points
from weak_template_ros.models import PartModel, make_part
from weak_template_ros.pose import PoseConfig, estimate_poses, refine_and_verify
from weak_template_ros.pose.config import ScenePointsConfig
from weak_template_ros.pose.model_points import model_points, visible_points
from weak_template_ros.pose.scene_points import Roi, observe_surface, scene_points, sphere_roi
from weak_template_ros.twin.renderer import Renderer
from weak_template_ros.twin.scenes import SceneSpec, iter_scene_frames

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def frame_and_part():
    part = make_part("hex_nut", seed=0)
    spec = SceneSpec(width=320, height=240, parts_per_scene=1, distractors=1, frames_per_scene=1,
                     noise=False)
    frame = next(iter_scene_frames({1: part}, spec, seed=0, scene_id=0))
    return frame, part


def _scaled(part: PartModel, factor: float) -> PartModel:
    mesh = part.mesh.copy()
    mesh.apply_scale(factor)
    return PartModel(name=f"{part.name}_x{factor:g}", mesh=mesh, source="test")


def test_depth_all_invalid(frame_and_part):
    frame, part = frame_and_part
    T = frame.objects[0].T_cam_obj
    for bad in (np.zeros_like(frame.depth), np.full_like(frame.depth, np.nan)):
        with pytest.raises(InputError, match=r"^depth: expected some valid depth"):
            refine_and_verify([T], frame.rgb, bad, frame.camera, part)


def test_depth_not_in_metres_or_not_float(frame_and_part):
    frame, part = frame_and_part
    T = frame.objects[0].T_cam_obj
    with pytest.raises(InputError, match=r"^depth: expected metres"):
        refine_and_verify([T], frame.rgb, frame.depth * 1000, frame.camera, part)
    with pytest.raises(InputError, match=r"^depth: expected an \(H, W\) float image"):
        refine_and_verify([T], frame.rgb, (frame.depth * 1000).astype(np.uint16), frame.camera, part)


def test_camera_not_matching_the_image_size(frame_and_part):
    """K and size of a 640x480 camera with 320x240 images, and a 320x240 camera whose K belongs
    to 640x480 (principal point outside the image)."""
    frame, part = frame_and_part
    T = frame.objects[0].T_cam_obj
    big = CameraIntrinsics.from_fov(640, 480, 60.0)
    with pytest.raises(InputError, match=r"^depth: expected an image of 640x480"):
        refine_and_verify([T], frame.rgb, frame.depth, big, part)
    with pytest.raises(InputError, match=r"^rgb: expected an image of 320x240"):
        refine_and_verify([T], frame.rgb[:100], frame.depth, frame.camera, part)
    wrong_k = CameraIntrinsics(big.fx, big.fy, big.cx, big.cy, 320, 240)
    with pytest.raises(InputError, match=r"^camera: expected intrinsics of a 320x240 image.*cx=319.5"):
        refine_and_verify([T], frame.rgb, frame.depth, wrong_k, part)


@pytest.mark.filterwarnings("ignore:invalid value encountered:RuntimeWarning")  # trimesh, 1e-6 scale
@pytest.mark.parametrize("factor, words", [(1000.0, "millimetres"), (1e-6, "projecting")])
def test_unit_mismatched_model(frame_and_part, factor, words):
    frame, part = frame_and_part
    with pytest.raises(InputError, match=rf"^model: .*{words}"):
        refine_and_verify([frame.objects[0].T_cam_obj], frame.rgb, frame.depth, frame.camera,
                          _scaled(part, factor))


def test_model_in_mm_but_small_enough_is_caught_at_the_hypothesis(frame_and_part):
    """A 2 mm part model read 1000x too large (2 m) fits the diameter limit but would reach behind
    the camera at a hypothesis 0.6 m away."""
    frame, _ = frame_and_part
    tiny_mm = PartModel(name="tiny", mesh=trimesh.creation.box(extents=(2.0, 1.5, 1.0)), source="t")
    T = make_pose(np.eye(3), [0.0, 0.0, 0.6])
    with pytest.raises(InputError, match=r"^model: .*behind the camera"):
        refine_and_verify([T], frame.rgb, frame.depth, frame.camera, tiny_mm)


def test_bad_hypothesis_and_model_types(frame_and_part):
    frame, part = frame_and_part
    with pytest.raises(InputError, match=r"^hypotheses\[0\]"):
        refine_and_verify([np.eye(3)], frame.rgb, frame.depth, frame.camera, part)
    with pytest.raises(InputError, match=r"^model: expected a PartModel"):
        refine_and_verify([np.eye(4)], frame.rgb, frame.depth, frame.camera, part.mesh)
    assert refine_and_verify([], frame.rgb, frame.depth, frame.camera, part) == []


def test_estimate_poses_with_given_hypotheses_and_wrong_library(frame_and_part):
    frame, part = frame_and_part
    T = frame.objects[0].T_cam_obj
    est = estimate_poses(frame.rgb, frame.depth, frame.camera, None, part, hypotheses=[T])
    assert len(est) == 1 and "detect" in est[0].timings_ms

    class OtherLibrary:
        def check_compatible(self, model_checksum=None, camera=None, where="templates"):
            raise InputError(f"{where}: model checksum", "the library's model", model_checksum[:8])

    with pytest.raises(InputError, match=r"^library: model checksum"):
        estimate_poses(frame.rgb, frame.depth, frame.camera, OtherLibrary(), part)


def test_config_file_holds_the_defaults_and_bad_values_name_the_key():
    assert load_yaml(PoseConfig, ROOT / "config" / "pose.yaml") == PoseConfig()
    with pytest.raises(InputError, match="icp"):
        from_mapping(PoseConfig, {"icp": {"voxel_sizes": [0.004, 0.002], "max_distances": [0.01]}})
    with pytest.raises(InputError, match="verify.score_threshold"):
        from_mapping(PoseConfig, {"verify": {"score_threshold": 1.5}})
    with pytest.raises(InputError, match="icp.voxel_sizes"):
        from_mapping(PoseConfig, {"icp": {"voxel_sizes": [-0.001, 0.002, 0.003]}})
    cfg = from_mapping(PoseConfig, {"icp": {"voxel_sizes": [0.004, 0.002], "max_distances": [0.02, 0.005],
                                            "iterations": [10, 10]}})
    assert cfg.icp.voxel_sizes == (0.004, 0.002)


def test_observed_normals_of_a_tilted_plane_and_the_roi_of_a_sphere():
    cam = CameraIntrinsics.from_fov(160, 120, 60.0)
    n_true = np.array([0.3, -0.2, -1.0])
    n_true /= np.linalg.norm(n_true)
    # Plane n . p = -0.5 (facing the camera), depth along each ray.
    rays = cam.ray_directions().astype(np.float64)
    depth = (-0.5 / (rays @ n_true)).astype(np.float32)
    roi = Roi(0, cam.height, 0, cam.width)
    surf = observe_surface(depth, cam, roi, ScenePointsConfig())
    assert surf.normal_valid[10:-10, 10:-10].all()
    err = np.degrees(np.arccos(np.clip(surf.normals[surf.normal_valid] @ n_true, -1, 1)))
    assert err.max() < 0.05
    # Scene points: inside the crop sphere only, on the plane.
    center = rays[60, 80] * depth[60, 80]
    pts, normals, px = scene_points(surf, center, 0.05, 0.0)
    assert len(pts) > 100 and np.all(np.linalg.norm(pts - center, axis=1) <= 0.05 + 1e-9)
    np.testing.assert_allclose(pts @ n_true, -0.5, atol=1e-6)
    np.testing.assert_allclose(depth[px[:, 1], px[:, 0]], pts[:, 2], rtol=1e-6)
    # The ROI of a sphere contains the projection of points on it.
    sph = sphere_roi(cam, center, 0.05)
    rim = center + 0.05 * np.random.default_rng(0).normal(size=(500, 3)).clip(-3, 3)
    rim = center + 0.05 * (rim - center) / np.linalg.norm(rim - center, axis=1, keepdims=True)
    uv = project(rim, cam)
    inside = (uv[:, 0] >= sph.u0 - 0.5) & (uv[:, 0] <= sph.u1 - 0.5) & (uv[:, 1] >= sph.v0 - 0.5) & (
        uv[:, 1] <= sph.v1 - 0.5)
    assert inside.all()
    assert sphere_roi(cam, np.array([0.0, 0.0, -1.0]), 0.05) is None


def test_model_points_are_cached_and_visibility_matches_the_render():
    part = make_part("t_profile", seed=0)
    a = model_points(part, 3000, seed=0)
    assert model_points(part, 3000, seed=0) is a
    assert model_points(dataclasses.replace(part), 3000, seed=0) is a  # same checksum
    cam = CameraIntrinsics.from_fov(320, 240, 60.0)
    T = invert_pose(look_at([0.3, 0.2, 0.4], [0, 0, 0]))
    r = Renderer(cam)
    r.add_mesh(0, part.mesh)
    d, _ = r.cast_object(0, T)
    vis = visible_points(a.points, a.normals, T, d, cam, 0.001)
    assert 0.15 < vis.mean() < 0.85
    # Visible points lie on the rendered surface (up to the depth slope across half a pixel),
    # hidden ones behind it or facing away.
    for mask, visible in ((vis, True), (~vis, False)):
        p = transform_points(T, a.points[mask])
        uv = np.rint(project(p, cam)).astype(int)
        ok = (uv[:, 0] >= 0) & (uv[:, 0] < cam.width) & (uv[:, 1] >= 0) & (uv[:, 1] < cam.height)
        dz = p[ok, 2] - d[uv[ok, 1], uv[ok, 0]]
        if visible:
            half_pixel = 0.5 * np.median(p[:, 2]) / cam.fx  # metres, ~0.9 mm here
            assert np.all(dz <= 0.001) and np.median(np.abs(dz)) < half_pixel
        else:
            n = transform_points(make_pose(T[:3, :3]), a.normals[~vis])[ok]
            assert np.all((dz > 0.001) | (np.einsum("ij,ij->i", n, p[ok]) >= 0))
    # Rendering only the pixels of facing points (Renderer.depth_at) is the same test.
    assert np.array_equal(visible_points(a.points, a.normals, T, functools.partial(r.depth_at, 0, T),
                                         cam, 0.001), vis)
    v, u = np.nonzero(d >= 0)
    assert np.array_equal(r.depth_at(0, T, u, v), d[v, u])
