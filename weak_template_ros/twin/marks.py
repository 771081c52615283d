"""Alignment-mark twin: procedural marks, exact sub-pixel rendering, process and optics degradations.

Rendering is **exact analytic area coverage**: every pixel gets the area of the mark polygon inside
its unit square (pixel centres at integer coordinates, OpenCV convention), to float64 round-off.
The coverage comes from Green's theorem, not from supersampling: with ``F(X, Y)`` the area of the
polygon inside the quadrant ``x <= X, y <= Y``,

    F(X, Y) = sum over boundary edges of  ∫ min(x(y), X) · 1[y <= Y] dy,

which is closed-form for a straight edge. ``F`` is evaluated on the pixel-corner grid and a pixel's
coverage is its second mixed difference. The cost is O(edge rows × width), a few ms for a 256²
image, and the result is what an ideal box-filtered (fill factor 1) sensor integrates. Curved
marks (rings) are 1024-gons (radial error < 5e-4 px at radius 64 px).

Image formation, in this order (everything seeded, nothing random outside ``rng``):

1. reflectance ``R = 1 + polarity * contrast * coverage`` of the mark (optionally with a line-width
   bias: the polygon grown/shrunk by ``line_width_bias / 2`` px), times a wafer texture
   ``1 + texture(x)``; particles replace ``R`` by their own reflectance where they cover it
   (texture and particles live in the wafer frame and move with the mark);
2. radiance ``= background * illumination(x) * R + glare(x)`` with a linear illumination gradient
   and radial vignetting fixed in the camera frame, and Gaussian specular glare spots;
3. defocus blur (Gaussian of sigma ``defocus_sigma`` or a pillbox of radius ``defocus_radius``);
4. noise: Gaussian with signal-dependent variance ``sigma_read² + k * I`` (the Gaussian limit of
   shot noise), then optional clipping at ``saturation``.

**SNR** is defined as the nominal contrast amplitude divided by the total noise standard
deviation at the nominal background level: ``SNR = background * contrast / sigma(background)``
with ``sigma(background)² = sigma_read² + k * background`` and ``shot_fraction = k * background /
sigma(background)²``. SNR 1 means the mark's step equals one noise sigma.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import cv2
import numpy as np
import shapely
from shapely import affinity
from shapely.geometry import LineString, MultiPolygon, Point, Polygon, box
from shapely.geometry.polygon import orient

from weak_template_ros.align.similarity import Similarity
from weak_template_ros.config import param, validate
from weak_template_ros.errors import InputError

MARK_KINDS = ("cross", "l_corner", "box_in_box", "frame_in_frame", "chevrons", "grating", "ring")


@dataclass
class MarkSpec:
    """A procedural alignment mark, in pixels at scale 1. Its reference point (what an offset
    measures) is the centre of its ``size`` x ``size`` bounding square."""

    kind: str = param("cross", "mark family", choices=MARK_KINDS)
    size: float = param(128.0, "outer extent of the mark", lo=4.0, hi=4096.0, unit="px")
    line_width: float = param(12.0, "line / bar width", lo=0.5, hi=1024.0, unit="px")
    polarity: int = param(1, "+1: mark brighter than the background, -1: darker", choices=(1, -1))
    count: int = param(4, "number of chevrons or grating lines", lo=1, hi=64)

    def __post_init__(self):
        validate(self)
        if self.kind in ("cross", "l_corner", "box_in_box", "frame_in_frame", "ring") \
                and self.line_width * 4 > self.size:
            raise InputError("MarkSpec.line_width", f"<= size/4 ({self.size / 4}) for a {self.kind}",
                             self.line_width)
        if self.kind == "grating" and self.line_width >= self.size / self.count:
            raise InputError("MarkSpec.line_width", f"< pitch size/count ({self.size / self.count})",
                             self.line_width)


def mark_geometry(spec: MarkSpec) -> shapely.Geometry:
    """The mark as (multi)polygon(s) in mark-local pixels: origin at the reference point, y down."""
    S, w, h = spec.size, spec.line_width, spec.size / 2
    if spec.kind == "cross":
        g = box(-h, -w / 2, h, w / 2).union(box(-w / 2, -h, w / 2, h))
    elif spec.kind == "l_corner":
        g = box(-h, -h, -h + w, h).union(box(-h, h - w, h, h))
    elif spec.kind == "box_in_box":
        inner = 0.2 * S
        g = box(-h, -h, h, h).difference(box(-h + w, -h + w, h - w, h - w)).union(
            box(-inner, -inner, inner, inner))
    elif spec.kind == "frame_in_frame":
        q = 0.25 * S
        g = box(-h, -h, h, h).difference(box(-h + w, -h + w, h - w, h - w)).union(
            box(-q, -q, q, q).difference(box(-q + w, -q + w, q - w, q - w)))
    elif spec.kind == "chevrons":
        # Chevrons pointing left, spread evenly over the square; flat caps clipped to it.
        pitch = S / spec.count
        arm = h * 0.6
        parts = [LineString([(-h + (i + 0.5) * pitch + arm / 2, -h), (-h + (i + 0.5) * pitch - arm / 2, 0),
                             (-h + (i + 0.5) * pitch + arm / 2, h)]).buffer(w / 2, cap_style="flat",
                                                                           join_style="mitre")
                 for i in range(spec.count)]
        g = shapely.union_all(parts).intersection(box(-h, -h, h, h))
    elif spec.kind == "grating":
        pitch = S / spec.count
        g = shapely.union_all([box(-h + (i + 0.5) * pitch - w / 2, -h, -h + (i + 0.5) * pitch + w / 2, h)
                               for i in range(spec.count)])
    elif spec.kind == "ring":
        g = Point(0, 0).buffer(h, quad_segs=256).difference(Point(0, 0).buffer(h - w, quad_segs=256))
    else:  # pragma: no cover - validate() rejects it
        raise InputError("MarkSpec.kind", f"one of {MARK_KINDS}", spec.kind)
    return g


def place(geometry: shapely.Geometry, pose: Similarity, centre: tuple[float, float]) -> shapely.Geometry:
    """Mark-local geometry moved into the image: ``x = centre + t + scale R(theta) u``."""
    M = pose.matrix(centre=centre)
    return affinity.affine_transform(geometry, [M[0, 0], M[0, 1], M[1, 0], M[1, 1], M[0, 2], M[1, 2]])


def _edges(geometry: shapely.Geometry) -> np.ndarray:
    """(E, 4) directed boundary edges x0, y0, x1, y1, exteriors counter-clockwise (positive area)."""
    polys = []
    if isinstance(geometry, Polygon):
        polys = [geometry]
    elif isinstance(geometry, MultiPolygon):
        polys = list(geometry.geoms)
    elif hasattr(geometry, "geoms"):
        polys = [g for g in geometry.geoms if isinstance(g, Polygon)]
    out = []
    for p in polys:
        if p.is_empty:
            continue
        p = orient(p, sign=1.0)
        for ring in (p.exterior, *p.interiors):
            xy = np.asarray(ring.coords, dtype=np.float64)
            out.append(np.hstack([xy[:-1], xy[1:]]))
    return np.vstack(out) if out else np.zeros((0, 4))


def _mean_positive(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    """Mean of max(z, 0) for z running linearly from u to v."""
    both = (u >= 0) & (v >= 0)
    p, q = np.maximum(u, 0), np.maximum(v, 0)
    d = np.abs(u - v)
    mixed = (p * p + q * q) / (2 * np.where(d > 0, d, 1.0))
    return np.where(both, 0.5 * (u + v), np.where((u < 0) & (v < 0), 0.0, mixed))


def _pieces(rows: np.ndarray, L: np.ndarray, x0: np.ndarray, x1: np.ndarray, X: np.ndarray,
            nrows: int) -> np.ndarray:
    """Sum over pieces p of ``L_p * mean_y min(x(y), X_i)`` for x running linearly from x0 to x1,
    added into row ``rows[p]`` of an (nrows, len(X)) array (X: equally spaced, step 1).

    Left of the segment the term is ``L * X``, right of it ``L * mean(x)``; only the columns the
    segment spans need the exact formula (written as difference arrays + one gather, so the cost is
    O(rows x width + pieces x span) instead of O(pieces x width)).
    """
    n = len(X)
    w = n + 1
    xmin, xmax = np.minimum(x0, x1), np.maximum(x0, x1)
    lo = np.clip(np.ceil(xmin - X[0]), 0, n).astype(np.int64)  # first i with X_i >= xmin
    hi = np.clip(np.floor(xmax - X[0]) + 1, 0, n).astype(np.int64)  # first i with X_i > xmax
    size = nrows * w
    coef = np.bincount(rows * w, weights=L, minlength=size) - np.bincount(rows * w + lo, weights=L,
                                                                           minlength=size)
    const = np.bincount(rows * w + hi, weights=L * 0.5 * (x0 + x1), minlength=size)
    out = (np.cumsum(coef.reshape(nrows, w), axis=1)[:, :n] * X
           + np.cumsum(const.reshape(nrows, w), axis=1)[:, :n])
    span = hi - lo
    if span.sum() > 0:
        idx = np.repeat(np.arange(len(rows)), span)
        col = lo[idx] + (np.arange(len(idx)) - np.repeat(np.cumsum(span) - span, span))
        Xi = X[col]
        val = L[idx] * (0.5 * (x0[idx] + x1[idx]) - _mean_positive(x0[idx] - Xi, x1[idx] - Xi))
        out += np.bincount(rows[idx] * n + col, weights=val, minlength=nrows * n).reshape(nrows, n)
    return out


def coverage_window(geometry: shapely.Geometry, shape: tuple[int, int], pad: int = 0, align: int = 1
                    ) -> tuple[int, int, np.ndarray]:
    """Exact pixel coverage inside the geometry's bounding box only (everything else is 0).

    Parameters
    ----------
    geometry, shape : as in :func:`coverage`
    pad : int
        Extra pixels of zeros kept around the bounding box (clipped to the image).
    align : int
        The window's origin and size are multiples of this (the image size must be too).

    Returns
    -------
    r0, c0, window : the window's top-left pixel and its (h, w) float64 coverage
    """
    H, W = int(shape[0]), int(shape[1])
    e = _edges(geometry)
    e = e[e[:, 1] != e[:, 3]]  # horizontal edges add nothing to ∫ ... dy
    if len(e) == 0:
        return 0, 0, np.zeros((0, 0))

    def span(lo, hi, n):
        a = int(max(np.floor(lo) - 1 - pad, 0)) // align * align
        b = -(-int(min(np.ceil(hi) + 2 + pad, n)) // align) * align
        return a, min(b, n)

    c0, c1 = span(min(e[:, 0].min(), e[:, 2].min()), max(e[:, 0].max(), e[:, 2].max()), W)
    r0, r1 = span(min(e[:, 1].min(), e[:, 3].min()), max(e[:, 1].max(), e[:, 3].max()), H)
    if c1 <= c0 or r1 <= r0:
        return 0, 0, np.zeros((0, 0))
    h = r1 - r0
    sign = np.sign(e[:, 3] - e[:, 1])
    up = e[:, 1] < e[:, 3]
    xa = np.where(up, e[:, 0], e[:, 2])
    ya = np.where(up, e[:, 1], e[:, 3]) - r0
    xb = np.where(up, e[:, 2], e[:, 0])
    yb = np.where(up, e[:, 3], e[:, 1]) - r0
    X = np.arange(c0, c1 + 1, dtype=np.float64) - 0.5  # pixel-corner abscissae
    # Corner rows j (ordinate j - 0.5) at or below the edge's end see all of it: added at the
    # first such row and carried down by a cumulative sum.
    start = np.clip(np.ceil(yb + 0.5), 0, h + 1).astype(np.int64)
    F = np.cumsum(_pieces(start, sign * (yb - ya), xa, xb, X, h + 2), axis=0)[: h + 1]
    # Corner rows strictly inside the edge's y-span see the part above them.
    j0 = np.clip(np.floor(ya + 0.5) + 1, 0, h + 1).astype(np.int64)
    counts = np.clip(np.minimum(start, h + 1) - j0, 0, None)
    if counts.sum() > 0:
        idx = np.repeat(np.arange(len(e)), counts)
        j = j0[idx] + (np.arange(len(idx)) - np.repeat(np.cumsum(counts) - counts, counts))
        Y = j - 0.5
        xe = xa[idx] + (Y - ya[idx]) / (yb[idx] - ya[idx]) * (xb[idx] - xa[idx])
        F += _pieces(j, sign[idx] * (Y - ya[idx]), xa[idx], xe, X, h + 1)
    cov = F[1:, 1:] - F[:-1, 1:] - F[1:, :-1] + F[:-1, :-1]
    return r0, c0, np.clip(cov, 0.0, 1.0)


def coverage(geometry: shapely.Geometry, shape: tuple[int, int]) -> np.ndarray:
    """Exact fraction of each pixel covered by ``geometry`` (image pixel coordinates).

    Parameters
    ----------
    geometry : shapely Polygon / MultiPolygon
        Non-overlapping polygons (holes allowed) in pixel coordinates, pixel centres at integers.
    shape : (H, W)

    Returns
    -------
    (H, W) float64 in [0, 1]
    """
    out = np.zeros((int(shape[0]), int(shape[1])))
    r0, c0, win = coverage_window(geometry, shape)
    out[r0:r0 + win.shape[0], c0:c0 + win.shape[1]] = win
    return out


@dataclass
class Degradations:
    """Process and optics degradations of a mark image; all amplitudes relative to the background."""

    background: float = param(0.5, "nominal background level (full scale 1)", lo=1e-3, hi=1.0)
    contrast: float = param(0.3, "mark contrast: mark = background * (1 + polarity * contrast)",
                            lo=0.0, hi=1.0)
    snr: float = param(0.0, "contrast amplitude / total noise sigma at the background; 0: no noise",
                       lo=0.0, hi=1e6)
    shot_fraction: float = param(0.5, "share of the noise variance at the background that is shot noise",
                                 lo=0.0, hi=1.0)
    defocus_sigma: float = param(1.0, "Gaussian defocus blur sigma (0: none)", lo=0.0, hi=50.0, unit="px")
    defocus_radius: float = param(0.0, "pillbox defocus radius, applied after the Gaussian (0: none)",
                                  lo=0.0, hi=50.0, unit="px")
    supersample: int = param(4, "blur is applied on a grid this many times finer than the pixels",
                             lo=1, hi=16)
    gradient: float = param(0.0, "illumination change across the image width (random direction)",
                            lo=0.0, hi=1.0)
    vignetting: float = param(0.0, "relative illumination loss at the image corners", lo=0.0, hi=0.9)
    glare_spots: int = param(0, "number of specular glare spots", lo=0, hi=100)
    glare_amplitude: float = param(1.0, "peak glare radiance relative to the background", lo=0.0, hi=20.0)
    glare_sigma: float = param(6.0, "glare spot Gaussian sigma", lo=0.5, hi=200.0, unit="px")
    particles: int = param(0, "number of particles (opaque blobs) on the wafer", lo=0, hi=1000)
    particle_radius: float = param(4.0, "largest particle radius", lo=0.5, hi=100.0, unit="px")
    particle_reflectance: float = param(0.3, "particle reflectance relative to the background",
                                        lo=0.0, hi=5.0)
    line_width_bias: float = param(0.0, "process bias: lines grown (+) or shrunk (-) by this in total",
                                   lo=-50.0, hi=50.0, unit="px")
    texture: float = param(0.0, "wafer background texture: relative standard deviation", lo=0.0, hi=1.0)
    texture_scale: float = param(3.0, "texture correlation length (Gaussian sigma)", lo=0.3, hi=100.0,
                                 unit="px")
    saturation: float = param(0.0, "clip the image at this level (0: no clipping)", lo=0.0, hi=100.0)

    def __post_init__(self):
        validate(self)

    def noise_sigma0(self) -> float:
        """Total noise sigma at the nominal background level (0 when ``snr`` is 0)."""
        if self.snr <= 0:
            return 0.0
        return self.background * self.contrast / self.snr


@dataclass
class MarkScene:
    """A mark with its nuisances drawn: render it noise-free at any pose, or sample a noisy frame.

    Build it with :func:`make_scene`. ``illumination`` and ``glare`` are fixed in the camera
    frame; ``texture`` and ``particles`` are in the wafer (mark-local) frame and move with the
    mark.
    """

    spec: MarkSpec
    degradations: Degradations
    shape: tuple[int, int]
    illumination: np.ndarray  # (H, W) relative illumination, 1 = nominal
    glare: np.ndarray  # (H, W) additive radiance
    texture: np.ndarray | None  # (Ht, Wt) relative reflectance modulation in the wafer frame
    particles: shapely.Geometry | None  # mark-local
    geometry: shapely.Geometry = field(repr=False, default=None)

    @property
    def centre(self) -> tuple[float, float]:
        """Image point of the mark's reference point at zero offset: the image centre."""
        return ((self.shape[1] - 1) / 2.0, (self.shape[0] - 1) / 2.0)

    def render_clean(self, pose: Similarity) -> np.ndarray:
        """Noise-free image (H, W) float64 with the mark at ``pose`` (offset from the centre)."""
        d = self.degradations
        H, W = self.shape
        geom = place(self.geometry, pose, self.centre)
        if d.line_width_bias:
            geom = geom.buffer(d.line_width_bias / 2, join_style="mitre")
        parts = None if self.particles is None else place(self.particles, pose, self.centre)
        # Optics blur the scene before the pixels integrate it: the mark's reflectance change is
        # rendered on a k-times finer grid, blurred there and box-summed (blurring pixel values
        # instead leaves the pixel grid's aliasing in: 2 % errors at sub-pixel shifts, sigma 1 px).
        k = d.supersample if (d.defocus_sigma > 0 or d.defocus_radius > 0) else 1
        to_fine = [k, 0, 0, k, (k - 1) / 2, (k - 1) / 2]  # fine pixel centres at (i + 0.5) / k - 0.5
        pad = int(math.ceil((4 * d.defocus_sigma + d.defocus_radius + 1) * k))
        fine = (k * H, k * W)
        r0, c0, m = coverage_window(affinity.affine_transform(geom, to_fine), fine, pad, align=k)
        m = self.spec.polarity * d.contrast * m
        if parts is not None:
            occ = np.zeros(fine)
            pr0, pc0, pw = coverage_window(affinity.affine_transform(parts, to_fine), fine)
            occ[pr0:pr0 + pw.shape[0], pc0:pc0 + pw.shape[1]] = pw
            full = np.zeros(fine)
            full[r0:r0 + m.shape[0], c0:c0 + m.shape[1]] = m
            # Reflectance 1 + m where clean, the particle's where covered.
            r0, c0, m = 0, 0, full * (1 - occ) + (d.particle_reflectance - 1.0) * occ
        # float32 keeps blurring fast (SIMD); m is the reflectance change, so the relative
        # round-off stays ~1e-7 of the contrast.
        m = m.astype(np.float32)
        if d.defocus_sigma > 0 and m.size:
            m = cv2.GaussianBlur(m, (0, 0), d.defocus_sigma * k, borderType=cv2.BORDER_CONSTANT)
        if d.defocus_radius > 0 and m.size:
            m = cv2.filter2D(m, -1, pillbox_kernel(d.defocus_radius * k).astype(np.float32),
                             borderType=cv2.BORDER_CONSTANT)
        R = np.ones((H, W))
        if m.size:
            h, w = m.shape[0] // k, m.shape[1] // k
            R[r0 // k:r0 // k + h, c0 // k:c0 // k + w] += m.reshape(h, k, w, k).mean(axis=(1, 3),
                                                                                        dtype=np.float64)
        if self.texture is not None:
            # The texture map is centred on the mark; it moves with the mark's pose.
            ht, wt = self.texture.shape
            M = pose.matrix(centre=self.centre, origin=((wt - 1) / 2, (ht - 1) / 2))
            R = R * (1.0 + cv2.warpAffine(self.texture, M, (W, H), flags=cv2.INTER_CUBIC,
                                          borderMode=cv2.BORDER_REFLECT))
        # Illumination and glare vary over tens of pixels: applying them after the blur differs
        # from before by O(sigma² |∇²L|) < 1e-4 of the background.
        return d.background * self.illumination * R + self.glare

    def noise_sigma(self, clean: np.ndarray) -> np.ndarray:
        """Per-pixel noise sigma (H, W) for a noise-free image (see the module's SNR definition)."""
        d = self.degradations
        s0 = d.noise_sigma0()
        k = d.shot_fraction * s0 * s0 / d.background
        read2 = (1.0 - d.shot_fraction) * s0 * s0
        return np.sqrt(read2 + k * np.clip(clean, 0.0, None))

    def sample(self, pose: Similarity, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """(noisy float32 image, noise-free float64 image) with the mark at ``pose``."""
        clean = self.render_clean(pose)
        img = clean
        if self.degradations.snr > 0:
            img = clean + self.noise_sigma(clean) * rng.standard_normal(clean.shape)
        if self.degradations.saturation > 0:
            img = np.clip(img, 0.0, self.degradations.saturation)
        return img.astype(np.float32), clean


def pillbox_kernel(radius: float) -> np.ndarray:
    """Normalised disc (defocus) kernel of ``radius`` px with exactly area-weighted edge pixels."""
    n = int(math.ceil(radius))
    k = coverage(Point(n, n).buffer(radius, quad_segs=64), (2 * n + 1, 2 * n + 1))
    return k / k.sum()


def make_scene(spec: MarkSpec, shape: tuple[int, int], degradations: Degradations | None = None,
               rng: np.random.Generator | int | None = 0) -> MarkScene:
    """Draw the nuisances of one mark image (gradient direction, glare, particles, texture).

    Parameters
    ----------
    spec : MarkSpec
    shape : (H, W) image size in pixels
    degradations : Degradations, default: defaults (blur sigma 1 px, no noise)
    rng : np.random.Generator or seed
    """
    d = degradations or Degradations()
    H, W = int(shape[0]), int(shape[1])
    if H < 8 or W < 8:
        raise InputError("shape", "an image of at least 8x8 pixels", (H, W))
    rng = np.random.default_rng(rng)
    y, x = np.mgrid[0:H, 0:W].astype(np.float64)
    cx, cy = (W - 1) / 2, (H - 1) / 2
    phi = rng.uniform(0, 2 * math.pi)
    illum = 1.0 + d.gradient * ((x - cx) * math.cos(phi) + (y - cy) * math.sin(phi)) / W
    if d.vignetting > 0:
        # Vignetting centre a little off the ROI centre (the ROI is rarely on the optical axis).
        vx, vy = cx + rng.uniform(-0.2, 0.2) * W, cy + rng.uniform(-0.2, 0.2) * H
        r2 = ((x - vx) ** 2 + (y - vy) ** 2) / (cx * cx + cy * cy)
        illum = illum * (1.0 - d.vignetting * r2)
    glare = np.zeros((H, W))
    for _ in range(d.glare_spots):
        gx, gy = rng.uniform(0, W - 1), rng.uniform(0, H - 1)
        s = d.glare_sigma * rng.uniform(0.5, 1.5)
        glare += d.background * d.glare_amplitude * rng.uniform(0.5, 1.0) * np.exp(
            -((x - gx) ** 2 + (y - gy) ** 2) / (2 * s * s))
    texture = None
    if d.texture > 0:
        n = int(math.ceil(math.hypot(H, W))) + 8
        t = cv2.GaussianBlur(rng.standard_normal((n, n)), (0, 0), d.texture_scale)
        texture = t * (d.texture / max(t.std(), 1e-12))
    particles = None
    if d.particles > 0:
        blobs = []
        for _ in range(d.particles):
            px, py = rng.uniform(-W / 2, W / 2), rng.uniform(-H / 2, H / 2)
            r = d.particle_radius * rng.uniform(0.3, 1.0)
            # Irregular blob: a circle squashed and rotated at random.
            b = affinity.rotate(affinity.scale(Point(0, 0).buffer(r, quad_segs=8), 1.0,
                                               rng.uniform(0.4, 1.0)), rng.uniform(0, 180))
            blobs.append(affinity.translate(b, px, py))
        particles = shapely.union_all(blobs)
    return MarkScene(spec, d, (H, W), illum, glare, texture, particles, geometry=mark_geometry(spec))


def golden_template(spec: MarkSpec, shape: tuple[int, int], degradations: Degradations | None = None
                    ) -> np.ndarray:
    """The design template: the mark centred, uniform light, nominal contrast, the image's blur,
    no noise, no bias. (H, W) float64."""
    d = degradations or Degradations()
    clean = Degradations(background=d.background, contrast=d.contrast, defocus_sigma=d.defocus_sigma,
                         defocus_radius=d.defocus_radius, supersample=d.supersample)
    return make_scene(spec, shape, clean, rng=0).render_clean(Similarity())


def to_uint16(image: np.ndarray) -> np.ndarray:
    """Full scale 1.0 -> 65535 (16 bits keep 3 % contrast at SNR 20 far above quantisation)."""
    return np.clip(np.rint(np.asarray(image, np.float64) * 65535.0), 0, 65535).astype(np.uint16)


def write_mark_dataset(out: str | Path, n: int, spec: MarkSpec, degradations: Degradations,
                       shape: tuple[int, int] = (256, 256), seed: int = 0, max_shift: float = 10.0,
                       max_angle: float = math.radians(5.0), max_scale_error: float = 0.0) -> dict:
    """Write ``template.png`` plus ``n`` degraded mark images and ``ground_truth.json``.

    Images are 16-bit PNGs (full scale 1.0 = 65535). Ground truth per image: offset ``dx, dy``
    (px, mark position minus image centre), ``dtheta`` (rad, CCW on screen), ``scale``. Image
    ``i`` uses ``np.random.default_rng([seed, i])``: it does not depend on ``n``.

    Returns the ground-truth dictionary that was written.
    """
    if n < 1:
        raise InputError("n", "at least 1 image", n)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    cv2.imwrite(str(out / "template.png"), to_uint16(golden_template(spec, shape, degradations)))
    images = []
    for i in range(n):
        rng = np.random.default_rng([seed, i])
        pose = Similarity(rng.uniform(-max_shift, max_shift), rng.uniform(-max_shift, max_shift),
                          rng.uniform(-max_angle, max_angle),
                          1.0 + rng.uniform(-max_scale_error, max_scale_error))
        scene = make_scene(spec, shape, degradations, rng)
        images.append((scene.sample(pose, rng)[0], pose))
    return write_mark_images(out, images, spec, degradations, shape, seed)


def write_mark_images(out: Path, images, spec: MarkSpec, degradations, shape: tuple[int, int], seed: int,
                      **extra) -> dict:
    """Write mark images (``NNNNNN.png``, 16 bits, full scale 1.0) and ``ground_truth.json``.

    Parameters
    ----------
    out : Path
        Existing folder (``template.png`` is the caller's).
    images : iterable of ((H, W) float image, Similarity pose)
    spec, degradations, shape, seed
        Recorded in the ground truth (``degradations`` a Degradations or a dict).
    **extra
        More top-level ground-truth entries (e.g. ``renderer``).

    Returns the ground-truth dictionary that was written (the one format every mark set shares).
    """
    records = []
    for i, (img, pose) in enumerate(images):
        name = f"{i:06d}.png"
        cv2.imwrite(str(out / name), to_uint16(img))
        records.append({"image": name, "dx": pose.tx, "dy": pose.ty, "dtheta": pose.theta,
                        "scale": pose.scale})
    truth = {"format": "weak_template_ros.marks/1", "template": "template.png",
             "image_size": [int(shape[1]), int(shape[0])], "full_scale": 65535,
             "convention": "offset = mark position minus image centre; x right, y down; dtheta CCW on "
                           "screen (rad); pixel centres at integers",
             "mark": asdict(spec),
             "degradations": degradations if isinstance(degradations, dict) else asdict(degradations),
             "seed": seed, "images": records, **extra}
    (out / "ground_truth.json").write_text(json.dumps(truth, indent=2))
    return truth
