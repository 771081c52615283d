"""Render-and-compare verification of a pose: depth, free space, normals and silhouette edges.

The model is rendered alone at the pose (``Renderer.cast_object``) and compared, pixel by pixel
inside its silhouette, with the observation. Each rendered pixel with valid observed depth is

* an **inlier** when ``|observed - rendered| <= depth_tolerance``,
* **occluded** when the observation is in front (something hides the part: not evidence
  against the pose),
* a **free-space violation** when the observation is behind: the camera sees through where
  the part would be, so the part cannot be there. This is what rejects wrong poses.

Three agreements in [0, 1] follow:

* depth ``= inliers / (inliers + free_space_weight * violations)``,
* normals: fraction of inliers whose observed normal is within ``normal_tolerance_deg`` of the
  rendered one,
* edges: fraction of the visible rendered silhouette (occluded contour pixels excluded) within
  ``edge_tolerance_px`` of an observed edge (depth discontinuity, border of invalid depth, or a
  Canny edge of the grey image): a chamfer test through a distance transform.

The score is their weighted geometric mean, so one bad cue cannot be outvoted. A pose is
accepted when ``score >= score_threshold``, the visible fraction (not occluded) is at least
``min_visible_fraction`` and there are at least ``min_inlier_pixels`` inliers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np

from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.pose.config import ScenePointsConfig, VerifyConfig
from weak_template_ros.pose.scene_points import (
    ObservedSurface,
    Roi,
    SurfaceCache,
    observe_surface,
    valid_depth,
)


@dataclass
class Verification:
    """Outcome of :func:`verify_pose` (fractions in [0, 1], counts in pixels).

    Attributes
    ----------
    score : float
        Weighted geometric mean of ``depth_fit``, ``normal_fit``, ``edge_fit``.
    accepted : bool
    reason : str
        Why the pose was rejected ("" when accepted).
    depth_fit, normal_fit, edge_fit : float
        The three agreements (module docstring); ``normal_fit`` is NaN (cue unused) when fewer
        than ``max(min_normal_pixels, 10 % of the inliers)`` inliers have an observed normal.
    visible_fraction : float
        ``(inliers + violations) / (inliers + violations + occluded)``.
    free_space_fraction : float
        ``violations / (inliers + violations)``.
    rendered, inliers, violations, occluded, contour, normal_pixels : int
        Rendered pixels with valid observed depth, their classes, visible contour pixels, and
        inliers with an observed normal.
    """

    score: float
    accepted: bool
    reason: str
    depth_fit: float
    normal_fit: float
    edge_fit: float
    visible_fraction: float
    free_space_fraction: float
    rendered: int
    inliers: int
    violations: int
    occluded: int
    contour: int
    normal_pixels: int = 0

    def to_dict(self) -> dict:
        """JSON-ready dict (floats rounded to 1e-6, NaN as None)."""
        return {k: ((None if math.isnan(v) else round(v, 6)) if isinstance(v, float) else v)
                for k, v in asdict(self).items()}


def rejection(reason: str, **counts) -> Verification:
    """A rejected Verification with score 0 and the given reason (counts default to 0)."""
    base = dict(rendered=0, inliers=0, violations=0, occluded=0, contour=0, normal_pixels=0)
    base.update(counts)
    return Verification(0.0, False, reason, 0.0, 0.0, 0.0, 0.0, 0.0, **base)


def observed_edges(depth: np.ndarray, gray: np.ndarray | None, cfg: VerifyConfig) -> np.ndarray:
    """Edge map of an observation crop: depth discontinuities, borders of invalid depth, Canny.

    Parameters
    ----------
    depth : (h, w) float32
        Metres, 0/NaN invalid.
    gray : (h, w) uint8 or None
        Grey image of the same crop (None: depth edges only).
    cfg : VerifyConfig

    Returns
    -------
    (h, w) bool
    """
    valid = valid_depth(depth)
    d = np.where(valid, depth, np.float32(0.0)).astype(np.float32)
    k = np.ones((3, 3), np.uint8)
    # Jumps between valid pixels only (invalid pixels neither raise nor lower the local range).
    hi = cv2.dilate(np.where(valid, d, np.float32(-1e3)), k)
    lo = cv2.erode(np.where(valid, d, np.float32(1e3)), k)
    edges = valid & ((hi - lo) > cfg.edge_depth_jump)
    # Sensors invalidate depth at discontinuities: the border of an invalid band is an edge.
    # Isolated dropouts are not (a 2x2 opening removes them: at 0.2 % dropout their borders
    # alone put an "edge" within 3 px of 40 % of all pixels).
    bands = cv2.morphologyEx((~valid).astype(np.uint8), cv2.MORPH_OPEN, np.ones((2, 2), np.uint8))
    edges |= valid & (cv2.dilate(bands, k) > 0)
    if gray is not None and cfg.canny_low > 0:
        edges |= cv2.Canny(gray, cfg.canny_low, cfg.canny_high, L2gradient=True) > 0
    return edges


def _gray(rgb: np.ndarray | None) -> np.ndarray | None:
    if rgb is None:
        return None
    img = np.asarray(rgb)
    if img.ndim == 3:
        img = cv2.cvtColor(np.ascontiguousarray(img[..., :3]), cv2.COLOR_RGB2GRAY)
    if img.dtype != np.uint8:
        img = np.clip(img, 0, 255).astype(np.uint8)
    return np.ascontiguousarray(img)


def verify_pose(rendered_depth: np.ndarray, rendered_normals: np.ndarray, depth: np.ndarray,
                rgb: np.ndarray | None, camera: CameraIntrinsics, cfg: VerifyConfig | None = None,
                scene_cfg: ScenePointsConfig | None = None,
                surface: ObservedSurface | None = None,
                surfaces: SurfaceCache | None = None) -> Verification:
    """Compare a render of the model at a pose with the observed frame.

    Parameters
    ----------
    rendered_depth : (H, W) float array
        Depth of the model alone at the pose, metres, 0 where not hit.
    rendered_normals : (H, W, 3) float array
        Camera-frame unit normals of that render, facing the camera.
    depth : (H, W) float array
        Observed depth, metres, 0/NaN invalid.
    rgb : (H, W, 3) or (H, W) uint8 array, or None
        Observed image (for Canny edges); None: depth edges only.
    camera : CameraIntrinsics
    cfg : VerifyConfig, optional
    scene_cfg : ScenePointsConfig, optional
        How observed normals are estimated (smoothing, baseline).
    surface : ObservedSurface, optional
        The observation already filtered with ``scene_cfg`` over a larger region (the
        refinement's): cropped instead of computed again when it covers the region needed.
    surfaces : SurfaceCache, optional
        The frame's observed surfaces (of ``depth``): used when ``surface`` does not cover the
        region (``SurfaceCache.covering``).

    Returns
    -------
    Verification
    """
    cfg = cfg or VerifyConfig()
    scene_cfg = scene_cfg or ScenePointsConfig()
    hit = rendered_depth > 0
    rows = np.flatnonzero(hit.any(axis=1))
    if len(rows) == 0:
        return rejection("the model is not in the image at this pose")
    cols = np.flatnonzero(hit.any(axis=0))
    grow = (int(math.ceil(cfg.edge_tolerance_px)) + scene_cfg.normal_step_px
            + scene_cfg.normal_smoothing_px + 2)
    roi = Roi(int(rows[0]), int(rows[-1]) + 1, int(cols[0]), int(cols[-1]) + 1).grow(grow, camera)
    sl = roi.slices
    surface = surface.crop(roi, camera) if surface is not None else None
    if surface is None:
        surface = (surfaces.covering(roi, scene_cfg) if surfaces is not None
                   else observe_surface(depth, camera, roi, scene_cfg))
    d_obs = surface.depth
    d_ren = np.asarray(rendered_depth[sl], dtype=np.float32)
    n_ren = np.asarray(rendered_normals[sl], dtype=np.float64)
    r_mask = d_ren > 0
    obs_ok = d_obs > 0
    both = r_mask & obs_ok
    delta = d_obs - d_ren
    tol = cfg.depth_tolerance
    inlier = both & (np.abs(delta) <= tol)
    violation = both & (delta > tol)
    occluded = both & (delta < -tol)
    n_in, n_viol, n_occ = int(inlier.sum()), int(violation.sum()), int(occluded.sum())
    n_rend = n_in + n_viol + n_occ
    counts = dict(rendered=n_rend, inliers=n_in, violations=n_viol, occluded=n_occ)
    if n_rend == 0:
        return rejection("no valid observed depth under the rendered model", **counts)
    visible_fraction = (n_in + n_viol) / n_rend
    free_space_fraction = n_viol / max(n_in + n_viol, 1)
    depth_fit = n_in / max(n_in + cfg.free_space_weight * n_viol, 1e-12) if n_in + n_viol else 0.0

    # Normals: rendered vs observed on inlier pixels whose observed normal is known.
    # Thin walls seen edge-on leave no pixel wide enough for a normal: then the cue is unused
    # (NaN) rather than counted as a disagreement.
    nn = inlier & surface.normal_valid
    n_normals = int(nn.sum())
    if n_normals >= max(cfg.min_normal_pixels, 0.1 * n_in):
        cos = np.einsum("ij,ij->i", n_ren[nn], surface.normals[nn])
        normal_fit = float(np.mean(cos >= math.cos(math.radians(cfg.normal_tolerance_deg))))
    else:
        normal_fit = math.nan

    # Edges: visible rendered contour vs observed edges (chamfer through a distance transform).
    r8 = r_mask.astype(np.uint8)
    contour = r_mask & (cv2.erode(r8, np.ones((3, 3), np.uint8), borderType=cv2.BORDER_CONSTANT,
                                  borderValue=0) == 0)
    # Where the silhouette is cut by the image border there is no edge to find.
    if roi.v0 == 0:
        contour[0] = False
    if roi.v1 == camera.height:
        contour[-1] = False
    if roi.u0 == 0:
        contour[:, 0] = False
    if roi.u1 == camera.width:
        contour[:, -1] = False
    contour &= ~occluded
    edges = observed_edges(d_obs, _gray(rgb[sl]) if rgb is not None else None, cfg)
    n_contour = int(contour.sum())
    if n_contour:
        dist = cv2.distanceTransform((~edges).astype(np.uint8), cv2.DIST_L2, 3)
        edge_fit = float(np.mean(dist[contour] <= cfg.edge_tolerance_px))
    else:
        edge_fit = 0.0
    counts["contour"] = n_contour
    counts["normal_pixels"] = n_normals

    w = np.array([cfg.weight_depth, cfg.weight_normals, cfg.weight_edges], dtype=np.float64)
    fits = np.array([depth_fit, normal_fit, edge_fit], dtype=np.float64)
    used = (w > 0) & np.isfinite(fits)
    if not used.any():
        score = float(depth_fit)
    elif np.any(fits[used] <= 0):
        score = 0.0
    else:
        score = float(np.exp(np.sum(w[used] * np.log(fits[used])) / np.sum(w[used])))
    reasons = []
    if score < cfg.score_threshold:
        reasons.append(f"score {score:.3f} < {cfg.score_threshold}")
    if visible_fraction < cfg.min_visible_fraction:
        reasons.append(f"visible fraction {visible_fraction:.3f} < {cfg.min_visible_fraction}")
    if n_in < cfg.min_inlier_pixels:
        reasons.append(f"{n_in} depth inliers < {cfg.min_inlier_pixels}")
    return Verification(score=score, accepted=not reasons, reason="; ".join(reasons),
                        depth_fit=float(depth_fit), normal_fit=normal_fit, edge_fit=edge_fit,
                        visible_fraction=float(visible_fraction),
                        free_space_fraction=float(free_space_fraction), **counts)
