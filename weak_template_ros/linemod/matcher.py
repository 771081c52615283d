"""LINE-2D / LINE-MOD matching in PyTorch: exhaustive coarse search, coarse-to-fine, NMS, pose.

How a frame is matched against a :class:`TemplateLibrary` with L pyramid levels:

1. Every level ``l`` of the image (halved ``l`` times) is turned into response maps: quantised
   gradient orientations (and, with depth, quantised normals), spread over ``T_l x T_l`` and
   looked up in the similarity tables (:mod:`.features`).
2. Coarsest level, every template, every ``T_L``-th anchor: spreading makes the similarity
   tolerant to ``T_L`` pixels, so a grid of anchors with step ``T_L`` misses nothing. The sum
   over a template's features of ``response[bin, anchor + offset]`` is computed for all anchors
   at once by ``embedding_bag`` over a *shifted-response table*: one row per possible
   feature key ``(bin, dx, dy)`` holding that response sampled on the anchor grid (the same
   idea as OpenCV's linearised memories, laid out so that one fused, multithreaded library
   kernel does the accumulation over features for all templates).
3. The best templates (and their best anchors) are refined level by level: at each finer level
   the anchors that the coarser match allows are evaluated with a gather, the best kept. At
   half resolution the survivors are also tried scaled and turned in-plane about their anchor
   (the library is discrete), then only the region the best can reach is processed at full
   resolution, where the responses are *soft-spread* (full credit at the exact pixel,
   ``fine_spread_weight`` within +-1 px), so the final anchor is pixel-exact.
4. The score blends full and intermediate resolution, discounted for templates whose features
   share one orientation (:func:`template_specificity`) and, with depth, for a size that
   disagrees with the measured distance. Non-maximum suppression on the template boxes, then a
   coarse pose ``T_cam_obj`` from the template pose, the similarity found, the image position
   and (when given) the measured depth.

Scores are mean similarities over a template's features, in [0, 1].
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn.functional as F

from weak_template_ros import config as cfgmod
from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.config import param
from weak_template_ros.errors import InputError
from weak_template_ros.geometry import make_pose, rotation_from_rotvec
from weak_template_ros.linemod import features as fe
from weak_template_ros.linemod.templates import TemplateLibrary

#: Similarity 1.0 in the uint8 response maps of the intermediate levels.
RESPONSE_SCALE = 64

__all__ = ["Hypothesis", "Matcher", "MatcherConfig", "coarse_pose", "match_templates", "nms",
           "template_specificity"]


@dataclass
class MatcherConfig:
    """Tunables of the matcher (scene side); the template side is in the library."""

    device: str = param("auto", "torch device: 'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:N'")
    threads: int = param(1, "torch CPU threads while matching (0: leave torch's setting); one "
                         "thread is fastest on a loaded machine", lo=0, hi=256)
    spread: tuple = param((), "spreading T per pyramid level (finest first); the coarsest T "
                          "is the step of the exhaustive search; level 0 always uses a soft 3x3 "
                          "spread. Empty: 8 at the coarsest level, 4 in between", unit="px")
    min_magnitude: float = param(1.0, "lowest scene gradient magnitude threshold",
                                 lo=0.0, hi=1000.0, unit="grey levels/px")
    noise_factor: float = param(3.0, "scene gradient threshold = max(min_magnitude, noise_factor "
                                "x gradient noise std estimated from the image)", lo=0.0, hi=50.0)
    fixed_magnitude: float = param(0.0, "if > 0: use this scene threshold, no noise estimate",
                                   lo=0.0, hi=1000.0, unit="grey levels/px")
    coarse_candidates: int = param(256, "templates kept after the exhaustive coarse level",
                                   lo=1, hi=100000)
    coarse_offset_step: int = param(2, "feature offsets rounded to this step at the coarsest "
                                    "level (smaller shifted-response table)", lo=1, hi=8, unit="px")
    cells_per_template: int = param(2, "best coarse anchors kept per kept template", lo=1, hi=64)
    refine_candidates: int = param(48, "candidates kept after each intermediate level",
                                   lo=1, hi=100000)
    fine_candidates: int = param(32, "candidates refined at full resolution", lo=1, hi=100000)
    refine_scales: tuple = param((0.9, 0.95, 1.0, 1.05, 1.1), "scales tried on the final "
                                 "candidates (between the library's distance steps); empty: none")
    refine_angles_deg: tuple = param((-12.0, -6.0, 0.0, 6.0, 12.0), "in-plane turns tried on "
                                     "the final candidates", unit="deg")
    fine_spread_weight: float = param(0.6, "level-0 credit for a feature 1 px off", lo=0.0, hi=1.0)
    fine_score_weight: float = param(0.5, "weight of the level-0 score in the final score (the "
                                     "rest: mean score of the intermediate levels)", lo=0.0, hi=1.0)
    specificity_scale: float = param(0.1, "discount of templates whose features share one "
                                     "orientation (see template_specificity); 0: off", lo=0.0, hi=1.0)
    depth_scale_tolerance: float = param(0.12, "with depth: a hypothesis whose apparent size "
                                         "implies a distance off the measured one by more than "
                                         "this (log ratio) loses score (0: off)", lo=0.0, hi=2.0)
    score_threshold: float = param(0.5, "minimum final score of a hypothesis", lo=0.0, hi=1.0)
    max_detections: int = param(5, "hypotheses returned, best first", lo=1, hi=1000)
    nms_iou: float = param(0.4, "suppress a hypothesis whose box overlaps a better one more",
                           lo=0.0, hi=1.0)
    use_depth: bool = param(True, "use the surface-normal modality when depth is given")
    grad_similarity: tuple = param((1.0, 0.9, 0.0, 0.0, 0.0), "similarity of orientation bins "
                                   "0..4 steps (22.5 deg) apart")
    normal_similarity: tuple = param((1.0, 0.7, 0.0, 0.0, 0.0), "similarity of normal bins "
                                     "0..4 steps (45 deg) apart")
    normal_step: int = param(2, "half baseline of the scene depth differences", lo=1, hi=10,
                             unit="px")
    normal_max_jump: float = param(0.02, "relative depth jump that marks a discontinuity",
                                   lo=0.0, hi=1.0)

    def __post_init__(self):
        self.spread = tuple(int(t) for t in self.spread)
        self.refine_scales = tuple(float(v) for v in self.refine_scales)
        self.refine_angles_deg = tuple(float(v) for v in self.refine_angles_deg)
        if any(not 0.5 <= v <= 2.0 for v in self.refine_scales):
            raise InputError("refine_scales", "scales in [0.5, 2]", list(self.refine_scales))
        if self.refine_scales and not self.refine_angles_deg:
            self.refine_angles_deg = (0.0,)
        if self.refine_angles_deg and not self.refine_scales:
            self.refine_scales = (1.0,)
        self.grad_similarity = tuple(float(w) for w in self.grad_similarity)
        self.normal_similarity = tuple(float(w) for w in self.normal_similarity)
        if any(t < 1 or t > 32 for t in self.spread):
            raise InputError("spread", "values in [1, 32] px", list(self.spread))
        for name in ("grad_similarity", "normal_similarity"):
            w = getattr(self, name)
            if len(w) != 5 or any(not 0.0 <= x <= 1.0 for x in w):
                raise InputError(name, "5 similarities in [0, 1]", list(w))


@dataclass
class Hypothesis:
    """One detection.

    Attributes
    ----------
    template_id : int
        Index into the library.
    x, y : int
        Level-0 pixel where the object origin projects (the template anchor).
    score : float
        Mean feature similarity in [0, 1].
    scale : float
        Apparent size relative to the template (template distance / estimated distance; 1
        without depth).
    bbox : (x0, y0, x1, y1)
        Template silhouette box at the match, pixels, exclusive ends.
    T_cam_obj : (4, 4) float64
        Coarse object pose, metres.
    """

    template_id: int
    x: int
    y: int
    score: float
    scale: float
    bbox: tuple[int, int, int, int]
    T_cam_obj: np.ndarray = field(repr=False)

    def to_dict(self, library: TemplateLibrary | None = None) -> dict:
        """JSON-ready dict: pose as R (3x3), t (m) and rotation vector (rad)."""
        from scipy.spatial.transform import Rotation

        R = self.T_cam_obj[:3, :3]
        d = {"template_id": self.template_id, "x": self.x, "y": self.y,
             "score": round(float(self.score), 6), "scale": round(float(self.scale), 6),
             "bbox": [int(v) for v in self.bbox],
             "T_cam_obj": {"R": R.tolist(), "t_m": self.T_cam_obj[:3, 3].tolist(),
                           "rotvec_rad": Rotation.from_matrix(R).as_rotvec().tolist()}}
        if library is not None:
            view, dist, inplane = library.meta[self.template_id]
            d["template"] = {"view": int(view), "distance_m": float(dist),
                             "inplane_rad": float(inplane)}
        return d


# ---------------------------------------------------------------------------------------------
# Coarse pose and NMS


def _rotation_onto_ray(ray: np.ndarray) -> np.ndarray:
    """Smallest rotation taking the optical axis (0, 0, 1) onto the unit vector ``ray``."""
    z = np.array([0.0, 0.0, 1.0])
    axis = np.cross(z, ray)
    s = np.linalg.norm(axis)
    if s < 1e-12:
        return np.eye(3)
    return rotation_from_rotvec(axis / s * math.atan2(s, float(ray @ z)))


def coarse_pose(template_pose: np.ndarray, x: float, y: float, camera: CameraIntrinsics,
                distance: float) -> np.ndarray:
    """Object pose seen at image position (x, y) with the appearance of a template.

    The template shows the object with its origin on the optical axis at ``template_pose``.
    Rotating that whole configuration about the camera centre until the axis passes through
    (x, y) keeps the appearance (up to perspective) and gives ``R = R_ray @ R_template``; the
    origin is put at ``distance`` (metres from the camera centre) along that ray.
    """
    ray = np.array([(x - camera.cx) / camera.fx, (y - camera.cy) / camera.fy, 1.0])
    ray /= np.linalg.norm(ray)
    R = _rotation_onto_ray(ray) @ template_pose[:3, :3]
    return make_pose(R, ray * distance)


def _similar_boxes(boxes: np.ndarray, scale: np.ndarray, angle: np.ndarray) -> np.ndarray:
    """Axis-aligned boxes (x0, y0, x1, y1) around anchor-relative boxes scaled and turned."""
    b = boxes.astype(np.float64)
    cx = np.stack([b[:, 0], b[:, 2], b[:, 2], b[:, 0]], 1)
    cy = np.stack([b[:, 1], b[:, 1], b[:, 3], b[:, 3]], 1)
    c, s, k = np.cos(angle)[:, None], np.sin(angle)[:, None], scale[:, None]
    x = k * (c * cx - s * cy)
    y = k * (s * cx + c * cy)
    return np.round(np.stack([x.min(1), y.min(1), x.max(1), y.max(1)], 1)).astype(np.int64)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, keep_max: int) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, best first.

    Written here (a few lines) because torchvision has no CPU wheel in this environment.
    """
    order = np.argsort(-scores, kind="stable")
    b = boxes.astype(np.float64)
    area = np.maximum(b[:, 2] - b[:, 0], 0) * np.maximum(b[:, 3] - b[:, 1], 0)
    kept: list[int] = []
    for i in order:
        if len(kept) >= keep_max:
            break
        if kept:
            k = np.asarray(kept)
            w = np.clip(np.minimum(b[k, 2], b[i, 2]) - np.maximum(b[k, 0], b[i, 0]), 0, None)
            h = np.clip(np.minimum(b[k, 3], b[i, 3]) - np.maximum(b[k, 1], b[i, 1]), 0, None)
            inter = w * h
            ov = inter / np.maximum(area[k] + area[i] - inter, 1e-12)
            if np.any(ov > iou):
                continue
        kept.append(int(i))
    return np.asarray(kept, dtype=np.int64)


# ---------------------------------------------------------------------------------------------
# Matcher


@dataclass
class _LevelFeatures:
    chan: torch.Tensor   # (n, F) int64 channel: 0..7 gradient, 8..15 normals, last = zero channel
    dx: torch.Tensor     # (n, F) int64
    dy: torch.Tensor     # (n, F) int64
    plane: torch.Tensor  # (n, F) int64 modality of each feature (chan // 8)
    count: torch.Tensor  # (n,) float32 number of used features
    reach: int           # max |dx|, |dy| over used features


@dataclass
class _CandFeatures:
    """Features of each candidate (rows of a level's _LevelFeatures, possibly transformed)."""

    chan: torch.Tensor   # (k, F) int64
    plane: torch.Tensor  # (k, F) int64
    dx: torch.Tensor     # (k, F) int64
    dy: torch.Tensor     # (k, F) int64
    count: torch.Tensor  # (k,) float32
    reach: int

    @classmethod
    def of(cls, f: _LevelFeatures, tid: torch.Tensor) -> _CandFeatures:
        return cls(f.chan[tid], f.plane[tid], f.dx[tid], f.dy[tid], f.count[tid], f.reach)

    def similar(self, scale: torch.Tensor, angle: torch.Tensor) -> _CandFeatures:
        """Features of each candidate's template scaled by ``scale`` and turned by ``angle``
        (radians, image coordinates x right / y down) about the anchor; orientation and normal
        bins turn with the image. ``scale``, ``angle``: (k,) tensors."""
        c, s = torch.cos(angle)[:, None], torch.sin(angle)[:, None]
        dxf, dyf = self.dx.to(torch.float32), self.dy.to(torch.float32)
        k = scale[:, None]
        dx = torch.round(k * (c * dxf - s * dyf)).to(torch.int64)
        dy = torch.round(k * (s * dxf + c * dyf)).to(torch.int64)
        # A gradient orientation turns with the image (8 bins over 180 deg); a normal's azimuth
        # too (8 bins over 360 deg). Unused slots (the zero channel) stay where they are.
        g_shift = torch.round(angle * (fe.N_BINS / math.pi)).to(torch.int64)[:, None]
        n_shift = torch.round(angle * (fe.N_BINS / (2 * math.pi))).to(torch.int64)[:, None]
        is_g = self.chan < fe.N_BINS
        is_n = (self.chan >= fe.N_BINS) & (self.chan < 2 * fe.N_BINS)
        chan = (is_g * ((self.chan + g_shift) % fe.N_BINS)
                + is_n * (fe.N_BINS + (self.chan - fe.N_BINS + n_shift) % fe.N_BINS)
                + ~(is_g | is_n) * self.chan)
        unused = ~(is_g | is_n)
        dx, dy = dx * ~unused, dy * ~unused
        reach = int(math.ceil(self.reach * float(scale.max()))) + 1 if scale.numel() else self.reach
        return _CandFeatures(chan, self.plane, dx, dy, self.count, reach)


def template_specificity(lib: TemplateLibrary, scale: float) -> np.ndarray:
    """(n,) factor in (0, 1] for each template's score: how specific its orientations are.

    A template whose gradient features nearly all share one orientation (+-1 bin: two
    parallel lines, e.g. a flat part seen edge-on) fits every elongated structure of a scene
    as well as the part; measured here it was the commonest false detection. With ``spread``
    = 1 - (largest fraction of the features within 3 adjacent bins), the factor is
    ``1 - exp(-spread / scale)``: ~1 for boxes and discs (spread >= 0.3 at scale 0.1), 0.63 at
    spread 0.1, 0 for a single orientation. ``scale`` 0 disables it (all ones).
    """
    n = len(lib)
    if scale <= 0 or n == 0:
        return np.ones(n, np.float32)
    g = lib.grad[0][..., 0]
    hist = np.stack([(g == b).sum(1) for b in range(fe.N_BINS)], 1).astype(np.float64)
    frac = hist / np.maximum(hist.sum(1, keepdims=True), 1.0)
    window = np.stack([frac[:, (b - 1) % fe.N_BINS] + frac[:, b] + frac[:, (b + 1) % fe.N_BINS]
                       for b in range(fe.N_BINS)], 1).max(1)
    spread = np.where(hist.sum(1) > 0, 1.0 - window, 1.0)  # no gradient features: neutral
    return (1.0 - np.exp(-spread / scale)).astype(np.float32)


def _level_features(lib: TemplateLibrary, level: int, with_depth: bool, device) -> _LevelFeatures:
    rows = [lib.grad[level]]
    if with_depth:
        d = lib.depth[level].copy()
        d[..., 0] = np.where(d[..., 0] >= 0, d[..., 0] + fe.N_BINS, -1)
        rows.append(d)
    r = np.concatenate(rows, axis=1).astype(np.int64)
    used = r[..., 0] >= 0
    # Unused slots read channel n_chan at offset 0: an all-zero channel of the response maps,
    # so no masking is needed when summing.
    r[~used] = (2 * fe.N_BINS if with_depth else fe.N_BINS, 0, 0)
    reach = int(np.abs(r[..., 1:][used]).max()) if used.any() else 0
    t = torch.from_numpy(r).to(device)
    return _LevelFeatures(chan=t[..., 0], dx=t[..., 1], dy=t[..., 2], plane=t[..., 0] // fe.N_BINS,
                          count=torch.from_numpy(used.sum(1).astype(np.float32)).to(device),
                          reach=reach)


class Matcher:
    """Match one template library against frames (state: the library's tensors on a device).

    Parameters
    ----------
    library : TemplateLibrary
    config : MatcherConfig, optional

    Examples
    --------
    >>> m = Matcher(TemplateLibrary.load("part.wtl"))
    >>> hyps = m.match(rgb, depth)          # list of Hypothesis, best first
    """

    def __init__(self, library: TemplateLibrary, config: MatcherConfig | None = None):
        if not isinstance(library, TemplateLibrary):
            raise InputError("library", "a TemplateLibrary", type(library).__name__)
        if len(library) == 0:
            raise InputError("library", "a template library with at least one template",
                             "an empty library (0 templates)")
        self.config = cfgmod.validate(config or MatcherConfig())
        if not self.config.spread:
            self.config = dataclasses.replace(self.config, spread=tuple(
                3 if lev == 0 else 8 if lev == library.levels - 1 else 4
                for lev in range(library.levels)))
        if len(self.config.spread) != library.levels:
            raise InputError("spread", f"{library.levels} values (one per library pyramid level)",
                             list(self.config.spread))
        self.library = library
        self.device = fe.resolve_device(self.config.device)
        self.levels = library.levels
        self._grad_lut = fe.orientation_similarity_lut(self.config.grad_similarity).to(self.device)
        self._normal_lut = fe.normal_similarity_lut(self.config.normal_similarity).to(self.device)
        self._grad_lut_u8 = (self._grad_lut * RESPONSE_SCALE).round().to(torch.uint8)
        self._normal_lut_u8 = (self._normal_lut * RESPONSE_SCALE).round().to(torch.uint8)
        # Half-precision table on the CPU: the accumulation kernel reads half the bytes (sums
        # of <= a few hundred values in [0, 1] keep 3 significant digits).
        self._table_dtype = torch.float16 if self.device.type == "cpu" else torch.float32
        self.timings: dict[str, float] = {}
        #: Set to a dict to record each level's candidates (level -> tid, y, x, score arrays).
        self.trace: dict | None = None
        # Level-0 tables by channel (0..7 gradient, 8..15 normals); unused slots read an
        # all-zero bitmask plane, and every table gives 0 for an empty mask.
        self._lut_flat = torch.cat([self._grad_lut, self._normal_lut,
                                    torch.zeros((1, 256), device=self.device)]).reshape(-1)
        self._feats: dict[bool, list[_LevelFeatures]] = {}
        self._specificity = torch.from_numpy(
            template_specificity(library, self.config.specificity_scale)).to(self.device)
        self._coarse: dict[bool, tuple] = {}

    # -- per-library precomputation ----------------------------------------------------------

    def _features(self, with_depth: bool) -> list[_LevelFeatures]:
        if with_depth not in self._feats:
            self._feats[with_depth] = [_level_features(self.library, lev, with_depth, self.device)
                                       for lev in range(self.levels)]
            f = self._feats[with_depth][-1]
            nchan = 2 * fe.N_BINS if with_depth else fe.N_BINS
            used = f.chan < nchan
            # Offsets rounded to multiples of q: the coarse responses are spread over T >= 2q
            # pixels anyway, and the table (one row per key) gets q^2 times smaller.
            q = self.config.coarse_offset_step
            qx = torch.div(f.dx + q // 2, q, rounding_mode="floor")
            qy = torch.div(f.dy + q // 2, q, rounding_mode="floor")
            if bool(used.any()):
                dx0, dx1 = int(qx[used].min()), int(qx[used].max())
                dy0, dy1 = int(qy[used].min()), int(qy[used].max())
            else:
                dx0 = dx1 = dy0 = dy1 = 0
            kx, ky = dx1 - dx0 + 1, dy1 - dy0 + 1
            n_keys = nchan * ky * kx
            key = f.chan * (ky * kx) + (qy - dy0) * kx + (qx - dx0)
            key = torch.where(used, key, torch.full_like(key, n_keys))  # -> the zero row
            self._coarse[with_depth] = (key, dx0 * q, dy0 * q, kx, ky, nchan, q)
        return self._feats[with_depth]

    # -- image side ------------------------------------------------------------------------------

    def _threshold(self, image: torch.Tensor) -> float:
        c = self.config
        if c.fixed_magnitude > 0:
            return c.fixed_magnitude
        sigma = fe.estimate_noise_sigma(image)
        gain = fe.gradient_noise_gain(self.library.config.blur_order)
        # Pure noise gives a Rayleigh magnitude: P(|g| > k s) = exp(-k^2 / 2), 1 % at k = 3.
        return max(c.min_magnitude, c.noise_factor * gain * sigma)

    def _level_bits(self, img: torch.Tensor, dep: torch.Tensor | None, lev: int, threshold: float,
                    camera: CameraIntrinsics, x0: int = 0, y0: int = 0) -> list[torch.Tensor]:
        """Quantised bitmasks of one level's image (gradient, then normals when ``dep``).

        ``(x0, y0)``: position of this crop in the level's pixel grid (for the intrinsics).
        """
        lib_cfg = self.library.config
        gx, gy, mag = fe.color_gradients(img, lib_cfg.blur_order)
        bits = [fe.quantize_orientations(gx, gy, mag, threshold, lib_cfg.vote_min,
                                         thin=lib_cfg.thin_edges)]
        if dep is not None:
            s = 2.0 ** lev
            nrm = fe.depth_normals(dep, camera.fx / s, camera.fy / s,
                                   (camera.cx + 0.5) / s - 0.5 - x0, (camera.cy + 0.5) / s - 0.5 - y0,
                                   step=self.config.normal_step, max_jump=self.config.normal_max_jump)
            bits.append(fe.quantize_normals(nrm, lib_cfg.normal_min_tilt_deg))
        return bits

    def _dense_responses(self, bits: list[torch.Tensor], T: int, pad: int,
                         dtype: torch.dtype) -> torch.Tensor:
        """(8 * len(bits) + 1, H + 2 pad, W + 2 pad) spread responses, zero border; the last
        channel is all zero (read by unused feature slots).

        ``torch.uint8`` gives responses scaled by ``RESPONSE_SCALE`` (a quarter of the bytes of
        float32 to write and gather; similarities are kept to 1/64).
        """
        H, W = bits[0].shape
        out = torch.zeros((len(bits) * fe.N_BINS + 1, H + 2 * pad, W + 2 * pad), dtype=dtype,
                          device=bits[0].device)
        luts = (self._grad_lut_u8, self._normal_lut_u8) if dtype == torch.uint8 else \
            (self._grad_lut, self._normal_lut)
        for i, (b, lut) in enumerate(zip(bits, luts, strict=False)):
            out[i * fe.N_BINS:(i + 1) * fe.N_BINS, pad:pad + H, pad:pad + W] = \
                fe.response_maps(fe.spread(b, T), lut, dtype)
        return out

    # -- search ---------------------------------------------------------------------------------

    def _coarse_scores(self, resp: torch.Tensor, with_depth: bool, T: int):
        """Scores (n, Ny*Nx) of every template at every T-th anchor of the coarsest level."""
        key, dx0, dy0, kx, ky, nchan, q = self._coarse[with_depth]
        C, H, W = resp.shape
        ny, nx = -(-H // T), -(-W // T)
        lo = T // 2
        # Anchor of cell (Y, X) is (Y*T + lo, X*T + lo); row (c, j, i) of the table holds
        # resp[c, anchor_y + dy0 + q j, anchor_x + dx0 + q i] for all cells (zero outside).
        top = max(0, -(lo + dy0))
        left = max(0, -(lo + dx0))
        bottom = max(0, (ny - 1) * T + lo + dy0 + q * (ky - 1) + 1 - H)
        right = max(0, (nx - 1) * T + lo + dx0 + q * (kx - 1) + 1 - W)
        pad = F.pad(resp[:nchan], (left, right, top, bottom))
        y0, x0 = top + lo + dy0, left + lo + dx0
        n_keys = nchan * ky * kx
        flat = torch.empty((n_keys + 1, ny * nx), dtype=self._table_dtype, device=resp.device)
        flat[n_keys] = 0.0  # the row unused feature slots point at
        table = flat[:n_keys].view(nchan, ky, kx, ny, nx)
        span_y, span_x = (ny - 1) * T + 1, (nx - 1) * T + 1
        for j in range(ky):
            yj = y0 + q * j
            rows = pad[:, yj:yj + span_y:T, x0:x0 + q * (kx - 1) + span_x]  # (C, ny, w)
            table[:, j] = rows.unfold(2, span_x, q)[..., ::T].permute(0, 2, 1, 3)
        scores = F.embedding_bag(key, flat, mode="sum")
        return scores, ny, nx, lo

    @staticmethod
    def _anchors(cf: _CandFeatures, ay, ax, grid, Hp: int, Wp: int, p: int, plane: int,
                 by_modality: bool = False):
        """Flat (n_cand, n_grid, F) read positions in (C, Hp, Wp) maps padded by ``p``;
        feature channel ``c`` reads plane ``c`` (or its modality ``c // 8``)."""
        # Keep every read inside the padded map (anchors beyond it score as the nearest inside).
        r = cf.reach
        ay = ay.clamp(r - p - int(grid[:, 0].min()), Hp - p - r - 1 - int(grid[:, 0].max()))
        ax = ax.clamp(r - p - int(grid[:, 1].min()), Wp - p - r - 1 - int(grid[:, 1].max()))
        foff = (cf.plane if by_modality else cf.chan) * plane + (cf.dy + p) * Wp + (cf.dx + p)
        base = (ay[:, None] + grid[None, :, 0]) * Wp + (ax[:, None] + grid[None, :, 1])
        return foff[:, None, :] + base[:, :, None]

    def _refine_dense(self, resp: torch.Tensor, p: int, cf: _CandFeatures, ay, ax, grid):
        """Scores (n_cand, n_grid) in [0, 1] of the candidates at anchors ``a + grid`` on
        dense uint8 response maps zero-padded by ``p``."""
        C, Hp, Wp = resp.shape
        pos = self._anchors(cf, ay, ax, grid, Hp, Wp, p, Hp * Wp)
        total = resp.reshape(-1).take(pos).sum(-1, dtype=torch.int32)
        return total / (RESPONSE_SCALE * cf.count.clamp_min(1.0)[:, None])

    def _refine_soft(self, exact: torch.Tensor, spread: torch.Tensor, p: int, cf: _CandFeatures,
                     ay, ax, grid):
        """As :meth:`_refine_dense` on level 0, from bitmasks: similarity through the tables at
        read time, ``max(lut[exact], w * lut[spread 3x3])`` (no full-resolution response maps)."""
        M, Hp, Wp = exact.shape
        pos = self._anchors(cf, ay, ax, grid, Hp, Wp, p, Hp * Wp, by_modality=True)
        row = (cf.chan * 256)[:, None, :]
        e = self._lut_flat.take(row + exact.reshape(-1).take(pos).long())
        s = self._lut_flat.take(row + spread.reshape(-1).take(pos).long())
        total = torch.maximum(e, s.mul_(self.config.fine_spread_weight)).sum(-1)
        return total / cf.count.clamp_min(1.0)[:, None]

    def match(self, rgb, depth=None, camera: CameraIntrinsics | None = None) -> list[Hypothesis]:
        """Detect the library's part in one frame.

        Parameters
        ----------
        rgb : (H, W, 3) or (H, W) array
            uint8 / uint16 / float in [0, 1], RGB; H, W of the library's camera.
        depth : (H, W) float array, optional
            Metres, 0/NaN invalid. Adds the surface-normal modality (if the library has it and
            ``use_depth``) and the measured depth to the pose.
        camera : CameraIntrinsics, optional
            The frame's intrinsics; must match the library's (size and focal lengths).

        Returns
        -------
        list of Hypothesis, best first, at most ``max_detections``, score >= ``score_threshold``.
        """
        lib, c = self.library, self.config
        camera = camera or lib.camera
        lib.check_compatible(camera=camera, where="camera")
        image = fe.as_image_tensor(rgb, "rgb", self.device)
        if tuple(image.shape[1:]) != lib.camera.shape:
            raise InputError("rgb", f"an image of {lib.camera.width}x{lib.camera.height} (the "
                             "templates' camera)", f"{image.shape[2]}x{image.shape[1]}")
        dep = None
        if depth is not None:
            dep = fe.as_depth_tensor(depth, lib.camera.shape, "depth", self.device)
        with_depth = dep is not None and c.use_depth and lib.has_depth
        depth_np = None if dep is None else dep.cpu().numpy()
        with torch.inference_mode(), fe.torch_threads(c.threads):
            return self._match(image, dep, with_depth, camera, depth_np)

    def _match(self, image, dep, with_depth: bool, camera: CameraIntrinsics, depth_np
               ) -> list[Hypothesis]:
        c, lib = self.config, self.library
        feats = self._features(with_depth)
        dep = dep if with_depth else None
        L = self.levels - 1
        pyramid = [(image, dep)]
        for _ in range(L):
            img, d = pyramid[-1]
            pyramid.append((fe.downsample_image(img), None if d is None else fe.downsample_depth(d)))
        # Each level has its own noise (2x2 averaging divides i.i.d. noise by 2), so its own
        # gradient threshold: coarse levels see low-contrast edges that level 0 cannot.
        thr = [self._threshold(img) for img, _ in pyramid]
        self.timings["thresholds"] = thr

        # Exhaustive coarse level: every template at every T-th anchor.
        T = c.spread[L]
        bits = self._level_bits(*pyramid[L], L, thr[L], camera)
        scores, ny, nx, lo = self._coarse_scores(
            self._dense_responses(bits, T, 0, self._table_dtype), with_depth, T)
        best = scores.amax(1).float() * (self._specificity / feats[L].count.clamp_min(1.0))
        k = min(c.coarse_candidates, len(lib))
        tid = best.topk(k).indices
        kc = min(c.cells_per_template, ny * nx)
        cells = scores[tid].float().topk(kc, dim=1).indices.reshape(-1)
        tid = tid[:, None].expand(k, kc).reshape(-1)
        ay, ax = (cells // nx) * T + lo, (cells % nx) * T + lo
        self._trace(L, tid, ay, ax, None)
        lo_prev, hi_prev = lo, T - 1 - lo
        mid_sum = torch.zeros(tid.shape, device=self.device)  # scores of the intermediate levels

        smax = max(c.refine_scales) if c.refine_scales else 1.0
        sim_scale = torch.ones(tid.shape, device=self.device)
        sim_angle = torch.zeros(tid.shape, device=self.device)
        for lev in range(L - 1, -1, -1):
            # True anchors at level lev+1 lie in [a - lo_prev, a + hi_prev], so here in
            # [2 (a - lo_prev), 2 (a + hi_prev) + 1]: searched with a margin of half a step.
            Tl = c.spread[lev] if lev > 0 else 2
            lo_l = Tl // 2 if lev > 0 else 0
            margin = Tl // 2
            start_y, start_x = 2 * (ay - lo_prev) - margin, 2 * (ax - lo_prev) - margin
            length = 2 * (lo_prev + hi_prev + 1) + 2 * margin
            steps = torch.arange(lo_l, length, Tl, device=self.device)
            grid = torch.stack(torch.meshgrid(steps, steps, indexing="ij"), -1).reshape(-1, 2)
            cf = _CandFeatures.of(feats[lev], tid)
            if lev < L - 1:
                cf = cf.similar(sim_scale, sim_angle)
            if lev > 0:
                p = int(math.ceil(feats[lev].reach * smax)) + length + 4
                resp = self._dense_responses(self._level_bits(*pyramid[lev], lev, thr[lev], camera),
                                             Tl, p, torch.uint8)
                s = self._refine_dense(resp, p, cf, start_y, start_x, grid)
                score, gi = s.max(1)
                ay, ax = start_y + grid[gi, 0], start_x + grid[gi, 1]
                keep = min(c.refine_candidates, score.numel())
                top = score.topk(keep).indices
                tid, ay, ax, score = tid[top], ay[top], ax[top], score[top]
                sim_scale, sim_angle = sim_scale[top], sim_angle[top]
                if lev == 1 and c.refine_scales:
                    # The library is discrete (views ~15 deg, distances ~20 %, in-plane steps
                    # apart): try each survivor scaled and turned about its anchor and keep the
                    # best, so that the right template is not outscored by a wrong one that
                    # happens to fit a part of the object more exactly.
                    score, sim_scale, sim_angle = self._best_similarity(
                        resp, p, feats[lev], tid, ay, ax, score)
                mid_sum = mid_sum[top] + score
                if lev == 1:
                    # Only the best go on to full resolution: a smaller region to process.
                    keep = min(c.fine_candidates, score.numel())
                    top = score.topk(keep).indices
                    tid, ay, ax, score, mid_sum = tid[top], ay[top], ax[top], score[top], mid_sum[top]
                    sim_scale, sim_angle = sim_scale[top], sim_angle[top]
                self._trace(lev, tid, ay, ax, score)
                lo_prev, hi_prev = lo_l, Tl - 1 - lo_l
                continue
            # Level 0: only the region the remaining candidates can reach is processed.
            exact, spread, (oy, ox), p = self._roi_bits(pyramid[0], cf.reach, start_y, start_x,
                                                        length, thr[0], camera)
            sy, sx = start_y - oy, start_x - ox
            s = self._refine_soft(exact, spread, p, cf, sy, sx, grid)
            score, gi = s.max(1)
            ay, ax = sy + grid[gi, 0], sx + grid[gi, 1]
            # Stride-2 search above; finish at pixel precision around the best.
            fine = torch.tensor([[dy, dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
                                device=self.device)
            s = self._refine_soft(exact, spread, p, cf, ay, ax, fine)
            score, gi = s.max(1)
            ay, ax = ay + fine[gi, 0] + oy, ax + fine[gi, 1] + ox
            if L > 1:
                # Level 0 is exact to the pixel, the intermediate levels tolerate the few pixels
                # by which the nearest template differs from the view: the score blends both.
                w = c.fine_score_weight
                score = w * score + (1.0 - w) * mid_sum / (L - 1)
            score = score * self._specificity[tid]
        self._trace(0, tid, ay, ax, score)
        return self._finish(tid, ax, ay, score, sim_scale, sim_angle, camera, depth_np)

    def _best_similarity(self, resp, p: int, feats: _LevelFeatures, tid, ay, ax, score):
        """Best (scale, angle) of ``refine_scales`` x ``refine_angles_deg`` for each candidate,
        scored at its anchor on uint8 responses (spread over T: tolerant to a few pixels)."""
        c = self.config
        sc = torch.tensor(c.refine_scales, device=self.device, dtype=torch.float32)
        an = torch.tensor(c.refine_angles_deg, device=self.device, dtype=torch.float32) * (math.pi / 180)
        S, A = torch.meshgrid(sc, an, indexing="ij")
        S, A = S.reshape(-1), A.reshape(-1)
        k, m = tid.numel(), S.numel()
        cf = _CandFeatures.of(feats, tid.repeat_interleave(m)).similar(S.repeat(k), A.repeat(k))
        here = torch.zeros((1, 2), dtype=torch.int64, device=self.device)
        s = self._refine_dense(resp, p, cf, ay.repeat_interleave(m), ax.repeat_interleave(m), here)
        s = s.view(k, m)
        best, bi = s.max(1)
        # Keep the plain template unless a similarity does clearly better (ties: the template).
        better = best > score + 0.5 / RESPONSE_SCALE
        one, zero = torch.ones_like(score), torch.zeros_like(score)
        return (torch.where(better, best, score), torch.where(better, S[bi], one),
                torch.where(better, A[bi], zero))

    def _trace(self, level: int, tid, ay, ax, score) -> None:
        """Record a stage's candidates when ``self.trace`` is a dict (debugging, benchmarks)."""
        if self.trace is not None:
            self.trace[level] = {"tid": tid.cpu().numpy(), "y": ay.cpu().numpy(), "x": ax.cpu().numpy(),
                                 "score": None if score is None else score.float().cpu().numpy()}

    def _roi_bits(self, level0, reach: int, start_y, start_x, length: int,
                  thr: float, camera: CameraIntrinsics):
        """Level-0 bitmasks (exact and 3x3-spread) of the box every candidate can read.

        Returns exact, spread: (M + 1, h + 2p, w + 2p) uint8 (zero border ``p``, last plane
        all zero for unused feature slots), the box origin
        (oy, ox) in image pixels and ``p``.
        """
        img, dep = level0
        H, W = img.shape[1:]
        r = reach + 2
        y0 = max(0, int(start_y.min()) - r)
        x0 = max(0, int(start_x.min()) - r)
        y1 = min(H, int(start_y.max()) + length + r + 1)
        x1 = min(W, int(start_x.max()) + length + r + 1)
        if y1 <= y0 or x1 <= x0:  # every candidate reads outside the image
            y0, x0, y1, x1 = 0, 0, min(H, 1), min(W, 1)
        # Filters need a margin of context around the box (blur, derivative, vote, spread).
        m = self.library.config.blur_order // 2 + 5
        cy0, cx0, cy1, cx1 = max(0, y0 - m), max(0, x0 - m), min(H, y1 + m), min(W, x1 + m)
        crop = img[:, cy0:cy1, cx0:cx1]
        dcrop = None if dep is None else dep[cy0:cy1, cx0:cx1]
        bits = self._level_bits(crop, dcrop, 0, thr, camera, cx0, cy0)
        self.timings["roi_px"] = float(crop.shape[1] * crop.shape[2])
        h, w = y1 - y0, x1 - x0
        p = reach + length + 4
        exact = torch.zeros((len(bits) + 1, h + 2 * p, w + 2 * p), dtype=torch.uint8,
                            device=img.device)
        spread = torch.zeros_like(exact)
        for i, b in enumerate(bits):
            exact[i, p:p + h, p:p + w] = b[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
            spread[i, p:p + h, p:p + w] = fe.spread(b, 3)[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
        return exact, spread, (y0, x0), p

    def _finish(self, tid, ax, ay, score, sim_scale, sim_angle, camera, depth_np
                ) -> list[Hypothesis]:
        c, lib = self.config, self.library
        tid = tid.cpu().numpy()
        xy = torch.stack([ax, ay], 1).cpu().numpy().astype(np.int64)
        score = score.float().cpu().numpy().astype(np.float64)
        sim = torch.stack([sim_scale, sim_angle], 1).float().cpu().numpy().astype(np.float64)
        d_t = lib.meta[tid, 1]
        dist = d_t / sim[:, 0]  # the distance the template's apparent size implies
        if depth_np is not None:
            measured = self._distances(depth_np, tid, xy, sim, camera)
            known = np.isfinite(measured)
            if c.depth_scale_tolerance > 0:
                # A template that fits at the wrong size (a far view on a part of a near
                # object) disagrees with the measured depth: fade its score out beyond the
                # tolerance, to 0 at twice the tolerance.
                tol = c.depth_scale_tolerance
                err = np.abs(np.log(dist[known] / measured[known]))
                score[known] *= np.clip(1.0 - (err - tol) / tol, 0.0, 1.0)
            dist[known] = measured[known]
        ok = score >= c.score_threshold
        tid, xy, score, sim, dist = tid[ok], xy[ok], score[ok], sim[ok], dist[ok]
        # The same template can reach the same anchor from two coarse cells: keep one.
        _, first = np.unique(np.stack([tid, xy[:, 0], xy[:, 1]], 1), axis=0, return_index=True)
        tid, xy, score, sim, dist = tid[first], xy[first], score[first], sim[first], dist[first]
        boxes = _similar_boxes(lib.bboxes[tid], sim[:, 0], sim[:, 1]) + np.concatenate([xy, xy], 1)
        keep = nms(boxes, score, c.nms_iou, c.max_detections)
        out = []
        for i in keep:
            t = int(tid[i])
            x, y = int(xy[i, 0]), int(xy[i, 1])
            a = sim[i, 1]
            # The in-plane turn found in the image is a turn about the optical axis.
            ca, sa = math.cos(a), math.sin(a)
            T_t = make_pose(np.array([[ca, -sa, 0.0], [sa, ca, 0.0], [0.0, 0.0, 1.0]])) @ lib.poses[t]
            T = coarse_pose(T_t, x, y, camera, float(dist[i]))
            out.append(Hypothesis(template_id=t, x=x, y=y, score=float(score[i]),
                                  scale=float(lib.meta[t, 1] / dist[i]),
                                  bbox=tuple(int(v) for v in boxes[i]), T_cam_obj=T))
        return out

    def _distances(self, depth: np.ndarray, tid: np.ndarray, xy: np.ndarray, sim: np.ndarray,
                   camera: CameraIntrinsics) -> np.ndarray:
        """(k,) distance of each candidate's object origin along its ray from the measured
        depth (NaN where fewer than 3 probes see valid depth).

        The template's probe points (moved by the similarity found) read the measured depth;
        their depths relative to the template's origin do not change with distance.
        """
        pr = self.library.probes[tid]                       # (k, P, 3): dx, dy, depth
        used = pr[..., 2] > 0
        k_, a = sim[:, 0:1], sim[:, 1:2]
        ca, sa = np.cos(a), np.sin(a)
        u = np.round(xy[:, 0:1] + k_ * (ca * pr[..., 0] - sa * pr[..., 1])).astype(np.int64)
        v = np.round(xy[:, 1:2] + k_ * (sa * pr[..., 0] + ca * pr[..., 1])).astype(np.int64)
        H, W = depth.shape
        inside = used & (u >= 0) & (u < W) & (v >= 0) & (v < H)
        z = np.where(inside, depth[np.clip(v, 0, H - 1), np.clip(u, 0, W - 1)], 0.0)
        good = z > 0
        ray = np.stack([(xy[:, 0] - camera.cx) / camera.fx, (xy[:, 1] - camera.cy) / camera.fy,
                        np.ones(len(xy))], 1)
        rz = 1.0 / np.linalg.norm(ray, axis=1, keepdims=True)  # cosine of the ray to the axis
        d_t = self.library.meta[tid, 1][:, None]
        est = np.where(good, z / rz - (pr[..., 2] - d_t), np.nan)
        out = np.full(len(tid), np.nan)
        enough = good.sum(1) >= 3
        if enough.any():
            out[enough] = np.nanmedian(est[enough], axis=1)
        return out


def match_templates(library: TemplateLibrary, rgb, depth=None, camera=None,
                    config: MatcherConfig | None = None) -> list[Hypothesis]:
    """One-shot :meth:`Matcher.match` (builds the matcher; keep a Matcher for many frames)."""
    m = Matcher(library, config)
    return m.match(rgb, depth, camera)
