"""Fine alignment: robust Gauss–Newton fit of the warped template plus an illumination model.

Model of the image at pixel ``x`` (forward-additive Lucas–Kanade on a pyramid level)::

    I(x) ≈ gain(x) * D(W⁻¹(x; q)) + offset(x),     W(u; q) = e + t + A(q) (u - c)

``D`` is the background-subtracted template, interpolated by the exact-gradient cubic of
:mod:`.interp`; ``gain`` and ``offset`` are low-order polynomials in x, y (linear gain, up to
quadratic offset) that absorb illumination gradients, vignetting and contrast changes; ``q`` is
translation (+ rotation, + scale, or a full affine matrix). Warping the noise-free template rather
than the noisy image keeps the image noise white and un-resampled, so at convergence the fit is
the maximum-likelihood estimate under Gaussian noise and its Hessian gives the Cramér–Rao
covariance. Robust (Tukey or Huber) weights are re-computed from a MAD scale every iteration.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from weak_template_ros.align.interp import cubic_sample
from weak_template_ros.align.similarity import rotation_matrix

MOTIONS = ("translation", "euclidean", "similarity", "affine")


@dataclass
class TemplateLevel:
    """One pyramid level of a prepared template (coordinates at that level)."""

    D: np.ndarray  # (h, w) float32, template minus its background
    padded: np.ndarray  # B-spline coefficients (interp.prepare_spline)
    grad_mask: np.ndarray  # (h, w) bool: where the template has gradient (dilated)
    origin: tuple[float, float]  # reference point (x, y)
    factor: float  # 2**level: level coordinates = level-0 coordinates / factor


@dataclass
class FineState:
    """Current estimate at level 0 units: q = (tx, ty, theta, scale) or (tx, ty, a11, a12, a21, a22)."""

    q: np.ndarray
    gain: np.ndarray | None = None
    offset: np.ndarray | None = None


@dataclass
class FineResult:
    """Converged fit at one level."""

    q: np.ndarray  # level-0 units
    cov: np.ndarray  # (k, k) covariance of q, level-0 units
    gain: np.ndarray
    offset: np.ndarray
    sigma: float  # robust residual sigma (image units)
    score: float  # partial correlation of the image with the template, in [0, 1]
    n_pixels: int
    iterations: int
    converged: bool


def n_params(motion: str) -> int:
    return {"translation": 2, "euclidean": 3, "similarity": 4, "affine": 6}[motion]


def linear_part(q: np.ndarray, motion: str) -> np.ndarray:
    """2x2 matrix A(q)."""
    if motion == "translation":
        return np.eye(2)
    if motion == "euclidean":
        return rotation_matrix(q[2])
    if motion == "similarity":
        return q[3] * rotation_matrix(q[2])
    return np.array([[q[2], q[3]], [q[4], q[5]]])


def initial_q(tx: float, ty: float, theta: float, scale: float, motion: str) -> np.ndarray:
    """Parameter vector for a similarity start point."""
    if motion == "affine":
        A = scale * rotation_matrix(theta)
        return np.array([tx, ty, A[0, 0], A[0, 1], A[1, 0], A[1, 1]])
    return np.array([tx, ty, theta, scale])[: n_params(motion)]


def _geometric_columns(G: np.ndarray, v: np.ndarray, Ainv: np.ndarray, q: np.ndarray, motion: str
                       ) -> np.ndarray:
    """d D(W⁻¹(x; q)) / dq at level units. G: template gradient (N, 2), v = A⁻¹(x - e - t)."""
    GA = G @ Ainv  # row i: ∇D^T A^-1
    cols = [-GA[:, 0], -GA[:, 1]]
    if motion in ("euclidean", "similarity"):
        # dv/dtheta = (-v_y, v_x) for A = s R(theta) in the on-screen CCW convention.
        cols.append(-G[:, 0] * v[:, 1] + G[:, 1] * v[:, 0])
    if motion == "similarity":
        cols.append(-(G[:, 0] * v[:, 0] + G[:, 1] * v[:, 1]) / q[3])
    if motion == "affine":
        for i in range(2):
            for j in range(2):
                cols.append(-GA[:, i] * v[:, j])
    return np.stack(cols, axis=1)


def select_pixels(level: TemplateLevel, shape: tuple[int, int], q_level: np.ndarray, motion: str,
                  expected: tuple[float, float], flat_stride: int) -> tuple[np.ndarray, np.ndarray]:
    """Image pixels (x, y int arrays) the fit uses at this level for the current pose.

    Every pixel whose template point has gradient, plus one in ``flat_stride²`` of the flat ones
    (they carry the illumination model). The choice depends on the template only, never on the
    noisy image, so it cannot bias the estimate.
    """
    h, w = level.D.shape
    A = linear_part(q_level, motion)
    c = np.asarray(level.origin)
    e = np.asarray(expected) + q_level[:2]
    corners = np.array([[0, 0], [w - 1, 0], [0, h - 1], [w - 1, h - 1]], float)
    xy = (corners - c) @ A.T + e
    H, W = shape
    x0 = max(int(math.floor(xy[:, 0].min())), 0)
    x1 = min(int(math.ceil(xy[:, 0].max())), W - 1)
    y0 = max(int(math.floor(xy[:, 1].min())), 0)
    y1 = min(int(math.ceil(xy[:, 1].max())), H - 1)
    if x1 < x0 or y1 < y0:
        return np.zeros(0, np.int64), np.zeros(0, np.int64)
    ys, xs = np.mgrid[y0:y1 + 1, x0:x1 + 1]
    xs, ys = xs.ravel(), ys.ravel()
    u = (np.stack([xs, ys], 1) - e) @ np.linalg.inv(A).T + c
    ui, vi = np.rint(u[:, 0]).astype(np.int64), np.rint(u[:, 1]).astype(np.int64)
    # Keep the cubic stencil inside the template (2 px margin).
    inside = (u[:, 0] >= 1) & (u[:, 0] <= w - 2) & (u[:, 1] >= 1) & (u[:, 1] <= h - 2)
    keep = np.zeros_like(inside)
    keep[inside] = level.grad_mask[vi[inside], ui[inside]]
    if flat_stride > 0:
        keep |= inside & (xs % flat_stride == 0) & (ys % flat_stride == 0)
    return xs[keep], ys[keep]


def photometric_basis(xs: np.ndarray, ys: np.ndarray, centre: tuple[float, float], radius: float,
                      order: int) -> np.ndarray:
    """(N, m) polynomial basis in normalised coordinates: order 0: 1; 1: +x, y; 2: +x², xy, y²."""
    xn = (xs - centre[0]) / radius
    yn = (ys - centre[1]) / radius
    cols = [np.ones_like(xn)]
    if order >= 1:
        cols += [xn, yn]
    if order >= 2:
        cols += [xn * xn, xn * yn, yn * yn]
    return np.stack(cols, axis=1)


def _robust_weights(r: np.ndarray, kind: str, c: float, floor: float) -> tuple[np.ndarray, float]:
    sigma = 1.4826 * float(np.median(np.abs(r - np.median(r))))
    # The floor keeps nearly noise-free images from calling the template's own interpolation
    # error (~0.5 % of the contrast at edges) outliers.
    sigma = max(sigma, floor, 1e-12)
    if kind == "none":
        return np.ones_like(r), sigma
    z = np.abs(r) / (c * sigma)
    if kind == "huber":
        return np.minimum(1.0, 1.0 / np.maximum(z, 1e-12)), sigma
    return np.where(z < 1, (1 - z * z) ** 2, 0.0), sigma  # Tukey biweight


def refine(image: np.ndarray, level: TemplateLevel, state: FineState, motion: str,
           expected0: tuple[float, float], *, gain_order: int = 1, offset_order: int = 2,
           robust: str = "tukey", robust_c: float = 5.0, max_iterations: int = 10,
           tolerance: float = 1e-4, flat_stride: int = 2, robust_after: int = 1,
           damping: float = 1e-9) -> FineResult:
    """Robust Gauss–Newton refinement at one pyramid level.

    Parameters
    ----------
    image : (H, W) float32 image at this level
    level : TemplateLevel
    state : FineState
        Start point (level-0 units); photometric parameters are re-estimated if None.
    motion : one of MOTIONS
    expected0 : nominal image position of the template's reference point, level-0 px
    gain_order, offset_order : polynomial orders of the illumination model (0-1, 0-2)
    robust, robust_c : "none" | "huber" | "tukey" and its threshold in robust sigmas
    max_iterations : Gauss–Newton iterations at most
    tolerance : stop when the largest pixel displacement of the update is below this (level-0 px)
    flat_stride : keep one flat pixel in flat_stride² (0: gradient pixels only)
    robust_after : iterations without robust weights first (the start may be far)
    damping : Levenberg–Marquardt factor on the Hessian diagonal (keeps unobservable directions,
        e.g. the rotation of a ring, finite)

    Returns
    -------
    FineResult (q and covariance in level-0 units)
    """
    f = level.factor
    k = n_params(motion)
    to_level = np.ones(k)
    to_level[:2] = 1.0 / f  # translations scale with the level; angles, scale, A do not
    q = state.q * to_level
    e = (expected0[0] / f, expected0[1] / f)
    c = np.asarray(level.origin)
    h, w = level.D.shape
    radius = 0.5 * math.hypot(h, w)
    contrast = float(np.abs(level.D).max())
    xs, ys = select_pixels(level, image.shape, q, motion, e, flat_stride)
    if len(xs) < 4 * (k + 9):
        return FineResult(state.q, np.full((k, k), np.inf), np.zeros(1), np.zeros(1), float("inf"), 0.0,
                          len(xs), 0, False)
    I = image[ys, xs].astype(np.float64)
    Pg = photometric_basis(xs, ys, e, radius, gain_order)
    Pb = photometric_basis(xs, ys, e, radius, offset_order)
    ng, nb = Pg.shape[1], Pb.shape[1]
    gain = state.gain if state.gain is not None and len(state.gain) == ng else None
    offset = state.offset if state.offset is not None and len(state.offset) == nb else None
    X = np.stack([xs, ys], 1).astype(np.float64)
    converged = False
    it = 0
    sigma = float("inf")
    for it in range(1, max_iterations + 1):
        A = linear_part(q, motion)
        Ainv = np.linalg.inv(A)
        v = (X - (e[0] + q[0], e[1] + q[1])) @ Ainv.T
        u = v + c
        ok = (u[:, 0] >= 0) & (u[:, 0] <= w - 1) & (u[:, 1] >= 0) & (u[:, 1] <= h - 1)
        D, gx, gy = cubic_sample(level.padded, u[:, 0], u[:, 1])
        if gain is None or offset is None:
            # Linear illumination fit with the geometry fixed (exact in one step).
            J0 = np.hstack([Pg * D[:, None], Pb])[ok]
            sol = np.linalg.solve(J0.T @ J0 + 1e-12 * np.eye(J0.shape[1]), J0.T @ I[ok])
            gain, offset = sol[:ng], sol[ng:]
        g = Pg @ gain
        r = I - (g * D + Pb @ offset)
        wts = ok.astype(np.float64)
        if robust != "none" and (it > robust_after or it == max_iterations):
            floor = 0.01 * abs(float(gain[0])) * contrast
            wts[ok], sigma = _robust_weights(r[ok], robust, robust_c, floor)
        Jg = _geometric_columns(np.stack([gx, gy], 1), v, Ainv, q, motion) * g[:, None]
        J = np.hstack([Jg, Pg * D[:, None], Pb])
        Jw = J * wts[:, None]
        H = J.T @ Jw
        rhs = Jw.T @ r
        diag = np.diag(H).copy()
        Hd = H + np.diag(damping * diag + 1e-12 * max(float(diag.max()), 1e-30))
        try:
            delta = np.linalg.solve(Hd, rhs)
        except np.linalg.LinAlgError:
            break
        if not np.all(np.isfinite(delta)):
            break
        q = q + delta[:k]
        gain = gain + delta[k:k + ng]
        offset = offset + delta[k + ng:]
        # Largest displacement of a template point caused by the update, in level-0 px.
        move = math.hypot(delta[0], delta[1]) + (float(np.abs(delta[2:k]).sum()) * radius if k > 2 else 0.0)
        if move * f < tolerance:
            converged = True
            break
    # Covariance and score from the last iteration (its update was below the tolerance, so the
    # Hessian and residuals there are those of the solution to first order).
    if it == 0 or not np.all(np.isfinite(q)):
        return FineResult(q / to_level, np.full((k, k), np.inf), np.zeros(ng), np.zeros(nb), float("inf"),
                          0.0, len(xs), it, False)
    dof = max(float(wts.sum()) - J.shape[1], 1.0)
    s2 = float((wts * r * r).sum()) / dof
    try:
        cov_all = np.linalg.inv(Hd) * s2
    except np.linalg.LinAlgError:
        cov_all = np.full(H.shape, np.inf)
    back = 1.0 / to_level
    cov = cov_all[:k, :k] * np.outer(back, back)
    # Score: how much of the image variance left by the illumination polynomial alone the warped
    # template explains (a partial correlation; ~0 on mark-free images, 1 without noise).
    Pm, Im = Pb[ok], I[ok]
    rb = Im - Pm @ np.linalg.solve(Pm.T @ Pm + 1e-12 * np.eye(nb), Pm.T @ Im)
    ss0 = float(rb @ rb)
    ss1 = float(r[ok] @ r[ok])
    score = math.sqrt(max(0.0, 1.0 - ss1 / ss0)) if ss0 > 0 else 0.0
    return FineResult(q * back, cov, gain, offset, math.sqrt(s2), score, int(ok.sum()), it, converged)
