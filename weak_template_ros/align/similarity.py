"""The one 2-D similarity convention shared by the mark twin, the aligner and the stage twin.

Image coordinates follow OpenCV: pixel centres at integer (x, y), x to the right, y down.

A mark placed in an image by a :class:`Similarity` ``(tx, ty, theta, scale)`` maps mark-local
(or template) coordinates ``u`` (origin at the mark's reference point) to image coordinates::

    x = centre + (tx, ty) + scale * R(theta) @ u,    R(theta) = [[cos, sin], [-sin, cos]]

``theta`` is in radians and positive **counter-clockwise as seen on screen** (y down), which is
the same sign as the ``angle`` of ``cv2.getRotationMatrix2D`` (and as a right-handed rotation
about the optical z axis of a y-up stage). An alignment offset is "where the mark IS minus where
the template says it should be": if the image shows the template shifted by +3 px in x, the
offset is ``tx = +3``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def rotation_matrix(theta: float) -> np.ndarray:
    """2x2 image-frame rotation for an on-screen counter-clockwise angle ``theta`` (rad)."""
    c, s = math.cos(theta), math.sin(theta)
    return np.array([[c, s], [-s, c]])


@dataclass(frozen=True)
class Similarity:
    """Translation (px), rotation (rad, CCW on screen) and isotropic scale of a mark or template.

    Parameters
    ----------
    tx, ty : float
        Translation in pixels (x right, y down).
    theta : float
        Rotation in radians, counter-clockwise on screen.
    scale : float
        Isotropic scale, 1 = nominal size.
    """

    tx: float = 0.0
    ty: float = 0.0
    theta: float = 0.0
    scale: float = 1.0

    def linear(self) -> np.ndarray:
        """2x2 matrix ``scale * R(theta)``."""
        return self.scale * rotation_matrix(self.theta)

    def matrix(self, centre: tuple[float, float] = (0.0, 0.0),
               origin: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """2x3 affine matrix mapping local coordinates to image coordinates.

        ``x = centre + t + A (u - origin)``: ``origin`` is the reference point in the local
        (template) frame, ``centre`` the nominal position of that point in the image.
        """
        A = self.linear()
        t = np.asarray(centre, float) + np.array([self.tx, self.ty]) - A @ np.asarray(origin, float)
        return np.hstack([A, t[:, None]])

    def apply(self, u: np.ndarray, centre: tuple[float, float] = (0.0, 0.0)) -> np.ndarray:
        """Map local points ``u`` (N, 2) to image points (N, 2)."""
        u = np.asarray(u, float).reshape(-1, 2)
        return u @ self.linear().T + np.asarray(centre, float) + np.array([self.tx, self.ty])

    def compose(self, other: Similarity) -> Similarity:
        """``self ∘ other``: apply ``other`` first, then ``self`` (both about the origin)."""
        t = self.linear() @ np.array([other.tx, other.ty]) + np.array([self.tx, self.ty])
        return Similarity(float(t[0]), float(t[1]), self.theta + other.theta,
                          self.scale * other.scale)

    def inverse(self) -> Similarity:
        """The similarity that undoes this one (about the origin)."""
        s = 1.0 / self.scale
        t = -(rotation_matrix(-self.theta) @ (self.tx, self.ty)) * s
        return Similarity(float(t[0]), float(t[1]), -self.theta, s)


def similarity_from_linear(A: np.ndarray) -> tuple[float, float]:
    """(theta, scale) of the nearest similarity to a 2x2 linear map in this convention."""
    A = np.asarray(A, float)
    # A = s [[c, s_], [-s_, c]]: average the two estimates of c and s_ (least squares).
    c = 0.5 * (A[0, 0] + A[1, 1])
    s_ = 0.5 * (A[0, 1] - A[1, 0])
    return math.atan2(s_, c), math.hypot(c, s_)
