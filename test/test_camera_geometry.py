"""Camera intrinsics, projection/back-projection and pose helpers."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weak_template_ros.camera import CameraIntrinsics, backproject, project
from weak_template_ros.config import param
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import (
    check_pose,
    invert_pose,
    look_at,
    make_pose,
    random_rotation,
    rotation_angle,
    transform_points,
)


def test_negative_focal_length_is_named():
    with pytest.raises(InputError, match=r"camera.fx: expected a positive focal length.*got -500"):
        CameraIntrinsics(-500.0, 500.0, 320.0, 240.0, 640, 480)


def test_bad_image_size_and_K():
    with pytest.raises(InputError, match="camera.width"):
        CameraIntrinsics(500.0, 500.0, 320.0, 240.0, 0, 480)
    with pytest.raises(InputError, match="cam_K"):
        CameraIntrinsics.from_K([1, 2, 3], 640, 480)


@settings(max_examples=30, deadline=None)
@given(st.floats(0.2, 3.0), st.integers(0, 639), st.integers(0, 479))
def test_backproject_inverts_project(z, u, v):
    cam = CameraIntrinsics(525.0, 530.0, 319.5, 239.5, 640, 480)
    depth = np.zeros((480, 640), np.float32)
    depth[v, u] = z
    pts, pix = backproject(depth, cam, return_pixels=True)
    assert pix.tolist() == [[u, v]]
    np.testing.assert_allclose(project(pts, cam), [[u, v]], atol=1e-6)


def test_backproject_skips_nan_and_zero():
    cam = CameraIntrinsics.from_fov(8, 6, 60)
    depth = np.full((6, 8), 1.0, np.float32)
    depth[0, 0] = np.nan
    depth[1, 1] = 0
    assert len(backproject(depth, cam)) == 46
    with pytest.raises(InputError, match="depth"):
        backproject(np.nan_to_num(depth).astype(np.uint16), cam)


def test_scaled_keeps_pixel_centre_convention():
    cam = CameraIntrinsics(500.0, 500.0, 319.5, 239.5, 640, 480)
    half = cam.scaled(0.5)
    assert (half.width, half.height) == (320, 240)
    # The image centre stays the image centre.
    assert half.cx == pytest.approx(159.5) and half.cy == pytest.approx(119.5)


def test_pose_inverse_and_checks():
    rng = np.random.default_rng(1)
    T = make_pose(random_rotation(rng), rng.normal(size=3))
    np.testing.assert_allclose(invert_pose(T) @ T, np.eye(4), atol=1e-12)
    p = rng.normal(size=(10, 3))
    np.testing.assert_allclose(transform_points(invert_pose(T), transform_points(T, p)), p, atol=1e-12)
    bad = T.copy()
    bad[:3, :3] *= 2
    with pytest.raises(InputError, match="proper rotation"):
        check_pose(bad, "T_cam_obj")


def test_look_at_optical_frame():
    T_world_cam = look_at([0, 0, 1.0], [0, 0, 0], up=(0, 1, 0))
    z = T_world_cam[:3, 2]
    np.testing.assert_allclose(z, [0, 0, -1], atol=1e-12)  # looks down at the target
    # World "up" (+y) appears upward in the image, i.e. along camera -y.
    np.testing.assert_allclose(T_world_cam[:3, 1], [0, -1, 0], atol=1e-12)
    assert np.linalg.det(T_world_cam[:3, :3]) == pytest.approx(1.0)
    assert rotation_angle(T_world_cam[:3, :3], T_world_cam[:3, :3]) == pytest.approx(0.0, abs=1e-6)


def test_nested_config_errors_name_the_dotted_path():
    from weak_template_ros.config import from_mapping
    from weak_template_ros.twin.scenes import SceneSpec

    with pytest.raises(InputError, match=r"^sensor\.read_noise: expected a value in \[0\.0, 1\.0\]"):
        from_mapping(SceneSpec, {"sensor": {"read_noise": 5.0}})
    with pytest.raises(InputError, match="unknown key"):
        from_mapping(SceneSpec, {"sensor": {"colour": 1}})


@dataclass
class _Inner:
    lo: float = param(0.0, "low end")
    hi: float = param(1.0, "high end")

    def __post_init__(self):
        if self.lo > self.hi:
            raise InputError("lo", f"<= hi ({self.hi})", self.lo)


@dataclass
class _Outer:
    inner: _Inner = field(default_factory=_Inner)


def test_post_init_errors_of_nested_configs_carry_the_path():
    from weak_template_ros.config import from_mapping

    with pytest.raises(InputError, match=r"^inner\.lo: expected <= hi"):
        from_mapping(_Outer, {"inner": {"lo": 2.0}})
