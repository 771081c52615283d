"""Multi-scale robust ICP of model points onto observed points, with Open3D's legacy pipeline.

Source: the model points visible at the hypothesis, in the OBJECT frame, with their exact mesh
normals. Target: the observed points around the hypothesis, in the CAMERA frame. The estimated
transformation is therefore ``T_cam_obj`` itself, started at the hypothesis.

Why these choices (bench/bench_pose_icp.py -> docs/benchmarks/pose_icp.md; twin frames, six
part families, 72 starts per row, same prepared points for every variant):

* Legacy ``registration_generalized_icp`` rather than point-to-plane: from starts 10 deg / 2 cm
  off it converged (< 2 deg, < 5 mm) in 90 % of exact and 75 % of noisy frames against 57 % and
  53 % for point-to-plane, with 4x smaller median error on exact frames (0.014 vs 0.059 deg).
  Point-to-plane diverges on flat views (one face dominates: near-singular 6x6 system); GICP's
  plane-to-plane covariances regularise the degenerate directions. It costs ~1.5x the time
  (20 vs 14 ms median on the loaded 2-core host).
* Legacy rather than tensor API: the tensor pipeline has no generalized ICP, and its
  point-to-plane ``multi_scale_icp`` was slower (51 vs 20 ms median; one robust kernel for all
  levels) and less robust (58 % / 46 % converged, occasional "singular 6x6 linear system").
* Coarse to fine voxels with shrinking correspondence distances widen the basin; a level whose
  result jumps farther than ``max_step_factor`` x its distance is discarded (divergence guard).
* A tight Tukey kernel (``kernel_scale`` 0.1 of the level's distance along the normal) beat
  0.25-2 and no kernel: table points next to the part stop pulling it (noisy frames, 10 deg /
  2 cm: 55/72 converged at 0.1 vs 45/72 at 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import open3d as o3d

from weak_template_ros.pose.config import IcpConfig

_reg = o3d.pipelines.registration


@dataclass
class IcpResult:
    """Outcome of :func:`refine_icp`.

    Attributes
    ----------
    T_cam_obj : (4, 4) float64
        Refined pose, metres.
    fitness : float
        Fraction of source points with a correspondence at the last level that ran.
    inlier_rmse : float
        RMSE of those correspondences as Open3D reports it (metres for point-to-plane,
        Mahalanobis units for generalized ICP).
    correspondences : int
        Number of correspondences at the last level that ran.
    levels_run : int
        Levels whose result was kept (the divergence guard discards the others).
    ok : bool
        At least one level kept and ``correspondences >= cfg.min_correspondences``.
    """

    T_cam_obj: np.ndarray
    fitness: float
    inlier_rmse: float
    correspondences: int
    levels_run: int
    ok: bool


def _cloud(points: np.ndarray, normals: np.ndarray | None = None) -> o3d.geometry.PointCloud:
    pcd = o3d.geometry.PointCloud(o3d.utility.Vector3dVector(np.ascontiguousarray(points, np.float64)))
    if normals is not None:
        pcd.normals = o3d.utility.Vector3dVector(np.ascontiguousarray(normals, np.float64))
    return pcd


def _kernel(cfg: IcpConfig, max_distance: float):
    """Tukey/Huber loss whose width is ``kernel_scale * max_distance`` metres along the normal.

    Open3D's generalized ICP weights Mahalanobis residuals ``W d`` with
    ``W = (C_s + C_t)^(-1/2)`` and surface covariances ``diag(eps, 1, 1)`` (normal first): a
    normal offset ``d_n`` gives the residual ``d_n / sqrt(2 eps)``, hence the rescaling.
    """
    if cfg.robust_kernel == "none":
        return None
    k = cfg.kernel_scale * max_distance
    if cfg.method == "generalized":
        k /= np.sqrt(2.0 * cfg.gicp_epsilon)
    return _reg.TukeyLoss(k) if cfg.robust_kernel == "tukey" else _reg.HuberLoss(k)


def _estimation(cfg: IcpConfig, max_distance: float):
    kernel = _kernel(cfg, max_distance)
    if cfg.method == "generalized":
        if kernel is None:
            return _reg.TransformationEstimationForGeneralizedICP(cfg.gicp_epsilon)
        return _reg.TransformationEstimationForGeneralizedICP(cfg.gicp_epsilon, kernel)
    if kernel is None:
        return _reg.TransformationEstimationPointToPlane()
    return _reg.TransformationEstimationPointToPlane(kernel)


def refine_icp(source_points: np.ndarray, source_normals: np.ndarray, target_points: np.ndarray,
               target_normals: np.ndarray | None, T_init: np.ndarray,
               cfg: IcpConfig | None = None) -> IcpResult:
    """Refine ``T_init`` so that the source (object frame) lies on the target (camera frame).

    Parameters
    ----------
    source_points, source_normals : (N, 3) arrays
        Model points visible at ``T_init`` and their unit normals, object frame, metres.
    target_points : (M, 3) array
        Observed points, camera frame, metres.
    target_normals : (M, 3) array or None
        Their unit normals (rows of zeros: unknown, the point is dropped). None: estimated by
        Open3D at every level (slower). Each level uses only the target points that can have a
        source point within its correspondence distance (bounding-sphere test).
    T_init : (4, 4) array
        Starting ``T_cam_obj``.
    cfg : IcpConfig, optional

    Returns
    -------
    IcpResult
    """
    cfg = cfg or IcpConfig()
    T = np.array(T_init, dtype=np.float64)
    src = _cloud(source_points, source_normals)
    if target_normals is not None:
        has_normal = np.any(target_normals != 0, axis=1)
        target_points, target_normals = target_points[has_normal], target_normals[has_normal]
    target_points = np.asarray(target_points, dtype=np.float64)
    # Bounding sphere of the source: a target point farther than radius + d from its centre has
    # no source point within d, so each level only needs the target inside that sphere.
    lo, hi = source_points.min(axis=0), source_points.max(axis=0)
    s_center = 0.5 * (lo + hi)
    s_radius = float(np.linalg.norm(source_points - s_center, axis=1).max())
    fitness, rmse, n_corr, kept = 0.0, float("inf"), 0, 0
    for voxel, dist, iters in zip(cfg.voxel_sizes, cfg.max_distances, cfg.iterations, strict=True):
        near = (np.linalg.norm(target_points - (T[:3, :3] @ s_center + T[:3, 3]), axis=1)
                <= s_radius + dist)
        s = src.voxel_down_sample(voxel)
        t = _cloud(target_points[near], None if target_normals is None else target_normals[near])
        t = t.voxel_down_sample(voxel)
        if len(s.points) < 3 or len(t.points) < 3:
            continue
        if s.has_normals():
            s.normalize_normals()
        if target_normals is not None:
            t.normalize_normals()
        else:
            t.estimate_normals(o3d.geometry.KDTreeSearchParamHybrid(radius=3 * voxel, max_nn=20))
            t.orient_normals_towards_camera_location(np.zeros(3))
        criteria = _reg.ICPConvergenceCriteria(cfg.relative_tolerance, cfg.relative_tolerance,
                                               int(iters))
        if cfg.method == "generalized":
            res = _reg.registration_generalized_icp(s, t, dist, T, _estimation(cfg, dist), criteria)
        else:
            res = _reg.registration_icp(s, t, dist, T, _estimation(cfg, dist), criteria)
        T_new = np.asarray(res.transformation)
        n_new = len(res.correspondence_set)
        step = np.linalg.norm(T_new[:3, 3] - T[:3, 3])
        if not np.all(np.isfinite(T_new)) or step > cfg.max_step_factor * dist or n_new < 3:
            continue  # diverged or lost the surface at this level: keep the previous pose
        T = T_new
        fitness, rmse, n_corr, kept = float(res.fitness), float(res.inlier_rmse), n_new, kept + 1
    ok = kept > 0 and n_corr >= cfg.min_correspondences
    return IcpResult(T, fitness, rmse, n_corr, kept, ok)
