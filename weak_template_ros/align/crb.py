"""Cramér–Rao bound of mark alignment from the noise-free rendering's gradients.

For an image ``I(p)`` observed with independent Gaussian noise of per-pixel sigma ``σ_i``, the
Fisher information of the parameters ``p`` is ``J = Σ_i (∂I_i/∂p)(∂I_i/∂p)^T / σ_i²`` and every
unbiased estimator has ``Cov ≥ J⁻¹`` (the CRB). Gradients come from central differences of an
exact renderer (the mark twin's analytic-coverage rendering), so nothing here knows about marks.

Closed forms used to check it (and handy for sizing a mark): :func:`edge_fisher` for a straight
blurred edge and :func:`blob_fisher` for a Gaussian blob.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np
from scipy.special import ndtr

from weak_template_ros.align.similarity import Similarity
from weak_template_ros.errors import InputError

POSE_PARAMS = ("tx", "ty", "theta", "scale")
_DEFAULT_STEPS = {"tx": 0.01, "ty": 0.01, "theta": 1e-4, "scale": 1e-4}


def fisher_information(render: Callable[[np.ndarray], np.ndarray], p: Sequence[float],
                       sigma: float | np.ndarray, steps: Sequence[float]) -> np.ndarray:
    """Fisher information of ``p`` for ``image = render(p) + noise``.

    Parameters
    ----------
    render : callable p -> (H, W) noise-free image (float64)
    p : (k,) parameters at which the bound is evaluated
    sigma : float or (H, W)
        Noise standard deviation per pixel (> 0).
    steps : (k,) central-difference steps (small against the image's features)

    Returns
    -------
    (k, k) information matrix
    """
    p = np.asarray(p, np.float64)
    sig = np.asarray(sigma, np.float64)
    if np.any(sig <= 0) or not np.all(np.isfinite(sig)):
        raise InputError("sigma", "positive finite noise sigma", "zero, negative or non-finite values")
    grads = []
    for i, h in enumerate(steps):
        dp = np.zeros_like(p)
        dp[i] = h
        grads.append(((render(p + dp) - render(p - dp)) / (2 * h) / sig).ravel())
    G = np.stack(grads, axis=1)
    return G.T @ G


def crb(fisher: np.ndarray) -> np.ndarray:
    """The bound ``J⁻¹`` (pseudo-inverse when a direction is unobservable: its variance is inf)."""
    J = np.asarray(fisher, np.float64)
    try:
        out = np.linalg.inv(J)
        if np.all(np.isfinite(out)) and np.all(np.diag(out) >= 0):
            return out
    except np.linalg.LinAlgError:
        pass
    out = np.linalg.pinv(J)
    w, V = np.linalg.eigh(J)
    null = w < 1e-12 * max(float(w.max()), 1e-300)
    for j in np.nonzero(null)[0]:
        m = np.abs(V[:, j]) > 1e-6
        out[np.ix_(m, m)] = np.inf
    return out


def mark_crb(scene, pose: Similarity, params: Sequence[str] = ("tx", "ty", "theta"),
             steps: Sequence[float] | None = None) -> np.ndarray:
    """CRB of ``params`` for a :class:`~weak_template_ros.twin.marks.MarkScene` at ``pose``.

    The noise sigma per pixel is the scene's (Gaussian + shot) model at the noise-free image.

    Returns
    -------
    (k, k) covariance bound in px², px·rad, rad² (order of ``params``)
    """
    for name in params:
        if name not in POSE_PARAMS:
            raise InputError("params", f"names from {POSE_PARAMS}", name)
    base = {"tx": pose.tx, "ty": pose.ty, "theta": pose.theta, "scale": pose.scale}
    if scene.degradations.snr <= 0:
        raise InputError("scene.degradations.snr", "> 0 (the bound needs noise)", scene.degradations.snr)

    def render(p):
        vals = dict(base)
        vals.update(zip(params, p, strict=True))
        return scene.render_clean(Similarity(vals["tx"], vals["ty"], vals["theta"], vals["scale"]))

    sigma = scene.noise_sigma(scene.render_clean(pose))
    st = steps if steps is not None else [_DEFAULT_STEPS[n] for n in params]
    return crb(fisher_information(render, [base[n] for n in params], sigma, st))


def edge_fisher(amplitude: float, blur_sigma: float, length: float, noise_sigma: float) -> float:
    """Information on the normal position of a straight edge, pixel-integrated (fill factor 1)
    and Gaussian-blurred: ``A² L / σ_n² · ∫ (box ⊛ G_σ)²``, the integral in closed form.

    ``∫ (box ⊛ G_σ)² dx = (tri ⊛ G_{σ√2})(0) = 2 [Φ(1/s) - 1/2 - s/√(2π) (1 - exp(-1/(2 s²)))]``
    with ``s = σ√2``. Valid when the pixel sum approximates the integral (σ ≳ 0.7 px) and the
    edge is long against σ.
    """
    s = blur_sigma * math.sqrt(2.0)
    integral = 2.0 * (ndtr(1.0 / s) - 0.5 - s / math.sqrt(2 * math.pi) * (1 - math.exp(-0.5 / (s * s))))
    return amplitude ** 2 * length / noise_sigma ** 2 * float(integral)


def blob_fisher(amplitude: float, noise_sigma: float) -> float:
    """Information on either coordinate of a Gaussian blob ``A exp(-r²/2s²)`` sampled on a pixel
    grid (s ≳ 1 px): ``π A² / (2 σ_n²)``, independent of s."""
    return math.pi * amplitude ** 2 / (2.0 * noise_sigma ** 2)
