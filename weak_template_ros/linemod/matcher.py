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
   the anchors that the coarser match allows are evaluated with a gather, the best kept; at
   level 0 the responses are *soft-spread* (full credit at the exact pixel, ``fine_spread_weight``
   within +-1 px), so the final anchor is pixel-exact.
4. Non-maximum suppression on the template boxes, then a coarse pose ``T_cam_obj`` from the
   template pose, the image position and (when given) the measured depth.

Scores are the mean similarity over a template's features, in [0, 1].
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

__all__ = ["Hypothesis", "Matcher", "MatcherConfig", "coarse_pose", "match_templates", "nms"]


@dataclass
class MatcherConfig:
    """Tunables of the matcher (scene side); the template side is in the library."""

    device: str = param("auto", "torch device: 'auto' (CUDA if present), 'cpu', 'cuda', 'cuda:N'")
    threads: int = param(1, "torch CPU threads while matching (0: leave torch's setting); one "
                         "thread is fastest on a loaded machine", lo=0, hi=256)
    spread: tuple = param((), "spreading T per pyramid level (finest first); the coarsest T "
                          "is the step of the exhaustive search; level 0 always uses a soft 3x3 "
                          "spread. Empty: 8 at the coarsest level, 4 in between", unit="px")
    min_magnitude: float = param(1.5, "lowest scene gradient magnitude threshold",
                                 lo=0.0, hi=1000.0, unit="grey levels/px")
    noise_factor: float = param(2.0, "scene gradient threshold = max(min_magnitude, noise_factor "
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
    fine_spread_weight: float = param(0.6, "level-0 credit for a feature 1 px off", lo=0.0, hi=1.0)
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
    count: torch.Tensor  # (n,) float32 number of used features
    reach: int           # max |dx|, |dy| over used features


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
    return _LevelFeatures(chan=t[..., 0], dx=t[..., 1], dy=t[..., 2],
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
        # Half-precision table on the CPU: the accumulation kernel reads half the bytes (sums
        # of <= a few hundred values in [0, 1] keep 3 significant digits).
        self._table_dtype = torch.float16 if self.device.type == "cpu" else torch.float32
        self.timings: dict[str, float] = {}
        # Level-0 tables by channel (0..7 gradient, 8..15 normals); unused slots read an
        # all-zero bitmask plane, and every table gives 0 for an empty mask.
        self._lut_flat = torch.cat([self._grad_lut, self._normal_lut,
                                    torch.zeros((1, 256), device=self.device)]).reshape(-1)
        self._feats: dict[bool, list[_LevelFeatures]] = {}
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
        # The magnitude of pure noise is Rayleigh: its median is 1.18 x the component std.
        return max(c.min_magnitude, c.noise_factor * gain * sigma)

    def _level_bits(self, img: torch.Tensor, dep: torch.Tensor | None, lev: int, threshold: float,
                    camera: CameraIntrinsics, x0: int = 0, y0: int = 0) -> list[torch.Tensor]:
        """Quantised bitmasks of one level's image (gradient, then normals when ``dep``).

        ``(x0, y0)``: position of this crop in the level's pixel grid (for the intrinsics).
        """
        lib_cfg = self.library.config
        gx, gy, mag = fe.color_gradients(img, lib_cfg.blur_order)
        bits = [fe.quantize_orientations(gx, gy, mag, threshold, lib_cfg.vote_min)]
        if dep is not None:
            s = 2.0 ** lev
            nrm = fe.depth_normals(dep, camera.fx / s, camera.fy / s,
                                   (camera.cx + 0.5) / s - 0.5 - x0, (camera.cy + 0.5) / s - 0.5 - y0,
                                   step=self.config.normal_step, max_jump=self.config.normal_max_jump)
            bits.append(fe.quantize_normals(nrm, lib_cfg.normal_min_tilt_deg))
        return bits

    def _dense_responses(self, bits: list[torch.Tensor], T: int, pad: int) -> torch.Tensor:
        """(8 * len(bits) + 1, H + 2 pad, W + 2 pad) float32 spread responses, zero border; the
        last channel is all zero (read by unused feature slots)."""
        H, W = bits[0].shape
        out = torch.zeros((len(bits) * fe.N_BINS + 1, H + 2 * pad, W + 2 * pad),
                          device=bits[0].device)
        for i, (b, lut) in enumerate(zip(bits, (self._grad_lut, self._normal_lut), strict=False)):
            out[i * fe.N_BINS:(i + 1) * fe.N_BINS, pad:pad + H, pad:pad + W] = \
                fe.response_maps(fe.spread(b, T), lut)
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
    def _anchors(feats: _LevelFeatures, tid, ay, ax, grid, Hp: int, Wp: int, p: int,
                 plane: int, per_plane: int = 1):
        """Flat (n_cand, n_grid, F) read positions in (C, Hp, Wp) maps padded by ``p``;
        feature channel ``c`` reads plane ``c // per_plane``."""
        ch = feats.chan[tid]
        # Keep every read inside the padded map (anchors beyond it score as the nearest inside).
        r = feats.reach
        ay = ay.clamp(r - p - int(grid[:, 0].min()), Hp - p - r - 1 - int(grid[:, 0].max()))
        ax = ax.clamp(r - p - int(grid[:, 1].min()), Wp - p - r - 1 - int(grid[:, 1].max()))
        foff = (ch // per_plane) * plane + (feats.dy[tid] + p) * Wp + (feats.dx[tid] + p)
        base = (ay[:, None] + grid[None, :, 0]) * Wp + (ax[:, None] + grid[None, :, 1])
        return foff[:, None, :] + base[:, :, None]

    def _refine_dense(self, resp: torch.Tensor, p: int, feats: _LevelFeatures, tid, ay, ax, grid):
        """Scores (n_cand, n_grid) in [0, 1] of candidates ``tid`` at anchors ``a + grid`` on
        dense response maps zero-padded by ``p``."""
        C, Hp, Wp = resp.shape
        pos = self._anchors(feats, tid, ay, ax, grid, Hp, Wp, p, Hp * Wp)
        F_ = pos.shape[-1]
        # Fused gather + sum over each (candidate, anchor)'s features.
        total = F.embedding_bag(pos.view(-1, F_), resp.view(-1, 1), mode="sum")
        return total.view(pos.shape[:2]) / feats.count[tid].clamp_min(1.0)[:, None]

    def _refine_soft(self, exact: torch.Tensor, spread: torch.Tensor, p: int,
                     feats: _LevelFeatures, tid, ay, ax, grid):
        """As :meth:`_refine_dense` on level 0, from bitmasks: similarity through the tables at
        read time, ``max(lut[exact], w * lut[spread 3x3])`` (no full-resolution response maps)."""
        M, Hp, Wp = exact.shape
        pos = self._anchors(feats, tid, ay, ax, grid, Hp, Wp, p, Hp * Wp, fe.N_BINS)
        row = (feats.chan[tid] * 256)[:, None, :]
        e = self._lut_flat.take(row + exact.reshape(-1).take(pos).long())
        s = self._lut_flat.take(row + spread.reshape(-1).take(pos).long())
        total = torch.maximum(e, s.mul_(self.config.fine_spread_weight)).sum(-1)
        return total / feats.count[tid].clamp_min(1.0)[:, None]

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
        thr = self._threshold(image)
        dep = dep if with_depth else None
        L = self.levels - 1
        pyramid = [(image, dep)]
        for _ in range(L):
            img, d = pyramid[-1]
            pyramid.append((fe.downsample_image(img), None if d is None else fe.downsample_depth(d)))

        # Exhaustive coarse level: every template at every T-th anchor.
        T = c.spread[L]
        bits = self._level_bits(*pyramid[L], L, thr, camera)
        scores, ny, nx, lo = self._coarse_scores(self._dense_responses(bits, T, 0), with_depth, T)
        best = scores.amax(1).float() / feats[L].count.clamp_min(1.0)
        k = min(c.coarse_candidates, len(lib))
        tid = best.topk(k).indices
        kc = min(c.cells_per_template, ny * nx)
        cells = scores[tid].float().topk(kc, dim=1).indices.reshape(-1)
        tid = tid[:, None].expand(k, kc).reshape(-1)
        ay, ax = (cells // nx) * T + lo, (cells % nx) * T + lo
        lo_prev, hi_prev = lo, T - 1 - lo

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
            if lev > 0:
                p = feats[lev].reach + length + 2
                resp = self._dense_responses(self._level_bits(*pyramid[lev], lev, thr, camera),
                                             Tl, p)
                s = self._refine_dense(resp, p, feats[lev], tid, start_y, start_x, grid)
                score, gi = s.max(1)
                ay, ax = start_y + grid[gi, 0], start_x + grid[gi, 1]
                keep = min(c.refine_candidates, score.numel())
                top = score.topk(keep).indices
                tid, ay, ax, score = tid[top], ay[top], ax[top], score[top]
                lo_prev, hi_prev = lo_l, Tl - 1 - lo_l
                continue
            # Level 0: only the region the remaining candidates can reach is processed.
            exact, spread, (oy, ox), p = self._roi_bits(pyramid[0], feats[0], start_y, start_x,
                                                        length, thr, camera)
            sy, sx = start_y - oy, start_x - ox
            s = self._refine_soft(exact, spread, p, feats[0], tid, sy, sx, grid)
            score, gi = s.max(1)
            ay, ax = sy + grid[gi, 0], sx + grid[gi, 1]
            # Stride-2 search above; finish at pixel precision around the best.
            fine = torch.tensor([[dy, dx] for dy in (-1, 0, 1) for dx in (-1, 0, 1)],
                                device=self.device)
            s = self._refine_soft(exact, spread, p, feats[0], tid, ay, ax, fine)
            score, gi = s.max(1)
            ay, ax = ay + fine[gi, 0] + oy, ax + fine[gi, 1] + ox
        return self._finish(tid, ax, ay, score, camera, depth_np)

    def _roi_bits(self, level0, feats: _LevelFeatures, start_y, start_x, length: int,
                  thr: float, camera: CameraIntrinsics):
        """Level-0 bitmasks (exact and 3x3-spread) of the box every candidate can read.

        Returns exact, spread: (M + 1, h + 2p, w + 2p) uint8 (zero border ``p``, last plane
        all zero for unused feature slots), the box origin
        (oy, ox) in image pixels and ``p``.
        """
        img, dep = level0
        H, W = img.shape[1:]
        r = feats.reach + 2
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
        p = feats.reach + length + 4
        exact = torch.zeros((len(bits) + 1, h + 2 * p, w + 2 * p), dtype=torch.uint8,
                            device=img.device)
        spread = torch.zeros_like(exact)
        for i, b in enumerate(bits):
            exact[i, p:p + h, p:p + w] = b[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
            spread[i, p:p + h, p:p + w] = fe.spread(b, 3)[y0 - cy0:y1 - cy0, x0 - cx0:x1 - cx0]
        return exact, spread, (y0, x0), p

    def _finish(self, tid, ax, ay, score, camera, depth_np) -> list[Hypothesis]:
        c, lib = self.config, self.library
        tid = tid.cpu().numpy()
        xy = torch.stack([ax, ay], 1).cpu().numpy().astype(np.int64)
        score = score.float().cpu().numpy()
        ok = score >= c.score_threshold
        tid, xy, score = tid[ok], xy[ok], score[ok]
        # The same template can reach the same anchor from two coarse cells: keep one.
        _, first = np.unique(np.stack([tid, xy[:, 0], xy[:, 1]], 1), axis=0, return_index=True)
        tid, xy, score = tid[first], xy[first], score[first]
        boxes = lib.bboxes[tid] + np.concatenate([xy, xy], 1)
        keep = nms(boxes, score, c.nms_iou, c.max_detections)
        out = []
        for i in keep:
            t = int(tid[i])
            x, y = int(xy[i, 0]), int(xy[i, 1])
            _, d_t, _ = lib.meta[t]
            dist = self._distance(depth_np, t, x, y, camera) if depth_np is not None else None
            dist = float(d_t) if dist is None else dist
            T = coarse_pose(lib.poses[t], x, y, camera, dist)
            out.append(Hypothesis(template_id=t, x=x, y=y, score=float(score[i]),
                                  scale=float(d_t) / dist, bbox=tuple(int(v) for v in boxes[i]),
                                  T_cam_obj=T))
        return out

    def _distance(self, depth: np.ndarray, t: int, x: int, y: int, camera: CameraIntrinsics
                  ) -> float | None:
        """Distance of the object origin along its ray from the measured depth, or None."""
        pr = self.library.probes[t]
        used = pr[:, 2] > 0
        if not used.any():
            return None
        H, W = depth.shape
        u = np.round(x + pr[used, 0]).astype(np.int64)
        v = np.round(y + pr[used, 1]).astype(np.int64)
        inside = (u >= 0) & (u < W) & (v >= 0) & (v < H)
        if not inside.any():
            return None
        z = depth[v[inside], u[inside]]
        zt = pr[used, 2][inside]
        good = z > 0
        if good.sum() < 3:
            return None
        ray = np.array([(x - camera.cx) / camera.fx, (y - camera.cy) / camera.fy, 1.0])
        rz = 1.0 / np.linalg.norm(ray)
        _, d_t, _ = self.library.meta[t]
        return float(d_t + np.median(z[good] / rz - zt[good]))


def match_templates(library: TemplateLibrary, rgb, depth=None, camera=None,
                    config: MatcherConfig | None = None) -> list[Hypothesis]:
    """One-shot :meth:`Matcher.match` (builds the matcher; keep a Matcher for many frames)."""
    m = Matcher(library, config)
    return m.match(rgb, depth, camera)
