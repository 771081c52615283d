"""Sub-pixel 2-D alignment of a mark against its golden template: the public entry point.

Three lines from Python::

    from weak_template_ros.align import AlignerConfig, align
    result = align(image, template, AlignerConfig())
    print(result.dx, result.dy, result.dtheta, result.found)

Pipeline: input checks → template preparation (crop to the mark, background removal, pyramid,
rotated/scaled coarse bank; cached in a :class:`PreparedTemplate`) → coarse search (gradient-field
correlation of the bank on a coarse level, quadratic peak) → coarse-to-fine robust Gauss–Newton with
an illumination model (:mod:`.fine`) → offset, covariance, score, found.

Conventions (see :mod:`.similarity`): offsets are where the mark IS minus where the template
says it should be; the template's reference point (default: its centre) should be at the
image's ``expected`` point (default: the image centre). ``dx, dy`` in px (x right, y down),
``dtheta`` in rad counter-clockwise on screen, ``scale`` = mark size / template size.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field

import cv2
import numpy as np

from weak_template_ros.align import coarse as coarse_mod
from weak_template_ros.align import fine as fine_mod
from weak_template_ros.align.calibration import Calibration
from weak_template_ros.align.interp import prepare_spline
from weak_template_ros.align.preprocess import as_gray_float
from weak_template_ros.align.similarity import similarity_from_linear
from weak_template_ros.config import param, validate
from weak_template_ros.errors import InputError, describe_array


@dataclass
class AlignerConfig:
    """Tunables of the mark aligner (same names in YAML, ROS parameters and CLI)."""

    motion: str = param("similarity", "warp estimated by the fine stage", choices=fine_mod.MOTIONS)
    max_shift: float = param(40.0, "capture range: largest offset searched, per axis", lo=0.0, hi=1e5,
                             unit="px")
    max_angle: float = param(0.175, "coarse rotation search range (+-)", lo=0.0, hi=math.pi, unit="rad")
    angle_step: float = param(0.0, "coarse rotation step (0: from the template size)", lo=0.0, hi=1.0,
                              unit="rad")
    max_scale_error: float = param(0.0, "coarse scale search range (+-, relative)", lo=0.0, hi=0.5)
    scale_step: float = param(0.03, "coarse scale step (relative)", lo=0.001, hi=0.5)
    coarse_method: str = param("gradient", "coarse correlation: normalised gradient field (robust to "
                               "light, glare, particles) or zero-mean NCC of high-passed intensity",
                               choices=("gradient", "ncc"))
    min_coarse_size: int = param(24, "coarsest pyramid level keeps the template at least this big",
                                 lo=8, hi=4096, unit="px")
    max_levels: int = param(4, "pyramid levels at most (1: full resolution only)", lo=1, hi=8)
    illumination: str = param("multiplicative", "illumination model: one light-field polynomial "
                              "for mark and background, or independent gain and offset polynomials",
                              choices=("multiplicative", "gain_offset"))
    light_order: int = param(3, "polynomial order of the light field (offset for gain_offset)",
                             lo=0, hi=3)
    gain_order: int = param(1, "gain polynomial order on the mark (gain_offset model)", lo=0, hi=2)
    robust: str = param("tukey", "robust loss of the final level", choices=("none", "huber", "tukey"))
    robust_c: float = param(5.0, "robust threshold in robust sigmas", lo=1.0, hi=100.0)
    intermediate_levels: bool = param(False, "also refine on the pyramid levels between the "
                                      "coarsest and full resolution (slower, for large templates)")
    max_iterations: int = param(15, "Gauss-Newton iterations at full resolution at most", lo=1, hi=200)
    coarse_iterations: int = param(6, "Gauss-Newton iterations per coarse level at most", lo=0, hi=200)
    tolerance: float = param(2e-4, "stop when an update moves the template by less than this",
                             lo=1e-8, hi=1.0, unit="px")
    relative_tolerance: float = param(1.0, "... or by less than this fraction of its own standard "
                                      "deviation (Gauss-Newton contracts ~5x per step here)", lo=0.0, hi=10.0)
    gradient_threshold: float = param(0.05, "template pixels with gradient above this fraction of "
                                      "the maximum are fitted", lo=0.0, hi=1.0)
    flat_stride: int = param(3, "also fit one flat pixel in flat_stride² (illumination)", lo=0, hi=64)
    template_blur: float = param(0.0, "Gaussian blur applied to the template to match the optics",
                                 lo=0.0, hi=20.0, unit="px")
    support_threshold: float = param(0.02, "template pixels differing from the background by this "
                                     "fraction of the mark contrast belong to the mark", lo=0.0, hi=1.0)
    template_margin: int = param(8, "background kept around the mark's bounding box", lo=2, hi=512,
                                 unit="px")
    scale_tolerance: float = param(0.05, "not found if the refined scale is further than this "
                                   "(relative) from the coarse search's", lo=0.0, hi=1.0)
    min_contrast_ratio: float = param(0.2, "not found if the mark's contrast is below this fraction of "
                                      "the template's (light-independent; 0 disables)", lo=0.0, hi=1.0)
    min_coarse_score: float = param(0.45, "not found if the coarse gradient-field correlation is below "
                                    "this (true marks >= 0.6 down to SNR 1; mark-free images with "
                                    "glare <= 0.36)", lo=-1.0, hi=1.0)
    min_score: float = param(0.2, "found only if the match score is at least this", lo=0.0, hi=1.0)
    allow_contrast_reversal: bool = param(False, "accept the mark with inverted polarity")

    def __post_init__(self):
        validate(self)


@dataclass
class PreparedTemplate:
    """A template ready for :func:`align` (depends on the template and the config only)."""

    shape: tuple[int, int]  # original template (h, w)
    origin: tuple[float, float]  # reference point in the original template (x, y)
    levels: list[fine_mod.TemplateLevel]
    bank: list[tuple[float, float, list[np.ndarray]]]  # (theta, scale, coarse channels), top level
    highpass_sigma: float  # at the top level
    config: AlignerConfig
    background: float  # template background level
    contrast: float  # largest |template - background|


@dataclass
class AlignmentResult:
    """Offset of the mark in the image relative to where the template says it should be.

    ``covariance`` is over (dx, dy, dtheta, scale) in px², px·rad, ...; rows of parameters the
    motion model does not estimate are zero. Metric fields are set when a calibration is given.
    """

    found: bool
    dx: float = math.nan
    dy: float = math.nan
    dtheta: float = math.nan
    scale: float = math.nan
    score: float = 0.0
    covariance: np.ndarray = field(default_factory=lambda: np.full((4, 4), np.nan))
    affine: np.ndarray = field(default_factory=lambda: np.full((2, 3), np.nan))
    sigma: float = math.nan  # robust residual noise sigma, image units
    n_pixels: int = 0
    iterations: int = 0
    converged: bool = False
    coarse_score: float = math.nan
    contrast_ratio: float = math.nan  # mark contrast in the image / in the template (1: as designed)
    reason: str = ""
    dx_m: float | None = None
    dy_m: float | None = None
    dtheta_stage: float | None = None
    covariance_m: np.ndarray | None = None

    def to_dict(self) -> dict:
        """JSON-ready dictionary (NaN -> None)."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if isinstance(v, np.ndarray):
                v = [[None if not np.isfinite(x) else float(x) for x in row] for row in np.atleast_2d(v)]
            elif isinstance(v, float) and not math.isfinite(v):
                v = None
            out[f.name] = v
        return out


def _check_config(config: AlignerConfig | None) -> AlignerConfig:
    if config is None:
        return AlignerConfig()
    if not isinstance(config, AlignerConfig):
        raise InputError("config", "an AlignerConfig", type(config).__name__)
    return validate(config)


def unit_levels(image: np.ndarray) -> np.ndarray:
    """``image`` divided by its largest absolute gray level (a pure gain: every output of the
    aligner is gain-invariant).

    Raw 16-bit levels (~4e4) for both image and template made the float32 normal equations of the
    fine stage ill-conditioned (mark gain x template columns against unit-scale offset columns):
    a 0.036-0.046 px bias on 16-bit PNGs whose [0, 1] floats gave 0.002 px.
    """
    peak = float(np.abs(image).max())
    return image / np.float32(peak) if peak > 0 else image


def prepare_template(template: np.ndarray, config: AlignerConfig | None = None,
                     origin: tuple[float, float] | None = None) -> PreparedTemplate:
    """Crop, pyramid and coarse bank of a golden template.

    Parameters
    ----------
    template : (h, w) or (h, w, 3) uint8 / uint16 / float32 / float64
        Golden image of the mark on its background (same polarity and optics as the images).
    config : AlignerConfig
    origin : (x, y), optional
        The template's reference point in px (default: the template centre).

    Raises
    ------
    InputError
        Bad array, constant template, or a mark too small to align.
    """
    cfg = _check_config(config)
    T = unit_levels(as_gray_float(template, "template").astype(np.float32))
    h0, w0 = T.shape
    if origin is None:
        origin = ((w0 - 1) / 2.0, (h0 - 1) / 2.0)
    if cfg.template_blur > 0:
        T = cv2.GaussianBlur(T, (0, 0), cfg.template_blur, borderType=cv2.BORDER_REPLICATE)
    border = np.concatenate([T[0], T[-1], T[1:-1, 0], T[1:-1, -1]])
    background = float(np.median(border))
    D = T - np.float32(background)
    contrast = float(np.abs(D).max())
    if not contrast > 0:
        raise InputError("template", "a template with contrast", "a constant image")
    mask = np.abs(D) > cfg.support_threshold * contrast
    ys, xs = np.nonzero(mask)
    m = cfg.template_margin
    x0, x1 = max(int(xs.min()) - m, 0), min(int(xs.max()) + m + 1, w0)
    y0, y1 = max(int(ys.min()) - m, 0), min(int(ys.max()) + m + 1, h0)
    D = np.ascontiguousarray(D[y0:y1, x0:x1])
    if min(D.shape) < 8:
        raise InputError("template", "a mark of at least 8x8 px", f"a mark of {D.shape[1]}x{D.shape[0]} px")
    c0 = (origin[0] - x0, origin[1] - y0)
    levels = []
    Dl = D
    for lev in range(cfg.max_levels):
        if lev > 0:
            if min(Dl.shape) // 2 < cfg.min_coarse_size:
                break
            Dl = cv2.pyrDown(Dl)
        f = float(2 ** lev)
        gy, gx = np.gradient(Dl.astype(np.float64))
        mag = np.hypot(gx, gy)
        gmask = mag > cfg.gradient_threshold * max(float(mag.max()), 1e-30)
        levels.append(fine_mod.TemplateLevel(Dl, prepare_spline(Dl), gmask, (c0[0] / f, c0[1] / f), f))
    top = levels[-1]
    hp_sigma = 0.25 * max(top.D.shape)
    step = cfg.angle_step or math.atan2(1.5, 0.5 * max(top.D.shape))  # ~1.5 px at the template rim
    angles = coarse_mod.angle_grid(cfg.max_angle, step)
    scales = coarse_mod.angle_grid(cfg.max_scale_error, cfg.scale_step) + 1.0
    bank = []
    for s in scales:
        for a in angles:
            t = coarse_mod.rotated_template(top.D, top.origin, float(a), float(s))
            bank.append((float(a), float(s), coarse_mod.template_channels(t, cfg.coarse_method, hp_sigma)))
    return PreparedTemplate((h0, w0), (float(origin[0]), float(origin[1])), levels, bank, hp_sigma, cfg,
                            background, contrast)


def _full_covariance(q: np.ndarray, cov: np.ndarray, motion: str) -> tuple[float, float, np.ndarray]:
    """(theta, scale, 4x4 covariance over dx, dy, theta, scale) from the motion parameters."""
    k = len(q)
    if motion == "affine":
        A = q[2:].reshape(2, 2)
        theta, scale = similarity_from_linear(A)
        # Jacobian of (theta, scale) w.r.t. the four matrix entries, by central differences.
        Jm = np.zeros((4, k))
        Jm[0, 0] = Jm[1, 1] = 1.0
        for i in range(4):
            dq = np.zeros(4)
            dq[i] = 1e-6
            tp, sp = similarity_from_linear((q[2:] + dq).reshape(2, 2))
            tm, sm = similarity_from_linear((q[2:] - dq).reshape(2, 2))
            Jm[2, 2 + i] = (tp - tm) / 2e-6
            Jm[3, 2 + i] = (sp - sm) / 2e-6
        return theta, scale, Jm @ cov @ Jm.T
    full = np.zeros((4, 4))
    full[:k, :k] = cov
    theta = float(q[2]) if k >= 3 else 0.0
    scale = float(q[3]) if k >= 4 else 1.0
    return theta, scale, full


def align(image: np.ndarray, template: np.ndarray | PreparedTemplate, config: AlignerConfig | None = None,
          expected: tuple[float, float] | None = None, calibration: Calibration | None = None
          ) -> AlignmentResult:
    """Measure the offset of the mark in ``image`` against its golden ``template``.

    Parameters
    ----------
    image : (H, W) or (H, W, 3) uint8 / uint16 / float32 / float64
        The region of interest; no larger than needed (time grows with its area).
    template : array like ``image`` (at most its size) or a PreparedTemplate
        Prepare it once per template (:func:`prepare_template`) to save its cost per frame; a
        PreparedTemplate made with another config than ``config`` is an InputError.
    config : AlignerConfig, default AlignerConfig()
    expected : (x, y), optional
        Where the template's reference point should be in the image (default: image centre).
    calibration : Calibration, optional
        Adds the offset in stage metres (``dx_m``, ``dy_m``, ``covariance_m``, ``dtheta_stage``).

    Returns
    -------
    AlignmentResult (``found`` False with a ``reason`` when the mark is not there)

    Raises
    ------
    InputError
        Bad arrays (dtype, shape, NaN), constant image, template larger than the image.
    """
    cfg = _check_config(config) if config is not None else None
    img = unit_levels(as_gray_float(image, "image"))
    if isinstance(template, PreparedTemplate):
        prep = template
        if cfg is not None and cfg != prep.config:
            raise InputError("template", "a PreparedTemplate made with the same config (prepare it "
                             "again)", "one made with another config")
    else:
        t = template
        if isinstance(t, np.ndarray) and t.ndim >= 2 and (t.shape[0] > img.shape[0]
                                                          or t.shape[1] > img.shape[1]):
            raise InputError("template", f"at most the image size {img.shape[1]}x{img.shape[0]} px",
                             describe_array(t))
        prep = prepare_template(t, cfg)
    cfg = prep.config
    H, W = img.shape
    if prep.shape[0] > H or prep.shape[1] > W:
        raise InputError("template", f"at most the image size {W}x{H} px",
                         f"a template of {prep.shape[1]}x{prep.shape[0]} px")
    if float(img.max()) == float(img.min()):
        raise InputError("image", "an image with contrast", "a constant image")
    if expected is None:
        expected = ((W - 1) / 2.0, (H - 1) / 2.0)
    # Template reference point sits at `expected`; the cropped template's origin follows it.
    nlev = len(prep.levels)
    pyr = [img]
    for _ in range(1, nlev):
        pyr.append(cv2.pyrDown(pyr[-1]))
    top = prep.levels[-1]
    f = top.factor
    hit = coarse_mod.search(coarse_mod.image_channels(pyr[-1], cfg.coarse_method, prep.highpass_sigma),
                            prep.bank, cfg.coarse_method, top.origin, (expected[0] / f, expected[1] / f),
                            cfg.max_shift / f + 1.0, cfg.allow_contrast_reversal)
    if hit is None:
        return AlignmentResult(False, reason="template does not fit in the search window")
    q = fine_mod.initial_q((hit.x - expected[0] / f) * f, (hit.y - expected[1] / f) * f, hit.theta,
                           hit.scale, cfg.motion)
    state = fine_mod.FineState(q)
    res = None
    for li in range(nlev - 1, -1, -1):
        final = li == 0
        iters = cfg.max_iterations if final else cfg.coarse_iterations
        if iters == 0 or (0 < li < nlev - 1 and not cfg.intermediate_levels):
            continue
        res = fine_mod.refine(
            pyr[li], prep.levels[li], state, cfg.motion, expected,
            illumination=cfg.illumination, gain_order=cfg.gain_order, offset_order=cfg.light_order,
            robust=cfg.robust if final else "huber", robust_c=cfg.robust_c if final else 2.0,
            max_iterations=iters, tolerance=cfg.tolerance if final else 0.05 * prep.levels[li].factor,
            flat_stride=cfg.flat_stride if final else 1, relative_tolerance=cfg.relative_tolerance)
        if not np.all(np.isfinite(res.q)):
            return AlignmentResult(False, coarse_score=hit.score, reason="refinement diverged")
        state = fine_mod.FineState(res.q, res.photo)
    q = res.q
    theta, scale, cov = _full_covariance(q, res.cov, cfg.motion)
    A = fine_mod.linear_part(q, cfg.motion)
    # Full warp template px -> image px: x = expected + t + A (u - origin).
    t_abs = np.asarray(expected) + q[:2] - A @ np.asarray(prep.origin)
    out = AlignmentResult(True, float(q[0]), float(q[1]), float(theta), float(scale), res.score, cov,
                          np.hstack([A, t_abs[:, None]]), res.sigma, res.n_pixels, res.iterations,
                          res.converged, hit.score)
    gain0 = res.mark_gain
    if res.background != 0:
        out.contrast_ratio = res.mark_gain * prep.background / res.background
    reasons = []
    if hit.score < cfg.min_coarse_score:
        reasons.append(f"coarse score {hit.score:.3f} < min_coarse_score {cfg.min_coarse_score}")
    if res.score < cfg.min_score:
        reasons.append(f"score {res.score:.3f} < min_score {cfg.min_score}")
    if gain0 <= 0 and not cfg.allow_contrast_reversal:
        reasons.append("mark polarity reversed")
    elif abs(out.contrast_ratio) < cfg.min_contrast_ratio:
        reasons.append(f"mark contrast {abs(out.contrast_ratio):.2f}x the template's < min_contrast_ratio")
    if max(abs(out.dx), abs(out.dy)) > cfg.max_shift + 1.0:
        reasons.append(f"offset beyond max_shift {cfg.max_shift} px")
    # The refinement polishes the coarse match; a long slide means it locked onto something else.
    drift = math.hypot(out.dx - (hit.x - expected[0] / f) * f, out.dy - (hit.y - expected[1] / f) * f)
    if drift > 2.0 * f:
        reasons.append(f"refinement slid {drift:.1f} px from the coarse match")
    if abs(scale / hit.scale - 1.0) > cfg.scale_tolerance:
        reasons.append(f"scale {scale:.3f} beyond the search range")
    if reasons:
        out.found = False
        out.reason = "; ".join(reasons)
    if calibration is not None:
        out.dx_m, out.dy_m, out.covariance_m = calibration.to_stage(out.dx, out.dy, cov[:2, :2])
        out.dtheta_stage = calibration.angle_to_stage(out.dtheta)
    return out
