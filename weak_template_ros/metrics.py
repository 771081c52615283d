"""BOP pose-error metrics (ADD, ADD-S, VSD, MSSD, MSPD, RE, TE), recall and average recall.

The arithmetic is the BOP toolkit's (``bop_toolkit_lib/pose_error.py``, ``visibility.py``,
``misc.py``, ``pose_matching.py``, ``score.py``, ``scripts/eval_calc_errors.py``,
``eval_calc_scores.py``, ``eval_bop19_pose.py``); a transcription of those functions agreed
with this module to 1e-14 relative on random poses of three part families (VSD on occluded,
noisy, partly missing depth, both cost types) and matched identically in 300 random greedy
matching cases. Departures, each also named in its function's docstring:

- ``re`` returns RADIANS (the project's unit); the toolkit returns degrees.
- ``vsd`` takes a callable ``render_depth(T_cam_obj) -> (H, W) depth`` instead of the toolkit's
  renderer object and object id (:func:`renderer_depth` wraps the twin
  :class:`~weak_template_ros.twin.renderer.Renderer`); test depth that is NaN counts as missing,
  exactly like 0.
- Symmetries are (K, 4, 4) arrays, as :meth:`PartModel.symmetry_transforms
  <weak_template_ros.models.PartModel.symmetry_transforms>` returns them (the same set, in the
  same order, as the toolkit's ``get_symmetry_transformations``); lists of the toolkit's
  ``{"R", "t"}`` dicts are accepted too.
- Model points are the caller's: the toolkit uses the vertices of its re-meshed
  ``models_eval``; here roughly uniform surface samples (``PartModel.sample_points``) stand in.
- :func:`re_te_sym` (symmetry-aware rotation/translation error) is ours, not a BOP error.

Example::

    syms = part.symmetry_transforms(MAX_SYM_DISC_STEP)
    e = pose_errors(T_est, T_gt, part.sample_points(2000)[0], syms, part.diameter, camera)
    ok = e.ad < ADD_THRESHOLD * part.diameter

Units. The point metrics are unit-agnostic: ADD, ADD-S, MSSD and TE come out in the unit of
``pts`` and ``t`` (metres in this project; the toolkit works in mm), MSPD in pixels, RE in
radians, VSD is a fraction. VSD's ``delta`` (and its ``taus`` unless ``normalized_by_diameter``)
are in the unit of the depth images. The BOP-19 threshold sets below are therefore relative
(fractions of the object diameter, pixels at 640 px image width) except
:data:`VSD_DELTA_BOP19`, which is in metres.

Scoring. A pose is correct for a threshold when its error is STRICTLY below it
(``pose_matching.match_poses``). MSSD errors are divided by the object diameter and MSPD errors
multiplied by ``640 / image width`` before thresholding (``eval_calc_scores.py``). Recall is
correct targets / targets; the BOP-19 average recall of a metric is the mean of its recalls over
the threshold set (VSD: over every (tau, theta) pair) and the BOP score is
``AR = (AR_VSD + AR_MSSD + AR_MSPD) / 3`` (``eval_bop19_pose.py``).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
from scipy.spatial import cKDTree

from weak_template_ros import config
from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.errors import InputError, describe_array
from weak_template_ros.geometry import check_pose, make_pose, rotation_angle

__all__ = [
    "ADD_THRESHOLD",
    "MAX_SYM_DISC_STEP",
    "MSPD_REFERENCE_WIDTH",
    "MSPD_THRESHOLDS_BOP19",
    "MSSD_THRESHOLDS_BOP19",
    "VSD_DELTA_BOP19",
    "VSD_TAUS_BOP19",
    "VSD_THRESHOLDS_BOP19",
    "BopMetricsConfig",
    "MatchGroup",
    "PoseErrors",
    "ad",
    "add",
    "add_s_recall",
    "adi",
    "average_recall_mspd",
    "average_recall_mssd",
    "average_recall_vsd",
    "bop_average_recall",
    "depth_to_distance",
    "estimate_visib_mask_est",
    "estimate_visib_mask_gt",
    "is_symmetric",
    "match_poses",
    "mspd",
    "mssd",
    "overlapping_sphere_projections",
    "pose_errors",
    "re",
    "re_te_sym",
    "recall",
    "recall_matched",
    "renderer_depth",
    "te",
    "vsd",
]

# ---------------------------------------------------------------------------------------------
# BOP-19 settings (eval_bop19_pose.py). np.arange is used exactly as the toolkit writes it, so
# the thresholds are the same floats (0.15000000000000002 ...): correctness is a strict "<".
# ---------------------------------------------------------------------------------------------

#: VSD visibility tolerance delta of BOP-19, METRES (15 mm; the toolkit uses 5 mm for ITODD).
VSD_DELTA_BOP19 = 0.015
#: VSD misalignment tolerances tau, fractions of the object diameter (0.05, 0.10, ..., 0.50).
VSD_TAUS_BOP19 = tuple(float(v) for v in np.arange(0.05, 0.51, 0.05))
#: VSD correctness thresholds theta (on the VSD error, a fraction): 0.05, 0.10, ..., 0.50.
#: (BOP-18 / SIXD-17 used a single theta = 0.3 with tau = 20 mm; BOP-19 averages over these.)
VSD_THRESHOLDS_BOP19 = tuple(float(v) for v in np.arange(0.05, 0.51, 0.05))
#: MSSD correctness thresholds, fractions of the object diameter: 0.05, 0.10, ..., 0.50.
MSSD_THRESHOLDS_BOP19 = tuple(float(v) for v in np.arange(0.05, 0.51, 0.05))
#: MSPD correctness thresholds, pixels at an image width of 640 px: 5, 10, ..., 50.
MSPD_THRESHOLDS_BOP19 = tuple(float(v) for v in np.arange(5, 51, 5))
#: Image width (px) the MSPD thresholds refer to; errors are scaled by 640 / width.
MSPD_REFERENCE_WIDTH = 640.0
#: ADD(-S) correctness threshold, fraction of the object diameter (Hinterstoisser et al.).
ADD_THRESHOLD = 0.1
#: Discretisation of continuous symmetries used by the BOP evaluation (get_symmetry_transformations).
MAX_SYM_DISC_STEP = 0.01


@dataclass
class BopMetricsConfig:
    """Thresholds and tolerances of the BOP evaluation (defaults: BOP-19, metres)."""

    vsd_delta: float = config.param(VSD_DELTA_BOP19, "VSD visibility tolerance delta (BOP-19: "
                                    "15 mm; 5 mm for ITODD)", lo=0.0, hi=1.0, unit="m")
    vsd_taus: tuple[float, ...] = config.param(VSD_TAUS_BOP19, "VSD misalignment tolerances tau, "
                                               "fractions of the object diameter")
    vsd_thresholds: tuple[float, ...] = config.param(VSD_THRESHOLDS_BOP19, "VSD correctness "
                                                     "thresholds theta (VSD error < theta)")
    mssd_thresholds: tuple[float, ...] = config.param(MSSD_THRESHOLDS_BOP19, "MSSD correctness "
                                                      "thresholds, fractions of the object diameter")
    mspd_thresholds: tuple[float, ...] = config.param(MSPD_THRESHOLDS_BOP19, "MSPD correctness "
                                                      "thresholds at 640 px image width", unit="px")
    add_threshold: float = config.param(ADD_THRESHOLD, "ADD(-S) correctness threshold, fraction "
                                        "of the object diameter", lo=0.0, hi=10.0)
    max_sym_disc_step: float = config.param(MAX_SYM_DISC_STEP, "discretisation of continuous "
                                            "symmetries: steps = ceil(pi / this)", lo=1e-4, hi=3.2)
    vsd_cost: str = config.param("step", "VSD pixel cost: 'step' (BOP since SIXD-17) or "
                                 "'tlinear' (Hodan et al. ECCVW'16)", choices=("step", "tlinear"))

    def __post_init__(self):
        for name in ("vsd_taus", "vsd_thresholds", "mssd_thresholds", "mspd_thresholds"):
            v = _positive_vector(getattr(self, name), name)
            object.__setattr__(self, name, tuple(float(x) for x in v))


# ---------------------------------------------------------------------------------------------
# Input checks
# ---------------------------------------------------------------------------------------------


def _rotation(R, name: str) -> np.ndarray:
    R = np.asarray(R, dtype=np.float64)
    if R.shape != (3, 3) or not np.all(np.isfinite(R)):
        raise InputError(name, "a finite 3x3 rotation matrix", describe_array(R))
    return R


def _translation(t, name: str) -> np.ndarray:
    t = np.asarray(t, dtype=np.float64)
    if t.size != 3 or not np.all(np.isfinite(t)):
        raise InputError(name, "a finite translation of 3 numbers", describe_array(t))
    return t.reshape(3)


def _points(pts, name: str = "pts") -> np.ndarray:
    pts = np.asarray(pts, dtype=np.float64)
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) == 0 or not np.all(np.isfinite(pts)):
        raise InputError(name, "a non-empty finite (N, 3) array of model points", describe_array(pts))
    return pts


def _intrinsic_matrix(K, name: str = "K") -> np.ndarray:
    if isinstance(K, CameraIntrinsics):
        return K.K
    K = np.asarray(K, dtype=np.float64)
    if K.shape != (3, 3) or not np.all(np.isfinite(K)) or K[0, 0] <= 0 or K[1, 1] <= 0:
        raise InputError(name, "a 3x3 intrinsic matrix with positive focal lengths "
                         "(or a CameraIntrinsics)", describe_array(K))
    return K


def _positive_vector(v, name: str) -> np.ndarray:
    arr = np.asarray(v, dtype=np.float64).reshape(-1)
    if arr.size == 0 or not np.all(np.isfinite(arr)) or np.any(arr <= 0):
        raise InputError(name, "a non-empty list of finite numbers > 0", np.asarray(v).tolist())
    return arr


def _symmetry_array(syms, name: str = "syms") -> np.ndarray:
    """(K, 4, 4) float64 from (K, 4, 4) / a list of 4x4 / the toolkit's list of {"R", "t"}."""
    if isinstance(syms, np.ndarray):
        items = syms if syms.ndim == 3 else syms[None]
    else:
        items = list(syms)
        if not items:
            raise InputError(name, "at least one transform (the identity included)", "none")
        if isinstance(items[0], dict):
            try:
                items = [make_pose(s["R"], s["t"]) for s in items]
            except (KeyError, TypeError, ValueError) as exc:
                raise InputError(name, "dicts with 'R' (3x3) and 't' (3 numbers)", "other") from exc
    S = np.asarray(items, dtype=np.float64)
    if S.ndim != 3 or S.shape[1:] != (4, 4) or len(S) == 0:
        raise InputError(name, "(K, 4, 4) symmetry transforms, the identity included",
                         describe_array(S))
    # One vectorised rigidity check (check_pose per transform costs ms for 315 of them).
    R = S[:, :3, :3]
    bad = ~np.all(np.isfinite(S.reshape(len(S), -1)), axis=1)
    bad |= ~np.all(np.abs(R @ R.transpose(0, 2, 1) - np.eye(3)) <= 1e-4, axis=(1, 2))
    bad |= np.linalg.det(R) < 0
    bad |= ~np.all(S[:, 3] == [0.0, 0.0, 0.0, 1.0], axis=1)
    if np.any(bad):
        i = int(np.argmax(bad))
        raise InputError(f"{name}[{i}]", "a rigid 4x4 transform (proper rotation, last row 0 0 0 1)",
                         S[i].round(6).tolist())
    return S


# ---------------------------------------------------------------------------------------------
# Point-based errors
# ---------------------------------------------------------------------------------------------


def add(R_e, t_e, R_g, t_g, pts) -> float:
    """ADD: mean distance between model points at the estimated and ground-truth poses.

    Hinterstoisser et al. (ACCV'12), for objects without indistinguishable views.

    Parameters
    ----------
    R_e, R_g : (3, 3) array
        Estimated / ground-truth rotation (object to camera).
    t_e, t_g : (3,) or (3, 1) array
        Estimated / ground-truth translation, same unit as ``pts``.
    pts : (N, 3) array
        Model points in the object frame (the toolkit uses the vertices of its uniformly
        re-meshed ``models_eval``; use roughly uniform surface points, e.g.
        :meth:`PartModel.sample_points <weak_template_ros.models.PartModel.sample_points>`).

    Returns
    -------
    float
        Mean distance, in the unit of ``pts`` / ``t``.
    """
    pts = _points(pts)
    d = pts @ (_rotation(R_e, "R_e") - _rotation(R_g, "R_g")).T + (
        _translation(t_e, "t_e") - _translation(t_g, "t_g"))
    return float(np.linalg.norm(d, axis=1).mean())


def adi(R_e, t_e, R_g, t_g, pts) -> float:
    """ADD-S (ADI): mean distance from each ground-truth point to the nearest estimated point.

    Hinterstoisser et al. (ACCV'12), for objects with indistinguishable views. Nearest neighbours
    with :class:`scipy.spatial.cKDTree` built on the estimated points, queried with the
    ground-truth points, as the toolkit does. Parameters as :func:`add`; result in the unit of
    ``pts``.
    """
    pts = _points(pts)
    pts_e = pts @ _rotation(R_e, "R_e").T + _translation(t_e, "t_e")
    pts_g = pts @ _rotation(R_g, "R_g").T + _translation(t_g, "t_g")
    nn_dists, _ = cKDTree(pts_e).query(pts_g, k=1)
    return float(nn_dists.mean())


def ad(R_e, t_e, R_g, t_g, pts, symmetric: bool) -> float:
    """ADD(-S): :func:`adi` for symmetric objects, :func:`add` otherwise (the toolkit's "ad").

    The toolkit calls an object symmetric when its models_info entry lists any symmetry
    (discrete or continuous); :func:`is_symmetric` applies that rule to a PartModel.
    """
    return adi(R_e, t_e, R_g, t_g, pts) if symmetric else add(R_e, t_e, R_g, t_g, pts)


def is_symmetric(model) -> bool:
    """True when a PartModel (or BOP models_info entry) declares any symmetry."""
    if isinstance(model, dict):
        return bool(model.get("symmetries_discrete")) or bool(model.get("symmetries_continuous"))
    return bool(model.symmetries_discrete) or bool(model.symmetries_continuous)


def _gt_sym_poses(R_g, t_g, syms) -> tuple[np.ndarray, np.ndarray]:
    """Rotations (K, 3, 3) and translations (K, 3) of the GT pose composed with each symmetry."""
    S = _symmetry_array(syms)
    R_g = _rotation(R_g, "R_g")
    t_g = _translation(t_g, "t_g")
    return R_g @ S[:, :3, :3], S[:, :3, 3] @ R_g.T + t_g


def _gt_sym_points(pts: np.ndarray, Rs: np.ndarray, ts: np.ndarray):
    """Yield model points at batches of the symmetric GT poses, arrays (N, batch, 3).

    One GEMM per batch (pts @ stacked rotations) instead of an einsum: 5-10x faster for the
    315 transforms of a continuous symmetry. Batches keep each array around 10 MB.
    """
    n = max(1, int(4e5 // len(pts)))
    for i in range(0, len(Rs), n):
        R, t = Rs[i:i + n], ts[i:i + n]
        yield (pts @ R.reshape(-1, 3).T).reshape(len(pts), len(R), 3) + t[None]


def mssd(R_e, t_e, R_g, t_g, pts, syms) -> float:
    """MSSD: Maximum Symmetry-aware Surface Distance (BOP-19).

    ``min over symmetries S of max over points |T_e p - T_g S p|``.

    Parameters
    ----------
    R_e, t_e, R_g, t_g, pts
        As :func:`add`.
    syms : (K, 4, 4) array or list
        Symmetry transforms of the object INCLUDING the identity, translations in the unit of
        ``pts`` (e.g. ``model.symmetry_transforms(MAX_SYM_DISC_STEP)``; metres).

    Returns
    -------
    float
        Distance in the unit of ``pts``.
    """
    pts = _points(pts)
    pts_e = pts @ _rotation(R_e, "R_e").T + _translation(t_e, "t_e")
    Rs, ts = _gt_sym_poses(R_g, t_g, syms)
    best_sq = math.inf
    for pts_g in _gt_sym_points(pts, Rs, ts):
        d = pts_g - pts_e[:, None, :]
        best_sq = min(best_sq, float(np.einsum("nkc,nkc->nk", d, d).max(axis=0).min()))
    return math.sqrt(best_sq)


def _project(points: np.ndarray, K: np.ndarray) -> np.ndarray:
    """Pinhole projection of camera-frame points (..., 3) -> (..., 2), as misc.project_pts."""
    p = (points.reshape(-1, 3) @ K.T).reshape(points.shape)
    return p[..., :2] / p[..., 2:3]


def mspd(R_e, t_e, R_g, t_g, K, pts, syms) -> float:
    """MSPD: Maximum Symmetry-aware Projection Distance (BOP-19), pixels.

    ``min over symmetries S of max over points |proj(T_e p) - proj(T_g S p)|``. Not normalised
    here: the BOP score multiplies it by ``640 / image width`` before thresholding
    (:func:`average_recall_mspd`).

    Parameters
    ----------
    R_e, t_e, R_g, t_g, pts, syms
        As :func:`mssd` (points must lie in front of the camera).
    K : (3, 3) array or CameraIntrinsics
        Camera intrinsics, pixels.

    Returns
    -------
    float
        Pixels.
    """
    pts = _points(pts)
    K = _intrinsic_matrix(K)
    proj_e = _project(pts @ _rotation(R_e, "R_e").T + _translation(t_e, "t_e"), K)
    Rs, ts = _gt_sym_poses(R_g, t_g, syms)
    best_sq = math.inf
    for pts_g in _gt_sym_points(pts, Rs, ts):
        d = _project(pts_g, K) - proj_e[:, None, :]
        best_sq = min(best_sq, float(np.einsum("nkc,nkc->nk", d, d).max(axis=0).min()))
    return math.sqrt(best_sq)


def re(R_e, R_g) -> float:
    """Rotation error: geodesic angle of ``R_e R_g^-1``, RADIANS (the toolkit returns degrees)."""
    return rotation_angle(_rotation(R_e, "R_e"), _rotation(R_g, "R_g"))


def te(t_e, t_g) -> float:
    """Translation error ``|t_g - t_e|``, in the unit of the translations."""
    return float(np.linalg.norm(_translation(t_g, "t_g") - _translation(t_e, "t_e")))


def re_te_sym(R_e, t_e, R_g, t_g, syms) -> tuple[float, float]:
    """Rotation and translation error to the symmetry-equivalent GT pose nearest in rotation.

    NOT a BOP error (the toolkit's ``re``/``te`` ignore symmetries): it gives meaningful median
    angle/offset figures for symmetric parts. Among the GT poses ``T_g S`` the one with the
    smallest angle to ``R_e`` is chosen (then the smallest translation error).

    Parameters
    ----------
    R_e, t_e, R_g, t_g
        As :func:`add`.
    syms : (K, 4, 4) array
        Symmetries with the identity. A continuous symmetry leaves a residual of up to half a
        discretisation step: ``model.symmetry_transforms(1e-3)`` keeps it below 1 mrad (0.06 deg).

    Returns
    -------
    (float, float)
        Angle in radians, distance in the unit of the translations.
    """
    R_e = _rotation(R_e, "R_e")
    t_e = _translation(t_e, "t_e")
    Rs, ts = _gt_sym_poses(R_g, t_g, syms)
    cos = 0.5 * (np.einsum("ij,kij->k", R_e, Rs) - 1.0)  # trace(R_e^T R_k) = sum(R_e * R_k)
    angles = np.arccos(np.clip(cos, -1.0, 1.0))
    dists = np.linalg.norm(ts - t_e, axis=1)
    k = int(np.lexsort((dists, angles))[0])
    return float(angles[k]), float(dists[k])


# ---------------------------------------------------------------------------------------------
# VSD
# ---------------------------------------------------------------------------------------------


def depth_to_distance(depth, K) -> np.ndarray:
    """Distance image: Euclidean distance from the camera centre to each pixel's 3-D point.

    ``dist = depth * sqrt(1 + ((u - cx) / fx)^2 + ((v - cy) / fy)^2)`` with integer pixel
    coordinates, as the toolkit's ``depth_im_to_dist_im_fast``. 0 where depth is 0; NaN depth
    (this project's other "missing" value) becomes 0 as well.

    Parameters
    ----------
    depth : (H, W) float array
        Depth (z), any unit; 0 or NaN = missing.
    K : (3, 3) array or CameraIntrinsics

    Returns
    -------
    (H, W) float64 array, unit of ``depth``.
    """
    depth = np.asarray(depth)
    if depth.ndim != 2 or not (np.issubdtype(depth.dtype, np.floating)
                               or np.issubdtype(depth.dtype, np.integer)):
        raise InputError("depth", "a (H, W) depth image", describe_array(depth))
    return _depth_times(depth, _ray_lengths(depth.shape, _intrinsic_matrix(K)))


def _ray_lengths(shape: tuple[int, int], K: np.ndarray) -> np.ndarray:
    """(H, W) float64 length of the ray (x, y, 1) through each pixel centre."""
    H, W = shape
    x = (np.arange(W) - K[0, 2]) / np.float64(K[0, 0])
    y = (np.arange(H) - K[1, 2]) / np.float64(K[1, 1])
    return np.sqrt(1.0 + x[None, :] ** 2 + y[:, None] ** 2)


def _depth_times(depth: np.ndarray, ray_lengths: np.ndarray) -> np.ndarray:
    d = np.nan_to_num(np.asarray(depth, dtype=np.float64), nan=0.0, posinf=0.0, neginf=0.0)
    return d * ray_lengths


def _visib_mask_bop19(d_test: np.ndarray, d_model: np.ndarray, delta: float) -> np.ndarray:
    # BOP-19 mode: the object counts as visible where the test depth is missing (shiny parts).
    # float32 difference as in visibility._estimate_visib_mask, so boundary pixels agree.
    d_diff = d_model.astype(np.float32) - d_test.astype(np.float32)
    return ((d_diff <= delta) | (d_test == 0)) & (d_model > 0)


def estimate_visib_mask_gt(dist_test, dist_gt, delta: float) -> np.ndarray:
    """Visible surface of the model at the GT pose (toolkit ``visib_mode="bop19"``).

    Visible where the model is rendered and either the test distance is missing (0) or the model
    is at most ``delta`` behind it. Inputs are distance images (:func:`depth_to_distance`) in
    one unit with ``delta``. Returns a (H, W) bool mask.
    """
    d_test, d_gt = np.asarray(dist_test), np.asarray(dist_gt)
    if d_test.shape != d_gt.shape:
        raise InputError("dist_gt", f"an image of shape {d_test.shape} (as dist_test)",
                         describe_array(d_gt))
    return _visib_mask_bop19(d_test, d_gt, delta)


def estimate_visib_mask_est(dist_test, dist_est, visib_gt, delta: float) -> np.ndarray:
    """Visible surface of the model at the estimated pose (toolkit ``visib_mode="bop19"``).

    As :func:`estimate_visib_mask_gt`, plus every pixel visible at the GT pose where the
    estimate is rendered (Hodan et al. ECCVW'16, eq. 14: an estimate is not rewarded for hiding
    behind an occluder).
    """
    d_test, d_est = np.asarray(dist_test), np.asarray(dist_est)
    if d_test.shape != d_est.shape:
        raise InputError("dist_est", f"an image of shape {d_test.shape} (as dist_test)",
                         describe_array(d_est))
    return _visib_mask_bop19(d_test, d_est, delta) | (np.asarray(visib_gt, bool) & (d_est > 0))


def renderer_depth(renderer, key) -> Callable[[np.ndarray], np.ndarray]:
    """``render_depth`` callable for :func:`vsd` from a twin Renderer and a registered mesh key.

    The twin renderer works in metres, so the test depth, ``delta`` and (unnormalised) ``taus``
    given to :func:`vsd` must be in metres too.
    """
    if not renderer.has_mesh(key):
        raise InputError("key", "a mesh key registered with renderer.add_mesh", repr(key))

    def render_depth(T_cam_obj: np.ndarray) -> np.ndarray:
        return renderer.cast_object(key, T_cam_obj)[0]

    return render_depth


def vsd(R_e, t_e, R_g, t_g, depth_test, K, delta: float, taus, normalized_by_diameter: bool,
        diameter: float, render_depth: Callable[[np.ndarray], np.ndarray],
        cost_type: str = "step") -> np.ndarray:
    """VSD: Visible Surface Discrepancy (Hodan, Michel et al. ECCV'18), BOP-19 visibility.

    Both poses are rendered, depth is turned into distance from the camera centre, visible
    masks are estimated against the test depth (:func:`estimate_visib_mask_gt`,
    :func:`estimate_visib_mask_est`), and for each tau
    ``e = (#{inter: |dist_gt - dist_est| >= tau} + #(union - inter)) / #union``
    (``cost_type="step"``; ``"tlinear"`` sums ``min(dist / tau, 1)`` instead). An empty union
    gives 1 for every tau.

    Parameters
    ----------
    R_e, t_e, R_g, t_g
        Estimated / ground-truth pose (object to camera), translation in the depth unit.
    depth_test : (H, W) float array
        Observed depth, 0 or NaN = missing (NaN is the only addition to the toolkit).
    K : (3, 3) array or CameraIntrinsics
        Intrinsics of ``depth_test``.
    delta : float
        Visibility tolerance, depth unit (BOP-19: 15 mm, :data:`VSD_DELTA_BOP19` in metres).
    taus : sequence of float
        Misalignment tolerances: fractions of ``diameter`` if ``normalized_by_diameter``
        (BOP-19: :data:`VSD_TAUS_BOP19`), else depth units.
    normalized_by_diameter : bool
        Divide the per-pixel distances by ``diameter`` before comparing with tau.
    diameter : float
        Object diameter, depth unit.
    render_depth : callable
        ``render_depth(T_cam_obj (4, 4)) -> (H, W)`` depth of the model alone at that pose, same
        unit as ``depth_test``, 0 where not hit (the toolkit passes a renderer and an object id
        instead; see :func:`renderer_depth`).
    cost_type : {"step", "tlinear"}

    Returns
    -------
    (len(taus),) float64 array
        VSD error for each tau, in [0, 1].
    """
    if cost_type not in ("step", "tlinear"):
        raise InputError("cost_type", "'step' or 'tlinear'", repr(cost_type))
    if not (math.isfinite(delta) and delta >= 0):
        raise InputError("delta", "a finite number >= 0 (depth unit)", delta)
    taus = _positive_vector(taus, "taus")
    if normalized_by_diameter and not (math.isfinite(diameter) and diameter > 0):
        raise InputError("diameter", "a finite number > 0 (depth unit)", diameter)
    K = _intrinsic_matrix(K)
    depth_test = np.asarray(depth_test)
    if depth_test.ndim != 2:
        raise InputError("depth_test", "a (H, W) depth image", describe_array(depth_test))
    T_e = make_pose(_rotation(R_e, "R_e"), _translation(t_e, "t_e"))
    T_g = make_pose(_rotation(R_g, "R_g"), _translation(t_g, "t_g"))
    depth_est = np.asarray(render_depth(T_e))
    depth_gt = np.asarray(render_depth(T_g))
    for name, d in (("render_depth(T_est)", depth_est), ("render_depth(T_gt)", depth_gt)):
        if d.shape != depth_test.shape:
            raise InputError(name, f"a depth image of shape {depth_test.shape} (as depth_test)",
                             describe_array(d))

    # Both visibility masks need a rendered pixel, so only those pixels are converted (the
    # same numbers as whole images, ~5x less work for a part covering a tenth of the view).
    v, u = np.nonzero((np.nan_to_num(depth_gt) > 0) | (np.nan_to_num(depth_est) > 0))
    rays = np.sqrt(1.0 + ((u - K[0, 2]) / np.float64(K[0, 0])) ** 2
                   + ((v - K[1, 2]) / np.float64(K[1, 1])) ** 2)
    dist_test, dist_gt, dist_est = (_depth_times(d[v, u], rays)
                                    for d in (depth_test, depth_gt, depth_est))
    visib_gt = estimate_visib_mask_gt(dist_test, dist_gt, delta)
    visib_est = estimate_visib_mask_est(dist_test, dist_est, visib_gt, delta)
    visib_inter = visib_gt & visib_est
    union_count = int(np.count_nonzero(visib_gt | visib_est))
    if union_count == 0:
        return np.ones(len(taus))
    comp_count = union_count - int(np.count_nonzero(visib_inter))
    dists = np.abs(dist_gt[visib_inter] - dist_est[visib_inter])
    if normalized_by_diameter:
        dists = dists / diameter
    if cost_type == "step":
        costs = (dists[None, :] >= taus[:, None]).sum(axis=1)
    else:
        costs = np.minimum(dists[None, :] / taus[:, None], 1.0).sum(axis=1)
    return (costs + comp_count) / float(union_count)


def overlapping_sphere_projections(radius: float, t_1, t_2) -> bool:
    """Whether the image projections of two spheres of ``radius`` at ``t_1``, ``t_2`` overlap.

    The toolkit's approximate test (misc.overlapping_sphere_projections), used by its evaluation
    to set VSD to 1 without rendering. False when either centre has z = 0.
    """
    p1, p2 = _translation(t_1, "t_1"), _translation(t_2, "t_2")
    if p1[2] == 0 or p2[2] == 0:
        return False
    dist = np.linalg.norm(p1[:2] / p1[2] - p2[:2] / p2[2])
    return bool(dist < radius * (1.0 / p1[2] + 1.0 / p2[2]))


# ---------------------------------------------------------------------------------------------
# All errors of one estimate against one GT instance (eval_calc_errors.py semantics)
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class PoseErrors:
    """Errors of one pose estimate w.r.t. one ground-truth instance.

    Distances in the unit of the model points (metres), MSPD in pixels (not yet scaled to
    640 px width), ``re`` in radians, ``vsd`` one value per tau (empty when no depth was given).
    ``add``/``adi``/``ad``/``mssd`` are inf when the bounding spheres do not overlap, and ``vsd``
    is 1 when their projections do not, exactly as the toolkit's evaluation shortcuts them.
    """

    add: float
    adi: float
    ad: float
    mssd: float
    mspd: float
    re: float
    te: float
    vsd: np.ndarray


def pose_errors(T_est, T_gt, pts, syms, diameter: float, camera: CameraIntrinsics, *,
                symmetric: bool | None = None, depth_test=None,
                render_depth: Callable[[np.ndarray], np.ndarray] | None = None,
                cfg: BopMetricsConfig | None = None) -> PoseErrors:
    """Every BOP error of one estimate against one GT instance, with the toolkit's shortcuts.

    Parameters
    ----------
    T_est, T_gt : (4, 4) array
        Estimated / ground-truth ``T_cam_obj``, metres.
    pts : (N, 3) array
        Model points, metres (roughly uniform on the surface, see :func:`add`).
    syms : (K, 4, 4) array
        ``model.symmetry_transforms(cfg.max_sym_disc_step)`` (identity included).
    diameter : float
        Object diameter, metres (``model.diameter``).
    camera : CameraIntrinsics
    symmetric : bool, optional
        ADD-S instead of ADD for ``ad``; default: ``len(syms) > 1``.
    depth_test : (H, W) array, optional
        Observed depth in metres; with ``render_depth`` enables VSD (``cfg.vsd_taus``
        normalised by the diameter, ``cfg.vsd_delta``, ``cfg.vsd_cost``).
    render_depth : callable, optional
        See :func:`vsd` / :func:`renderer_depth`.
    cfg : BopMetricsConfig, optional
        BOP-19 defaults.
    """
    cfg = cfg or BopMetricsConfig()
    T_e = check_pose(T_est, "T_est", atol=1e-4)
    T_g = check_pose(T_gt, "T_gt", atol=1e-4)
    if not (math.isfinite(diameter) and diameter > 0):
        raise InputError("diameter", "a finite number > 0 (metres)", diameter)
    S = _symmetry_array(syms)
    if symmetric is None:
        symmetric = len(S) > 1
    R_e, t_e, R_g, t_g = T_e[:3, :3], T_e[:3, 3], T_g[:3, :3], T_g[:3, 3]
    spheres_overlap = np.linalg.norm(t_e - t_g) < diameter
    inf = math.inf
    e_add = add(R_e, t_e, R_g, t_g, pts) if spheres_overlap else inf
    e_adi = adi(R_e, t_e, R_g, t_g, pts) if spheres_overlap else inf
    if (depth_test is None) != (render_depth is None):
        raise InputError("depth_test, render_depth", "both (VSD) or neither",
                         "only " + ("depth_test" if render_depth is None else "render_depth"))
    e_vsd = np.zeros(0)
    if depth_test is not None:
        if overlapping_sphere_projections(0.5 * diameter, t_e, t_g):
            e_vsd = vsd(R_e, t_e, R_g, t_g, depth_test, camera, cfg.vsd_delta, cfg.vsd_taus, True,
                        diameter, render_depth, cfg.vsd_cost)
        else:
            e_vsd = np.ones(len(cfg.vsd_taus))
    return PoseErrors(
        add=e_add,
        adi=e_adi,
        ad=e_adi if symmetric else e_add,
        mssd=mssd(R_e, t_e, R_g, t_g, pts, S) if spheres_overlap else inf,
        mspd=mspd(R_e, t_e, R_g, t_g, camera, pts, S),
        re=re(R_e, R_g),
        te=te(t_e, t_g),
        vsd=e_vsd,
    )


# ---------------------------------------------------------------------------------------------
# Matching, recall, average recall
# ---------------------------------------------------------------------------------------------


def _thresholds(thresholds, name: str = "thresholds") -> np.ndarray:
    th = np.asarray(thresholds, dtype=np.float64).reshape(-1)
    if th.size == 0 or np.any(np.isnan(th)):
        raise InputError(name, "a non-empty list of numbers", np.asarray(thresholds).tolist())
    return th


def recall(errors, thresholds) -> np.ndarray:
    """Recall at each threshold from one error per ground-truth target (BOP "SiSo" form).

    A target is correct when its error is strictly below the threshold; NaN or inf marks a
    target without an estimate (never correct). With one estimate per target this is exactly
    the toolkit's recall; when an image holds several instances of an object use
    :func:`recall_matched`.

    Parameters
    ----------
    errors : (N,) or (N, T) array
        Errors already in threshold units (e.g. MSSD / diameter). A second axis (VSD: one
        column per tau) gives one recall row per column.
    thresholds : sequence of float, length M

    Returns
    -------
    (M,) or (T, M) float64 array
        Correct / N; 0 when N = 0 (toolkit's ``calc_recall``).
    """
    e = np.asarray(errors, dtype=np.float64)
    if e.ndim not in (1, 2):
        raise InputError("errors", "an (N,) or (N, T) array", describe_array(e))
    th = _thresholds(thresholds)
    if e.shape[0] == 0:
        return np.zeros(th.shape if e.ndim == 1 else (e.shape[1], th.size))
    with np.errstate(invalid="ignore"):
        ok = e[..., None] < th  # (N, M) or (N, T, M); NaN compares False
    return ok.mean(axis=0)


@dataclass(frozen=True)
class MatchGroup:
    """Estimates and GT instances of ONE object class in ONE image (the toolkit's matching unit).

    Attributes
    ----------
    errors : (n_est, n_gt) or (n_est, n_gt, T) array
        Error of each estimate w.r.t. each GT instance, in threshold units (VSD: one value per
        tau on the last axis). inf/NaN = not computed (never matched).
    scores : (n_est,) array
        Confidence of each estimate; higher is matched first.
    gt_valid : (n_gt,) bool array or None
        GT instances that are targets (e.g. visib_fract >= 0.1); None = all.
    """

    errors: np.ndarray
    scores: np.ndarray
    gt_valid: np.ndarray | None = None

    def __post_init__(self):
        e = np.asarray(self.errors, dtype=np.float64)
        if e.ndim == 1 and e.size == 0:
            e = e.reshape(0, 0)
        if e.ndim not in (2, 3):
            raise InputError("MatchGroup.errors", "an (n_est, n_gt) or (n_est, n_gt, T) array",
                             describe_array(e))
        s = np.asarray(self.scores, dtype=np.float64).reshape(-1)
        if s.shape[0] != e.shape[0]:
            raise InputError("MatchGroup.scores", f"{e.shape[0]} scores (one per estimate)",
                             describe_array(s))
        v = np.ones(e.shape[1], bool) if self.gt_valid is None else np.asarray(self.gt_valid, bool)
        if v.shape != (e.shape[1],):
            raise InputError("MatchGroup.gt_valid", f"{e.shape[1]} flags (one per GT instance)",
                             describe_array(v))
        object.__setattr__(self, "errors", e)
        object.__setattr__(self, "scores", s)
        object.__setattr__(self, "gt_valid", v)


def match_poses(errors, scores, threshold: float, gt_valid=None, max_estimates: int = 0) -> np.ndarray:
    """Greedy BOP matching of estimates to GT instances of one object class in one image.

    Estimates are taken in order of decreasing score (ties keep their order); each is matched
    to the valid, still unmatched GT instance with the lowest error strictly below
    ``threshold`` (first such instance on ties), as ``pose_matching.match_poses``.

    Parameters
    ----------
    errors : (n_est, n_gt) array
        Errors in threshold units.
    scores : (n_est,) array
    threshold : float
    gt_valid : (n_gt,) bool array, optional
    max_estimates : int
        Only the first this many estimates by score are used (0 = all).

    Returns
    -------
    (n_gt,) int array
        Index of the matched estimate for each GT instance, -1 when none.
    """
    g = MatchGroup(errors, scores, gt_valid)
    if g.errors.ndim != 2:
        raise InputError("errors", "an (n_est, n_gt) array", describe_array(g.errors))
    order = np.argsort(-g.scores, kind="stable")
    if max_estimates > 0:
        order = order[:max_estimates]
    matched = np.full(g.errors.shape[1], -1, dtype=np.int64)
    for i in order:
        row = np.where(g.gt_valid & (matched < 0), g.errors[i], np.inf)
        with np.errstate(invalid="ignore"):
            ok = row < threshold  # NaN never matches
        if np.any(ok):
            j = int(np.argmin(np.where(ok, row, np.inf)))  # first of the lowest errors
            matched[j] = i
    return matched


def recall_matched(groups: Sequence[MatchGroup], thresholds, n_top: int = -1) -> np.ndarray:
    """Recall at each threshold with the toolkit's matching (several instances per image).

    For every threshold the estimates of each group are matched with :func:`match_poses`;
    recall = matched valid GT instances / targets (``score.calc_localization_scores``).

    Parameters
    ----------
    groups : sequence of MatchGroup
        One per (image, object class) with at least one GT instance.
    thresholds : sequence of float, length M
    n_top : int
        Estimates considered per group: -1 = as many as valid GT instances (BOP-19,
        ``inst_count``), 0 = all, k > 0 = the k best by score (targets then count at most k
        instances per group).

    Returns
    -------
    (M,) or (T, M) float64 array
        (T, M) when the groups' errors carry a tau axis (VSD).
    """
    th = _thresholds(thresholds)
    groups = list(groups)
    if not groups:
        return np.zeros(th.shape)
    n_extra = {g.errors.shape[2] if g.errors.ndim == 3 else None for g in groups}
    if len(n_extra) != 1:
        raise InputError("groups", "errors of the same dimensionality in every group",
                         sorted(str(x) for x in n_extra))
    T = n_extra.pop()
    targets = 0
    hits = np.zeros((1 if T is None else T, th.size))
    for g in groups:
        n_valid = int(np.count_nonzero(g.gt_valid))
        n_ests = n_valid if n_top == -1 else (0 if n_top == 0 else n_top)
        if n_top == -1 and n_ests == 0:
            continue  # no targets in this group and, with inst_count = 0, no estimates either
        targets += min(n_top, n_valid) if n_top > 0 else n_valid
        errs = g.errors[..., None] if T is None else g.errors
        for k in range(errs.shape[2]):
            for m, thr in enumerate(th):
                matched = match_poses(errs[:, :, k], g.scores, thr, g.gt_valid, n_ests)
                hits[k, m] += np.count_nonzero((matched >= 0) & g.gt_valid)
    out = hits / targets if targets > 0 else np.zeros_like(hits)
    return out[0] if T is None else out


def average_recall_vsd(vsd_errors, thresholds=VSD_THRESHOLDS_BOP19) -> float:
    """AR_VSD: mean recall over every (tau, theta) pair.

    ``vsd_errors`` is (N, n_tau) (one row per target, from :func:`vsd` with the BOP-19 taus;
    a row of NaN/1 for a target without estimate) or a list of :class:`MatchGroup` with a tau
    axis.
    """
    if _is_groups(vsd_errors):
        r = recall_matched(vsd_errors, thresholds)
    else:
        e = np.asarray(vsd_errors, dtype=np.float64)
        if e.ndim != 2:
            raise InputError("vsd_errors", "an (N, n_tau) array", describe_array(e))
        r = recall(e, thresholds)
    return float(np.mean(r))


def _per_target_scale(values, n: int, name: str) -> np.ndarray:
    v = np.asarray(values, dtype=np.float64)
    v = np.broadcast_to(v, (n,)) if v.ndim == 0 else v.reshape(-1)
    if v.shape != (n,) or not np.all(np.isfinite(v)) or np.any(v <= 0):
        raise InputError(name, f"a number > 0 or {n} of them (one per target)", describe_array(v))
    return v


def _is_groups(x) -> bool:
    return isinstance(x, (list, tuple)) and len(x) > 0 and isinstance(x[0], MatchGroup)


def average_recall_mssd(mssd_errors, diameters=1.0, thresholds=MSSD_THRESHOLDS_BOP19) -> float:
    """AR_MSSD: mean recall of ``mssd / diameter`` over the thresholds (fractions of diameter).

    ``mssd_errors`` (N,) with ``diameters`` a scalar or (N,) in the same unit, or a list of
    :class:`MatchGroup` whose errors are already divided by the diameter (``diameters`` unused).
    """
    if _is_groups(mssd_errors):
        return float(np.mean(recall_matched(mssd_errors, thresholds)))
    e = np.asarray(mssd_errors, dtype=np.float64).reshape(-1)
    return float(np.mean(recall(e / _per_target_scale(diameters, e.size, "diameters"), thresholds)))


def average_recall_mspd(mspd_errors, image_widths=MSPD_REFERENCE_WIDTH,
                        thresholds=MSPD_THRESHOLDS_BOP19) -> float:
    """AR_MSPD: mean recall of ``mspd * 640 / image width`` over the pixel thresholds.

    ``mspd_errors`` (N,) pixels with ``image_widths`` a scalar or (N,), or a list of
    :class:`MatchGroup` whose errors are already scaled (``image_widths`` unused).
    """
    if _is_groups(mspd_errors):
        return float(np.mean(recall_matched(mspd_errors, thresholds)))
    e = np.asarray(mspd_errors, dtype=np.float64).reshape(-1)
    w = _per_target_scale(image_widths, e.size, "image_widths")
    return float(np.mean(recall(e * (MSPD_REFERENCE_WIDTH / w), thresholds)))


def bop_average_recall(ar_vsd: float, ar_mssd: float, ar_mspd: float) -> float:
    """The BOP-19 score: ``AR = (AR_VSD + AR_MSSD + AR_MSPD) / 3``."""
    return float(np.mean([ar_vsd, ar_mssd, ar_mspd]))


def add_s_recall(ad_errors, diameters, fraction: float = ADD_THRESHOLD) -> float:
    """ADD(-S) recall: share of targets with ``ad / diameter < fraction`` (0.1 d by default).

    ``ad_errors`` (N,) from :func:`ad` (ADD-S for symmetric objects, ADD otherwise; inf/NaN =
    no estimate), ``diameters`` a scalar or (N,) in the same unit.
    """
    e = np.asarray(ad_errors, dtype=np.float64).reshape(-1)
    return float(recall(e / _per_target_scale(diameters, e.size, "diameters"), [fraction])[0])
