"""Coarse search: rotation / scale by a bank of rotated templates, translation by normalised
cross-correlation on a coarse pyramid level, sub-pixel peak by a 2-D quadratic fit."""

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


def ncc_search(image: np.ndarray, bank: list[tuple[float, float, np.ndarray]], centre: tuple[float, float],
               expected: tuple[float, float], max_shift: float) -> CoarseHit | None:
    """Best ZNCC match of a bank of (theta, scale, template) over ``image`` (same pyramid level).

    Parameters
    ----------
    image : (H, W) float32, preprocessed like the templates
    bank : list of (theta, scale, (h, w) float32 template)
    centre : the reference point inside each template (px)
    expected : where the reference point should be in the image (px)
    max_shift : only positions within this distance (px, per axis) of ``expected`` count

    Returns
    -------
    CoarseHit or None when no position is possible.
    """
    best = None
    H, W = image.shape
    for theta, scale, tpl in bank:
        h, w = tpl.shape
        if h > H or w > W:
            continue
        res = cv2.matchTemplate(image, tpl, cv2.TM_CCOEFF_NORMED)
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
