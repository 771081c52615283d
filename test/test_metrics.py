"""BOP metrics on hand-computed cases: known translations, symmetric parts, image-plane shifts,
VSD on rendered depth (exact, far off, occluded, a plate moved in depth), recall and AR arithmetic."""

from __future__ import annotations

import math

import numpy as np
import pytest
import trimesh

from weak_template_ros import config
from weak_template_ros import metrics as M
from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import make_pose, random_rotation, rotation_from_rotvec
from weak_template_ros.models import make_part
from weak_template_ros.twin.renderer import Renderer

CAM = CameraIntrinsics.from_fov(80, 60, 60.0)  # small: VSD renders stay ~1 ms


@pytest.fixture(scope="module")
def bushing():
    return make_part("bushing", seed=None)  # continuous symmetry about z, 160 mesh sections


@pytest.fixture(scope="module")
def hex_nut():
    return make_part("hex_nut", seed=None)  # 6-fold about z and a flip: 12 transforms


def _random_pose(rng, z=0.5):
    return random_rotation(rng), np.array([rng.uniform(-0.03, 0.03), rng.uniform(-0.03, 0.03), z])


# --------------------------------------------------------------------------------------------
# Constants and config
# --------------------------------------------------------------------------------------------


def test_bop19_threshold_sets():
    assert np.allclose(M.VSD_TAUS_BOP19, np.linspace(0.05, 0.5, 10))
    assert np.allclose(M.VSD_THRESHOLDS_BOP19, np.linspace(0.05, 0.5, 10))
    assert np.allclose(M.MSSD_THRESHOLDS_BOP19, np.linspace(0.05, 0.5, 10))
    assert M.MSPD_THRESHOLDS_BOP19 == tuple(float(v) for v in range(5, 51, 5))
    assert M.VSD_DELTA_BOP19 == 0.015  # 15 mm, in metres
    assert M.ADD_THRESHOLD == 0.1 and M.MAX_SYM_DISC_STEP == 0.01


def test_config_defaults_yaml_lists_and_bad_values():
    cfg = config.validate(M.BopMetricsConfig())
    assert cfg.vsd_taus == M.VSD_TAUS_BOP19 and cfg.vsd_cost == "step"
    cfg = config.from_mapping(M.BopMetricsConfig, {"vsd_delta": 0.005, "mspd_thresholds": [5, 10]})
    assert cfg.mspd_thresholds == (5.0, 10.0) and cfg.vsd_delta == 0.005
    with pytest.raises(InputError, match="mssd_thresholds"):
        M.BopMetricsConfig(mssd_thresholds=())
    with pytest.raises(InputError, match="vsd_cost"):
        config.from_mapping(M.BopMetricsConfig, {"vsd_cost": "linear"})


# --------------------------------------------------------------------------------------------
# ADD, ADD-S, MSSD, MSPD, RE, TE
# --------------------------------------------------------------------------------------------


def test_known_translation_gives_add_mssd_te_equal_to_its_length():
    rng = np.random.default_rng(0)
    pts = rng.uniform(-0.05, 0.05, (500, 3))
    R, t = _random_pose(rng)
    d = np.array([0.003, -0.004, 0.012])  # |d| = 13 mm
    ident = np.eye(4)[None]
    assert M.add(R, t + d, R, t, pts) == pytest.approx(0.013, rel=1e-12)
    assert M.mssd(R, t + d, R, t, pts, ident) == pytest.approx(0.013, rel=1e-12)
    assert M.te(t + d, t) == pytest.approx(0.013, rel=1e-12)
    assert M.re(R, R) == pytest.approx(0.0, abs=1e-7)
    assert M.adi(R, t + d, R, t, pts) <= 0.013  # each point's own image is a candidate
    assert M.add(R, t, R, t, pts) == 0.0 and M.adi(R, t, R, t, pts) == 0.0


def test_rotation_error_is_the_angle_in_radians():
    R = rotation_from_rotvec([0.0, 0.3, 0.0])
    assert M.re(R, np.eye(3)) == pytest.approx(0.3, abs=1e-12)
    assert M.re(R @ rotation_from_rotvec([0.0, 0.0, 0.5]), R) == pytest.approx(0.5, abs=1e-12)


def test_metres_in_metres_out():
    rng = np.random.default_rng(1)
    pts = rng.uniform(-0.05, 0.05, (300, 3))
    R_e, t_e = _random_pose(rng)
    R_g, t_g = R_e @ rotation_from_rotvec([0.05, 0.0, 0.02]), t_e + np.array([0.002, 0.0, 0.004])
    syms = np.stack([np.eye(4), make_pose(rotation_from_rotvec([0, 0, math.pi]), [0.001, 0, 0])])
    syms_mm = syms.copy()
    syms_mm[:, :3, 3] *= 1000
    for f, args_m, args_mm in [
        (M.add, (pts,), (pts * 1000,)),
        (M.adi, (pts,), (pts * 1000,)),
        (M.mssd, (pts, syms), (pts * 1000, syms_mm)),
    ]:
        e_m = f(R_e, t_e, R_g, t_g, *args_m)
        e_mm = f(R_e, t_e * 1000, R_g, t_g * 1000, *args_mm)
        assert e_mm == pytest.approx(1000 * e_m, rel=1e-9)
    # Pixels do not depend on the length unit: scaling the scene leaves every projection put.
    e_px = M.mspd(R_e, t_e, R_g, t_g, CAM, pts, syms)
    assert M.mspd(R_e, t_e * 1000, R_g, t_g * 1000, CAM.K, pts * 1000, syms_mm) == pytest.approx(e_px)


def test_bushing_rotated_about_its_axis_scores_zero_under_add_s_and_mssd_not_add(bushing):
    pts = np.asarray(bushing.mesh.vertices)
    axis = bushing.symmetries_continuous[0]
    assert np.allclose(axis["axis"], [0, 0, 1]) and np.allclose(axis["offset"][:2], 0)
    radius = np.hypot(pts[:, 0], pts[:, 1])
    r_max = radius.max()
    syms = bushing.symmetry_transforms(M.MAX_SYM_DISC_STEP)
    steps = math.ceil(math.pi / M.MAX_SYM_DISC_STEP)
    assert len(syms) == steps == 315

    rng = np.random.default_rng(2)
    R_g, t_g = _random_pose(rng)
    theta = 0.7  # not a multiple of the mesh's or the discretisation's angular step
    R_e = R_g @ rotation_from_rotvec([0.0, 0.0, theta])

    # ADD: every vertex moves along its circle by the chord 2 r sin(theta / 2).
    expected_add = np.mean(2 * radius * math.sin(theta / 2))
    assert M.add(R_e, t_g, R_g, t_g, pts) == pytest.approx(expected_add, rel=1e-9)
    assert expected_add > 0.1 * bushing.diameter  # ADD calls this pose wrong
    # ADD-S: the rotated rings hold a vertex within half an angular mesh step (2 pi / 160).
    assert M.adi(R_e, t_g, R_g, t_g, pts) <= 2 * r_max * math.sin(math.pi / 320)
    # MSSD: the nearest discretised symmetry is at most half a step (2 pi / 315) away.
    bound = 2 * r_max * math.sin(math.pi / (2 * steps))
    e = M.mssd(R_e, t_g, R_g, t_g, pts, syms)
    assert e <= bound + 1e-12 and bound < 0.01 * bushing.diameter
    # ... and exactly zero on a step of the discretisation.
    R_k = R_g @ rotation_from_rotvec([0.0, 0.0, 37 * 2 * math.pi / steps])
    assert M.mssd(R_k, t_g, R_g, t_g, pts, syms) < 1e-12
    # MSPD: the same residual seen from the nearest model point.
    z_min = (pts @ R_g.T + t_g)[:, 2].min()
    assert M.mspd(R_e, t_g, R_g, t_g, CAM, pts, syms) <= CAM.fx * bound / z_min * 1.01
    assert M.ad(R_e, t_g, R_g, t_g, pts, symmetric=M.is_symmetric(bushing)) < 0.01 * bushing.diameter


def test_hex_nut_discrete_symmetry(hex_nut):
    pts = np.asarray(hex_nut.mesh.vertices)
    syms = hex_nut.symmetry_transforms()
    assert len(syms) == 12 and M.is_symmetric(hex_nut)
    R_g, t_g = _random_pose(np.random.default_rng(3))
    R_e = R_g @ hex_nut.symmetries_discrete[0][:3, :3]  # 60 deg about the axis
    t_e = t_g + R_g @ hex_nut.symmetries_discrete[0][:3, 3]
    assert M.mssd(R_e, t_e, R_g, t_g, pts, syms) < 1e-9
    assert M.mspd(R_e, t_e, R_g, t_g, CAM, pts, syms) < 1e-6
    assert M.adi(R_e, t_e, R_g, t_g, pts) < 1e-9  # vertices land on vertices
    assert M.add(R_e, t_e, R_g, t_g, pts) > 0.2 * hex_nut.diameter
    assert M.mssd(R_e, t_e, R_g, t_g, pts, np.eye(4)[None]) > 0.3 * hex_nut.diameter


def test_symmetry_aware_rotation_and_translation_error(bushing, hex_nut):
    R_g, t_g = _random_pose(np.random.default_rng(7))
    d = np.array([0.0, 0.001, -0.002])
    tilt = 0.05
    R_e = R_g @ rotation_from_rotvec([0.0, 0.0, 0.7]) @ rotation_from_rotvec([tilt, 0.0, 0.0])
    assert M.re(R_e, R_g) > 0.7  # the plain BOP error sees the spin about the axis
    fine = bushing.symmetry_transforms(1e-3)
    e_r, e_t = M.re_te_sym(R_e, t_g + d, R_g, t_g, fine)
    # Only the tilt is left, up to half a discretisation step (2 pi / 3142 / 2 < 1 mrad).
    assert abs(e_r - tilt) <= 1e-3 and e_t == pytest.approx(np.linalg.norm(d), rel=1e-12)
    S = hex_nut.symmetries_discrete[3]
    e_r, e_t = M.re_te_sym(R_g @ S[:3, :3], t_g + R_g @ S[:3, 3], R_g, t_g, hex_nut.symmetry_transforms())
    assert e_r < 1e-6 and e_t < 1e-12


def test_mspd_of_an_image_plane_shift_is_fx_dx_over_nearest_depth():
    cube = trimesh.creation.box((0.04, 0.04, 0.04)).vertices  # z in [-0.02, 0.02]
    z = 0.5
    dx, dy = 0.004, -0.002
    e = M.mspd(np.eye(3), [dx, dy, z], np.eye(3), [0, 0, z], CAM, cube, np.eye(4)[None])
    # A point at depth Z moves by (fx dx, fy dy) / Z pixels; the nearest face moves most.
    z_near = z - 0.02
    assert e == pytest.approx(math.hypot(CAM.fx * dx, CAM.fy * dy) / z_near, rel=1e-12)
    # The toolkit's list of {"R", "t"} gives the same.
    assert M.mspd(np.eye(3), [dx, dy, z], np.eye(3), [0, 0, z], CAM.K, cube,
                  [{"R": np.eye(3), "t": np.zeros((3, 1))}]) == pytest.approx(e)


def test_point_metrics_reject_bad_input():
    pts = np.zeros((4, 3))
    with pytest.raises(InputError, match="pts"):
        M.add(np.eye(3), np.zeros(3), np.eye(3), np.zeros(3), np.zeros((4, 2)))
    with pytest.raises(InputError, match="R_e"):
        M.add(np.eye(4), np.zeros(3), np.eye(3), np.zeros(3), pts)
    with pytest.raises(InputError, match="t_g"):
        M.adi(np.eye(3), np.zeros(3), np.eye(3), [0, np.nan, 0], pts)
    with pytest.raises(InputError, match="syms"):
        M.mssd(np.eye(3), np.zeros(3), np.eye(3), np.zeros(3), pts, [])
    with pytest.raises(InputError, match=r"syms\[0\]"):
        M.mssd(np.eye(3), np.zeros(3), np.eye(3), np.zeros(3), pts, [2 * np.eye(4)])
    with pytest.raises(InputError, match="K"):
        M.mspd(np.eye(3), [0, 0, 1], np.eye(3), [0, 0, 1], np.zeros((3, 3)), pts, np.eye(4)[None])


# --------------------------------------------------------------------------------------------
# VSD
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def scene(bushing):
    r = Renderer(CAM)
    r.add_mesh("bushing", bushing.mesh)
    r.add_mesh("plate", trimesh.creation.box((4.0, 4.0, 0.01)))
    return r


def test_depth_to_distance():
    depth = np.full(CAM.shape, 2.0, np.float32)
    depth[0, 0] = np.nan
    depth[1, 1] = 0.0
    dist = M.depth_to_distance(depth, CAM)
    rays = CAM.ray_directions().astype(np.float64)
    expected = 2.0 * np.linalg.norm(rays, axis=2)
    expected[0, 0] = expected[1, 1] = 0.0
    assert np.allclose(dist, expected, rtol=1e-6, atol=0)


def test_vsd_is_zero_at_the_exact_pose_also_occluded_or_without_depth(bushing, scene):
    rd = M.renderer_depth(scene, "bushing")
    R, t = _random_pose(np.random.default_rng(4), z=0.35)
    depth = rd(make_pose(R, t))
    assert np.count_nonzero(depth) > 100  # ~11 px across
    args = (M.VSD_DELTA_BOP19, M.VSD_TAUS_BOP19, True, bushing.diameter, rd)
    assert np.array_equal(M.vsd(R, t, R, t, depth, CAM.K, *args), np.zeros(10))
    occluded = depth.copy()
    occluded[:, : CAM.width // 2] = 0.2  # an occluder in front of the left half
    assert np.array_equal(M.vsd(R, t, R, t, occluded, CAM, *args), np.zeros(10))
    # BOP-19 visibility: where depth is missing (0 or NaN) the object counts as visible.
    for missing in (0.0, np.nan):
        assert np.array_equal(M.vsd(R, t, R, t, np.full(CAM.shape, missing), CAM, *args),
                              np.zeros(10))


def test_vsd_is_one_far_off_and_when_the_object_is_hidden(bushing, scene):
    rd = M.renderer_depth(scene, "bushing")
    R, t = _random_pose(np.random.default_rng(5), z=0.35)
    depth = rd(make_pose(R, t))
    args = (M.VSD_DELTA_BOP19, M.VSD_TAUS_BOP19, True, bushing.diameter, rd)
    far = t + np.array([2 * bushing.diameter, 0.0, 0.0])  # silhouettes do not overlap
    assert np.array_equal(M.vsd(R, far, R, t, depth, CAM, *args), np.ones(10))
    assert not M.overlapping_sphere_projections(bushing.diameter / 2, far, t)
    assert M.overlapping_sphere_projections(bushing.diameter / 2, t + 0.01, t)
    # Behind a wall 5 cm in front of it: nothing of it is visible, so no pose can be verified.
    wall = np.full(CAM.shape, t[2] - 0.05 - bushing.diameter)
    assert np.array_equal(M.vsd(R, t, R, t, wall, CAM, *args), np.ones(10))


def test_vsd_of_a_plate_moved_in_depth_matches_the_ray_lengths(scene):
    """A plate filling the view, estimated dz farther: every pixel is in both visible masks and
    its distance error is dz * |ray(u, v)| with |ray| = sqrt(1 + x^2 + y^2)."""
    rd = M.renderer_depth(scene, "plate")
    t_g = np.array([0.0, 0.0, 0.6])
    dz = 0.02
    t_e = t_g + np.array([0.0, 0.0, dz])
    depth = rd(make_pose(np.eye(3), t_g))
    assert np.all(depth > 0)
    ray_len = np.linalg.norm(CAM.ray_directions().astype(np.float64), axis=2)
    taus = [0.019, 0.021, 0.022, 0.03]  # metres; dz * |ray| spans [0.02, 0.0236] here
    e = M.vsd(np.eye(3), t_e, np.eye(3), t_g, depth, CAM, 0.015, taus, False, 1.0, rd)
    expected = [np.mean(dz * ray_len >= tau) for tau in taus]
    assert e[0] == 1.0 and e[-1] == 0.0
    assert np.allclose(e, expected, atol=1.5 / ray_len.size)  # float32 depth: a pixel at most
    e_lin = M.vsd(np.eye(3), t_e, np.eye(3), t_g, depth, CAM, 0.015, taus, False, 1.0, rd,
                  cost_type="tlinear")
    assert np.allclose(e_lin, [np.mean(np.minimum(dz * ray_len / tau, 1)) for tau in taus],
                       atol=1e-4)
    # Normalised by the diameter: the same with taus given as fractions of it.
    e_norm = M.vsd(np.eye(3), t_e, np.eye(3), t_g, depth, CAM, 0.015,
                   [tau / 0.2 for tau in taus], True, 0.2, rd)
    assert np.allclose(e_norm, e, atol=1.5 / ray_len.size)


def test_vsd_rejects_bad_input(bushing, scene):
    rd = M.renderer_depth(scene, "bushing")
    R, t = np.eye(3), np.array([0, 0, 0.4])
    depth = np.zeros(CAM.shape)
    with pytest.raises(InputError, match="render_depth"):
        M.vsd(R, t, R, t, np.zeros((10, 10)), CAM, 0.015, [0.1], True, 0.1, rd)
    with pytest.raises(InputError, match="cost_type"):
        M.vsd(R, t, R, t, depth, CAM, 0.015, [0.1], True, 0.1, rd, cost_type="linear")
    with pytest.raises(InputError, match="taus"):
        M.vsd(R, t, R, t, depth, CAM, 0.015, [], True, 0.1, rd)
    with pytest.raises(InputError, match="diameter"):
        M.vsd(R, t, R, t, depth, CAM, 0.015, [0.1], True, 0.0, rd)
    with pytest.raises(InputError, match="key"):
        M.renderer_depth(scene, "nothing")


# --------------------------------------------------------------------------------------------
# pose_errors: everything for one estimate, with the toolkit's shortcuts
# --------------------------------------------------------------------------------------------


def test_pose_errors_agree_with_the_single_metrics_and_shortcut_far_poses(bushing, scene):
    rd = M.renderer_depth(scene, "bushing")
    pts, _ = bushing.sample_points(400, seed=0)
    syms = bushing.symmetry_transforms()
    d = bushing.diameter
    T_g = make_pose(random_rotation(np.random.default_rng(6)), [0.0, 0.01, 0.35])
    T_e = T_g @ make_pose(rotation_from_rotvec([0.0, 0.05, 0.4]), [0.002, 0.0, 0.001])
    depth = rd(T_g)
    e = M.pose_errors(T_e, T_g, pts, syms, d, CAM, depth_test=depth, render_depth=rd)
    R_e, t_e, R_g, t_g = T_e[:3, :3], T_e[:3, 3], T_g[:3, :3], T_g[:3, 3]
    assert e.ad == e.adi == M.adi(R_e, t_e, R_g, t_g, pts)  # symmetric: ADD-S
    assert e.add == M.add(R_e, t_e, R_g, t_g, pts)
    assert e.mssd == M.mssd(R_e, t_e, R_g, t_g, pts, syms)
    assert e.mspd == M.mspd(R_e, t_e, R_g, t_g, CAM, pts, syms)
    assert e.re == pytest.approx(M.re(R_e, R_g)) and e.te == M.te(t_e, t_g)
    assert np.array_equal(e.vsd, M.vsd(R_e, t_e, R_g, t_g, depth, CAM, M.VSD_DELTA_BOP19,
                                       M.VSD_TAUS_BOP19, True, d, rd))
    assert 0 < e.vsd[0] and e.vsd[-1] < e.vsd[0]

    far = T_g.copy()
    far[0, 3] += 1.5 * d
    e_far = M.pose_errors(far, T_g, pts, syms, d, CAM, depth_test=depth, render_depth=rd)
    assert math.isinf(e_far.add) and math.isinf(e_far.mssd) and math.isinf(e_far.ad)
    assert np.array_equal(e_far.vsd, np.ones(10)) and math.isfinite(e_far.mspd)
    e_nodepth = M.pose_errors(T_e, T_g, pts, syms, d, CAM, symmetric=False)
    assert e_nodepth.vsd.size == 0 and e_nodepth.ad == e_nodepth.add
    with pytest.raises(InputError, match="render_depth"):
        M.pose_errors(T_e, T_g, pts, syms, d, CAM, depth_test=depth)


# --------------------------------------------------------------------------------------------
# Recall, matching and average recall
# --------------------------------------------------------------------------------------------


def test_recall_counts_errors_strictly_below_each_threshold():
    r = M.recall([0.01, 0.1, 0.3, np.inf, np.nan], [0.05, 0.1, 0.2, 0.5])
    assert np.allclose(r, [1 / 5, 1 / 5, 2 / 5, 3 / 5])  # 0.1 is not < 0.1; inf/NaN never
    vsd_like = np.array([[0.0, 0.2], [0.4, 0.6]])  # 2 targets x 2 taus
    assert np.allclose(M.recall(vsd_like, [0.3, 0.5]), [[0.5, 1.0], [0.5, 0.5]])
    assert np.array_equal(M.recall(np.zeros(0), [0.1, 0.2]), [0.0, 0.0])


def test_average_recalls_and_bop_score_by_hand():
    # MSSD / diameter = 0, 0.12, 0.26, 0.9 over 0.05..0.5: 10 + 8 + 5 + 0 correct of 40.
    d = 0.08
    ar_mssd = M.average_recall_mssd(np.array([0.0, 0.12, 0.26, 0.9]) * d, d)
    assert ar_mssd == pytest.approx(23 / 40)
    # MSPD 3, 12, 60 px at 640 px over 5..50: 10 + 8 + 0 of 30; at 1280 px halved: 10 + 9 + 4.
    assert M.average_recall_mspd([3, 12, 60], 640) == pytest.approx(18 / 30)
    assert M.average_recall_mspd([3, 12, 60], 1280) == pytest.approx(23 / 30)
    assert M.average_recall_mspd([3, 12, 60], [640, 640, 1280]) == pytest.approx(22 / 30)
    # VSD: a target with errors 0.12 at every tau is correct for 8 of 10 thetas at each tau.
    vsd_errors = np.vstack([np.full(10, 0.12), np.ones(10)])
    ar_vsd = M.average_recall_vsd(vsd_errors)
    assert ar_vsd == pytest.approx(80 / 200)
    assert M.bop_average_recall(ar_vsd, ar_mssd, 18 / 30) == pytest.approx((0.4 + 0.575 + 0.6) / 3)
    # ADD(-S) at 0.1 d.
    assert M.add_s_recall([0.001, 0.0079, 0.008, np.inf], 0.08) == pytest.approx(0.5)
    with pytest.raises(InputError, match="diameters"):
        M.add_s_recall([0.001, 0.002], [0.08, 0.0])


def test_match_poses_greedy_by_score():
    # Two GT instances; three estimates. The best-scored estimate takes GT 1 (its lowest
    # error), the next one then gets GT 0, the last finds nothing left.
    errors = np.array([[0.04, 0.02],
                       [0.03, 0.01],
                       [0.2, 0.2]])
    scores = [0.5, 0.9, 0.1]
    assert M.match_poses(errors, scores, 0.05).tolist() == [0, 1]
    assert M.match_poses(errors, scores, 0.035).tolist() == [-1, 1]  # est 0: 0.04 too large
    assert M.match_poses(errors, scores, 0.05, gt_valid=[True, False]).tolist() == [1, -1]
    assert M.match_poses(errors, scores, 0.05, max_estimates=1).tolist() == [-1, 1]
    # Ties in score keep the given order; ties in error take the first GT instance.
    assert M.match_poses([[0.01, 0.01]], [1.0], 0.05).tolist() == [0, -1]


def test_recall_matched_over_images():
    g1 = M.MatchGroup(errors=[[0.04, 0.02], [0.03, 0.01]], scores=[0.5, 0.9])  # 2 instances
    g2 = M.MatchGroup(errors=[[0.3]], scores=[1.0])                             # 1 instance
    g3 = M.MatchGroup(errors=np.zeros((0, 1)), scores=[])                       # missed
    r = M.recall_matched([g1, g2, g3], [0.035, 0.05, 0.5])
    assert np.allclose(r, [1 / 4, 2 / 4, 3 / 4])
    # Single instances: the same as the per-target form.
    singles = [M.MatchGroup([[e]], [1.0]) for e in (0.01, 0.2, 0.4)]
    assert np.allclose(M.recall_matched(singles, [0.1, 0.3, 0.5]),
                       M.recall([0.01, 0.2, 0.4], [0.1, 0.3, 0.5]))
    # VSD groups with a tau axis give one row per tau; AR accepts groups too.
    vsd_groups = [M.MatchGroup(np.full((1, 1, 10), 0.12), [1.0]), M.MatchGroup(np.ones((1, 1, 10)), [1.0])]
    assert M.recall_matched(vsd_groups, M.VSD_THRESHOLDS_BOP19).shape == (10, 10)
    assert M.average_recall_vsd(vsd_groups) == pytest.approx(80 / 200)
    # n_top = 1: at most one target per group.
    assert np.allclose(M.recall_matched([g1], [0.05], n_top=1), [1.0])
    with pytest.raises(InputError, match="scores"):
        M.MatchGroup(errors=[[0.1, 0.2]], scores=[1.0, 2.0])
