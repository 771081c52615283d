"""Cubic B-spline interpolation of an image at arbitrary points, with its exact gradient.

Written here because OpenCV's ``remap`` / ``warpAffine`` quantise sub-pixel positions to 1/32 px
(INTER_BITS = 5): up to 0.016 px of error, more than the Cramér–Rao bound at SNR 20; SciPy's
``map_coordinates`` is exact but gives no derivatives, and the aligner needs value and gradient
of the same interpolant so that its Gauss–Newton Jacobian matches its model. The interpolating
cubic B-spline (SciPy's prefilter, then 4x4 B-spline taps) halves to quarters the error of the
Keys/Catmull-Rom cubic on blurred marks (0.15 % vs 0.4-0.8 % of the contrast at sigma 1 px),
which shows up as a periodic "pixel-locking" bias of the estimate.
"""

from __future__ import annotations

import numpy as np
from scipy import ndimage

PAD = 3


def prepare_spline(image: np.ndarray) -> np.ndarray:
    """B-spline coefficients of ``image`` (mirror boundary), padded by PAD px, float64."""
    padded = np.pad(np.asarray(image, np.float64), PAD, mode="reflect")
    return ndimage.spline_filter(padded, order=3, mode="mirror")


def _weights(f: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Cubic B-spline weights for taps -1, 0, 1, 2 and their derivatives; f (N,) -> (N, 4) each."""
    g = 1.0 - f
    f2 = f * f
    w = np.stack([g * g * g, 3 * f2 * f - 6 * f2 + 4, -3 * f2 * f + 3 * f2 + 3 * f + 1, f2 * f], 1) / 6.0
    dw = np.stack([-3 * g * g, 9 * f2 - 12 * f, -9 * f2 + 6 * f + 3, 3 * f2], 1) / 6.0
    return w, dw


def cubic_sample(coeffs: np.ndarray, x: np.ndarray, y: np.ndarray, gradient: bool = True
                 ) -> tuple[np.ndarray, np.ndarray | None, np.ndarray | None]:
    """Value (and d/dx, d/dy) of the spline at points (x, y) of the unpadded image.

    Parameters
    ----------
    coeffs : output of :func:`prepare_spline`
    x, y : (N,) float
        Points in unpadded pixel coordinates, within 1 px of the image (callers keep them in).
    gradient : bool
        Also return the partial derivatives.

    Returns
    -------
    value, dx, dy : (N,) float64 (dx, dy None when ``gradient`` is False)
    """
    hp, wp = coeffs.shape
    ix = np.floor(x)
    iy = np.floor(y)
    wx, dwx = _weights(x - ix)
    wy, dwy = _weights(y - iy)
    ix = np.clip(ix.astype(np.int64) + PAD - 1, 0, wp - 4)
    iy = np.clip(iy.astype(np.int64) + PAD - 1, 0, hp - 4)
    base = iy * wp + ix
    offs = (np.arange(4)[:, None] * wp + np.arange(4)[None, :]).ravel()
    patch = coeffs.ravel()[base[:, None] + offs].reshape(-1, 4, 4)  # [n, row j, col i]
    rows = np.einsum("nji,ni->nj", patch, wx)
    value = np.einsum("nj,nj->n", rows, wy)
    if not gradient:
        return value, None, None
    gy = np.einsum("nj,nj->n", rows, dwy)
    gx = np.einsum("nj,nj->n", np.einsum("nji,ni->nj", patch, dwx), wy)
    return value, gx, gy

