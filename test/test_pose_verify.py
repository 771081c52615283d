"""Render-and-compare verification: true poses pass, wrong ones fail, each cue does its job."""

from __future__ import annotations

import math

import numpy as np
import pytest

from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.geometry import invert_pose, look_at, make_pose, rotation_from_rotvec
from weak_template_ros.models import make_part
from weak_template_ros.pose import VerifyConfig, verify_pose
from weak_template_ros.twin.renderer import Renderer
from weak_template_ros.twin.scenes import SceneSpec, iter_scene_frames


@pytest.fixture(scope="module")
def scene():
    """Noisy twin frame: connector housing (no symmetry) among distractors."""
    part = make_part("connector_housing", seed=0)
    spec = SceneSpec(parts_per_scene=1, distractors=3, frames_per_scene=1, noise=True)
    frame = next(iter_scene_frames({1: part}, spec, seed=4, scene_id=0))
    renderer = Renderer(frame.camera)
    renderer.add_mesh("part", part.mesh)
    return part, frame, renderer


def _verify(scene, T, cfg=None):
    part, frame, renderer = scene
    d, n = renderer.cast_object("part", T)
    return verify_pose(d, n, frame.depth, frame.rgb, frame.camera, cfg)


def test_true_pose_passes_with_all_cues_high(scene):
    """The part is partly hidden by a distractor: those pixels count as occluded, so the visible
    fraction matches the ground-truth visible fraction, and no cue suffers."""
    obj = scene[1].objects[0]
    v = _verify(scene, obj.T_cam_obj)
    assert v.accepted, v
    assert v.score > 0.95 and v.depth_fit > 0.98 and v.edge_fit > 0.9 and v.normal_fit > 0.85
    assert v.free_space_fraction < 0.01
    assert v.visible_fraction == pytest.approx(obj.mask_visib.sum() / obj.mask.sum(), abs=0.05)


@pytest.mark.parametrize("axis", [(1, 0, 0), (0, 1, 0), (0, 0, 1)])
def test_pose_30_degrees_off_is_rejected(scene, axis):
    """Rotated 30 deg about each object axis (through its centre): rejected, and scored far
    below the true pose."""
    T = scene[1].objects[0].T_cam_obj.copy()
    T[:3, :3] = T[:3, :3] @ rotation_from_rotvec(np.array(axis, float) * math.radians(30))
    v = _verify(scene, T)
    assert not v.accepted, v
    assert v.score < 0.8


def test_pose_in_front_of_the_surface_violates_free_space(scene):
    """Moved 2 cm towards the camera: the observed surface is behind the model everywhere."""
    T = scene[1].objects[0].T_cam_obj.copy()
    T[:3, 3] *= 1 - 0.02 / np.linalg.norm(T[:3, 3])
    v = _verify(scene, T)
    assert not v.accepted
    assert v.free_space_fraction > 0.5 and v.depth_fit < 0.3


def test_pose_hidden_behind_the_table_is_not_evidence(scene):
    """Moved 5 cm away from the camera (inside the table): every pixel is 'occluded', the visible
    fraction is ~0 and the pose is rejected although nothing contradicts it in free space."""
    T = scene[1].objects[0].T_cam_obj.copy()
    T[:3, 3] *= 1 + 0.05 / np.linalg.norm(T[:3, 3])
    v = _verify(scene, T)
    assert not v.accepted and v.visible_fraction < 0.2


def test_model_outside_the_image_is_rejected(scene):
    T = make_pose(np.eye(3), [5.0, 0.0, 0.5])
    v = _verify(scene, T)
    assert not v.accepted and v.rendered == 0 and "not in the image" in v.reason


def test_exact_synthetic_observation_scores_one():
    """Observation = the render itself over a far background: every cue is perfect."""
    part = make_part("l_bracket", seed=2)
    cam = CameraIntrinsics.from_fov(320, 240, 60.0)
    T = invert_pose(look_at([0.25, -0.2, 0.35], [0, 0, 0])) @ make_pose(rotation_from_rotvec([0.3, 0.2, 0.1]))
    r = Renderer(cam)
    r.add_mesh(0, part.mesh)
    d, n = r.cast_object(0, T)
    depth = np.where(d > 0, d, np.float32(2.0))
    v = verify_pose(d, n, depth, None, cam)
    assert v.accepted and v.score == pytest.approx(1.0, abs=0.02), v
    assert v.inliers == int((d > 0).sum())


def test_depth_only_verification_without_rgb(scene):
    """rgb=None: silhouette edges come from depth alone; the true pose still passes."""
    part, frame, renderer = scene
    d, n = renderer.cast_object("part", frame.objects[0].T_cam_obj)
    v = verify_pose(d, n, frame.depth, None, frame.camera)
    assert v.accepted, v


def test_weights_decide_the_score(scene):
    """With only the depth cue weighted, the score is the depth agreement."""
    T = scene[1].objects[0].T_cam_obj.copy()
    T[:3, :3] = T[:3, :3] @ rotation_from_rotvec([0.0, 0.0, math.radians(20)])
    cfg = VerifyConfig(weight_normals=0.0, weight_edges=0.0)
    v = _verify(scene, T, cfg)
    assert v.score == pytest.approx(v.depth_fit)
    d = v.to_dict()
    assert set(d) >= {"score", "depth_fit", "normal_fit", "edge_fit", "free_space_fraction"}


def test_a_larger_observed_surface_is_cropped_not_recomputed(scene):
    """verify_pose given the refinement's surface (a region around the part) gives the same
    verdict as computing its own; a surface that does not cover the region is not used."""
    from weak_template_ros.pose.scene_points import Roi, observe_surface

    part, frame, renderer = scene
    T = frame.objects[0].T_cam_obj
    d, n = renderer.cast_object("part", T)
    own = verify_pose(d, n, frame.depth, frame.rgb, frame.camera)
    big = observe_surface(frame.depth, frame.camera, Roi(0, frame.camera.height, 0, frame.camera.width))
    shared = verify_pose(d, n, frame.depth, frame.rgb, frame.camera, surface=big)
    assert shared.accepted == own.accepted and shared.inliers == own.inliers
    assert abs(shared.score - own.score) < 0.01
    small = observe_surface(frame.depth, frame.camera, Roi(0, 10, 0, 10))
    assert small.crop(Roi(0, 20, 0, 20), frame.camera) is None
    fallback = verify_pose(d, n, frame.depth, frame.rgb, frame.camera, surface=small)
    assert (fallback.score, fallback.inliers) == (own.score, own.inliers)


def test_a_frame_surface_cache_gives_the_same_verdict(scene):
    """Verification reads pixels farther inside its region than the filters reach: a crop of a
    cached larger surface gives exactly what a fresh computation gives; a near pose reuses it."""
    from weak_template_ros.pose.scene_points import SurfaceCache

    part, frame, renderer = scene
    cache = SurfaceCache(frame.depth, frame.camera)
    for shift in (0.0, 0.002):
        T = frame.objects[0].T_cam_obj.copy()
        T[0, 3] += shift
        d, n = renderer.cast_object("part", T)
        own = verify_pose(d, n, frame.depth, frame.rgb, frame.camera)
        assert verify_pose(d, n, frame.depth, frame.rgb, frame.camera, surfaces=cache) == own
    assert len(cache._surfaces) == 1
