"""Pictures people look at: depth colour maps, mask overlays, pose axes, boxes, tiled overviews.

All functions take and return RGB uint8 images (H, W, 3) and never modify their input.
"""

from __future__ import annotations

import cv2
import numpy as np

from weak_template_ros.camera import CameraIntrinsics, project

# Distinct colours (RGB) for instances, from matplotlib's tab10.
PALETTE = np.array([[31, 119, 180], [255, 127, 14], [44, 160, 44], [214, 39, 40], [148, 103, 189],
                    [140, 86, 75], [227, 119, 194], [127, 127, 127], [188, 189, 34], [23, 190, 207]],
                   np.uint8)


def colour(i: int) -> tuple[int, int, int]:
    """Palette colour of instance ``i`` as an (r, g, b) tuple."""
    return tuple(int(c) for c in PALETTE[i % len(PALETTE)])


def depth_colormap(depth: np.ndarray, near: float | None = None, far: float | None = None) -> np.ndarray:
    """Turbo colour map of a depth image in metres; invalid (0/NaN) pixels are black."""
    valid = np.isfinite(depth) & (depth > 0)
    if not valid.any():
        return np.zeros((*depth.shape, 3), np.uint8)
    near = float(np.percentile(depth[valid], 1)) if near is None else near
    far = float(np.percentile(depth[valid], 99)) if far is None else far
    scaled = np.clip((np.nan_to_num(depth) - near) / max(far - near, 1e-9), 0, 1)
    rgb = cv2.applyColorMap((scaled * 255).astype(np.uint8), cv2.COLORMAP_TURBO)[..., ::-1].copy()
    rgb[~valid] = 0
    return rgb


def to_rgb(image: np.ndarray) -> np.ndarray:
    """Grey or RGB image of any numeric dtype to RGB uint8 (min-max scaled if not uint8)."""
    img = np.asarray(image)
    if img.dtype != np.uint8:
        f = img.astype(np.float32)
        lo, hi = np.nanmin(f), np.nanmax(f)
        img = np.clip((f - lo) / max(hi - lo, 1e-9) * 255, 0, 255).astype(np.uint8)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return img.copy()


def overlay_masks(rgb: np.ndarray, masks: list[np.ndarray], alpha: float = 0.45,
                  contour: bool = True) -> np.ndarray:
    """Tint each mask with its palette colour and draw its outline."""
    out = to_rgb(rgb).astype(np.float32)
    for i, m in enumerate(masks):
        m = m.astype(bool)
        out[m] = (1 - alpha) * out[m] + alpha * PALETTE[i % len(PALETTE)]
    out = out.astype(np.uint8)
    if contour:
        for i, m in enumerate(masks):
            cs, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
            cv2.drawContours(out, cs, -1, colour(i), 1, cv2.LINE_AA)
    return out


def draw_axes(rgb: np.ndarray, camera: CameraIntrinsics, T_cam_obj: np.ndarray, length: float,
              thickness: int = 2) -> np.ndarray:
    """Draw the object frame's x (red), y (green), z (blue) axes of ``length`` metres."""
    out = to_rgb(rgb)
    pts = np.array([[0, 0, 0], [length, 0, 0], [0, length, 0], [0, 0, length]], float)
    cam_pts = pts @ T_cam_obj[:3, :3].T + T_cam_obj[:3, 3]
    if np.any(cam_pts[:, 2] <= 0):
        return out
    uv = project(cam_pts, camera)
    o = tuple(round(c) for c in uv[0])
    for k, col in enumerate([(230, 25, 25), (25, 200, 25), (40, 80, 255)]):
        cv2.line(out, o, tuple(round(c) for c in uv[k + 1]), col, thickness, cv2.LINE_AA)
    return out


def draw_box(rgb: np.ndarray, bbox, col=(255, 220, 0), label: str | None = None,
             thickness: int = 2) -> np.ndarray:
    """Draw an (x, y, w, h) box with an optional label."""
    out = to_rgb(rgb)
    x, y, w, h = (round(v) for v in bbox)
    cv2.rectangle(out, (x, y), (x + w, y + h), col, thickness, cv2.LINE_AA)
    if label:
        cv2.putText(out, label, (x, max(y - 4, 10)), cv2.FONT_HERSHEY_SIMPLEX, 0.45, col, 1, cv2.LINE_AA)
    return out


def label(rgb: np.ndarray, text: str) -> np.ndarray:
    """Write ``text`` in the top-left corner on a dark band."""
    out = to_rgb(rgb)
    cv2.rectangle(out, (0, 0), (min(out.shape[1], 9 * len(text) + 8), 20), (0, 0, 0), -1)
    cv2.putText(out, text, (4, 15), cv2.FONT_HERSHEY_SIMPLEX, 0.5, (255, 255, 255), 1, cv2.LINE_AA)
    return out


def tile(images: list[np.ndarray], cols: int, pad: int = 4) -> np.ndarray:
    """Mosaic of equally sized RGB images, ``cols`` per row, separated by ``pad`` white pixels."""
    h, w = images[0].shape[:2]
    rows = -(-len(images) // cols)
    out = np.full((rows * h + (rows - 1) * pad, cols * w + (cols - 1) * pad, 3), 255, np.uint8)
    for k, img in enumerate(images):
        r, c = divmod(k, cols)
        out[r * (h + pad):r * (h + pad) + h, c * (w + pad):c * (w + pad) + w] = to_rgb(img)
    return out


def save_png(path, rgb: np.ndarray) -> None:
    """Write an RGB uint8 image as PNG (OpenCV wants BGR)."""
    cv2.imwrite(str(path), np.ascontiguousarray(to_rgb(rgb)[..., ::-1]))
