"""Preprocessing for mark alignment: input checks, flat-field / shade correction, local normalisation.

The fine aligner models smooth illumination itself (a gain and an offset polynomial fitted with
the pose), so these steps matter most for the coarse search and for users who have a flat-field
or a reference background frame.
"""

from __future__ import annotations

import math

import cv2
import numpy as np

from weak_template_ros.errors import InputError, describe_array

_DTYPES = (np.uint8, np.uint16, np.float32, np.float64)


def as_gray_float(image, name: str = "image") -> np.ndarray:
    """Validate an image and return it as (H, W) float32 gray levels.

    Accepts uint8, uint16, float32 or float64, shaped (H, W), (H, W, 1) or (H, W, 3) RGB (luma
    weights 0.299, 0.587, 0.114). Integer images keep their gray levels (no rescaling): the
    aligner is invariant to gain and offset.

    Raises
    ------
    InputError
        Wrong type, dtype or shape, NaN / inf pixels, or fewer than 8x8 pixels.
    """
    if not isinstance(image, np.ndarray):
        raise InputError(name, "a NumPy array (H, W) or (H, W, 3)", type(image).__name__)
    if image.dtype.type not in _DTYPES:
        raise InputError(name, "dtype uint8, uint16, float32 or float64", describe_array(image))
    if image.ndim == 3 and image.shape[2] in (1, 3):
        image = image[..., 0] if image.shape[2] == 1 else (
            image.astype(np.float32) @ np.array([0.299, 0.587, 0.114], np.float32))
    if image.ndim != 2:
        raise InputError(name, "an image of shape (H, W), (H, W, 1) or (H, W, 3)", describe_array(image))
    if image.shape[0] < 8 or image.shape[1] < 8:
        raise InputError(name, "at least 8x8 pixels", describe_array(image))
    out = image.astype(np.float32, copy=False)
    if image.dtype.kind == "f" and not np.all(np.isfinite(out)):
        raise InputError(name, "finite pixel values", f"{int(np.count_nonzero(~np.isfinite(out)))} "
                                                      "NaN/inf pixels")
    return out


def flat_field(image: np.ndarray, flat: np.ndarray, dark: np.ndarray | None = None) -> np.ndarray:
    """Classical flat-field correction ``(image - dark) / (flat - dark) * mean(flat - dark)``.

    Parameters
    ----------
    image, flat : (H, W) arrays
        The frame and a frame of a uniform target under the same light.
    dark : (H, W) array, optional
        Frame with the light off (default: zero).

    Returns
    -------
    (H, W) float32
    """
    img = as_gray_float(image, "image")
    f = as_gray_float(flat, "flat")
    if f.shape != img.shape:
        raise InputError("flat", f"the image's shape {img.shape}", describe_array(f))
    d = np.zeros_like(img) if dark is None else as_gray_float(dark, "dark")
    if d.shape != img.shape:
        raise InputError("dark", f"the image's shape {img.shape}", describe_array(d))
    gain = f - d
    if np.any(gain <= 0):
        raise InputError("flat", "flat - dark > 0 everywhere", f"{int(np.count_nonzero(gain <= 0))} "
                                                                "pixels <= 0")
    return ((img - d) / gain * np.float32(gain.mean())).astype(np.float32)


def subtract_background(image: np.ndarray, background: np.ndarray) -> np.ndarray:
    """Background subtraction against a reference (mark-free or rolling) frame; float32."""
    img = as_gray_float(image, "image")
    bg = as_gray_float(background, "background")
    if bg.shape != img.shape:
        raise InputError("background", f"the image's shape {img.shape}", describe_array(bg))
    return img - bg


class RollingBackground:
    """Exponential moving average of frames: the reference for :func:`subtract_background`.

    On a moving stage the mark moves between frames while dust, fixed-pattern and illumination
    do not, so a slow average keeps the static part.

    Parameters
    ----------
    alpha : float in (0, 1]
        Weight of the newest frame.
    """

    def __init__(self, alpha: float = 0.05):
        if not (0.0 < alpha <= 1.0):
            raise InputError("alpha", "a weight in (0, 1]", alpha)
        self.alpha = float(alpha)
        self.mean: np.ndarray | None = None

    def update(self, image: np.ndarray) -> np.ndarray:
        """Add a frame; returns the current background estimate (float32)."""
        img = as_gray_float(image, "image")
        if self.mean is None or self.mean.shape != img.shape:
            self.mean = img.copy()
        else:
            self.mean += np.float32(self.alpha) * (img - self.mean)
        return self.mean


def shade_correct(image: np.ndarray, sigma: float) -> np.ndarray:
    """Divide by a large-scale illumination estimate (Gaussian of ``sigma`` px, reflect border).

    Use ``sigma`` well above the mark's line width; the result has mean ~1 where light is even.
    """
    img = as_gray_float(image, "image")
    if not (sigma > 0 and math.isfinite(sigma)):
        raise InputError("sigma", "a positive smoothing scale in px", sigma)
    shade = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    scale = np.float32(max(float(np.abs(shade).mean()), 1e-12))
    return img / np.where(np.abs(shade) > 1e-6 * scale, shade, scale)


def local_normalize(image: np.ndarray, sigma: float, bilateral: float = 0.0,
                    eps: float = 1e-6) -> np.ndarray:
    """Local contrast normalisation ``(I - mean_sigma) / std_sigma`` (float32).

    Parameters
    ----------
    image : (H, W)
    sigma : float
        Gaussian scale (px) of the local mean and standard deviation.
    bilateral : float
        If > 0, first smooth with a bilateral filter of this spatial sigma (px): suppresses noise,
        keeps edges. Its range sigma is 2x a robust estimate of the noise.
    eps : float
        Relative floor of the local standard deviation (flat regions stay finite).
    """
    img = as_gray_float(image, "image")
    if bilateral > 0:
        noise = 1.4826 * float(np.median(np.abs(np.diff(img, axis=1)))) / math.sqrt(2)
        img = cv2.bilateralFilter(img, -1, max(2.0 * noise, 1e-6), bilateral)
    mean = cv2.GaussianBlur(img, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    hp = img - mean
    var = cv2.GaussianBlur(hp * hp, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)
    floor = np.float32(eps * max(float(var.mean()), 1e-30))
    return hp / np.sqrt(np.maximum(var, floor))


def highpass(image: np.ndarray, sigma: float) -> np.ndarray:
    """``I - Gaussian_sigma(I)``: removes illumination gradients slower than ``sigma`` px."""
    return image - cv2.GaussianBlur(image, (0, 0), sigma, borderType=cv2.BORDER_REFLECT)


def gradient_magnitude(image: np.ndarray) -> np.ndarray:
    """Edge representation: Scharr gradient magnitude (float32), insensitive to offsets and slow
    shading; useful when the mark's polarity varies across the wafer."""
    img = as_gray_float(image, "image")
    gx = cv2.Scharr(img, cv2.CV_32F, 1, 0) / 32.0
    gy = cv2.Scharr(img, cv2.CV_32F, 0, 1) / 32.0
    return np.sqrt(gx * gx + gy * gy)


def remove_shading(image: np.ndarray, order: int = 2, iterations: int = 3, clip: float = 2.5) -> np.ndarray:
    """Flat-field an image from itself: divide by a robustly fitted 2-D polynomial of ``order``.

    The fit ignores pixels more than ``clip`` robust sigmas from it (the mark, glare, dust), so
    it follows the illumination (gradient, vignetting), not the mark. Returns float32 with the
    background near 1.
    """
    img = as_gray_float(image, "image").astype(np.float64)
    if order not in (0, 1, 2, 3):
        raise InputError("order", "0, 1, 2 or 3", order)
    H, W = img.shape
    xn = (np.arange(W) - (W - 1) / 2) / W
    yn = (np.arange(H) - (H - 1) / 2) / H
    X = np.stack([xn ** a for a in range(order + 1)], 1)  # (W, order+1)
    Y = np.stack([yn ** b for b in range(order + 1)], 1)  # (H, order+1)
    terms = [(a, b) for a in range(order + 1) for b in range(order + 1) if a + b <= order]
    # Fit on a 4x-subsampled grid (plenty for a smooth polynomial).
    Xs, Ys = X[::4], Y[::4]
    P = np.stack([np.outer(Ys[:, b], Xs[:, a]).ravel() for a, b in terms], 1)
    v = img[::4, ::4].ravel()
    keep = np.ones(len(v), bool)
    for _ in range(iterations):
        coef = np.linalg.lstsq(P[keep], v[keep], rcond=None)[0]
        r = v - P @ coef
        s = 1.4826 * float(np.median(np.abs(r[keep] - np.median(r[keep])))) + 1e-30
        keep = np.abs(r) < clip * s
    C = np.zeros((order + 1, order + 1))
    for (a, b), cf in zip(terms, coef, strict=True):
        C[b, a] = cf
    shade = Y @ C @ X.T
    scale = max(float(np.abs(shade).mean()), 1e-30)
    return (img / np.where(np.abs(shade) > 1e-6 * scale, shade, scale)).astype(np.float32)
