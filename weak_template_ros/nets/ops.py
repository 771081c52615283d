"""Differentiable image operations of the nets: batched similarity warps, bilinear/bicubic
sampling at pixel coordinates, RoIAlign-like crops, input normalisation. All in torch, all
differentiable with respect to the images *and* the coordinates.

Coordinates follow :mod:`weak_template_ros.align.similarity`: pixel centres at integer (x, y),
x right, y down; a pose ``p = (tx, ty, theta, log_scale)`` (B, 4) maps template coordinates
``u`` to image coordinates ``x = expected + t + s R(theta) (u - origin)`` with
``R(theta) = [[cos, sin], [-sin, cos]]`` (theta counter-clockwise on screen). Scale is carried as
its logarithm so that a residual update is additive and unconstrained.
"""

from __future__ import annotations

import math

import kornia
import torch
import torch.nn.functional as F

from weak_template_ros.errors import InputError, describe_array


def rotation(theta: torch.Tensor) -> torch.Tensor:
    """(B, 2, 2) image-frame rotations ``[[cos, sin], [-sin, cos]]`` for angles (B,) in rad."""
    c, s = torch.cos(theta), torch.sin(theta)
    return torch.stack([torch.stack([c, s], -1), torch.stack([-s, c], -1)], -2)


def linear(p: torch.Tensor) -> torch.Tensor:
    """(B, 2, 2) linear part ``s R(theta)`` of poses (B, 4)."""
    return torch.exp(p[:, 3])[:, None, None] * rotation(p[:, 2])


def warp_points(p: torch.Tensor, u: torch.Tensor, origin: torch.Tensor, expected: torch.Tensor
                ) -> torch.Tensor:
    """Template points to image points.

    Parameters
    ----------
    p : (B, 4) poses (tx, ty, theta, log_scale)
    u : (N, 2) or (B, N, 2) template coordinates, px
    origin : (2,) or (B, 2) template reference point, px
    expected : (2,) or (B, 2) where the reference point sits at zero offset in the image, px

    Returns
    -------
    (B, N, 2) image coordinates, px
    """
    A = linear(p)
    v = u - origin.reshape(-1, 1, 2) if origin.dim() > 1 else u - origin
    if v.dim() == 2:
        v = v.expand(p.shape[0], -1, -1)
    base = (expected.reshape(-1, 1, 2) if expected.dim() > 1 else expected) + p[:, None, :2]
    return base + torch.einsum("bij,bnj->bni", A, v)


def compose(p: torch.Tensor, d: torch.Tensor) -> torch.Tensor:
    """``p ∘ d``: apply the template-frame update ``d`` first (about the origin), then ``p``."""
    t = p[:, :2] + torch.einsum("bij,bj->bi", linear(p), d[:, :2])
    return torch.cat([t, (p[:, 2] + d[:, 2])[:, None], (p[:, 3] + d[:, 3])[:, None]], 1)


def inverse(d: torch.Tensor) -> torch.Tensor:
    """The pose undoing ``d`` about the origin (``compose(d, inverse(d))`` is the identity)."""
    dinv_lin = torch.exp(-d[:, 3])[:, None, None] * rotation(-d[:, 2])
    t = -torch.einsum("bij,bj->bi", dinv_lin, d[:, :2])
    return torch.cat([t, -d[:, 2:3], -d[:, 3:4]], 1)


def sample(features: torch.Tensor, x: torch.Tensor, mode: str = "bilinear"
           ) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample feature maps at pixel coordinates (differentiable in both).

    Parameters
    ----------
    features : (B, C, H, W)
    x : (B, N, 2) pixel coordinates (x, y)
    mode : "bilinear" or "bicubic"

    Returns
    -------
    values : (B, C, N), zero outside the map
    valid : (B, N) float, 1 where the point lies inside the map
    """
    H, W = features.shape[-2:]
    scale = x.new_tensor([2.0 / max(W - 1, 1), 2.0 / max(H - 1, 1)])
    grid = (x * scale - 1.0)[:, :, None, :]
    v = F.grid_sample(features, grid, mode=mode, padding_mode="zeros", align_corners=True)[..., 0]
    inside = ((x[..., 0] >= 0) & (x[..., 0] <= W - 1) & (x[..., 1] >= 0) & (x[..., 1] <= H - 1))
    return v, inside.to(features.dtype)


def pixel_grid(h: int, w: int, dtype=torch.float32, device=None) -> torch.Tensor:
    """(h*w, 2) pixel coordinates (x, y) of an h x w map, row-major."""
    ys, xs = torch.meshgrid(torch.arange(h, dtype=dtype, device=device),
                            torch.arange(w, dtype=dtype, device=device), indexing="ij")
    return torch.stack([xs.reshape(-1), ys.reshape(-1)], 1)


def crop(features: torch.Tensor, centre: torch.Tensor, size: torch.Tensor, out: int,
         angle: torch.Tensor | None = None, stride: float = 1.0) -> torch.Tensor:
    """RoIAlign-like bilinear crop (there is no CPU torchvision here): an ``out`` x ``out`` grid of
    samples spanning ``size`` input pixels, centred on ``centre``, optionally rotated.

    Parameters
    ----------
    features : (B, C, H, W) maps whose pixel ``j`` covers input pixels ``stride * j`` (a
        strided backbone's output); centre and size are in input pixels
    centre : (B, 2) input-pixel coordinates (x, y) of the crop centre
    size : (B,) side of the crop in input pixels
    out : samples per side
    angle : (B,) rad, optional; the crop's axes turned counter-clockwise on screen

    Returns
    -------
    (B, C, out, out)
    """
    B = features.shape[0]
    k = (torch.arange(out, dtype=features.dtype, device=features.device) - (out - 1) / 2) / out
    gy, gx = torch.meshgrid(k, k, indexing="ij")
    g = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)  # (out², 2) in crop units
    p = torch.zeros(B, 4, dtype=features.dtype, device=features.device)
    p[:, 3] = torch.log(size)
    if angle is not None:
        p = p.clone()
        p[:, 2] = angle
    x = warp_points(p, g, g.new_zeros(2), centre)  # input pixels
    v, _ = sample(features, x / stride)
    return v.reshape(B, -1, out, out)


def gaussian_blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    """Separable Gaussian blur with reflected borders (kornia)."""
    if sigma <= 0:
        return x
    k = 2 * int(math.ceil(3.0 * sigma)) + 1
    k = min(k, 2 * (min(x.shape[-2:]) // 2) - 1)
    return kornia.filters.gaussian_blur2d(x, (k, k), (sigma, sigma), border_type="reflect")


def normalise(x: torch.Tensor, highpass_sigma: float) -> torch.Tensor:
    """Input normalisation: subtract the Gaussian (``highpass_sigma`` px) local mean, which removes
    illumination gradients and the background level, then divide by the RMS of the result.

    The nets downstream are positively homogeneous or fit a gain, so this scale only keeps
    numbers near 1; it carries no information the model needs.
    """
    hp = x - gaussian_blur(x, highpass_sigma)
    rms = torch.sqrt(hp.pow(2).mean(dim=(-2, -1), keepdim=True)).clamp_min(1e-12)
    return hp / rms


def as_batch(image, name: str, min_size: int = 16) -> torch.Tensor:
    """A gray image as a (1, 1, H, W) float32 tensor.

    NumPy input goes through :func:`weak_template_ros.align.preprocess.as_gray_float` (the
    aligner's rules: (H, W), (H, W, 1) or RGB (H, W, 3); uint8/uint16/float); a torch tensor
    must be (H, W) or (1, H, W). Any other channel count is an InputError.
    """
    import numpy as np

    from weak_template_ros.align.preprocess import as_gray_float

    if isinstance(image, np.ndarray):
        t = torch.from_numpy(np.ascontiguousarray(as_gray_float(image, name)))
    elif isinstance(image, torch.Tensor):
        t = image.detach()
        if t.dim() == 3 and t.shape[0] == 1:
            t = t[0]
        if t.dim() != 2:
            raise InputError(name, "a single-channel image (H, W) or (1, H, W)", describe_array(t))
        t = t.to(torch.float32)
        if not bool(torch.isfinite(t).all()):
            raise InputError(name, "finite pixel values", "NaN/inf pixels")
    else:
        raise InputError(name, "a NumPy array (H, W) or (H, W, 3)", type(image).__name__)
    if t.shape[0] < min_size or t.shape[1] < min_size:
        raise InputError(name, f"at least {min_size}x{min_size} pixels", describe_array(t))
    return t[None, None]
