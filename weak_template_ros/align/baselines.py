"""Classical sub-pixel registration methods, wrapped to our sign convention, for side-by-side
benchmarks.

Every function returns a :class:`BaselineResult` whose ``dx, dy`` (px) are where the mark IS
in the image minus where the template puts it (template reference point at ``expected``, default
the image centre), and ``dtheta`` (rad, counter-clockwise on screen) when the method estimates
rotation. ``score`` is each method's own match measure (not comparable across methods).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np

from weak_template_ros.align.preprocess import as_gray_float
from weak_template_ros.align.similarity import similarity_from_linear
from weak_template_ros.errors import InputError, describe_array


@dataclass
class BaselineResult:
    dx: float
    dy: float
    dtheta: float | None
    score: float
    ok: bool = True  # False when the method raised or did not converge (dx, dy = its fallback)


def _inputs(image, template, expected):
    img = as_gray_float(image, "image")
    tpl = as_gray_float(template, "template")
    if tpl.shape[0] > img.shape[0] or tpl.shape[1] > img.shape[1]:
        raise InputError("template", f"at most the image size {img.shape[1]}x{img.shape[0]} px",
                         describe_array(tpl))
    H, W = img.shape
    if expected is None:
        expected = ((W - 1) / 2.0, (H - 1) / 2.0)
    return img, tpl, expected


def template_canvas(template: np.ndarray, shape: tuple[int, int], expected: tuple[float, float]
                    ) -> tuple[np.ndarray, tuple[float, float]]:
    """The template pasted on an image-sized canvas of its border median, its centre at the
    nearest integer placement to ``expected``.

    Returns
    -------
    canvas : (H, W) float32
    residual : (x, y) px still to add to an offset measured against the canvas (the part of the
        placement that could not be an integer shift)
    """
    h, w = template.shape
    H, W = shape
    if (h, w) == (H, W):
        return template, (expected[0] - (W - 1) / 2.0, expected[1] - (H - 1) / 2.0)
    border = np.concatenate([template[0], template[-1], template[:, 0], template[:, -1]])
    canvas = np.full((H, W), np.median(border), np.float32)
    x0 = int(round(expected[0] - (w - 1) / 2.0))
    y0 = int(round(expected[1] - (h - 1) / 2.0))
    xs0, ys0 = max(x0, 0), max(y0, 0)
    xs1, ys1 = min(x0 + w, W), min(y0 + h, H)
    canvas[ys0:ys1, xs0:xs1] = template[ys0 - y0:ys1 - y0, xs0 - x0:xs1 - x0]
    return canvas, (expected[0] - (x0 + (w - 1) / 2.0), expected[1] - (y0 + (h - 1) / 2.0))


def _window(shape):
    return cv2.createHanningWindow((shape[1], shape[0]), cv2.CV_32F)


def cv2_phase_correlate(image, template, expected=None) -> BaselineResult:
    """``cv2.phaseCorrelate`` with mean removal and a Hann window (it multiplies its inputs by the
    window in place, so it gets copies)."""
    img, tpl, expected = _inputs(image, template, expected)
    canvas, res = template_canvas(tpl, img.shape, expected)
    a = (canvas - canvas.mean()).astype(np.float32)
    b = (img - img.mean()).astype(np.float32)
    (sx, sy), response = cv2.phaseCorrelate(a.copy(), b.copy(), _window(img.shape))
    # phaseCorrelate(src1, src2) returns the shift that moves src1 onto src2.
    return BaselineResult(sx + res[0], sy + res[1], None, float(response))


def skimage_phase_cross_correlation(image, template, expected=None, upsample_factor: int = 100,
                                    normalization: str | None = None) -> BaselineResult:
    """scikit-image ``phase_cross_correlation`` (upsampled DFT, mean removed, Hann window).

    It returns the (row, col) shift that registers the moving image onto the reference, i.e. minus
    the mark's offset. ``normalization=None`` is plain cross-correlation (better than phase
    normalisation under noise; pass "phase" for the classical variant).
    """
    from skimage.registration import phase_cross_correlation

    img, tpl, expected = _inputs(image, template, expected)
    canvas, res = template_canvas(tpl, img.shape, expected)
    win = _window(img.shape)
    ref = (canvas - canvas.mean()) * win
    mov = (img - img.mean()) * win
    shift, error, _ = phase_cross_correlation(ref, mov, upsample_factor=upsample_factor,
                                              normalization=normalization)
    return BaselineResult(-float(shift[1]) + res[0], -float(shift[0]) + res[1], None,
                          float(1.0 - error) if np.isfinite(error) else 0.0)


def _support_crop(tpl: np.ndarray, margin: int = 8, threshold: float = 0.02) -> tuple[np.ndarray, int, int]:
    border = np.concatenate([tpl[0], tpl[-1], tpl[:, 0], tpl[:, -1]])
    d = np.abs(tpl - np.median(border))
    ys, xs = np.nonzero(d > threshold * max(float(d.max()), 1e-30))
    if len(xs) == 0:
        return tpl, 0, 0
    x0, y0 = max(int(xs.min()) - margin, 0), max(int(ys.min()) - margin, 0)
    x1, y1 = min(int(xs.max()) + margin + 1, tpl.shape[1]), min(int(ys.max()) + margin + 1, tpl.shape[0])
    return tpl[y0:y1, x0:x1], x0, y0


def _parabola(a: float, b: float, c: float) -> float:
    d = a - 2 * b + c
    return 0.5 * (a - c) / d if d < 0 else 0.0


def blur_match_template(image, template, expected=None, sigma: float = 2.0) -> BaselineResult:
    """Gaussian blur (sigma px) of both, ``cv2.matchTemplate`` (TM_CCOEFF_NORMED) of the template
    cropped to its mark, and a separable 3-point parabola fit at the peak."""
    img, tpl, expected = _inputs(image, template, expected)
    h0, w0 = tpl.shape
    if sigma > 0:
        img = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
        tpl = cv2.GaussianBlur(tpl, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    crop, x0, y0 = _support_crop(tpl)
    res = cv2.matchTemplate(img, crop, cv2.TM_CCOEFF_NORMED)
    _, val, _, (ix, iy) = cv2.minMaxLoc(res)
    fx = _parabola(res[iy, ix - 1], res[iy, ix], res[iy, ix + 1]) if 0 < ix < res.shape[1] - 1 else 0.0
    fy = _parabola(res[iy - 1, ix], res[iy, ix], res[iy + 1, ix]) if 0 < iy < res.shape[0] - 1 else 0.0
    # Crop corner at (ix, iy) puts the template's centre at ix - x0 + (w0 - 1) / 2.
    cx = ix + fx - x0 + (w0 - 1) / 2.0
    cy = iy + fy - y0 + (h0 - 1) / 2.0
    return BaselineResult(cx - expected[0], cy - expected[1], None, float(val))


def ecc(image, template, expected=None, motion: str = "translation", iterations: int = 100,
        eps: float = 1e-5, gauss_filt_size: int = 5) -> BaselineResult:
    """``cv2.findTransformECC`` (MOTION_TRANSLATION or MOTION_EUCLIDEAN), started from the integer
    peak of :func:`blur_match_template` (ECC's capture range is a few px); the start is returned
    with ``ok=False`` when ECC raises (no convergence). Inputs are made zero-mean first: ECC is
    invariant to offsets in theory, but OpenCV's diverged on low-contrast marks on a bright
    background (3 % contrast) in about half the trials."""
    img, tpl, expected = _inputs(image, template, expected)
    canvas, res = template_canvas(tpl, img.shape, expected)
    img = img - np.float32(img.mean())
    canvas = canvas - np.float32(canvas.mean())
    H, W = img.shape
    start = blur_match_template(img, canvas, ((W - 1) / 2.0, (H - 1) / 2.0))
    warp = np.array([[1, 0, round(start.dx)], [0, 1, round(start.dy)]], np.float32)
    mode = {"translation": cv2.MOTION_TRANSLATION, "euclidean": cv2.MOTION_EUCLIDEAN}[motion]
    crit = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, iterations, eps)
    try:
        rho, warp = cv2.findTransformECC(canvas, img, warp, mode, crit, None, gauss_filt_size)
    except cv2.error:
        return BaselineResult(start.dx + res[0], start.dy + res[1], 0.0 if motion != "translation" else None,
                              0.0, ok=False)
    # The warp maps canvas coordinates to image coordinates: the canvas centre goes to A c + t.
    c = np.array([(W - 1) / 2.0, (H - 1) / 2.0])
    A = warp[:, :2].astype(np.float64)
    p = A @ c + warp[:, 2]
    theta = similarity_from_linear(A)[0] if motion != "translation" else None
    return BaselineResult(float(p[0] - c[0]) + res[0], float(p[1] - c[1]) + res[1], theta, float(rho))


BASELINES = {
    "cv2.phaseCorrelate": cv2_phase_correlate,
    "skimage.phase_cross_correlation": skimage_phase_cross_correlation,
    "blur+matchTemplate+parabola": blur_match_template,
    "ECC translation": lambda image, template, expected=None: ecc(image, template, expected, "translation"),
    "ECC euclidean": lambda image, template, expected=None: ecc(image, template, expected, "euclidean"),
}


def angle_error(a: float, b: float) -> float:
    """Wrapped difference a - b of two angles (rad)."""
    return (a - b + math.pi) % (2 * math.pi) - math.pi
