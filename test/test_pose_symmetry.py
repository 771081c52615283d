"""Canonical symmetric pose: one report per physical pose, the equivalent closest to the reference."""

from __future__ import annotations

import math

import numpy as np
import pytest

from weak_template_ros.geometry import (
    invert_pose,
    make_pose,
    random_rotation,
    rotation_angle,
    rotation_from_rotvec,
)
from weak_template_ros.models import make_part
from weak_template_ros.pose import canonical_pose, symmetric_equivalents


@pytest.fixture(scope="module")
def parts():
    return {f: make_part(f, seed=0) for f in ("hex_nut", "bushing", "t_profile", "l_bracket")}


def _random_pose(rng) -> np.ndarray:
    return make_pose(random_rotation(rng), rng.uniform([-0.1, -0.1, 0.4], [0.1, 0.1, 0.8]))


def _is_symmetry(S, model, tol=1e-9) -> bool:
    """S = C D with D a discrete symmetry (or the identity) and C a rotation about the continuous
    axis through its offset (or the identity when the part has none)."""
    for D in [np.eye(4), *model.symmetries_discrete]:
        C = S @ invert_pose(D)
        if not model.symmetries_continuous:
            if np.allclose(C, np.eye(4), atol=tol):
                return True
            continue
        a, o = model.symmetries_continuous[0]["axis"], model.symmetries_continuous[0]["offset"]
        if np.allclose(C[:3, :3] @ a, a, atol=tol) and np.allclose(C[:3, :3] @ o + C[:3, 3], o, atol=tol):
            return True
    return False


@pytest.mark.parametrize("family", ["hex_nut", "bushing", "t_profile"])
def test_every_equivalent_pose_gives_the_same_canonical_pose(parts, family):
    """T and T @ S (S any symmetry, continuous ones at random angles) report the same pose, and
    that pose is an equivalent of T."""
    model = parts[family]
    rng = np.random.default_rng(0)
    syms = list(model.symmetries_discrete)
    for s in model.symmetries_continuous:
        for angle in rng.uniform(-math.pi, math.pi, 4):
            R = rotation_from_rotvec(s["axis"] * angle)
            syms.append(make_pose(R, s["offset"] - R @ s["offset"]))
    assert syms
    for _ in range(3):
        T = _random_pose(rng)
        C = canonical_pose(T, model)
        for S in syms:
            np.testing.assert_allclose(canonical_pose(T @ S, model), C, atol=1e-9)
        assert _is_symmetry(invert_pose(T) @ C, model, tol=1e-7)


@pytest.mark.parametrize("family", ["hex_nut", "bushing", "t_profile"])
def test_canonical_pose_is_the_equivalent_closest_to_the_reference(parts, family):
    """No equivalent (continuous axes discretised at 1 mrad) is closer in rotation to R_ref."""
    model = parts[family]
    rng = np.random.default_rng(1)
    all_syms = model.symmetry_transforms(1e-3)
    for _ in range(3):
        T = _random_pose(rng)
        R_ref = random_rotation(rng)
        C = canonical_pose(T, model, R_ref)
        best = min(rotation_angle(R_ref, (T @ S)[:3, :3]) for S in all_syms)
        assert rotation_angle(R_ref, C[:3, :3]) <= best + 1e-9


def test_part_without_symmetry_is_reported_as_is(parts):
    T = _random_pose(np.random.default_rng(2))
    assert not parts["l_bracket"].symmetries_discrete
    np.testing.assert_array_equal(canonical_pose(T, parts["l_bracket"]), T)
    assert len(symmetric_equivalents(T, parts["l_bracket"])) == 1
