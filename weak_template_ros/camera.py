"""Pinhole camera intrinsics, projection and depth back-projection.

Pixel convention (OpenCV, BOP): integer coordinates are pixel centres; ``u`` runs along image
columns (x right), ``v`` along rows (y down). Depth is the z coordinate in metres; 0 or NaN means
invalid.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from weak_template_ros.errors import InputError, describe_array


@dataclass(frozen=True)
class CameraIntrinsics:
    """Pinhole intrinsics (pixels) and image size.

    Parameters
    ----------
    fx, fy : float
        Focal lengths in pixels, > 0.
    cx, cy : float
        Principal point in pixels.
    width, height : int
        Image size in pixels, > 0.
    """

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def __post_init__(self):
        for name in ("fx", "fy"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise InputError(f"camera.{name}", "a positive focal length in pixels", v)
        for name in ("cx", "cy"):
            if not math.isfinite(getattr(self, name)):
                raise InputError(f"camera.{name}", "a finite principal point", getattr(self, name))
        for name in ("width", "height"):
            v = getattr(self, name)
            if int(v) != v or v <= 0:
                raise InputError(f"camera.{name}", "a positive integer number of pixels", v)
            object.__setattr__(self, name, int(v))

    @property
    def K(self) -> np.ndarray:
        """3x3 intrinsic matrix."""
        return np.array([[self.fx, 0.0, self.cx], [0.0, self.fy, self.cy], [0.0, 0.0, 1.0]])

    @property
    def shape(self) -> tuple[int, int]:
        """(height, width), the NumPy image shape."""
        return (self.height, self.width)

    @classmethod
    def from_K(cls, K, width: int, height: int) -> CameraIntrinsics:
        """From a 3x3 matrix (or its 9 row-major entries) and the image size."""
        K = np.asarray(K, dtype=np.float64).reshape(-1)
        if K.size != 9:
            raise InputError("cam_K", "9 values (3x3 row-major)", f"{K.size} values")
        K = K.reshape(3, 3)
        if abs(K[0, 1]) > 1e-9 or abs(K[1, 0]) > 1e-9 or not np.allclose(K[2], [0, 0, 1]):
            raise InputError("cam_K", "[[fx,0,cx],[0,fy,cy],[0,0,1]] (no skew)", K.tolist())
        return cls(float(K[0, 0]), float(K[1, 1]), float(K[0, 2]), float(K[1, 2]), width, height)

    @classmethod
    def from_fov(cls, width: int, height: int, fov_x_deg: float) -> CameraIntrinsics:
        """Square pixels, principal point at the image centre, horizontal field of view in degrees."""
        f = 0.5 * width / math.tan(math.radians(fov_x_deg) / 2)
        return cls(f, f, (width - 1) / 2.0, (height - 1) / 2.0, width, height)

    def scaled(self, factor: float) -> CameraIntrinsics:
        """Intrinsics of the image resized by ``factor`` (pixel-centre convention kept)."""
        return CameraIntrinsics(
            self.fx * factor, self.fy * factor,
            (self.cx + 0.5) * factor - 0.5, (self.cy + 0.5) * factor - 0.5,
            round(self.width * factor), round(self.height * factor),
        )

    def check_image(self, image: np.ndarray, name: str = "image") -> None:
        """Raise InputError if ``image`` is not (height, width[, C]) for this camera."""
        shape = getattr(image, "shape", None)
        if shape is None or tuple(shape[:2]) != self.shape:
            raise InputError(name, f"an image of {self.width}x{self.height} (camera size)",
                             describe_array(image))

    def ray_directions(self) -> np.ndarray:
        """Per-pixel ray directions with z = 1, shape (H, W, 3), float32 (camera frame)."""
        u = (np.arange(self.width, dtype=np.float32) - self.cx) / self.fx
        v = (np.arange(self.height, dtype=np.float32) - self.cy) / self.fy
        d = np.empty((self.height, self.width, 3), np.float32)
        d[..., 0] = u[None, :]
        d[..., 1] = v[:, None]
        d[..., 2] = 1.0
        return d


def project(points: np.ndarray, camera: CameraIntrinsics) -> np.ndarray:
    """Project camera-frame points (N, 3) in metres to pixel coordinates (N, 2) (u, v)."""
    p = np.asarray(points, dtype=np.float64)
    z = p[:, 2]
    return np.stack([camera.fx * p[:, 0] / z + camera.cx, camera.fy * p[:, 1] / z + camera.cy], 1)


def backproject(depth: np.ndarray, camera: CameraIntrinsics, mask: np.ndarray | None = None,
                return_pixels: bool = False):
    """Camera-frame 3-D points of the valid depth pixels.

    Parameters
    ----------
    depth : (H, W) float array
        Depth in metres (z); 0 or NaN is invalid.
    camera : CameraIntrinsics
        Intrinsics matching the depth image size.
    mask : (H, W) bool array, optional
        Only pixels where mask is True are used.
    return_pixels : bool
        Also return the (N, 2) integer (u, v) pixel of each point.

    Returns
    -------
    points : (N, 3) float64 array, metres
    pixels : (N, 2) int array, only when ``return_pixels``
    """
    depth = np.asarray(depth)
    if depth.ndim != 2 or not np.issubdtype(depth.dtype, np.floating):
        raise InputError("depth", "a (H, W) float image in metres", describe_array(depth))
    camera.check_image(depth, "depth")
    valid = np.isfinite(depth) & (depth > 0)
    if mask is not None:
        camera.check_image(mask, "mask")
        valid &= mask.astype(bool)
    v, u = np.nonzero(valid)
    z = depth[v, u].astype(np.float64)
    pts = np.stack([(u - camera.cx) * z / camera.fx, (v - camera.cy) * z / camera.fy, z], axis=1)
    if return_pixels:
        return pts, np.stack([u, v], axis=1)
    return pts
