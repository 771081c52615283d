"""Image files in and out: the project's one reader of PNG/TIFF/JPEG images.

OpenCV decodes colour as BGR(A); everything in this project works on RGB, so :func:`read_image`
converts by default. Depth and mask images (one channel, 8/16-bit) come back as stored.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from weak_template_ros.errors import InputError


def read_image(path: str | Path, what: str = "image", rgb: bool = True) -> np.ndarray:
    """Read an image file as OpenCV stores it, colour converted to RGB.

    Parameters
    ----------
    path : str or Path
        PNG, TIFF, JPEG, ... file.
    what : str
        What the image is (``"colour"``, ``"depth"``, ``"template_path"``, ...): names the input in
        errors.
    rgb : bool
        Convert 3/4-channel images from OpenCV's BGR(A) to RGB (alpha dropped). False keeps the
        channels as stored.

    Returns
    -------
    np.ndarray
        (H, W) or (H, W, 3) of the file's dtype (uint8, uint16, float32).

    Raises
    ------
    InputError
        The file is missing or OpenCV cannot decode it.
    """
    path = Path(path)
    where = "" if str(path) in what else f"{path}: "
    if not path.is_file():
        raise InputError(what, "an existing image file", f"{where}no such file")
    img = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
    if img is None:
        raise InputError(what, "a readable image (PNG, TIFF, JPEG, ...)",
                         f"{where}a file OpenCV cannot decode")
    if rgb and img.ndim == 3:
        img = cv2.cvtColor(img, cv2.COLOR_BGRA2RGB if img.shape[2] == 4 else cv2.COLOR_BGR2RGB)
    return img
