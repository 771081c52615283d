"""Fine alignment: robust Gauss–Newton fit of the warped template plus an illumination model.

Model of the image at pixel ``x`` (forward-additive Lucas–Kanade on a pyramid level)::

    I(x) ≈ L(x) (1 + k D(W⁻¹(x; q))),     W(u; q) = e + t + A(q) (u - c)

``D`` is the background-subtracted template, interpolated by the exact-gradient cubic spline of
:mod:`.interp`; ``L`` is a low-order polynomial light field in x, y (gradients, vignetting) that
lights mark and background alike and ``k`` is the mark's contrast (or, as an option,
independent gain and offset polynomials); ``q`` is translation (+ rotation, + scale,
or a full affine matrix). Warping the noise-free template rather
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
    padded: np.ndarray  # B-spline coefficients of D (interp.prepare_spline)
    grad_mask: np.ndarray  # (h, w) bool: where the template has gradient (dilated)
    origin: tuple[float, float]  # reference point (x, y)
    factor: float  # 2**level: level coordinates = level-0 coordinates / factor

    def flat_mask(self, stride: int) -> np.ndarray:
        """One template pixel in stride² (all when stride is 1, none when 0)."""
        m = np.zeros(self.D.shape, bool)
        if stride > 0:
            m[::stride, ::stride] = True
        return m


@dataclass
class FineState:
    """Current estimate at level 0 units: q = (tx, ty, theta, scale) or (tx, ty, a11, a12, a21, a22)."""

    q: np.ndarray
    photo: np.ndarray | None = None  # photometric parameters (re-estimated when None)


@dataclass
class FineResult:
    """Converged fit at one level."""

    q: np.ndarray  # level-0 units
    cov: np.ndarray  # (k, k) covariance of q, level-0 units
    photo: np.ndarray  # photometric parameters
    sigma: float  # robust residual sigma (image units)
    score: float  # partial correlation of the image with the template, in [0, 1]
    n_pixels: int
    iterations: int
    converged: bool
    mark_gain: float  # gain of the template's mark (negative: polarity reversed)
    background: float  # the image's background level at the reference point


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
                  expected: tuple[float, float], flat_stride: int
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Image pixels (x, y int arrays) the fit uses at this level for the current pose, and how
    many template pixels each stands for (1 on edges, flat_stride² on flats).

    Every template pixel with gradient, plus one in ``flat_stride²`` of the flat ones (they carry
    the illumination model), mapped into the image and rounded to the nearest pixel. The choice
    depends on the template and the current pose only, never on the noisy pixel values, so it
    cannot bias the estimate.
    """
    h, w = level.D.shape
    H, W = shape
    vs, us = np.nonzero(level.grad_mask | level.flat_mask(flat_stride))
    A = linear_part(q_level, motion)
    e = np.asarray(expected) + q_level[:2]
    xy = np.rint((np.stack([us, vs], 1) - np.asarray(level.origin)) @ A.T + e).astype(np.int64)
    ok = (xy[:, 0] >= 0) & (xy[:, 0] < W) & (xy[:, 1] >= 0) & (xy[:, 1] < H)
    # Deduplicate (a rotated or scaled grid maps some template pixels onto the same image pixel).
    seen = np.zeros(H * W, bool)
    seen[xy[ok, 1] * W + xy[ok, 0]] = True
    idx = np.flatnonzero(seen)
    xs, ys = idx % W, idx // W
    # Keep the spline stencil inside the template.
    u = (np.stack([xs, ys], 1) - e) @ np.linalg.inv(A).T + np.asarray(level.origin)
    inside = (u[:, 0] >= 1) & (u[:, 0] <= w - 2) & (u[:, 1] >= 1) & (u[:, 1] <= h - 2)
    xs, ys, u = xs[inside], ys[inside], u[inside]
    on_edge = level.grad_mask[np.rint(u[:, 1]).astype(np.int64), np.rint(u[:, 0]).astype(np.int64)]
    density = np.where(on_edge, 1.0, float(max(flat_stride, 1) ** 2))
    return xs, ys, density


def photometric_basis(xs: np.ndarray, ys: np.ndarray, centre: tuple[float, float], radius: float,
                      order: int) -> np.ndarray:
    """(N, m) polynomial basis in normalised coordinates: 1; + x, y; + x², xy, y²; + cubics."""
    xn = (xs - centre[0]) / radius
    yn = (ys - centre[1]) / radius
    cols = [np.ones_like(xn)]
    if order >= 1:
        cols += [xn, yn]
    if order >= 2:
        cols += [xn * xn, xn * yn, yn * yn]
    if order >= 3:
        cols += [xn * xn * xn, xn * xn * yn, xn * yn * yn, yn * yn * yn]
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


class _Photometric:
    """Illumination / contrast model of the fit, linearised for Gauss–Newton.

    ``gain_offset``: ``I = g(x) D + o(x)`` (g, o polynomials), linear in its parameters.
    ``multiplicative``: ``I = L(x) (1 + k D)`` -- one illumination polynomial L lights the mark
    and its background alike (what a lamp does) and k is the mark's contrast. Fewer parameters
    for the same light field, and exact for any light field L can follow. (An extra additive
    offset would be degenerate with L's constant term: only their sum and L k are seen; images
    are expected dark-level corrected, as usual.)
    """

    def __init__(self, kind: str, Pg: np.ndarray, Pb: np.ndarray):
        self.kind, self.Pg, self.Pb = kind, Pg, Pb
        self.ng, self.nb = Pg.shape[1], Pb.shape[1]
        self.n = self.ng + self.nb if kind == "gain_offset" else self.nb + 1

    def init(self, D: np.ndarray, I: np.ndarray, ok: np.ndarray) -> np.ndarray:
        """Parameters from a linear least-squares fit at the current geometry."""
        J0 = np.hstack([self.Pg * D[:, None], self.Pb])[ok]
        sol = np.linalg.solve(J0.T @ J0 + 1e-12 * np.eye(J0.shape[1]), J0.T @ I[ok])
        g, o = sol[: self.ng], sol[self.ng:]
        if self.kind == "gain_offset":
            return sol
        # L = o (the background's light), k = mark gain / background level.
        k = g[0] / o[0] if abs(o[0]) > 1e-12 else 0.0
        return np.concatenate([o, [k]])

    def evaluate(self, p: np.ndarray, D: np.ndarray, out: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(model, per-pixel gain on D); writes the photometric Jacobian columns into ``out``."""
        if self.kind == "gain_offset":
            g = self.Pg @ p[: self.ng]
            np.multiply(self.Pg, D[:, None], out=out[:, : self.ng])
            out[:, self.ng:] = self.Pb
            return g * D + self.Pb @ p[self.ng:], g
        L = self.Pb @ p[: self.nb]
        k = p[self.nb]
        one_kd = 1.0 + k * D
        np.multiply(self.Pb, one_kd[:, None], out=out[:, : self.nb])
        np.multiply(L, D, out=out[:, self.nb])
        return L * one_kd, L * k

    def background(self, p: np.ndarray) -> float:
        """Image background level at the reference point (the light field's constant term)."""
        return float(p[self.ng] if self.kind == "gain_offset" else p[0])

    def mark_gain(self, p: np.ndarray) -> float:
        """Gain of the template's mark at the centre (sign = polarity)."""
        if self.kind == "gain_offset":
            return float(p[0])
        return float(p[0] * p[self.nb])


def refine(image: np.ndarray, level: TemplateLevel, state: FineState, motion: str,
           expected0: tuple[float, float], *, illumination: str = "multiplicative", gain_order: int = 1,
           offset_order: int = 2, robust: str = "tukey", robust_c: float = 5.0, max_iterations: int = 10,
           tolerance: float = 1e-4, flat_stride: int = 2, robust_after: int = 1,
           damping: float = 1e-9, relative_tolerance: float = 0.2) -> FineResult:
    """Robust Gauss–Newton refinement at one pyramid level.

    Parameters
    ----------
    image : (H, W) float32 image at this level
    level : TemplateLevel
    state : FineState
        Start point (level-0 units); photometric parameters are re-estimated if None.
    motion : one of MOTIONS
    expected0 : nominal image position of the template's reference point, level-0 px
    illumination : "multiplicative" | "gain_offset" (see :class:`_Photometric`)
    gain_order, offset_order : polynomial orders of gain (0-2) and offset / light field (0-3)
    robust, robust_c : "none" | "huber" | "tukey" and its threshold in robust sigmas
    max_iterations : Gauss–Newton iterations at most
    tolerance : stop when the largest pixel displacement of the update is below this (level-0 px)
    relative_tolerance : ... or below this fraction of the displacement's standard deviation
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
    xs, ys, density = select_pixels(level, image.shape, q, motion, e, flat_stride)
    photo = _Photometric(illumination, photometric_basis(xs, ys, e, radius, gain_order),
                         photometric_basis(xs, ys, e, radius, offset_order))
    if len(xs) < 4 * (k + photo.n):
        return FineResult(state.q, np.full((k, k), np.inf), np.zeros(photo.n), float("inf"), 0.0,
                          len(xs), 0, False, 0.0, 0.0)
    I = image[ys, xs].astype(np.float64)
    p = state.photo if state.photo is not None and len(state.photo) == photo.n else None
    X = np.stack([xs, ys], 1).astype(np.float64)
    J = np.empty((len(xs), k + photo.n))  # Jacobian: geometry, then photometry
    Jw = np.empty_like(J)
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
        if p is None:
            p = photo.init(D, I, ok)
        model, g = photo.evaluate(p, D, J[:, k:])
        r = I - model
        if robust != "none" and (it > robust_after or it == max_iterations):
            floor = 0.01 * abs(photo.mark_gain(p)) * contrast
            wts = np.zeros(len(I))
            wts[ok], sigma = _robust_weights(r[ok], robust, robust_c, floor)
        else:
            wts = ok.astype(np.float64)
        J[:, :k] = _geometric_columns(np.stack([gx, gy], 1), v, Ainv, q, motion)
        J[:, :k] *= g[:, None]
        np.multiply(J, wts[:, None], out=Jw)
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
        p = p + delta[k:]
        # Largest displacement of a template point caused by the update, in level px.
        move = math.hypot(delta[0], delta[1]) + (float(np.abs(delta[2:k]).sum()) * radius if k > 2 else 0.0)
        # Converged when the step is below the tolerance or a small fraction of the estimate's
        # own standard deviation (further steps cannot change the answer statistically).
        s2 = float((wts * r * r).sum()) / max(float(wts.sum()) - J.shape[1], 1.0)
        try:
            var = s2 * np.diag(np.linalg.inv(Hd))[:k].clip(0.0)
            sd = math.sqrt(var[0] + var[1]) + float(np.sqrt(var[2:]).sum()) * radius
        except np.linalg.LinAlgError:
            sd = 0.0
        if move < max(tolerance / f, relative_tolerance * sd):
            converged = True
            break
    # Covariance and score from the last iteration (its update was below the tolerance, so the
    # Hessian and residuals there are those of the solution to first order).
    if it == 0 or p is None or not np.all(np.isfinite(q)):
        return FineResult(q / to_level, np.full((k, k), np.inf), np.zeros(photo.n), float("inf"), 0.0,
                          len(xs), it, False, 0.0, 0.0)
    dof = max(float(wts.sum()) - J.shape[1], 1.0)
    s2 = float((wts * r * r).sum()) / dof
    try:
        cov_all = np.linalg.inv(Hd) * s2
    except np.linalg.LinAlgError:
        cov_all = np.full(H.shape, np.inf)
    back = 1.0 / to_level
    cov = cov_all[:k, :k] * np.outer(back, back)
    # Score: how much of the image variance left by the illumination polynomial alone the warped
    # template explains (a partial correlation; ~0 on mark-free images, 1 without noise), over
    # the pixels the robust fit kept (glare or a particle must not hide a good match), times the
    # fraction of the template area kept (a wrong pose cannot score well by rejecting the pixels
    # that contradict it). Pixels count for the template area they stand for: edges are all
    # sampled, flats one in flat_stride², and extra structure on the flats must count.
    wk = wts[ok]
    dk = density[ok]
    Pm, Im = photo.Pb[ok], I[ok]
    Pw = Pm * (wk * dk)[:, None]
    rb = Im - Pm @ np.linalg.solve(Pw.T @ Pm + 1e-12 * np.eye(photo.nb), Pw.T @ Im)
    ss0 = float((dk * wk * rb * rb).sum())
    ss1 = float((dk * wk * r[ok] * r[ok]).sum())
    inliers = float(dk[wk > 0].sum()) / max(float(dk.sum()), 1e-30)
    score = math.sqrt(max(0.0, 1.0 - ss1 / ss0)) * inliers if ss0 > 0 else 0.0
    return FineResult(q * back, cov, p, math.sqrt(s2), score, int(ok.sum()), it, converged,
                      photo.mark_gain(p), photo.background(p))
