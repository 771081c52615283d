"""Canonical representative of a pose of a symmetric part.

A part with symmetries ``S`` (4x4 object-frame maps onto itself) looks the same at ``T`` and at
``T @ S``: ICP may land on any of them. To publish one pose per physical configuration we report

    the equivalent pose whose rotation is closest (geodesic angle) to a reference rotation
    ``R_ref`` (default: the identity, i.e. object axes as close as possible to the camera axes),

searching exactly over the symmetry group: every discrete symmetry (identity included) composed
with the best angle about each continuous axis, found in closed form. Ties (reference exactly
between two equivalents) go to the first discrete symmetry in ``PartModel.symmetries_discrete``
order, so the rule is deterministic.

Closed form for one continuous axis ``a`` through ``o`` (rotation ``Rc(theta)``) and a discrete
symmetry ``D``: the angle to ``R_ref`` is minimal when ``trace(R_ref^T R Rc(theta) R_D)`` is
maximal. With ``M = R_D R_ref^T R`` and Rodrigues' formula this trace is
``a^T M a + cos(theta) (tr M - a^T M a) + sin(theta) tr(M [a]_x)``, maximal at
``theta = atan2(tr(M [a]_x), tr M - a^T M a)``.
"""

from __future__ import annotations

import math

import numpy as np

from weak_template_ros.geometry import check_pose, make_pose, rotation_angle, rotation_from_rotvec
from weak_template_ros.models import PartModel


def _skew(a: np.ndarray) -> np.ndarray:
    return np.array([[0.0, -a[2], a[1]], [a[2], 0.0, -a[0]], [-a[1], a[0], 0.0]])


def symmetric_equivalents(T_cam_obj: np.ndarray, model: PartModel,
                          R_ref: np.ndarray | None = None) -> list[np.ndarray]:
    """One candidate equivalent pose per discrete symmetry (identity first).

    With a continuous symmetry each candidate already uses the best angle about the axis for
    ``R_ref``; with two or more continuous axes (sphere-like parts) the axes are discretised by
    ``PartModel.symmetry_transforms`` (0.5 mrad steps) instead.
    """
    T = check_pose(T_cam_obj, "T_cam_obj", atol=1e-4)
    R_ref = np.eye(3) if R_ref is None else np.asarray(R_ref, dtype=np.float64)
    if len(model.symmetries_continuous) > 1:
        return [T @ S for S in model.symmetry_transforms(5e-4)]
    out = []
    for D in [np.eye(4), *model.symmetries_discrete]:
        if not model.symmetries_continuous:
            out.append(T @ D)
            continue
        axis = np.asarray(model.symmetries_continuous[0]["axis"], dtype=np.float64)
        offset = np.asarray(model.symmetries_continuous[0]["offset"], dtype=np.float64)
        M = D[:3, :3] @ R_ref.T @ T[:3, :3]
        aMa = float(axis @ M @ axis)
        theta = math.atan2(float(np.trace(M @ _skew(axis))), float(np.trace(M)) - aMa)
        Rc = rotation_from_rotvec(axis * theta)
        C = make_pose(Rc, offset - Rc @ offset)
        out.append(T @ C @ D)
    return out


def canonical_pose(T_cam_obj: np.ndarray, model: PartModel,
                   R_ref: np.ndarray | None = None) -> np.ndarray:
    """The symmetry-equivalent of ``T_cam_obj`` whose rotation is closest to ``R_ref``.

    Parameters
    ----------
    T_cam_obj : (4, 4) array
        Pose, metres.
    model : PartModel
        Its ``symmetries_discrete`` / ``symmetries_continuous`` define the equivalents.
    R_ref : (3, 3) array, optional
        Reference rotation in the camera frame (default identity).

    Returns
    -------
    (4, 4) float64
        ``T_cam_obj`` itself for a part without symmetries.
    """
    R_ref_m = np.eye(3) if R_ref is None else np.asarray(R_ref, dtype=np.float64)
    candidates = symmetric_equivalents(T_cam_obj, model, R_ref_m)
    angles = [rotation_angle(R_ref_m, C[:3, :3]) for C in candidates]
    # Round to 1e-9 rad so that numerically equal angles tie and the first candidate wins.
    best = int(np.argmin(np.round(angles, 9)))
    return candidates[best]
