"""Camera-to-stage calibration of an alignment camera: pixels to metres in stage axes."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from weak_template_ros.config import load_yaml, param, validate


@dataclass
class Calibration:
    """Maps an image offset (px, x right / y down) to a stage offset (m)::

        stage = pixel_size * scale * Rot(rotation) @ F @ (dx, dy)

    with ``Rot(a) = [[cos a, -sin a], [sin a, cos a]]`` and ``F = diag(1, -1)`` when ``flip_y``.
    ``flip_y`` (default) is a camera looking down at a z-up stage: image y (down) is stage -y.
    Angles: the image's ``dtheta`` is counter-clockwise on screen; a stage angle is positive from
    stage x towards stage y, so it equals ``dtheta`` with ``flip_y`` and ``-dtheta`` without.
    """

    pixel_size: float = param(1e-6, "object-side pixel size", lo=1e-12, hi=1.0, unit="m/px")
    rotation: float = param(0.0, "camera-to-stage rotation of the image axes", lo=-math.pi, hi=math.pi,
                            unit="rad")
    scale: float = param(1.0, "scale correction on pixel_size", lo=0.5, hi=2.0)
    flip_y: bool = param(True, "stage y axis points opposite to the image y axis")

    def __post_init__(self):
        validate(self)

    def matrix(self) -> np.ndarray:
        """2x2 map from image px to stage metres."""
        c, s = math.cos(self.rotation), math.sin(self.rotation)
        F = np.diag([1.0, -1.0 if self.flip_y else 1.0])
        return self.pixel_size * self.scale * np.array([[c, -s], [s, c]]) @ F

    def to_stage(self, dx: float, dy: float, cov: np.ndarray | None = None
                 ) -> tuple[float, float, np.ndarray | None]:
        """(x_m, y_m, 2x2 covariance in m²) of an image offset and its px² covariance."""
        M = self.matrix()
        x, y = M @ (dx, dy)
        return float(x), float(y), None if cov is None else M @ np.asarray(cov)[:2, :2] @ M.T

    def angle_to_stage(self, dtheta: float) -> float:
        """Stage rotation (rad) equal to an image rotation ``dtheta`` (rad, CCW on screen)."""
        return dtheta if self.flip_y else -dtheta


def load_calibration(path: str | Path) -> Calibration:
    """Read a calibration YAML (keys: pixel_size, rotation, scale, flip_y)."""
    return load_yaml(Calibration, path)
