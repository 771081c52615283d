"""Model surface samples with normals (cached per model checksum) and their visibility at a pose."""

from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass

import numpy as np

from weak_template_ros.camera import CameraIntrinsics, project
from weak_template_ros.models import PartModel

_CACHE_SIZE = 32
_cache: OrderedDict[tuple[str, int, int], ModelPoints] = OrderedDict()
_cache_lock = threading.Lock()


@dataclass(frozen=True)
class ModelPoints:
    """Area-uniform samples of a model surface and its bounding sphere (object frame, metres).

    Attributes
    ----------
    points, normals : (N, 3) float64
        Surface points and unit outward normals.
    center : (3,) float64
        Centre of the bounding sphere (centre of the axis-aligned bounding box).
    radius : float
        Largest distance of a mesh vertex from ``center``.
    diameter : float
        ``PartModel.diameter`` (largest vertex distance).
    checksum : str
        ``PartModel.checksum`` of the model sampled.
    """

    points: np.ndarray
    normals: np.ndarray
    center: np.ndarray
    radius: float
    diameter: float
    checksum: str


def model_points(model: PartModel, n: int, seed: int = 0) -> ModelPoints:
    """Samples of ``model`` (``PartModel.sample_points``), computed once per (checksum, n, seed)."""
    key = (model.checksum, int(n), int(seed))
    with _cache_lock:
        hit = _cache.get(key)
        if hit is not None:
            _cache.move_to_end(key)
            return hit
    points, normals = model.sample_points(int(n), seed=int(seed))
    vertices = np.asarray(model.mesh.vertices, dtype=np.float64)
    center = 0.5 * (vertices.min(axis=0) + vertices.max(axis=0))
    radius = float(np.linalg.norm(vertices - center, axis=1).max())
    for a in (points, normals, center):
        a.setflags(write=False)
    mp = ModelPoints(points, normals, center, radius, float(model.diameter), model.checksum)
    with _cache_lock:
        _cache[key] = mp
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return mp


def visible_points(points: np.ndarray, normals: np.ndarray, T_cam_obj: np.ndarray,
                   rendered_depth, camera: CameraIntrinsics, tolerance: float) -> np.ndarray:
    """Which model points the camera sees at ``T_cam_obj`` (z-buffer test on a render).

    A point is visible when it projects inside the image onto a rendered pixel, lies at most
    ``tolerance`` behind the rendered depth there, and its normal faces the camera.

    Parameters
    ----------
    points, normals : (N, 3) arrays
        Object frame, metres / unit.
    T_cam_obj : (4, 4) array
    rendered_depth : (H, W) float array, or callable
        Depth of the model alone at ``T_cam_obj`` (0 = not hit), e.g. ``Renderer.cast_object``;
        or a function ``(u, v) -> (n,) depths`` at pixels, e.g. ``partial(Renderer.depth_at,
        renderer, key, T_cam_obj)``: only the pixels of facing points are then rendered, each
        once (the same test; a few thousand rays instead of the object's whole box).
    camera : CameraIntrinsics
    tolerance : float
        Metres.

    Returns
    -------
    (N,) bool
    """
    R, t = T_cam_obj[:3, :3], T_cam_obj[:3, 3]
    p = points @ R.T + t
    n = normals @ R.T
    z = p[:, 2]
    in_front = z > 1e-9
    uv = np.full((len(p), 2), -1.0)
    uv[in_front] = project(p[in_front], camera)
    u, v = np.rint(uv).astype(np.int64).T
    inside = in_front & (u >= 0) & (u < camera.width) & (v >= 0) & (v < camera.height)
    facing = np.einsum("ij,ij->i", n, p) < 0
    d = np.zeros(len(p), dtype=np.float64)
    if callable(rendered_depth):
        need = inside & facing
        pixels, index = np.unique(v[need] * camera.width + u[need], return_inverse=True)
        d[need] = rendered_depth(pixels % camera.width, pixels // camera.width)[index]
    else:
        d[inside] = rendered_depth[v[inside], u[inside]]
    return inside & (d > 0) & (z <= d + tolerance) & facing
