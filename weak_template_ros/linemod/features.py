"""LINE-2D / LINE-MOD modalities in PyTorch: quantised orientations, spreading, response maps.

Everything here is a small pure function on tensors, so the same code runs on the CPU and on a
GPU (only the tensor's device differs). The pipeline for one pyramid level is::

    image (C, H, W) --color_gradients--> gx, gy, magnitude of the strongest colour channel
      --quantize_orientations--> (H, W) uint8 bitmask, one bit per orientation bin (0: none)
    depth (H, W)  --depth_normals--> (3, H, W) normals --quantize_normals--> (H, W) bitmask
      --spread(T)--> bitwise OR over a T x T window
      --response_maps(lut)--> (8, H, W) similarity of each of the 8 template bins to the image

Conventions: orientation bins cover [0, pi) in ``N_BINS`` steps of pi / 8 (gradient direction
modulo 180 degrees, so the polarity of an edge does not matter: a part darker or brighter than
its background gives the same bin); bin ``b`` is encoded as the bit ``1 << b``. Normal bins are
the azimuth of the (nx, ny) part of the camera-frame normal in 8 steps of 45 degrees.
"""

from __future__ import annotations

import contextlib
import math

import numpy as np
import torch
import torch.nn.functional as F

from weak_template_ros.errors import InputError, describe_array

#: Number of quantisation bins of both modalities (one byte of bits per pixel).
N_BINS = 8

__all__ = [
    "N_BINS",
    "as_depth_tensor",
    "as_image_tensor",
    "color_gradients",
    "depth_normals",
    "downsample_depth",
    "downsample_image",
    "estimate_noise_sigma",
    "gradient_kernels",
    "gradient_noise_gain",
    "normal_similarity_lut",
    "orientation_similarity_lut",
    "quantize_normals",
    "quantize_orientations",
    "resolve_device",
    "response_maps",
    "spread",
    "torch_threads",
]


@contextlib.contextmanager
def torch_threads(n: int):
    """Run the block with ``n`` torch CPU threads (0: unchanged), restoring the setting after.

    On a loaded machine a parallel region waits for its slowest thread: for the many small
    operations of one frame, 1 thread was measured up to 9x faster than 2 on this 2-core host.
    """
    old = torch.get_num_threads()
    if n > 0 and n != old:
        torch.set_num_threads(n)
    try:
        yield
    finally:
        if n > 0 and n != old:
            torch.set_num_threads(old)


def resolve_device(device: str | torch.device | None) -> torch.device:
    """``"auto"``/None: CUDA when available, else CPU; otherwise the named device."""
    if device is None or device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        return torch.device(device)
    except (RuntimeError, TypeError) as exc:
        raise InputError("device", "'auto', 'cpu', 'cuda' or 'cuda:N'", repr(device)) from exc


# ---------------------------------------------------------------------------------------------
# Input conversion


def as_image_tensor(image, name: str = "rgb", device: torch.device | str = "cpu") -> torch.Tensor:
    """Validate an RGB or grey image and return it as a float32 (C, H, W) tensor in [0, 255].

    Parameters
    ----------
    image : (H, W) or (H, W, 3) array
        uint8, uint16 (scaled by 255/65535) or float in [0, 1].
    name : str
        Name used in error messages.
    device : torch device

    Raises
    ------
    InputError
        Wrong dimensionality, channel count, dtype or an empty image.
    """
    a = np.asarray(image) if not isinstance(image, torch.Tensor) else image.detach().cpu().numpy()
    if a.ndim not in (2, 3) or (a.ndim == 3 and a.shape[2] not in (1, 3)) or min(a.shape[:2]) < 1:
        raise InputError(name, "an (H, W) or (H, W, 3) image", describe_array(a))
    if a.dtype == np.uint8:
        scale = 1.0
    elif a.dtype == np.uint16:
        scale = 255.0 / 65535.0
    elif a.dtype in (np.float32, np.float64):
        scale = 255.0
    else:
        raise InputError(name, "a uint8, uint16 or float image", describe_array(a))
    t = torch.from_numpy(np.ascontiguousarray(a)).to(device)
    # Planar (C, H, W) and contiguous before anything else: every later operation runs along
    # rows of one channel (a channels-last view made them several times slower).
    t = t[None] if t.ndim == 2 else t.permute(2, 0, 1).contiguous()
    t = t.to(torch.float32)
    return t.mul_(scale) if scale != 1.0 else t


def as_depth_tensor(depth, shape: tuple[int, int], name: str = "depth",
                    device: torch.device | str = "cpu") -> torch.Tensor:
    """Validate a depth image (metres, 0/NaN invalid) of ``shape`` -> float32 (H, W), 0 invalid."""
    a = np.asarray(depth) if not isinstance(depth, torch.Tensor) else depth.detach().cpu().numpy()
    if a.ndim != 2 or not np.issubdtype(a.dtype, np.floating):
        raise InputError(name, "an (H, W) float depth image in metres", describe_array(a))
    if a.shape != tuple(shape):
        raise InputError(name, f"the image size {shape[1]}x{shape[0]} (H, W = {tuple(shape)})",
                         describe_array(a))
    a = np.where(np.isfinite(a) & (a > 0), a, 0.0).astype(np.float32)
    return torch.from_numpy(a).to(device)


# ---------------------------------------------------------------------------------------------
# Pyramid


def downsample_image(image: torch.Tensor) -> torch.Tensor:
    """Halve a (C, H, W) image by 2x2 averaging (odd sizes: the last row/column is dropped)."""
    H, W = image.shape[-2] // 2 * 2, image.shape[-1] // 2 * 2
    x = image[..., :H, :W]
    # Strided adds: several times faster than avg_pool2d on the CPU here, same result.
    return (x[..., 0::2, 0::2] + x[..., 1::2, 0::2] + x[..., 0::2, 1::2] + x[..., 1::2, 1::2]) * 0.25


def downsample_depth(depth: torch.Tensor) -> torch.Tensor:
    """Halve an (H, W) depth map by averaging the valid (> 0) pixels of each 2x2 block."""
    valid = (depth > 0).to(depth.dtype)
    s = downsample_image(depth * valid)
    n = downsample_image(valid)
    return s / n.clamp_min(1e-12)  # 0 where no valid pixel (s = 0 there)


# ---------------------------------------------------------------------------------------------
# Gradient modality


def _binomial(order: int) -> np.ndarray:
    k = np.ones(1)
    for _ in range(order):
        k = np.convolve(k, [1.0, 1.0])
    return k / k.sum()


def gradient_kernels(blur_order: int) -> tuple[np.ndarray, np.ndarray]:
    """1-D taps (convolution order) of the gradient filter along and across the derivative.

    The image is smoothed by a binomial filter of order ``blur_order`` (a Gaussian of sigma
    ``sqrt(blur_order) / 2`` px), then differentiated by a central difference and smoothed
    across by [1, 2, 1] / 4: Sobel on a blurred image, normalised to intensity per pixel.
    """
    b = _binomial(blur_order)
    return np.convolve(b, [0.5, 0.0, -0.5]), np.convolve(b, [0.25, 0.5, 0.25])


def gradient_noise_gain(blur_order: int) -> float:
    """Standard deviation of one gradient component per unit of i.i.d. pixel noise.

    Turns an image noise estimate into a gradient-magnitude threshold.
    """
    d, s = gradient_kernels(blur_order)
    return float(np.linalg.norm(d) * np.linalg.norm(s))


def _binomial_pass(x: torch.Tensor, order: int, dim: int) -> torch.Tensor:
    # Repeated pairwise sums (each shortens ``dim`` by one): binomial smoothing by shifted adds,
    # measured 10-50x faster than depthwise conv2d on the CPU here and as fast on a GPU.
    for _ in range(order):
        n = x.shape[dim]
        x = x.narrow(dim, 0, n - 1) + x.narrow(dim, 1, n - 1)
    return x


def color_gradients(image: torch.Tensor, blur_order: int = 4
                    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Gradient of the colour channel with the largest gradient magnitude at each pixel.

    Parameters
    ----------
    image : (C, H, W) float tensor
        Intensities (any scale; thresholds are in the same units per pixel).
    blur_order : int
        Order of the binomial pre-smoothing (see :func:`gradient_kernels`); 0 is plain Sobel.

    Returns
    -------
    gx, gy : (H, W) float tensors
        Gradient (intensity per pixel) along x (columns, right) and y (rows, down); replicated
        borders.
    magnitude : (H, W) float tensor
        ``hypot(gx, gy)``.
    """
    C, H, W = image.shape
    r = blur_order // 2 + 1
    x = F.pad(image[None], (r, r + blur_order % 2, r, r + blur_order % 2), mode="replicate")[0]
    # Along x: binomial smoothing, then the central difference (for gx) or [1, 2, 1] (for gy).
    bx = _binomial_pass(x, blur_order, 2)
    dx_h = bx[:, :, 2:] - bx[:, :, :-2]
    s_h = _binomial_pass(bx, 2, 2)
    by = _binomial_pass(dx_h, blur_order, 1)
    gx = _binomial_pass(by, 2, 1)
    sy = _binomial_pass(s_h, blur_order, 1)
    gy = sy[:, 2:] - sy[:, :-2]
    scale = 0.5 / 4.0 ** (blur_order + 1)  # undo the 2^n gain of the pairwise sums
    gx = gx.mul_(scale)
    gy = gy.mul_(scale)
    mag2 = gx * gx + gy * gy
    if C == 1:
        return gx[0], gy[0], mag2[0].sqrt_()
    # Channel with the largest magnitude (first on ties), by blends: torch.where and
    # masked_fill are ~10x slower than arithmetic on the CPU here.
    best, bgx, bgy = mag2[0], gx[0], gy[0]
    for c in range(1, C):
        take = (mag2[c] > best).to(gx.dtype)
        bgx = bgx + (gx[c] - bgx) * take
        bgy = bgy + (gy[c] - bgy) * take
        best = torch.maximum(best, mag2[c])
    return bgx, bgy, best.sqrt_()


def estimate_noise_sigma(image: torch.Tensor, step: int = 4) -> float:
    """Robust i.i.d. noise standard deviation of a (C, H, W) image, in its intensity units.

    Median of the absolute response to the 3x3 mask of Immerkaer (1996), which cancels linear
    shading; edges are outliers the median ignores. The response to pixel noise of std ``s``
    has std ``6 s``. Evaluated on every ``step``-th pixel of the first channel for speed.
    """
    x = image[0]
    a = x[:-2:step, :-2:step] + x[:-2:step, 2::step] + x[2::step, :-2:step] + x[2::step, 2::step]
    b = x[:-2:step, 1:-1:step] + x[1:-1:step, :-2:step] + x[1:-1:step, 2::step] + x[2::step, 1:-1:step]
    r = a - 2.0 * b + 4.0 * x[1:-1:step, 1:-1:step]
    return float(r.abs().flatten().median()) / (0.6745 * 6.0)


# Nibble-packed 3x3 voting: each pixel holds ``1 << (4 * bin)`` in an int32, so one box sum
# counts all 8 bins at once (a count <= 9 fits in 4 bits). Adding ``8 - vote_min`` to every
# nibble sets its top bit exactly when the count reaches ``vote_min`` (no carries for
# vote_min >= 2), and three shift-or steps gather bits 0, 4, ..., 28 into bits 0..7.
_NIBBLE_ONES = 0x11111111


def _box3_sum(v: torch.Tensor) -> torch.Tensor:
    p = _pad_zero(v, 1)
    H, W = v.shape
    h = p[:, 0:W] + p[:, 1:W + 1] + p[:, 2:W + 2]
    return h[0:H] + h[1:H + 1] + h[2:H + 2]


def _pad_zero(v: torch.Tensor, r: int) -> torch.Tensor:
    H, W = v.shape
    p = torch.zeros((H + 2 * r, W + 2 * r), dtype=v.dtype, device=v.device)
    p[r:r + H, r:r + W] = v
    return p


def quantize_orientations(gx: torch.Tensor, gy: torch.Tensor, magnitude: torch.Tensor,
                          threshold: float, vote_min: int = 5, thin: bool = False) -> torch.Tensor:
    """Quantise gradient orientations into 8 bins with 3x3 neighbourhood voting.

    Every pixel's orientation ``atan2(gy, gx) mod pi`` falls in bin ``floor(angle / (pi/8))``.
    A pixel whose magnitude exceeds ``threshold`` takes the bin that at least ``vote_min`` of
    the 9 pixels of its 3x3 neighbourhood (itself included, whatever their magnitude) fall in;
    otherwise, and below the threshold, it has no orientation (Hinterstoisser et al., PAMI
    2012; OpenCV's ColorGradient). ``vote_min`` >= 5 makes the winner a strict majority.

    With ``thin``, only pixels whose magnitude is a maximum across the edge (along the gradient,
    as in Canny's non-maximum suppression) keep an orientation: edges (silhouettes, creases)
    stay, smooth shading (curved surfaces, whose gradient varies slowly) mostly goes. Measured
    here: spheres and cylinders among the distractors otherwise respond to every template
    orientation and outscore the parts.

    Returns
    -------
    (H, W) uint8 tensor
        ``1 << bin`` where an orientation was kept, 0 elsewhere.
    """
    if not 5 <= vote_min <= 9:
        raise InputError("vote_min", "an integer in [5, 9] (a majority of the 3x3 votes)", vote_min)
    angle = torch.atan2(gy, gx)
    bins = torch.floor(angle * (N_BINS / math.pi)).to(torch.int32).bitwise_and_(N_BINS - 1)
    packed = torch.bitwise_left_shift(torch.ones_like(bins), bins * 4)
    counts = _box3_sum(packed)
    H, W = magnitude.shape
    # Everything below is evaluated only at the pixels above the threshold (a few percent).
    idx = torch.nonzero((magnitude > threshold).reshape(-1)).squeeze(1)
    top = counts.reshape(-1)[idx]
    top = (top + (8 - vote_min) * _NIBBLE_ONES).bitwise_right_shift_(3).bitwise_and_(_NIBBLE_ONES)
    top = (top | (top >> 3)) & 0x03030303
    top = (top | (top >> 6)) & 0x000F000F
    top = (top | (top >> 12)) & 0xFF
    if thin:
        top = top * _across_edge_maximum(magnitude, bins, idx)
    out = torch.zeros(H * W, dtype=torch.uint8, device=magnitude.device)
    out[idx] = top.to(torch.uint8)
    return out.view(H, W)


# Neighbour ahead along the gradient for the 4 directions of _across_edge_maximum: (dy, dx).
_AHEAD = ((0, 1), (1, 1), (1, 0), (1, -1))


def _across_edge_maximum(mag: torch.Tensor, bins: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    """For the flat pixel indices ``idx``: True where ``mag`` is >= its neighbour ahead and >
    its neighbour behind along the gradient (4 directions from the 8 bins); plateaus (linear
    shading) keep nothing. Pixels outside the image count as 0."""
    H, W = mag.shape
    m = _pad_zero(mag, 1).reshape(-1)
    Wp = W + 2
    cls = ((bins.reshape(-1)[idx] + 1) & (N_BINS - 1)) >> 1  # 0: horiz., 1: diag., 2: vert., 3: anti
    step = torch.tensor([dy * Wp + dx for dy, dx in _AHEAD], device=mag.device)[cls]
    centre = (idx // W + 1) * Wp + (idx % W + 1)
    v = m[centre]
    return (v >= m[centre + step]) & (v > m[centre - step])


# ---------------------------------------------------------------------------------------------
# Depth modality


def depth_normals(depth: torch.Tensor, fx: float, fy: float, cx: float, cy: float,
                  step: int = 2, max_jump: float = 0.02) -> torch.Tensor:
    """Camera-frame unit normals of a depth map from central differences of 3-D points.

    Parameters
    ----------
    depth : (H, W) float tensor
        z depth in metres, 0 invalid.
    fx, fy, cx, cy : float
        Intrinsics of this (pyramid level's) image.
    step : int
        Half baseline of the differences, pixels (larger: smoother, blurrier normals).
    max_jump : float
        Relative depth difference (fraction of the depth) across the baseline above which the
        pixel is on a discontinuity and gets no normal.

    Returns
    -------
    (3, H, W) float tensor
        Unit normals facing the camera (n . p < 0); all zeros where invalid.
    """
    H, W = depth.shape
    dev = depth.device
    u = (torch.arange(W, device=dev, dtype=depth.dtype) - cx) / fx
    v = (torch.arange(H, device=dev, dtype=depth.dtype) - cy) / fy
    p = torch.stack([depth * u[None, :], depth * v[:, None], depth])  # (3, H, W)
    pp = F.pad(p[None], (step, step, step, step), mode="replicate")[0]
    zp = F.pad(depth[None, None], (step, step, step, step), mode="constant", value=0.0)[0, 0]
    s2 = 2 * step
    du = pp[:, step:step + H, s2:] - pp[:, step:step + H, :W]
    dv = pp[:, s2:, step:step + W] - pp[:, :H, step:step + W]
    zl, zr = zp[step:step + H, :W], zp[step:step + H, s2:]
    zu, zd = zp[:H, step:step + W], zp[s2:, step:step + W]
    n = torch.cross(du, dv, dim=0)
    norm = (n[0] * n[0] + n[1] * n[1] + n[2] * n[2]).sqrt_()  # 10x faster than norm(dim=0) here
    lim = max_jump * depth
    ok = ((depth > 0) & (zl > 0) & (zr > 0) & (zu > 0) & (zd > 0)
          & ((zr - zl).abs() < lim) & ((zd - zu).abs() < lim) & (norm > 0))
    # Face the camera (n . p < 0), unit length, zero where invalid (arithmetic, not where()).
    sign = 1.0 - 2.0 * ((n * p).sum(0) > 0).to(n.dtype)
    return n * (sign * ok / norm.clamp_min(1e-30))


def quantize_normals(normals: torch.Tensor, min_tilt_deg: float = 10.0) -> torch.Tensor:
    """Quantise camera-frame normals by the azimuth of (nx, ny) into 8 bins of 45 degrees.

    Bin ``b`` covers azimuths ``[b - 0.5, b + 0.5) * 45`` degrees. Normals tilted less than
    ``min_tilt_deg`` from the viewing axis have no stable azimuth and get no bin.

    Returns
    -------
    (H, W) uint8 tensor
        ``1 << bin``, 0 where there is no (valid or tilted enough) normal.
    """
    nx, ny = normals[0], normals[1]
    sin_tilt = torch.sqrt(nx * nx + ny * ny)
    az = torch.atan2(ny, nx)
    bins = torch.floor(az * (N_BINS / (2 * math.pi)) + 0.5).to(torch.int64).remainder_(N_BINS)
    keep = sin_tilt > math.sin(math.radians(min_tilt_deg))
    bits = torch.bitwise_left_shift(torch.ones_like(bins, dtype=torch.uint8), bins.to(torch.uint8))
    return bits * keep


# ---------------------------------------------------------------------------------------------
# Spreading and response maps


def spread(bits: torch.Tensor, T: int) -> torch.Tensor:
    """Bitwise OR of each pixel's T x T neighbourhood (offsets ``-(T//2) .. T-1-T//2``).

    A template feature at offset ``f`` then finds its orientation at anchor ``a`` if the image
    has it anywhere in ``a + f + [-(T//2), T-1-T//2]``: the similarity is tolerant to
    ``T`` pixels of misplacement, which is what lets the matcher evaluate every T-th anchor.
    Pixels outside the image count as 0.

    Parameters
    ----------
    bits : (H, W) uint8 tensor
    T : int, >= 1
    """
    if T <= 1:
        return bits
    H, W = bits.shape
    lo = T // 2
    hi = T - 1 - lo
    p = _pad_zero(bits, 0) if lo == hi == 0 else _pad_asym(bits, lo, hi)
    row = p[:, 0:W].clone()
    for dx in range(1, T):
        row |= p[:, dx:dx + W]
    out = row[0:H].clone()
    for dy in range(1, T):
        out |= row[dy:dy + H]
    return out


def _pad_asym(bits: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    H, W = bits.shape
    p = torch.zeros((H + lo + hi, W + lo + hi), dtype=bits.dtype, device=bits.device)
    p[lo:lo + H, lo:lo + W] = bits
    return p


def orientation_similarity_lut(weights=(1.0, 0.9, 0.0, 0.0, 0.0)) -> torch.Tensor:
    """(8, 256) similarity of each template orientation bin to each spread bitmask.

    ``weights[d]`` is the similarity of two orientation bins ``d`` steps apart (``d`` in 0..4,
    the circular distance modulo 180 degrees); a spread mask scores the best of its bits.
    The default keeps the same and the neighbouring bin (|cos 22.5 deg| = 0.92).
    """
    return _lut(weights, circular=N_BINS)


def normal_similarity_lut(weights=(1.0, 0.7, 0.0, 0.0, 0.0)) -> torch.Tensor:
    """(8, 256) similarity of each template normal bin to each spread normal bitmask.

    ``weights[d]`` for azimuth bins ``d`` steps (of 45 degrees) apart; cos 45 = 0.71.
    """
    return _lut(weights, circular=N_BINS)


def _lut(weights, circular: int) -> torch.Tensor:
    w = np.zeros(circular, dtype=np.float64)
    for b in range(circular):
        d = min(b, circular - b)
        w[b] = weights[d] if d < len(weights) else 0.0
    masks = np.arange(256)
    lut = np.zeros((N_BINS, 256), dtype=np.float32)
    for o in range(N_BINS):
        for b in range(N_BINS):
            has = (masks >> b) & 1
            lut[o] = np.maximum(lut[o], has * w[(b - o) % circular])
    return torch.from_numpy(lut)


def response_maps(bits: torch.Tensor, lut: torch.Tensor, dtype: torch.dtype = torch.float32
                  ) -> torch.Tensor:
    """Similarity of every template bin to every pixel's (spread) bitmask.

    Parameters
    ----------
    bits : (H, W) uint8 tensor
    lut : (8, 256) float tensor
        From :func:`orientation_similarity_lut` or :func:`normal_similarity_lut`.

    Returns
    -------
    (8, H, W) tensor of ``dtype``: ``out[o, y, x] = lut[o, bits[y, x]]``.
    """
    H, W = bits.shape
    table = lut.to(device=bits.device).t().contiguous()  # (256, 8)
    idx = bits.reshape(-1).to(torch.int64)
    if dtype in (torch.float32, torch.float64, torch.float16, torch.bfloat16):
        return F.embedding(idx, table.to(dtype)).t().reshape(N_BINS, H, W)
    return table.to(dtype).index_select(0, idx).t().reshape(N_BINS, H, W)
