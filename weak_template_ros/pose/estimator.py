"""Pose estimation of one part in an RGB-D frame: hypotheses -> ICP -> verification -> canonical pose.

Three entry points:

* :class:`PoseEstimator` keeps what is reused across frames (renderer with the model's BVH,
  sampled model points) for one model and one camera; a ROS node holds one.
* :func:`refine_and_verify` refines and verifies any coarse poses (LINEMOD, another detector,
  a tracker's prediction, ground truth plus noise in tests).
* :func:`estimate_poses` takes its hypotheses from the LINEMOD matcher of a template library.

Per hypothesis: observed points around the hypothesis (``scene_points``), model points visible
at it (z-buffer on a render), multi-scale ICP (``icp``), render-and-compare verification
(``verify``), canonical symmetric representative (``symmetry``). Accepted estimates closer than
``same_instance_distance`` diameters are one instance: the best score is kept.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import threading
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
from scipy.spatial.transform import Rotation

from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.config import validate
from weak_template_ros.errors import InputError, describe_array
from weak_template_ros.geometry import check_pose
from weak_template_ros.models import PartModel
from weak_template_ros.pose.config import IcpConfig, PoseConfig
from weak_template_ros.pose.icp import IcpResult, refine_icp
from weak_template_ros.pose.model_points import ModelPoints, model_points, visible_points
from weak_template_ros.pose.scene_points import (
    ObservedSurface,
    SurfaceCache,
    scene_points,
    sphere_roi,
    valid_depth,
)
from weak_template_ros.pose.symmetry import canonical_pose
from weak_template_ros.pose.verify import Verification, rejection, verify_pose
from weak_template_ros.twin.renderer import Renderer

__all__ = ["PoseEstimate", "PoseEstimator", "check_frame", "estimate_poses",
           "hypothesis_matcher_config", "refine_and_verify"]

#: Largest plausible median depth in metres: more means the depth is not in metres (mm?).
MAX_MEDIAN_DEPTH = 100.0


@dataclass
class PoseEstimate:
    """One verified (or, on request, rejected) pose of a part.

    Attributes
    ----------
    name : str
        Model name.
    obj_id : int or None
        Object id (BOP) when the caller gave one.
    T_cam_obj : (4, 4) float64
        Canonical pose (see :mod:`weak_template_ros.pose.symmetry`), metres.
    score : float
        Verification score in [0, 1].
    accepted : bool
        Passed verification.
    verification : Verification
        Details of the render-and-compare check.
    icp : IcpResult or None
        None when refinement was off or impossible.
    hypothesis_index : int
        Index of the coarse hypothesis in the list given (or returned by the matcher).
    hypothesis_score : float or None
        Score of that coarse hypothesis (LINEMOD similarity), when known.
    T_cam_obj_coarse : (4, 4) float64
        The coarse hypothesis.
    T_cam_obj_refined : (4, 4) float64
        The ICP result before choosing the canonical symmetric equivalent.
    timings_ms : dict
        Milliseconds per stage: ``prepare`` (scene points, visible model points), ``icp``,
        ``verify``, ``canonical``, ``total``; ``detect`` (shared by all estimates of a frame)
        from :func:`estimate_poses`.
    refinement : str
        "" for the configured ICP, else the name of the ``PoseConfig.alternatives`` entry that
        produced this estimate.
    """

    name: str
    obj_id: int | None
    T_cam_obj: np.ndarray
    score: float
    accepted: bool
    verification: Verification
    icp: IcpResult | None
    hypothesis_index: int
    hypothesis_score: float | None
    T_cam_obj_coarse: np.ndarray = field(repr=False)
    T_cam_obj_refined: np.ndarray = field(repr=False)
    timings_ms: dict[str, float] = field(default_factory=dict)
    refinement: str = ""

    def to_dict(self) -> dict:
        """JSON-ready dict: pose as R, t (m), rotation vector (rad) and quaternion (x, y, z, w)."""
        R = self.T_cam_obj[:3, :3]
        rot = Rotation.from_matrix(R)
        hs = self.hypothesis_score
        out = {
            "name": self.name, "obj_id": self.obj_id, "score": round(float(self.score), 6),
            "accepted": bool(self.accepted), "hypothesis_index": int(self.hypothesis_index),
            "hypothesis_score": None if hs is None else round(float(hs), 6),
            "refinement": self.refinement,
            "T_cam_obj": {"R": R.tolist(), "t_m": self.T_cam_obj[:3, 3].tolist(),
                          "rotvec_rad": rot.as_rotvec().tolist(), "quat_xyzw": rot.as_quat().tolist()},
            "verification": self.verification.to_dict(),
            "timings_ms": {k: round(float(v), 3) for k, v in self.timings_ms.items()},
        }
        if self.icp is not None:
            out["icp"] = {"fitness": round(self.icp.fitness, 6), "inlier_rmse": self.icp.inlier_rmse,
                          "correspondences": self.icp.correspondences,
                          "levels_run": self.icp.levels_run, "ok": self.icp.ok}
        return out


def check_frame(rgb: np.ndarray | None, depth: np.ndarray, camera: CameraIntrinsics) -> np.ndarray:
    """Validate a frame; return the depth as float32 metres with NaN replaced by 0.

    Raises InputError naming ``camera``, ``rgb`` or ``depth`` when: the principal point lies
    outside the central 80 % of the image (real lenses are centred to a few percent: K of
    another resolution, e.g. 640x480 intrinsics with 320x240 images, puts it at the border), an
    image does not have the camera's size, the depth is not a float image, holds no valid
    pixel, or is not in metres (median valid depth above 100).
    """
    if not isinstance(camera, CameraIntrinsics):
        raise InputError("camera", "a CameraIntrinsics", type(camera).__name__)
    W, H = camera.width, camera.height
    if not (0.1 * W <= camera.cx <= 0.9 * W and 0.1 * H <= camera.cy <= 0.9 * H):
        raise InputError("camera", f"intrinsics of a {W}x{H} image (principal point in the central "
                         f"80 %: cx in [{0.1 * W:g}, {0.9 * W:g}], cy in [{0.1 * H:g}, {0.9 * H:g}])",
                         f"cx={camera.cx:g}, cy={camera.cy:g} (K of another resolution?)")
    depth = np.asarray(depth)
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise InputError("depth", "an (H, W) float image in metres (0 or NaN = invalid)",
                         describe_array(depth))
    camera.check_image(depth, "depth")
    if rgb is not None:
        rgb = np.asarray(rgb)
        if rgb.ndim not in (2, 3) or (rgb.ndim == 3 and rgb.shape[2] not in (3, 4)):
            raise InputError("rgb", "an (H, W, 3) RGB or (H, W) grey image", describe_array(rgb))
        camera.check_image(rgb, "rgb")
    valid = valid_depth(depth)
    n_valid = int(valid.sum())
    if n_valid == 0:
        raise InputError("depth", "some valid depth (finite, > 0 m)",
                         f"all {depth.size} pixels invalid (0 or NaN)")
    median = float(np.median(depth[valid][:: max(1, n_valid // 10000)]))
    if median > MAX_MEDIAN_DEPTH:
        raise InputError("depth", f"metres (median valid depth <= {MAX_MEDIAN_DEPTH:g} m)",
                         f"median {median:g} (millimetres?)")
    return np.where(valid, depth, 0.0).astype(np.float32, copy=False)


def _as_hypotheses(hypotheses) -> list[tuple[np.ndarray, float | None]]:
    """(pose, score) pairs from 4x4 arrays or objects with ``T_cam_obj`` (and ``score``)."""
    if isinstance(hypotheses, np.ndarray) and hypotheses.ndim == 2:
        hypotheses = [hypotheses]
    out = []
    for i, h in enumerate(hypotheses):
        T = getattr(h, "T_cam_obj", h)
        score = getattr(h, "score", None)
        out.append((check_pose(T, f"hypotheses[{i}]", atol=1e-4),
                    None if score is None else float(score)))
    return out


class PoseEstimator:
    """Refinement and verification for one model seen by one camera.

    Parameters
    ----------
    model : PartModel
        The part, mesh in metres.
    camera : CameraIntrinsics
        Camera of every frame given to this estimator.
    cfg : PoseConfig, optional
    obj_id : int, optional
        Reported in the estimates.
    reference_rotation : (3, 3) array, optional
        Reference of the canonical symmetric pose (camera frame, default identity).

    Notes
    -----
    A model larger than ``cfg.max_model_diameter``, or one that at every hypothesis would reach
    behind the camera or project to fewer than ``cfg.min_projected_size_px``, is a unit mismatch:
    :meth:`refine_and_verify` raises InputError naming ``model``.
    """

    def __init__(self, model: PartModel, camera: CameraIntrinsics, cfg: PoseConfig | None = None,
                 obj_id: int | None = None, reference_rotation: np.ndarray | None = None):
        if not isinstance(model, PartModel):
            raise InputError("model", "a PartModel", type(model).__name__)
        self.cfg = validate(cfg or PoseConfig())
        self.model = model
        self.camera = camera
        self.obj_id = obj_id
        self.reference_rotation = (np.eye(3) if reference_rotation is None
                                   else np.asarray(reference_rotation, dtype=np.float64))
        self.renderer = Renderer(camera)
        self.renderer.add_mesh("model", model.mesh)
        self._lock = threading.Lock()  # one renderer: one frame at a time

    @property
    def points(self) -> ModelPoints:
        return model_points(self.model, self.cfg.icp.model_points)

    def _check_scale(self, hyps: list[tuple[np.ndarray, float | None]], mp: ModelPoints) -> None:
        """A unit mismatch shows as a model that cannot fit in front of the camera at any
        hypothesis, or projects to a few pixels at all of them."""
        if mp.diameter > self.cfg.max_model_diameter:
            raise InputError("model", f"a part model in metres (diameter <= "
                             f"{self.cfg.max_model_diameter:g} m)", f"{self.model.name!r} with "
                             f"diameter {mp.diameter:g} m (a model in millimetres?)")
        if not hyps:
            return
        sizes = []
        for T, _ in hyps:
            z = float((T[:3, :3] @ mp.center + T[:3, 3])[2])
            if z - mp.radius <= 0:
                sizes.append(math.inf if z > 0 else -1.0)
            else:
                sizes.append(self.camera.fx * mp.diameter / z)
        if all(s == math.inf for s in sizes):
            raise InputError("model", "a part model in metres that fits in front of the camera at "
                             "the hypotheses", f"{self.model.name!r} with diameter {mp.diameter:g} m "
                             f"reaching behind the camera (a model in millimetres?)")
        if max(sizes) < self.cfg.min_projected_size_px and max(sizes) > 0:
            raise InputError("model", f"a part model in metres projecting to at least "
                             f"{self.cfg.min_projected_size_px:g} px", f"{self.model.name!r} with "
                             f"diameter {mp.diameter:g} m, {max(sizes):.2g} px (a model in km?)")

    def refine_and_verify(self, hypotheses: Sequence, rgb: np.ndarray | None, depth: np.ndarray,
                          return_rejected: bool = False) -> list[PoseEstimate]:
        """Refine every hypothesis, verify it, keep the best per instance.

        Parameters
        ----------
        hypotheses : sequence of (4, 4) arrays or of objects with ``T_cam_obj`` (and ``score``)
            Coarse ``T_cam_obj``, metres. Those close to an earlier one are dropped
            (``cfg.duplicate_*``), then at most ``cfg.max_hypotheses`` are used, in order; the
            rest are skipped once ``cfg.max_instances`` estimates scored at least
            ``cfg.early_exit_score``. When none did, the best ``cfg.alternative_candidates``
            are refined again from their coarse pose with each of ``cfg.alternatives``.
        rgb : (H, W, 3) uint8 RGB or (H, W) grey image, or None
            Used for the edge cue of verification (None: depth edges only).
        depth : (H, W) float array
            Metres, 0/NaN invalid.
        return_rejected : bool
            Also return the rejected estimates (``accepted`` False), after the accepted ones.

        Returns
        -------
        list of PoseEstimate
            Accepted estimates, best score first, one per instance, at most ``cfg.max_instances``.
        """
        depth = check_frame(rgb, depth, self.camera)
        mp = self.points
        hyps = self._distinct_hypotheses(_as_hypotheses(hypotheses), mp)[: self.cfg.max_hypotheses]
        self._check_scale([(T, s) for _, T, s in hyps], mp)
        cfg = self.cfg
        estimates: list[PoseEstimate] = []
        surfaces = SurfaceCache(depth, self.camera)

        def sure() -> bool:
            good = [e for e in estimates if e.accepted and e.score >= cfg.early_exit_score]
            return cfg.early_exit_score < 1.0 and len(self._distinct(good, mp)) >= cfg.max_instances

        with self._lock:
            for i, T, s in hyps:
                estimates.append(self._one(i, T, s, rgb, depth, mp, surfaces=surfaces))
                if sure():
                    break
            if cfg.refine and cfg.alternatives and not sure():
                # ICP variants fail on different parts (generalized ICP slides along extrusions,
                # point-to-plane less; edge filtering starves thin sheets): the best verified
                # result of the variants is kept (dev frames, 10 deg / 1 cm starts: 15 -> 21 of
                # 24 within 5 deg; end to end 44 -> 50 % of 36 frames).
                ranked = sorted((e for e in estimates if e.score >= cfg.alternative_min_score),
                                key=lambda e: -e.score)[: cfg.alternative_candidates]
                for e in ranked:
                    for name in cfg.alternatives:
                        estimates.append(self._one(e.hypothesis_index, e.T_cam_obj_coarse,
                                                   e.hypothesis_score, rgb, depth, mp, name,
                                                   surfaces))
                        if sure():
                            break
                    if sure():
                        break
        kept = self._distinct([e for e in estimates if e.accepted], mp)
        if return_rejected:
            kept += sorted((e for e in estimates if not e.accepted), key=lambda e: -e.score)
        return kept

    def _distinct_hypotheses(self, hyps: list[tuple[np.ndarray, float | None]], mp: ModelPoints
                             ) -> list[tuple[int, np.ndarray, float | None]]:
        """(index, pose, score) of the hypotheses in order, without those within
        ``duplicate_rotation_deg`` and ``duplicate_distance`` of an earlier one (same ICP basin)."""
        cfg = self.cfg
        if cfg.duplicate_rotation_deg <= 0 or cfg.duplicate_distance <= 0:
            return [(i, T, s) for i, (T, s) in enumerate(hyps)]
        max_cos = math.cos(math.radians(cfg.duplicate_rotation_deg))
        max_dist = cfg.duplicate_distance * mp.diameter
        kept: list[tuple[int, np.ndarray, float | None]] = []
        for i, (T, s) in enumerate(hyps):
            c = T[:3, :3] @ mp.center + T[:3, 3]
            # cos of the relative rotation angle from the trace of R_k^T R.
            if not any((np.trace(K[:3, :3].T @ T[:3, :3]) - 1.0) / 2.0 >= max_cos
                       and np.linalg.norm(c - K[:3, :3] @ mp.center - K[:3, 3]) <= max_dist
                       for _, K, _ in kept):
                kept.append((i, T, s))
        return kept

    def _distinct(self, accepted: list[PoseEstimate], mp: ModelPoints) -> list[PoseEstimate]:
        """Best score first, one estimate per instance, at most ``max_instances``."""
        kept: list[PoseEstimate] = []
        min_dist = self.cfg.same_instance_distance * mp.diameter
        for e in sorted(accepted, key=lambda e: -e.score):
            c = e.T_cam_obj_refined[:3, :3] @ mp.center + e.T_cam_obj_refined[:3, 3]
            if all(np.linalg.norm(c - k.T_cam_obj_refined[:3, :3] @ mp.center
                                  - k.T_cam_obj_refined[:3, 3]) >= min_dist for k in kept):
                kept.append(e)
            if len(kept) == self.cfg.max_instances:
                break
        return kept

    def _one(self, index: int, T0: np.ndarray, hyp_score: float | None, rgb, depth: np.ndarray,
             mp: ModelPoints, alternative: str | None = None,
             surfaces: SurfaceCache | None = None) -> PoseEstimate:
        """Refine and verify one hypothesis; ``surfaces`` holds the frame's observed surfaces
        (the alternatives start from a hypothesis already prepared, verification crops)."""
        surfaces = surfaces or SurfaceCache(depth, self.camera)
        cfg = self.cfg
        icp_cfg, scene_cfg = cfg.icp, cfg.scene
        if alternative == "point_to_plane":
            # Its best kernel width by measurement (docs/benchmarks/pose_icp.md).
            icp_cfg = dataclasses.replace(icp_cfg, method="point_to_plane", kernel_scale=0.33)
        elif alternative == "keep_edges":
            scene_cfg = dataclasses.replace(scene_cfg, edge_jump=0.0)
        timings: dict[str, float] = {}
        t_start = time.perf_counter()

        def done(T_ref: np.ndarray, ver: Verification, icp: IcpResult | None) -> PoseEstimate:
            t = time.perf_counter()
            T_out = canonical_pose(T_ref, self.model, self.reference_rotation)
            timings["canonical"] = (time.perf_counter() - t) * 1e3
            timings["total"] = (time.perf_counter() - t_start) * 1e3
            return PoseEstimate(self.model.name, self.obj_id, T_out, ver.score, ver.accepted, ver, icp,
                                index, hyp_score, T0, T_ref, timings, alternative or "")

        T = T0
        icp_result = None
        shared = None  # the refinement's observed surface, reused by verification when alike
        if cfg.refine:
            center = T0[:3, :3] @ mp.center + T0[:3, 3]
            roi = sphere_roi(self.camera, center, mp.radius, scene_cfg.roi_margin_px)
            if roi is None:
                return done(T0, rejection("the hypothesis is outside the image"), None)
            surface = surfaces.exact(roi, scene_cfg)
            shared = surface if scene_cfg == cfg.scene else None
            sp, sn, _ = scene_points(surface, center, mp.radius, scene_cfg.crop_margin)
            vis = visible_points(mp.points, mp.normals, T0,
                                 functools.partial(self.renderer.depth_at, "model", T0), self.camera,
                                 icp_cfg.visibility_tolerance)
            timings["prepare"] = (time.perf_counter() - t_start) * 1e3
            if len(sp) >= scene_cfg.min_points and vis.sum() >= 3:
                src_p, src_n = mp.points[vis], mp.normals[vis]
                n_levels = len(icp_cfg.voxel_sizes)
                t = time.perf_counter()
                if cfg.coarse_level_min_score > 0 and n_levels > 1:
                    # Coarse-to-fine budget: the first level, a verification, and the finer
                    # levels only for a hypothesis that already looks like the part.
                    first = _icp_levels(icp_cfg, slice(0, 1))
                    icp_result = refine_icp(src_p, src_n, sp, sn, T0, first)
                    # Its pose even below min_correspondences (that test is for the last
                    # level: a coarse voxel grid of a small part has few points).
                    T1 = icp_result.T_cam_obj
                    timings["icp"] = (time.perf_counter() - t) * 1e3
                    ver = self._verify(T1, rgb, depth, cfg, timings, shared, surfaces)
                    if ver.score < cfg.coarse_level_min_score:
                        return done(T1, ver, icp_result)
                    t = time.perf_counter()
                    fine = refine_icp(src_p, src_n, sp, sn, T1, _icp_levels(icp_cfg, slice(1, None)))
                    if fine.ok:
                        icp_result = dataclasses.replace(
                            fine, levels_run=fine.levels_run + icp_result.levels_run)
                else:
                    icp_result = refine_icp(src_p, src_n, sp, sn, T0, icp_cfg)
                timings["icp"] = timings.get("icp", 0.0) + (time.perf_counter() - t) * 1e3
                if icp_result.ok:
                    T = icp_result.T_cam_obj
        ver = self._verify(T, rgb, depth, cfg, timings, shared, surfaces)
        return done(T, ver, icp_result)

    def _verify(self, T: np.ndarray, rgb, depth: np.ndarray, cfg: PoseConfig,
                timings: dict[str, float], surface: ObservedSurface | None = None,
                surfaces: SurfaceCache | None = None) -> Verification:
        """Render at ``T`` and compare (time added to ``timings["verify"]``)."""
        t = time.perf_counter()
        d1, n1 = self.renderer.cast_object("model", T)
        ver = verify_pose(d1, n1, depth, rgb, self.camera, cfg.verify, cfg.scene, surface, surfaces)
        timings["verify"] = timings.get("verify", 0.0) + (time.perf_counter() - t) * 1e3
        return ver


def _icp_levels(cfg: IcpConfig, levels: slice) -> IcpConfig:
    """The same ICP configuration restricted to some of its levels."""
    return dataclasses.replace(cfg, voxel_sizes=cfg.voxel_sizes[levels],
                               max_distances=cfg.max_distances[levels],
                               iterations=cfg.iterations[levels])


_ESTIMATORS: OrderedDict[tuple, PoseEstimator] = OrderedDict()
_ESTIMATORS_LOCK = threading.Lock()


def _estimator(model: PartModel, camera: CameraIntrinsics, cfg: PoseConfig | None,
               obj_id: int | None) -> PoseEstimator:
    """A cached PoseEstimator per (model checksum, camera): the BVH is built once."""
    key = (model.checksum, model.name, camera, obj_id)
    with _ESTIMATORS_LOCK:
        est = _ESTIMATORS.get(key)
    if est is None:
        est = PoseEstimator(model, camera, cfg, obj_id)
        with _ESTIMATORS_LOCK:
            _ESTIMATORS[key] = est
            while len(_ESTIMATORS) > 8:
                _ESTIMATORS.popitem(last=False)
    est.cfg = cfg or PoseConfig()
    return est


def refine_and_verify(hypotheses: Sequence, rgb: np.ndarray | None, depth: np.ndarray,
                      camera: CameraIntrinsics, model: PartModel, cfg: PoseConfig | None = None, *,
                      obj_id: int | None = None, return_rejected: bool = False) -> list[PoseEstimate]:
    """Refine (ICP) and verify coarse poses of ``model``; see :meth:`PoseEstimator.refine_and_verify`.

    Examples
    --------
    >>> estimates = refine_and_verify([T_coarse], frame.rgb, frame.depth, frame.camera, part)
    >>> estimates[0].T_cam_obj if estimates else None
    """
    if not isinstance(model, PartModel):
        raise InputError("model", "a PartModel", type(model).__name__)
    return _estimator(model, camera, cfg, obj_id).refine_and_verify(
        hypotheses, rgb, depth, return_rejected=return_rejected)


_MATCHERS: OrderedDict[int, object] = OrderedDict()


def _linemod_hypotheses(library, rgb, depth, camera: CameraIntrinsics, matcher_config=None) -> list:
    """Coarse hypotheses from the LINEMOD matcher (``weak_template_ros.linemod``), best first."""
    try:
        from weak_template_ros.linemod.matcher import Matcher
    except ImportError as exc:  # the matcher ships with the linemod package
        raise InputError("library", "a LINEMOD template library (weak_template_ros.linemod "
                         "importable)", f"{type(exc).__name__}: {exc}") from exc
    key = id(library)
    m = _MATCHERS.get(key)
    if (m is None or getattr(m, "library", None) is not library
            or getattr(m, "config", None) != matcher_config):
        m = Matcher(library, matcher_config)
        _MATCHERS[key] = m
        while len(_MATCHERS) > 4:
            _MATCHERS.popitem(last=False)
    return m.match(rgb, depth, camera)


def hypothesis_matcher_config(matcher_config, cfg: PoseConfig | None = None):
    """The LINEMOD matcher configuration :func:`estimate_poses` uses.

    ``matcher_config`` (default ``MatcherConfig()``) with ``max_detections``,
    ``score_threshold``, ``nms_iou``, ``refine_candidates`` and ``fine_candidates`` replaced by
    the ``cfg.linemod_*`` fields of those names where they are not 0: the pose stage wants more,
    and more overlapping, hypotheses than a detector would report (the right view is often not
    LINEMOD's best at its place, and a partly occluded part loses its candidates between the
    pyramid levels to clutter). Callers that run the matcher themselves
    (the ROS node) get the same hypotheses with this configuration.
    """
    from weak_template_ros.linemod.matcher import MatcherConfig

    cfg = cfg or PoseConfig()
    mc = matcher_config or MatcherConfig()
    changes = {}
    if cfg.linemod_detections:
        changes["max_detections"] = cfg.linemod_detections
    if cfg.linemod_score_threshold:
        changes["score_threshold"] = cfg.linemod_score_threshold
    if cfg.linemod_nms_iou:
        changes["nms_iou"] = cfg.linemod_nms_iou
    if cfg.linemod_refine_candidates:
        changes["refine_candidates"] = cfg.linemod_refine_candidates
    if cfg.linemod_fine_candidates:
        changes["fine_candidates"] = cfg.linemod_fine_candidates
    return dataclasses.replace(mc, **changes) if changes else mc


def estimate_poses(rgb: np.ndarray, depth: np.ndarray, camera: CameraIntrinsics, library,
                   model: PartModel, cfg: PoseConfig | None = None, *, obj_id: int | None = None,
                   matcher_config=None, hypotheses: Sequence | None = None,
                   return_rejected: bool = False) -> list[PoseEstimate]:
    """Poses of ``model`` in one RGB-D frame: LINEMOD hypotheses, ICP, verification.

    Parameters
    ----------
    rgb : (H, W, 3) uint8 RGB
    depth : (H, W) float32, metres, 0/NaN invalid
    camera : CameraIntrinsics
    library : TemplateLibrary
        Built from ``model`` for ``camera`` (checked: checksum, image size, focal lengths).
    model : PartModel
    cfg : PoseConfig, optional
    obj_id : int, optional
    matcher_config : MatcherConfig, optional
        Adjusted by :func:`hypothesis_matcher_config` (number, score floor, overlap).
    hypotheses : sequence, optional
        Skip the matcher and use these (4x4 arrays or objects with ``T_cam_obj``).
    return_rejected : bool

    Returns
    -------
    list of PoseEstimate
        Verified estimates, best first; ``timings_ms["detect"]`` is the matcher's time.
    """
    cfg = cfg or PoseConfig()
    check_frame(rgb, depth, camera)
    t = time.perf_counter()
    if hypotheses is None:
        if hasattr(library, "check_compatible"):
            library.check_compatible(model.checksum, camera, where="library")
        hypotheses = _linemod_hypotheses(library, rgb, depth, camera,
                                         hypothesis_matcher_config(matcher_config, cfg))
    detect_ms = (time.perf_counter() - t) * 1e3
    estimates = refine_and_verify(list(hypotheses), rgb, depth, camera, model,
                                  cfg, obj_id=obj_id, return_rejected=return_rejected)
    for e in estimates:
        e.timings_ms["detect"] = detect_ms
    return estimates
