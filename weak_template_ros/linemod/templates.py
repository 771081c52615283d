"""LINEMOD template library: viewpoints, rendering, feature extraction, versioned file format.

A template is one rendered view of the part: camera on a subdivided icosphere around the
object (upper hemisphere or full sphere), at one of several distances, rolled by one of several
in-plane angles, looking at the object origin. The object origin then projects onto the
template's *anchor* pixel; every feature is stored as an offset from the anchor, so a match
at image position ``(x, y)`` says "the object origin projects to ``(x, y)``".

Per template and pyramid level ``l`` (image halved ``l`` times) the library stores
``grad[l]``: (n, F_l, 3) int16 rows ``(bin, dx, dy)`` of LINE-2D features (quantised gradient
orientations at the strongest silhouette and shading edges, scattered with a minimum
distance) and ``depth[l]``: (n, D_l, 3) rows of LINE-MOD surface-normal features (quantised
normals from the rendered depth, inside the silhouette). Unused rows have ``bin = -1``.

File format (``.wtl``): an uncompressed NumPy ``.npz`` archive holding those arrays plus a JSON
``header`` (format name and version, the build parameters, camera K and size, the source
model's checksum, and a sha256 of every array) — a damaged or edited file fails the hash.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np
import torch
import trimesh

from weak_template_ros import config as cfgmod
from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.config import param
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import invert_pose, look_at, make_pose
from weak_template_ros.linemod import features as fe

FORMAT_NAME = "weak_template_ros.linemod.TemplateLibrary"
FORMAT_VERSION = 1
#: Bumped whenever feature extraction changes (same config, different features).
EXTRACTION_VERSION = 2
#: Feature rows: (bin, dx, dy); bin -1 marks an unused row.
NO_FEATURE = -1

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "TemplateConfig",
    "TemplateLibrary",
    "build_templates",
    "extract_template_features",
    "sample_viewpoints",
    "scattered_selection",
    "template_poses",
]


@dataclass
class TemplateConfig:
    """How a template library is built. Angles in degrees, distances in metres."""

    viewpoints: str = param("sphere", "camera positions: 'sphere' or the object's upper "
                            "hemisphere (z >= 0)", choices=("sphere", "hemisphere"))
    subdivisions: int = param(2, "icosphere subdivisions (0: 12 views on the sphere, 1: 42, "
                              "2: 162, 3: 642)", lo=0, hi=5)
    distances: tuple = param((0.5, 0.7), "camera distances to the object origin", unit="m")
    inplane_steps: int = param(12, "in-plane rotations per view, evenly over 360 degrees",
                               lo=1, hi=360)
    pyramid_levels: int = param(3, "pyramid levels (level l is the image halved l times)",
                                lo=1, hi=5)
    grad_features: tuple = param((96, 64, 32), "LINE-2D features per template, per level "
                                 "(finest first); not capped at 63")
    depth_features: tuple = param((32, 24, 16), "LINE-MOD surface-normal features per template, "
                                  "per level (0: none)")
    blur_order: int = param(4, "binomial pre-smoothing order of the gradient "
                            "(4: Gaussian sigma 1 px); scenes are filtered the same way",
                            lo=0, hi=10)
    vote_min: int = param(5, "3x3 neighbours that must agree on an orientation", lo=5, hi=9)
    thin_edges: bool = param(True, "keep only gradient maxima across edges (template and scene): "
                             "suppresses smooth shading of curved clutter")
    strong_magnitude: float = param(8.0, "gradient magnitude for a template feature",
                                    lo=0.0, hi=1000.0, unit="grey levels/px")
    normal_min_tilt_deg: float = param(10.0, "normals closer than this to the viewing axis get "
                                       "no bin (azimuth undefined)", lo=0.0, hi=80.0, unit="deg")
    normal_step: int = param(2, "half baseline of the depth differences for normals",
                             lo=1, hi=10, unit="px")
    albedo: float = param(0.7, "grey albedo of the rendered part", lo=0.05, hi=1.0)
    margin_px: int = param(8, "border around the part in each template render", lo=2, hi=64,
                           unit="px")
    probes: int = param(32, "depth probe points per template (coarse pose from measured "
                        "depth)", lo=0, hi=256)

    def __post_init__(self):
        self.distances = tuple(float(d) for d in self.distances)
        self.grad_features = tuple(int(n) for n in self.grad_features)
        self.depth_features = tuple(int(n) for n in self.depth_features)
        if not self.distances or any(not (0.01 <= d <= 100.0) for d in self.distances):
            raise InputError("distances", "one or more distances in [0.01, 100] m",
                             list(self.distances))
        for name in ("grad_features", "depth_features"):
            v = getattr(self, name)
            if len(v) != self.pyramid_levels or any(n < 0 or n > 8191 for n in v):
                raise InputError(name, f"{self.pyramid_levels} counts in [0, 8191] "
                                 "(one per pyramid level)", list(v))
        if sum(self.grad_features) + sum(self.depth_features) == 0:
            raise InputError("grad_features", "at least one feature per template", 0)


# ---------------------------------------------------------------------------------------------
# Viewpoints and poses


def sample_viewpoints(subdivisions: int, hemisphere: bool = False) -> np.ndarray:
    """Unit view directions (object frame, from the object towards the camera).

    Vertices of a subdivided icosahedron: 12, 42, 162, 642... over the sphere; with
    ``hemisphere`` only those with z >= 0 (camera above the object's xy plane).

    Returns
    -------
    (V, 3) float64 array
    """
    v = np.asarray(trimesh.creation.icosphere(subdivisions=subdivisions, radius=1.0).vertices)
    v = v / np.linalg.norm(v, axis=1, keepdims=True)
    if hemisphere:
        v = v[v[:, 2] >= -1e-9]
    # A deterministic order (icosphere vertex order could change between trimesh versions).
    order = np.lexsort((np.round(v[:, 0], 9), np.round(v[:, 1], 9), -np.round(v[:, 2], 9)))
    return v[order]


def template_poses(view_dirs: np.ndarray, distances, inplane_steps: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Camera poses looking at the object origin from every view, distance and in-plane angle.

    Returns
    -------
    T_cam_obj : (n, 4, 4) float64
        Object-to-camera poses, metres; the origin lies on the optical axis at the distance.
    meta : (n, 3) float64
        (view index, distance in metres, in-plane angle in radians) of each pose.
    """
    poses, meta = [], []
    for vi, v in enumerate(np.asarray(view_dirs, dtype=np.float64)):
        up = (0.0, 0.0, 1.0) if abs(v[2]) < 0.99 else (0.0, 1.0, 0.0)
        for d in distances:
            T_obj_cam = look_at(v * d, np.zeros(3), up=up)
            T_cam_obj0 = invert_pose(T_obj_cam)
            for k in range(inplane_steps):
                a = 2.0 * math.pi * k / inplane_steps
                c, s = math.cos(a), math.sin(a)
                # Roll the camera about its optical axis: the image turns by +a on screen (CCW).
                Rz = np.array([[c, s, 0.0], [-s, c, 0.0], [0.0, 0.0, 1.0]])
                poses.append(make_pose(Rz) @ T_cam_obj0)
                meta.append((vi, d, a))
    return np.stack(poses), np.asarray(meta, dtype=np.float64)


# ---------------------------------------------------------------------------------------------
# Feature extraction


def scattered_selection(xy: np.ndarray, priority: np.ndarray, count: int,
                        min_distance: float | None = None) -> np.ndarray:
    """Indices of up to ``count`` points, strongest first, spread out.

    Greedy passes over the candidates in priority order: a candidate is taken if it is at least
    the pass's distance from every point taken so far. The first distance is ``min_distance``
    (default: the spacing of ``count`` points spread evenly along edges two pixels wide, like
    OpenCV's selectScatteredFeatures); each further pass shrinks it by a quarter, keeping what
    was taken, until ``count`` points are taken or none is left.

    Parameters
    ----------
    xy : (N, 2) array of pixel positions
    priority : (N,) array, higher first
    count : int
    """
    n = len(xy)
    if count <= 0 or n == 0:
        return np.zeros(0, dtype=np.int64)
    order = np.argsort(-np.asarray(priority, dtype=np.float64), kind="stable")
    if n <= count:
        return order
    pts = np.asarray(xy, dtype=np.float64)[order]
    dist = float(min_distance) if min_distance is not None else max(1.0, n / (2.0 * count))
    nearest2 = np.full(n, np.inf)  # squared distance to the closest taken point
    taken = np.zeros(n, dtype=bool)
    chosen: list[int] = []
    while len(chosen) < count:
        d2 = dist * dist
        i = 0
        while len(chosen) < count:
            nz = np.flatnonzero((nearest2[i:] >= d2) & ~taken[i:])
            if nz.size == 0:
                break
            i += int(nz[0])
            chosen.append(i)
            taken[i] = True
            np.minimum(nearest2, (pts[:, 0] - pts[i, 0]) ** 2 + (pts[:, 1] - pts[i, 1]) ** 2,
                       out=nearest2)
        if dist <= 1.0 or taken.all():
            break
        dist = max(1.0, dist * 0.75)
    return order[np.asarray(chosen, dtype=np.int64)]


def _level_images(rgb: np.ndarray, depth: np.ndarray, mask: np.ndarray, levels: int):
    img = fe.as_image_tensor(rgb)
    dep = torch.from_numpy(depth.astype(np.float32))
    msk = torch.from_numpy(mask.astype(np.float32))
    out = []
    for lev in range(levels):
        if lev > 0:
            img = fe.downsample_image(img)
            dep = fe.downsample_depth(dep)
            msk = fe.downsample_image(msk[None])[0]
        out.append((img, dep, msk))
    return out


def extract_template_features(rgb: np.ndarray, depth: np.ndarray, mask: np.ndarray,
                              anchor: tuple[float, float], fx: float, fy: float,
                              cfg: TemplateConfig) -> dict:
    """Features of one rendered view at every pyramid level.

    Parameters
    ----------
    rgb : (h, w, 3) uint8
        The rendered view (part on a dark background).
    depth : (h, w) float32
        Rendered z depth, metres, 0 off the part.
    mask : (h, w) bool
        The part's silhouette.
    anchor : (x, y)
        Level-0 pixel where the object origin projects.
    fx, fy : float
        Focal lengths at level 0 (pixels).
    cfg : TemplateConfig

    Returns
    -------
    dict with ``grad`` and ``depth``: lists (one per level) of (F_l, 3) / (D_l, 3) int16 arrays
    of rows ``(bin, dx, dy)`` (offsets from the anchor in level pixels, unused rows bin = -1),
    ``bbox``: (x0, y0, x1, y1) int of the silhouette relative to the anchor at level 0 (x1, y1
    exclusive), ``probes``: (P, 3) float32 rows (dx, dy, depth) of level-0 surface points.
    """
    grads, depths = [], []
    ax, ay = anchor
    for lev, (img, dep, msk) in enumerate(_level_images(rgb, depth, mask, cfg.pyramid_levels)):
        s = 2.0 ** lev
        # Level-l pixel centres: x_l = (x_0 + 0.5) / 2^l - 0.5.
        alx, aly = (ax + 0.5) / s - 0.5, (ay + 0.5) / s - 0.5
        m = msk.numpy() > 0.5
        near = cv2.dilate(m.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        n_g = cfg.grad_features[lev]
        rows = np.full((n_g, 3), NO_FEATURE, dtype=np.int16)
        if n_g > 0:
            gx, gy, mag = fe.color_gradients(img, cfg.blur_order)
            bits = fe.quantize_orientations(gx, gy, mag, cfg.strong_magnitude, cfg.vote_min,
                                            thin=cfg.thin_edges).numpy()
            ys, xs = np.nonzero((bits > 0) & near)
            sel = scattered_selection(np.stack([xs, ys], 1), mag.numpy()[ys, xs], n_g)
            b = np.log2(bits[ys[sel], xs[sel]]).astype(np.int16)
            rows[:len(sel)] = np.stack([b, np.round(xs[sel] - alx), np.round(ys[sel] - aly)], 1)
        grads.append(rows)
        n_d = cfg.depth_features[lev]
        rows = np.full((n_d, 3), NO_FEATURE, dtype=np.int16)
        if n_d > 0:
            nrm = fe.depth_normals(dep, fx / s, fy / s, alx, aly, step=cfg.normal_step)
            bits = fe.quantize_normals(nrm, cfg.normal_min_tilt_deg).numpy()
            inner = cv2.erode(m.astype(np.uint8), np.ones((3, 3), np.uint8))
            dist = cv2.distanceTransform(inner, cv2.DIST_L2, 3)
            ys, xs = np.nonzero((bits > 0) & (inner > 0))
            sel = scattered_selection(np.stack([xs, ys], 1), dist[ys, xs], n_d)
            b = np.log2(bits[ys[sel], xs[sel]]).astype(np.int16)
            rows[:len(sel)] = np.stack([b, np.round(xs[sel] - alx), np.round(ys[sel] - aly)], 1)
        depths.append(rows)
    ys, xs = np.nonzero(mask)
    bbox = np.array([xs.min() - ax, ys.min() - ay, xs.max() + 1 - ax, ys.max() + 1 - ay]
                    if xs.size else [0, 0, 0, 0], dtype=np.int32)
    probes = np.zeros((cfg.probes, 3), dtype=np.float32)
    if cfg.probes and xs.size:
        inner = cv2.erode(mask.astype(np.uint8), np.ones((5, 5), np.uint8)) > 0
        ys, xs = np.nonzero(inner & (depth > 0)) if inner.any() else np.nonzero(depth > 0)
        sel = scattered_selection(np.stack([xs, ys], 1), -depth[ys, xs], cfg.probes)
        probes[:len(sel)] = np.stack([xs[sel] - ax, ys[sel] - ay, depth[ys[sel], xs[sel]]], 1)
    return {"grad": grads, "depth": depths, "bbox": bbox, "probes": probes}


# ---------------------------------------------------------------------------------------------
# Library


def _header_camera(camera: CameraIntrinsics) -> dict:
    return {"K": camera.K.tolist(), "width": camera.width, "height": camera.height}


@dataclass
class TemplateLibrary:
    """Templates of one part for one camera (see the module docstring for the layout).

    Attributes
    ----------
    config : TemplateConfig
    camera : CameraIntrinsics
        The camera the templates were rendered for (focal lengths and image size).
    model_checksum, model_name : str
        Checksum (``PartModel.checksum``) and name of the source model.
    poses : (n, 4, 4) float64
        ``T_cam_obj`` of each template view (object origin on the optical axis), metres.
    meta : (n, 3) float64
        (view index, distance m, in-plane angle rad).
    grad, depth : list over levels of (n, F_l, 3) / (n, D_l, 3) int16
        Feature rows (bin, dx, dy) relative to the anchor, level pixels; bin -1 unused.
    bboxes : (n, 4) int32
        Silhouette box (x0, y0, x1, y1), exclusive ends, relative to the anchor, level 0.
    probes : (n, P, 3) float32
        Level-0 surface points (dx, dy, rendered depth in metres) for the coarse pose.
    """

    config: TemplateConfig
    camera: CameraIntrinsics
    model_checksum: str
    model_name: str
    poses: np.ndarray
    meta: np.ndarray
    grad: list[np.ndarray]
    depth: list[np.ndarray]
    bboxes: np.ndarray
    probes: np.ndarray
    extra: dict = field(default_factory=dict)

    def __len__(self) -> int:
        return int(self.poses.shape[0])

    @property
    def levels(self) -> int:
        return len(self.grad)

    @property
    def has_depth(self) -> bool:
        return any(d.shape[1] > 0 and bool((d[..., 0] >= 0).any()) for d in self.depth)

    def subset(self, indices) -> TemplateLibrary:
        """A library of the templates ``indices`` (same config, camera and model)."""
        idx = np.asarray(indices, dtype=np.int64)
        return dataclasses.replace(
            self, poses=self.poses[idx], meta=self.meta[idx],
            grad=[g[idx] for g in self.grad], depth=[d[idx] for d in self.depth],
            bboxes=self.bboxes[idx], probes=self.probes[idx], extra=dict(self.extra))

    def check_compatible(self, model_checksum: str | None = None,
                         camera: CameraIntrinsics | None = None, where: str = "templates") -> None:
        """Raise InputError unless the library was built for this model and camera.

        The camera must have the same image size and focal lengths (within 0.1 %); the
        principal point may differ (templates are rendered on the optical axis anyway).
        """
        if model_checksum is not None and model_checksum != self.model_checksum:
            raise InputError(f"{where}: model checksum",
                             f"{self.model_checksum[:16]}... (the model the templates were "
                             f"built from, {self.model_name!r})", f"{model_checksum[:16]}...")
        if camera is not None:
            c = self.camera
            same = (camera.width == c.width and camera.height == c.height
                    and abs(camera.fx - c.fx) <= 1e-3 * c.fx and abs(camera.fy - c.fy) <= 1e-3 * c.fy)
            if not same:
                raise InputError(f"{where}: camera",
                                 f"{c.width}x{c.height} with fx={c.fx:.2f}, fy={c.fy:.2f} (the "
                                 "camera the templates were built for)",
                                 f"{camera.width}x{camera.height} with fx={camera.fx:.2f}, "
                                 f"fy={camera.fy:.2f}")

    # -- file format -------------------------------------------------------------------------

    def _arrays(self) -> dict[str, np.ndarray]:
        arrays = {"poses": self.poses.astype(np.float64), "meta": self.meta.astype(np.float64),
                  "bboxes": self.bboxes.astype(np.int32), "probes": self.probes.astype(np.float32)}
        for lev, (g, d) in enumerate(zip(self.grad, self.depth, strict=True)):
            arrays[f"grad_{lev}"] = g.astype(np.int16)
            arrays[f"depth_{lev}"] = d.astype(np.int16)
        return arrays

    @staticmethod
    def _digest(arrays: dict[str, np.ndarray]) -> dict[str, str]:
        return {k: hashlib.sha256(np.ascontiguousarray(v).tobytes()
                                  + repr((v.dtype.str, v.shape)).encode()).hexdigest()
                for k, v in sorted(arrays.items())}

    def save(self, path: str | Path) -> Path:
        """Write the library to ``path`` (``.wtl``, a NumPy archive with a JSON header)."""
        path = Path(path)
        arrays = self._arrays()
        header = {
            "format": FORMAT_NAME, "version": FORMAT_VERSION,
            "config": cfgmod.to_dict(self.config), "camera": _header_camera(self.camera),
            "model_checksum": self.model_checksum, "model_name": self.model_name,
            "extraction_version": EXTRACTION_VERSION, "templates": len(self),
            "levels": self.levels, "sha256": self._digest(arrays),
            "extra": self.extra,
        }
        buf = io.BytesIO()
        np.savez(buf, header=np.frombuffer(json.dumps(header).encode(), dtype=np.uint8), **arrays)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_bytes(buf.getvalue())
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path, model_checksum: str | None = None,
             camera: CameraIntrinsics | None = None) -> TemplateLibrary:
        """Read a library; check its format, version, integrity and, if given, model and camera.

        Raises
        ------
        InputError
            Missing or damaged file, another format or version, an array whose hash does not
            match the header, or a library built for another model / camera.
        """
        path = Path(path)
        where = str(path)
        try:
            data = path.read_bytes()
        except FileNotFoundError as exc:
            raise InputError(where, "an existing template library (.wtl)", "no such file") from exc
        except OSError as exc:
            raise InputError(where, "a readable template library", f"{type(exc).__name__}: {exc}"
                             ) from exc
        try:
            with np.load(io.BytesIO(data), allow_pickle=False) as z:
                arrays = {k: z[k] for k in z.files}
        except (zipfile.BadZipFile, ValueError, OSError, EOFError, KeyError) as exc:
            raise InputError(where, "a template library (.wtl NumPy archive)",
                             f"a damaged or foreign file ({type(exc).__name__}: {exc})") from exc
        try:
            header = json.loads(arrays.pop("header").tobytes().decode())
        except (KeyError, ValueError, UnicodeDecodeError) as exc:
            raise InputError(where, "a template library with a JSON header",
                             f"no readable header ({type(exc).__name__})") from exc
        if header.get("format") != FORMAT_NAME:
            raise InputError(where, f"format {FORMAT_NAME!r}", repr(header.get("format")))
        if header.get("version") != FORMAT_VERSION:
            raise InputError(where, f"format version {FORMAT_VERSION} (rebuild the templates)",
                             header.get("version"))
        digest = cls._digest(arrays)
        if digest != header.get("sha256"):
            bad = sorted(k for k in set(digest) | set(header.get("sha256", {}))
                         if digest.get(k) != header.get("sha256", {}).get(k))
            raise InputError(where, "arrays matching the sha256 in the header",
                             f"damaged or edited data in {bad}")
        cam = header["camera"]
        camera_lib = CameraIntrinsics.from_K(cam["K"], cam["width"], cam["height"])
        cfg = cfgmod.from_mapping(TemplateConfig, header["config"], source=f"{where}:config")
        levels = int(header["levels"])
        lib = cls(config=cfg, camera=camera_lib, model_checksum=header["model_checksum"],
                  model_name=header["model_name"], poses=arrays["poses"], meta=arrays["meta"],
                  grad=[arrays[f"grad_{lev}"] for lev in range(levels)],
                  depth=[arrays[f"depth_{lev}"] for lev in range(levels)],
                  bboxes=arrays["bboxes"], probes=arrays["probes"], extra=header.get("extra", {}))
        lib.check_compatible(model_checksum, camera, where=where)
        return lib


def _model_radius(mesh: trimesh.Trimesh) -> float:
    return float(np.linalg.norm(np.asarray(mesh.vertices), axis=1).max())


def build_templates(model, camera: CameraIntrinsics, cfg: TemplateConfig | None = None,
                    progress: Callable[[int, int], None] | None = None,
                    on_view: Callable | None = None) -> TemplateLibrary:
    """Render and extract every template of a part.

    Parameters
    ----------
    model : PartModel
        The part (mesh in metres, ``checksum``, ``name``).
    camera : CameraIntrinsics
        The camera the scenes will come from (focal lengths and image size).
    cfg : TemplateConfig, optional
    progress : callable(done, total), optional
        Called after each template.
    on_view : callable(index, render_result, anchor_xy), optional
        Called with every rendered view (e.g. to feed the same views to another matcher).

    Returns
    -------
    TemplateLibrary
    """
    from weak_template_ros.twin.renderer import Lighting, Renderer, SceneObject

    cfg = cfgmod.validate(cfg or TemplateConfig())
    if not isinstance(camera, CameraIntrinsics):
        raise InputError("camera", "a CameraIntrinsics", type(camera).__name__)
    views = sample_viewpoints(cfg.subdivisions, hemisphere=cfg.viewpoints == "hemisphere")
    poses, meta = template_poses(views, cfg.distances, cfg.inplane_steps)
    radius = _model_radius(model.mesh)
    # One square render per distance, the origin projecting onto its centre pixel; a multiple
    # of 2^(levels-1) so that every pyramid level keeps whole pixels.
    q = 2 ** (cfg.pyramid_levels - 1)
    renderers = {}
    for d in cfg.distances:
        half = math.ceil(max(camera.fx, camera.fy) * radius / max(d - radius, 0.2 * d)) + cfg.margin_px
        size = int(math.ceil(2 * half / q) * q)
        c = size // 2
        cam = CameraIntrinsics(camera.fx, camera.fy, float(c), float(c), size, size)
        r = Renderer(cam)
        r.add_mesh("part", model.mesh)
        renderers[d] = (r, (float(c), float(c)))
    # Light from the camera side, slightly above: every face the camera sees is lit, so shading
    # edges exist between faces of different orientation.
    light = Lighting(direction=(0.3, -0.5, -1.0), intensity=0.75, ambient=0.25, background=0.0)
    n = len(poses)
    grads = [np.full((n, k, 3), NO_FEATURE, np.int16) for k in cfg.grad_features]
    deps = [np.full((n, k, 3), NO_FEATURE, np.int16) for k in cfg.depth_features]
    bboxes = np.zeros((n, 4), np.int32)
    probes = np.zeros((n, cfg.probes, 3), np.float32)
    for i, (T, (_, d, _)) in enumerate(zip(poses, meta, strict=True)):
        r, anchor = renderers[d]
        out = r.render([SceneObject("part", T, albedo=cfg.albedo)], lighting=light)
        with fe.torch_threads(1):  # small images: threads only add synchronisation
            f = extract_template_features(out.rgb, out.depth_exact, out.masks_full[0], anchor,
                                          camera.fx, camera.fy, cfg)
        for lev in range(cfg.pyramid_levels):
            grads[lev][i] = f["grad"][lev]
            deps[lev][i] = f["depth"][lev]
        bboxes[i] = f["bbox"]
        probes[i] = f["probes"]
        if on_view is not None:
            on_view(i, out, anchor)
        if progress is not None:
            progress(i + 1, n)
    return TemplateLibrary(config=cfg, camera=camera, model_checksum=model.checksum,
                           model_name=model.name, poses=poses, meta=meta, grad=grads, depth=deps,
                           bboxes=bboxes, probes=probes)
