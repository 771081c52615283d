"""Rigid poses as 4x4 homogeneous matrices in SI units (metres, radians).

Convention: ``T_a_b`` maps points expressed in frame b into frame a (``p_a = T_a_b @ p_b``).
``T_cam_obj`` maps object points to the camera optical frame (z forward, x right, y down).
Rotation parameterisations come from :mod:`scipy.spatial.transform` (no hand-written Euler code).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial.transform import Rotation

from weak_template_ros.errors import InputError, describe_array


def make_pose(R: np.ndarray | None = None, t: np.ndarray | None = None) -> np.ndarray:
    """Build a 4x4 pose from a 3x3 rotation and a translation (metres). Shape (4, 4) float64."""
    T = np.eye(4)
    if R is not None:
        T[:3, :3] = np.asarray(R, dtype=np.float64).reshape(3, 3)
    if t is not None:
        T[:3, 3] = np.asarray(t, dtype=np.float64).reshape(3)
    return T


def check_pose(T: np.ndarray, name: str = "pose", atol: float = 1e-6) -> np.ndarray:
    """Return ``T`` as float64 (4, 4) or raise InputError if it is not a rigid transform."""
    T = np.asarray(T, dtype=np.float64)
    if T.shape != (4, 4):
        raise InputError(name, "a 4x4 homogeneous matrix", describe_array(T))
    if not np.all(np.isfinite(T)):
        raise InputError(name, "finite values", "NaN or inf entries")
    R = T[:3, :3]
    if not np.allclose(R @ R.T, np.eye(3), atol=atol) or np.linalg.det(R) < 0:
        raise InputError(name, "a proper rotation (R R^T = I, det R = +1)", f"det={np.linalg.det(R):.6f}")
    if not np.allclose(T[3], [0, 0, 0, 1]):
        raise InputError(name, "last row [0, 0, 0, 1]", T[3].tolist())
    return T


def invert_pose(T: np.ndarray) -> np.ndarray:
    """Inverse of a rigid 4x4 transform (exact for rigid T, cheaper than np.linalg.inv)."""
    T = np.asarray(T, dtype=np.float64)
    Ti = np.eye(4)
    Ti[:3, :3] = T[:3, :3].T
    Ti[:3, 3] = -T[:3, :3].T @ T[:3, 3]
    return Ti


def transform_points(T: np.ndarray, points: np.ndarray) -> np.ndarray:
    """Apply a 4x4 pose to points of shape (N, 3); returns (N, 3)."""
    points = np.asarray(points)
    return points @ T[:3, :3].T + T[:3, 3]


def rotation_from_rotvec(rotvec) -> np.ndarray:
    """3x3 rotation from an axis-angle vector (radians)."""
    return Rotation.from_rotvec(np.asarray(rotvec, dtype=np.float64)).as_matrix()


def random_rotation(rng: np.random.Generator) -> np.ndarray:
    """Uniformly distributed 3x3 rotation drawn from ``rng``."""
    return Rotation.random(random_state=rng).as_matrix()


def rotation_angle(R_a: np.ndarray, R_b: np.ndarray | None = None) -> float:
    """Geodesic angle (radians) of ``R_a`` or of ``R_a^T R_b`` when both are given."""
    R = R_a if R_b is None else np.asarray(R_a).T @ np.asarray(R_b)
    c = (np.trace(R) - 1.0) / 2.0
    return float(np.arccos(np.clip(c, -1.0, 1.0)))


def look_at(eye, target, up=(0.0, 0.0, 1.0)) -> np.ndarray:
    """``T_world_cam`` of a camera at ``eye`` looking at ``target`` (optical frame: z forward, y down).

    ``up`` is the world direction that should appear upward in the image; when it is parallel to
    the viewing direction another axis is used.
    """
    eye = np.asarray(eye, dtype=np.float64)
    z = np.asarray(target, dtype=np.float64) - eye
    n = np.linalg.norm(z)
    if n == 0:
        raise InputError("look_at", "eye different from target", eye.tolist())
    z /= n
    up = np.asarray(up, dtype=np.float64)
    x = np.cross(z, up)  # image right = forward x up (y down points opposite to up)
    if np.linalg.norm(x) < 1e-9:
        x = np.cross(z, [1.0, 0.0, 0.0] if abs(z[0]) < 0.9 else [0.0, 1.0, 0.0])
    x /= np.linalg.norm(x)
    y = np.cross(z, x)
    return make_pose(np.stack([x, y, z], axis=1), eye)
