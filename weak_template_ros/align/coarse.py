"""Coarse search: rotation / scale by a bank of rotated templates, translation by correlation on a
coarse pyramid level, sub-pixel peak by a 2-D quadratic fit.

Two correlation measures:

- ``gradient`` (default): correlation of normalised gradient fields, the mean over the
  template's edge points of the cosine between the template's edge direction and the image's
  gradient direction (image gradients divided by sqrt(|g|² + eps²), eps the median gradient
  magnitude, so noise contributes short random vectors). Insensitive to illumination, contrast
  and glare or particles, whose gradients point the wrong ways; two ``cv2.matchTemplate`` calls.
- ``ncc``: zero-mean normalised cross-correlation of high-passed intensities.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np


@dataclass(frozen=True)
class CoarseHit:
    """Best coarse match at the search level: template reference point position (px at that
    level), angle (rad), scale and the ZNCC peak value."""

    x: float
    y: float
    theta: float
    scale: float
    score: float


def quadratic_peak(score: np.ndarray, ix: int, iy: int) -> tuple[float, float]:
    """Sub-pixel peak of a 2-D score map: least-squares quadratic surface on the 3x3 neighbourhood.

    Returns the peak (x, y); falls back to the integer peak at borders or when the surface is not
    a maximum.
    """
    h, w = score.shape
    if not (1 <= ix < w - 1 and 1 <= iy < h - 1):
        return float(ix), float(iy)
    z = score[iy - 1:iy + 2, ix - 1:ix + 2].astype(np.float64)
    # z = a + bx + cy + dx² + exy + fy² on x, y in {-1, 0, 1}: closed-form least squares.
    b = (z[:, 2].sum() - z[:, 0].sum()) / 6.0
    c = (z[2, :].sum() - z[0, :].sum()) / 6.0
    d = (z[:, 0].sum() + z[:, 2].sum()) / 6.0 - z[:, 1].sum() / 3.0
    f = (z[0, :].sum() + z[2, :].sum()) / 6.0 - z[1, :].sum() / 3.0
    e = (z[0, 0] + z[2, 2] - z[0, 2] - z[2, 0]) / 4.0
    det = 4 * d * f - e * e
    if not (d < 0 and det > 0):
        return float(ix), float(iy)
    dx = (e * c - 2 * f * b) / det
    dy = (e * b - 2 * d * c) / det
    if abs(dx) > 1 or abs(dy) > 1:
        return float(ix), float(iy)
    return ix + dx, iy + dy


def angle_grid(max_angle: float, step: float) -> np.ndarray:
    """Symmetric grid of angles in [-max_angle, max_angle] (rad) with spacing <= step, 0 included."""
    if max_angle <= 0 or step <= 0:
        return np.zeros(1)
    n = int(math.ceil(max_angle / step))
    return np.linspace(-n * step, n * step, 2 * n + 1)


def rotated_template(template: np.ndarray, centre: tuple[float, float], theta: float, scale: float
                     ) -> np.ndarray:
    """``template`` rotated by ``theta`` (rad, CCW on screen) and scaled about ``centre``; same
    canvas, zero outside (the template is background-subtracted)."""
    if theta == 0 and scale == 1:
        return template
    M = cv2.getRotationMatrix2D((float(centre[0]), float(centre[1])), math.degrees(theta), scale)
    return cv2.warpAffine(template, M, (template.shape[1], template.shape[0]), flags=cv2.INTER_LINEAR,
                          borderMode=cv2.BORDER_CONSTANT, borderValue=0.0)


def _gradients(img: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    gx = cv2.Sobel(img, cv2.CV_32F, 1, 0, ksize=3, borderType=cv2.BORDER_REFLECT)
    gy = cv2.Sobel(img, cv2.CV_32F, 0, 1, ksize=3, borderType=cv2.BORDER_REFLECT)
    return gx, gy


def image_channels(image: np.ndarray, method: str, highpass_sigma: float) -> list[np.ndarray]:
    """What a coarse template is correlated with: [ux, uy] (gradient) or [high-pass] (ncc)."""
    img = image.astype(np.float32, copy=False)
    if method == "ncc":
        return [img - cv2.GaussianBlur(img, (0, 0), highpass_sigma, borderType=cv2.BORDER_REFLECT)]
    gx, gy = _gradients(img)
    m2 = gx * gx + gy * gy
    eps2 = np.float32(max(float(np.median(m2)), 1e-30))
    inv = 1.0 / np.sqrt(m2 + eps2)
    return [gx * inv, gy * inv]


def template_channels(template: np.ndarray, method: str, highpass_sigma: float,
                      edge_fraction: float = 0.1) -> list[np.ndarray]:
    """Coarse template channels: unit edge directions on the edge points, 0 elsewhere (gradient),
    divided by their count so a perfect match scores 1; or the high-passed template (ncc)."""
    t = template.astype(np.float32, copy=False)
    if method == "ncc":
        return [t - cv2.GaussianBlur(t, (0, 0), highpass_sigma, borderType=cv2.BORDER_REFLECT)]
    gx, gy = _gradients(t)
    m = np.sqrt(gx * gx + gy * gy)
    edge = m > edge_fraction * max(float(m.max()), 1e-30)
    n = max(int(edge.sum()), 1)
    safe = np.where(edge, m, 1.0)
    return [np.where(edge, gx / safe, 0.0).astype(np.float32) / n,
            np.where(edge, gy / safe, 0.0).astype(np.float32) / n]


def search(channels: list[np.ndarray], bank: list[tuple[float, float, list[np.ndarray]]], method: str,
           centre: tuple[float, float], expected: tuple[float, float], max_shift: float,
           polarity_free: bool = False) -> CoarseHit | None:
    """Best match of a bank of (theta, scale, template channels) over the image channels.

    Parameters
    ----------
    channels : from :func:`image_channels` (one pyramid level)
    bank : list of (theta, scale, channels from :func:`template_channels`)
    method : "gradient" | "ncc"
    centre : the reference point inside each template (px)
    expected : where the reference point should be in the image (px)
    max_shift : only positions within this distance (px, per axis) of ``expected`` count
    polarity_free : score |correlation| (marks whose contrast may be reversed)

    Returns
    -------
    CoarseHit or None when no position is possible.
    """
    best = None
    H, W = channels[0].shape
    for theta, scale, tpl in bank:
        h, w = tpl[0].shape
        if h > H or w > W:
            continue
        if method == "ncc":
            res = cv2.matchTemplate(channels[0], tpl[0], cv2.TM_CCOEFF_NORMED)
        else:
            res = (cv2.matchTemplate(channels[0], tpl[0], cv2.TM_CCORR)
                   + cv2.matchTemplate(channels[1], tpl[1], cv2.TM_CCORR))
        if polarity_free:
            res = np.abs(res)
        # Column j puts the reference point at x = j + centre_x.
        x0 = int(math.floor(expected[0] - centre[0] - max_shift))
        x1 = int(math.ceil(expected[0] - centre[0] + max_shift)) + 1
        y0 = int(math.floor(expected[1] - centre[1] - max_shift))
        y1 = int(math.ceil(expected[1] - centre[1] + max_shift)) + 1
        x0, y0 = max(x0, 0), max(y0, 0)
        x1, y1 = min(x1, res.shape[1]), min(y1, res.shape[0])
        if x1 <= x0 or y1 <= y0:
            continue
        win = res[y0:y1, x0:x1]
        win = np.where(np.isfinite(win), win, -1.0)
        iy, ix = np.unravel_index(int(np.argmax(win)), win.shape)
        val = float(win[iy, ix])
        if best is None or val > best.score:
            px, py = quadratic_peak(res, ix + x0, iy + y0)
            best = CoarseHit(px + centre[0], py + centre[1], float(theta), float(scale), val)
    return best
