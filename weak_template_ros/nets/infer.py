"""Learned detector and refiner from Python, on NumPy images, with the aligner's output types.

Three lines::

    from weak_template_ros.nets import LearnedRefiner
    result = LearnedRefiner().refine(image, template, start=Similarity(3.0, -2.0))
    print(result.dx, result.dy, result.dtheta, result.covariance[:2, :2])

``LearnedDetector().detect(image, template)`` returns :class:`Detection` s (centre, scale,
angle, score). Both load the shipped weights unless given a weight file. Conventions are the
aligner's (:mod:`weak_template_ros.align.similarity`): offsets are where the mark IS minus where
the template says it should be, the template's reference point (default: its centre) at
``expected`` (default: the image centre).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from weak_template_ros.align.aligner import AlignmentResult
from weak_template_ros.align.similarity import Similarity
from weak_template_ros.errors import InputError
from weak_template_ros.nets import ops
from weak_template_ros.nets.data import mark_box
from weak_template_ros.nets.models import (
    MOTIONS,
    STRIDE,
    DetectorNet,
    RefinerNet,
    SolverConfig,
    TemplateFeatures,
)
from weak_template_ros.nets.weights import load_model


def _check_sizes(img: torch.Tensor, tpl: torch.Tensor) -> None:
    H, W = img.shape[-2:]
    h, w = tpl.shape[-2:]
    if h > H or w > W:
        raise InputError("template", f"at most the image size {W}x{H} px", f"a template of {w}x{h} px")


def _pose_tensor(start: Similarity | None) -> torch.Tensor:
    s = start or Similarity()
    if not (s.scale > 0 and all(math.isfinite(v) for v in (s.tx, s.ty, s.theta, s.scale))):
        raise InputError("start", "a finite Similarity with scale > 0", s)
    return torch.tensor([[s.tx, s.ty, s.theta, math.log(s.scale)]], dtype=torch.float32)


# ---------------------------------------------------------------------------------------------
# Refiner


@dataclass
class RefinerTemplate:
    """A template ready for :meth:`LearnedRefiner.refine` (features of its crop per level)."""

    shape: tuple[int, int]  # original template (h, w)
    origin: tuple[float, float]  # reference point in the original template
    crop_origin: torch.Tensor  # (1, 2) reference point in the crop
    crop_shape: tuple[int, int]
    levels: list[TemplateFeatures]
    solver: SolverConfig


class LearnedRefiner:
    """Differentiable Gauss–Newton refiner on learned features (:class:`.models.RefinerNet`).

    Parameters
    ----------
    weights : path or RefinerNet, optional
        A refiner weight file (default: the shipped one) or a model in memory.
    solver : SolverConfig, optional
        Iteration schedule (default: the one the weights were trained with... the defaults).
    motion : "translation", "euclidean" or "similarity"
    margin : int
        Background kept around the mark when the template is cropped, px.
    threads : int
        torch CPU threads while running (0: leave torch's setting).
    """

    def __init__(self, weights=None, solver: SolverConfig | None = None, motion: str = "similarity",
                 margin: int = 16, threads: int = 1):
        if motion not in MOTIONS:
            raise InputError("motion", f"one of {list(MOTIONS)}", repr(motion))
        if isinstance(weights, RefinerNet):  # a model in memory (training, evaluation)
            self.model, self.card = weights.eval(), {}
        else:
            self.model, self.card = load_model(weights, "refiner")
        self.solver = solver or SolverConfig()
        self.motion = motion
        self.margin = int(margin)
        self.threads = int(threads)

    def _threads(self):
        from weak_template_ros.linemod.features import torch_threads

        return torch_threads(self.threads)

    def prepare(self, template, origin: tuple[float, float] | None = None) -> RefinerTemplate:
        """Crop the template to its mark (+ margin) and compute its feature levels."""
        t = ops.as_batch(template, "template")
        h, w = t.shape[-2:]
        if origin is None:
            origin = ((w - 1) / 2.0, (h - 1) / 2.0)
        cx, cy, extent = mark_box(t[0, 0].numpy())
        half = 0.5 * extent + self.margin
        x0, x1 = max(int(math.floor(cx - half)), 0), min(int(math.ceil(cx + half)) + 1, w)
        y0, y1 = max(int(math.floor(cy - half)), 0), min(int(math.ceil(cy + half)) + 1, h)
        crop = t[..., y0:y1, x0:x1]
        o = torch.tensor([[float(origin[0]) - x0, float(origin[1]) - y0]], dtype=torch.float32)
        with torch.inference_mode(), self._threads():
            levels = self.model.prepare(crop, o, self.solver)
        return RefinerTemplate((h, w), (float(origin[0]), float(origin[1])), o, (y1 - y0, x1 - x0), levels,
                               self.solver)

    def refine(self, image, template, start: Similarity | None = None,
               expected: tuple[float, float] | None = None) -> AlignmentResult:
        """Refine ``start`` (default: zero offset) to the mark's pose in ``image``.

        Returns an :class:`~weak_template_ros.align.AlignmentResult` (``found`` always True; the
        caller judges ``score``); ``covariance`` is the refiner's calibrated uncertainty over
        (dx, dy, dtheta, scale).
        """
        img = ops.as_batch(image, "image")
        prep = template if isinstance(template, RefinerTemplate) else self.prepare(template)
        if prep.solver != self.solver:
            raise InputError("template", "a RefinerTemplate prepared with this refiner's solver",
                             "one prepared with another")
        H, W = img.shape[-2:]
        if prep.shape[0] > H or prep.shape[1] > W:
            raise InputError("template", f"at most the image size {W}x{H} px",
                             f"a template of {prep.shape[1]}x{prep.shape[0]} px")
        if expected is None:
            expected = ((W - 1) / 2.0, (H - 1) / 2.0)
        p0 = _pose_tensor(start)
        # Image features only where the template can land: its crop at the start, + a margin.
        ch, cw = prep.crop_shape
        corners = torch.tensor([[0.0, 0.0], [cw - 1.0, 0.0], [0.0, ch - 1.0], [cw - 1.0, ch - 1.0]])
        e = torch.tensor([expected], dtype=torch.float32)
        xy = ops.warp_points(p0, corners, prep.crop_origin[0], e[0])[0]
        m = 8 + self.solver.max_step * 2 ** (self.solver.levels - 1)
        x0 = int(np.clip(math.floor(float(xy[:, 0].min()) - m), 0, W - 16))
        y0 = int(np.clip(math.floor(float(xy[:, 1].min()) - m), 0, H - 16))
        x1 = int(np.clip(math.ceil(float(xy[:, 0].max()) + m) + 1, x0 + 16, W))
        y1 = int(np.clip(math.ceil(float(xy[:, 1].max()) + m) + 1, y0 + 16, H))
        with torch.inference_mode(), self._threads():
            feats = self.model.image_features(img[..., y0:y1, x0:x1], self.solver)
            out = self.model(prep.levels, feats, prep.crop_origin, e - torch.tensor([[x0, y0]]), p0,
                             self.solver, self.motion)
        return _result(out["pose"][0], out["covariance"][0], float(out["score"][0]), prep.origin, expected,
                       len(out["poses"]), int(out["valid"][0].sum()))


def _result(p: torch.Tensor, cov_log: torch.Tensor, score: float, origin, expected, iterations: int,
            n_pixels: int) -> AlignmentResult:
    """An AlignmentResult from a pose (tx, ty, theta, log s) and its covariance."""
    p = p.double().numpy()
    scale = math.exp(p[3])
    J = np.diag([1.0, 1.0, 1.0, scale])  # d scale / d log scale
    cov = J @ cov_log.double().numpy() @ J.T
    A = scale * np.array([[math.cos(p[2]), math.sin(p[2])], [-math.sin(p[2]), math.cos(p[2])]])
    t_abs = np.asarray(expected) + p[:2] - A @ np.asarray(origin)
    ok = bool(np.all(np.isfinite(p)))
    return AlignmentResult(ok, float(p[0]), float(p[1]), float(p[2]), scale, score, cov,
                           np.hstack([A, t_abs[:, None]]), math.nan, n_pixels, iterations, ok,
                           reason="" if ok else "refinement diverged")


# ---------------------------------------------------------------------------------------------
# Detector


@dataclass
class Detection:
    """One detection of the template's mark: where its mark-box centre is, px, its scale relative
    to the template, its in-plane angle (rad, counter-clockwise on screen) and a score in [0, 1]."""

    x: float
    y: float
    scale: float
    angle: float
    score: float

    def start(self, template_box: tuple[float, float], origin: tuple[float, float],
              expected: tuple[float, float]) -> Similarity:
        """The detection as a starting pose for the refiner / aligner: the offset of the
        template's reference point ``origin`` (its mark-box centre ``template_box``)."""
        A = Similarity(0, 0, self.angle, self.scale).linear()
        t = np.array([self.x, self.y]) - np.asarray(expected) - A @ (np.asarray(template_box)
                                                                      - np.asarray(origin))
        return Similarity(float(t[0]), float(t[1]), self.angle, self.scale)


@dataclass
class DetectorTemplate:
    """A template ready for :meth:`LearnedDetector.detect`."""

    shape: tuple[int, int]
    box: tuple[float, float, float]  # mark centre x, y and extent in the template, px
    factor: float  # canonical scale / template scale
    kernel: torch.Tensor  # (1, C, K, K)


def _resample(t: torch.Tensor, factor: float) -> torch.Tensor:
    """Resize by ``factor`` (pixel centres: x_new = (x + 0.5) f - 0.5), antialiased when shrinking."""
    if abs(factor - 1.0) < 1e-6:
        return t
    H, W = t.shape[-2:]
    size = (max(int(round(H * factor)), 8), max(int(round(W * factor)), 8))
    return F.interpolate(t, size=size, mode="bilinear", align_corners=False, antialias=factor < 1.0)


class LearnedDetector:
    """Template-conditioned detector (:class:`.models.DetectorNet`) on NumPy images.

    Works at a canonical scale: template and image are resampled so that the template's mark
    spans ``canonical_size`` px (64 by default).
    """

    def __init__(self, weights=None, threads: int = 1):
        if isinstance(weights, DetectorNet):  # a model in memory (training, evaluation)
            self.model, self.card = weights.eval(), {}
        else:
            self.model, self.card = load_model(weights, "detector")
        self.threads = int(threads)

    def _threads(self):
        from weak_template_ros.linemod.features import torch_threads

        return torch_threads(self.threads)

    def prepare(self, template) -> DetectorTemplate:
        t = ops.as_batch(template, "template")
        cx, cy, extent = mark_box(t[0, 0].numpy())
        f = self.model.arch.canonical_size / extent
        tc = _resample(t, f)
        centre = torch.tensor([[(cx + 0.5) * f - 0.5, (cy + 0.5) * f - 0.5]], dtype=torch.float32)
        with torch.inference_mode(), self._threads():
            k = self.model.kernel(tc, centre, torch.tensor([extent * f], dtype=torch.float32))
        return DetectorTemplate(tuple(t.shape[-2:]), (cx, cy, extent), f, k)

    def detect(self, image, template, max_detections: int = 5, min_score: float = 0.0,
               scale: float | None = None) -> list[Detection]:
        """Detections of the template's mark, best first (peaks of the heat map after 3x3 NMS,
        then the pose stage at each peak). ``scale``: the mark's scale when it is known (fixed
        magnification); it also sharpens the centre of marks whose centre is off their ink
        (an L-corner's centre moves with the scale)."""
        if scale is not None and not (scale > 0 and math.isfinite(scale)):
            raise InputError("scale", "a positive scale or None", scale)
        img = ops.as_batch(image, "image")
        prep = template if isinstance(template, DetectorTemplate) else self.prepare(template)
        H, W = img.shape[-2:]
        if prep.shape[0] > H or prep.shape[1] > W:
            raise InputError("template", f"at most the image size {W}x{H} px",
                             f"a template of {prep.shape[1]}x{prep.shape[0]} px")
        ic = _resample(img, prep.factor)
        f = ic.shape[-1] / W
        with torch.inference_mode(), self._threads():
            out = self.model(prep.kernel, ic)
            peaks = heat_peaks(out, max_detections, min_score)[0]
            if not peaks:
                return []
            centre = torch.tensor([[x, y] for _, x, y in peaks], dtype=torch.float32)
            n = len(peaks)
            pose = self.model.pose(out["features"].expand(n, -1, -1, -1), prep.kernel.expand(n, -1, -1, -1),
                                   centre, torch.full((n,), prep.box[2] * prep.factor),
                                   log_scale=None if scale is None else math.log(scale))
        return [Detection((float(c[0]) + 0.5) / f - 0.5, (float(c[1]) + 0.5) / f - 0.5, math.exp(float(ls)),
                          float(a), float(sc))
                for (sc, _, _), a, ls, c in zip(peaks, pose["angle"], pose["log_scale"], pose["centre"],
                                                strict=True)]


def heat_peaks(out: dict, max_detections: int = 5, min_score: float = 0.0) -> list[list[tuple]]:
    """Per batch item, up to ``max_detections`` (score, x, y) heat-map peaks (3x3 NMS), x, y in
    canonical pixels (cell centre + regressed offset)."""
    heat = torch.sigmoid(out["heat"])
    B, h, w = heat.shape
    peaks = heat * (F.max_pool2d(heat[:, None], 3, 1, 1)[:, 0] == heat)
    k = min(max_detections, h * w)
    scores, idx = peaks.reshape(B, -1).topk(k, dim=1)
    res = []
    for b in range(B):
        found = []
        for s, i in zip(scores[b].tolist(), idx[b].tolist(), strict=True):
            if s < min_score or s <= 0:
                continue
            r, c = divmod(i, w)
            found.append((float(s), STRIDE * (c + float(out["offset"][b, 0, r, c])) + (STRIDE - 1) / 2.0,
                          STRIDE * (r + float(out["offset"][b, 1, r, c])) + (STRIDE - 1) / 2.0))
        res.append(found)
    return res


def check_image_pair(image, template) -> None:
    """Raise InputError for arrays the nets cannot take (channel count, sizes)."""
    img = ops.as_batch(image, "image")
    tpl = ops.as_batch(template, "template")
    _check_sizes(img, tpl)


__all__ = ["Detection", "DetectorTemplate", "LearnedDetector", "LearnedRefiner", "RefinerTemplate",
           "check_image_pair", "heat_peaks"]
