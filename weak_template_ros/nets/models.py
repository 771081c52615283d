"""The two learned models, as torch modules (NumPy-facing wrappers are in :mod:`.infer`).

**Refiner** (:class:`RefinerNet`): a differentiable, iterated Gauss–Newton alignment on learned
features. A small pooling-free CNN maps the normalised template and image to feature maps; the
image features are warped onto the template grid by the current similarity through a spatial
transformer (bilinear / bicubic ``grid_sample``); per-channel photometric gain and offset fields
are fitted in closed form; a damped Gauss–Newton step on the (learned-confidence weighted)
residual gives the residual similarity, composed into the estimate (inverse compositional,
so the Jacobian comes from the noise-free template). Coarse-to-fine over feature-pyramid
levels. Every step is differentiable, so the features are trained end to end through the
solver (as in PixLoc / BA-Net) with the corner loss of the poses it produces. The sandwich
covariance of the last step, scaled by a learned calibration factor, is the uncertainty.

The feature CNN has no biases: it is positively homogeneous (``F(a x) = a F(x)``, a > 0), so the
image's gain never matters and the closed-form gain fit absorbs it exactly.

**Detector** (:class:`DetectorNet`): template-conditioned, in the spirit of template matching
and regression networks. One pooling-free CNN (strided convolutions, stride 4) for template and
image; the template's features are cropped around the mark with a RoIAlign-like bilinear crop
(:func:`.ops.crop`) to a K x K kernel; channel-wise (depthwise) cross-correlation with the image
features; a light head regresses a centre heat map, the sub-cell centre offset, the log scale and
the in-plane angle of the mark.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from weak_template_ros.config import param, validate
from weak_template_ros.nets import ops

MOTIONS = ("translation", "euclidean", "similarity")
_MOTION_DOF = {"translation": (1, 1, 0, 0), "euclidean": (1, 1, 1, 0), "similarity": (1, 1, 1, 1)}


# ---------------------------------------------------------------------------------------------
# Refiner


@dataclass
class RefinerArch:
    """Shape of the refiner (stored in the weight file; a mismatch is a load error)."""

    channels: int = param(16, "hidden channels of the feature CNN", lo=1, hi=256)
    features: int = param(8, "learned feature channels (plus the normalised intensity)", lo=0, hi=256)
    layers: int = param(3, "3x3 convolutions in the feature CNN", lo=1, hi=16)
    highpass_sigma: float = param(16.0, "input normalisation: Gaussian local-mean scale", lo=1.0,
                                  hi=256.0, unit="px")

    def __post_init__(self):
        validate(self)


@dataclass
class SolverConfig:
    """Gauss–Newton schedule of the refiner (not learned; may differ between training and use)."""

    levels: int = param(3, "feature pyramid levels (level l: features 2^l x 2^l averaged)", lo=1, hi=5)
    iterations: tuple = param((3, 3, 3), "Gauss–Newton iterations per level, coarsest first")
    final_mode: str = param("bicubic", "interpolation of the image features at level 0",
                            choices=("bilinear", "bicubic"))
    damping: float = param(1e-3, "Levenberg damping relative to the Hessian diagonal", lo=0.0, hi=10.0)
    photometric_order: int = param(1, "order of the per-channel gain/offset fields (0 or 1)", lo=0, hi=1)
    max_step: float = param(4.0, "largest translation step per iteration, in level pixels", lo=0.1,
                            hi=100.0, unit="px")

    def __post_init__(self):
        self.iterations = tuple(int(n) for n in self.iterations)
        validate(self)
        from weak_template_ros.errors import InputError

        if len(self.iterations) != self.levels or any(n < 0 for n in self.iterations):
            raise InputError("iterations", f"{self.levels} non-negative counts (one per level)",
                             list(self.iterations))


class FeatureNet(nn.Module):
    """Pooling-free, bias-free CNN: normalised gray image (B, 1, H, W) -> (B, 1 + features, H, W).

    Channel 0 is the input itself times a learned gain (the refiner starts as intensity
    Lucas–Kanade and learns what to add); the others are learned. Replicate padding: zero
    padding would draw edges along the image border.
    """

    def __init__(self, channels: int, features: int, layers: int):
        super().__init__()
        mods: list[nn.Module] = []
        c_in = 1
        for i in range(layers if features > 0 else 0):
            c_out = features if i == layers - 1 else channels
            mods.append(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False, padding_mode="replicate"))
            if i < layers - 1:
                mods.append(nn.ReLU(inplace=True))
            c_in = c_out
        self.net = nn.Sequential(*mods) if features > 0 else None
        if self.net is not None:
            # Learned channels start near zero: the untrained refiner is intensity Lucas–Kanade
            # (which already works) and training adds what helps.
            with torch.no_grad():
                self.net[-1].weight.mul_(0.01)
        self.raw_gain = nn.Parameter(torch.ones(1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        raw = self.raw_gain * x
        return raw if self.net is None else torch.cat([raw, self.net(x)], 1)


@dataclass
class TemplateFeatures:
    """Template-side quantities of one pyramid level (computed once per template)."""

    values: torch.Tensor  # (B, C, N) features at the grid points
    grad_x: torch.Tensor  # (B, C, N) their spatial gradient, per level-0 px
    grad_y: torch.Tensor
    weight: torch.Tensor  # (B, N) learned confidence
    points: torch.Tensor  # (N, 2) level-0 template coordinates of the grid points
    warp_jacobian: torch.Tensor  # (B, N, 2, 4) d u / d(tx, ty, theta, log_scale) at the identity
    jacobian_outer: torch.Tensor  # (B, 3 N, 16) Hessian contributions of Sxx, Sxy, Syy per point
    basis: torch.Tensor  # (N, P) photometric basis (1, x, y) at the points
    basis_outer: torch.Tensor  # (N, P * P) its outer products (GEMM-ready)
    factor: float  # 2**level
    shape: tuple[int, int]


class RefinerNet(nn.Module):
    """Learned-feature Gauss–Newton refiner (see the module docstring)."""

    def __init__(self, arch: RefinerArch):
        super().__init__()
        self.arch = arch
        self.features = FeatureNet(arch.channels, arch.features, arch.layers)
        c = 1 + arch.features
        # Confidence of each template pixel from its (scale-normalised) features.
        self.confidence = nn.Conv2d(c, 1, 3, padding=1, padding_mode="replicate")
        nn.init.zeros_(self.confidence.weight)
        nn.init.zeros_(self.confidence.bias)
        # log of the covariance calibration factor (feature residuals are spatially correlated).
        self.log_kappa = nn.Parameter(torch.zeros(1))

    # -- template side ----------------------------------------------------------------------

    def prepare(self, template: torch.Tensor, origin: torch.Tensor, solver: SolverConfig
                ) -> list[TemplateFeatures]:
        """Template features, gradients and confidences per level, finest first.

        template : (B, 1, h, w) raw gray levels (the crop around the mark)
        origin : (B, 2) reference point in the crop, px
        """
        x = ops.normalise(template, self.arch.highpass_sigma)
        feats = self.features(x)
        rms = torch.sqrt(feats.pow(2).mean(dim=(-2, -1), keepdim=True)).clamp_min(1e-12)
        conf = torch.sigmoid(self.confidence(feats / rms))
        out = []
        P = 1 + 2 * solver.photometric_order
        for lev in range(solver.levels):
            f = 2 ** lev
            Fl = feats if lev == 0 else F.avg_pool2d(feats, f)
            Wl = conf if lev == 0 else F.avg_pool2d(conf, f)
            B, C, h, w = Fl.shape
            pad = F.pad(Fl, (1, 1, 1, 1), mode="replicate")
            gx = (pad[..., 1:-1, 2:] - pad[..., 1:-1, :-2]) / (2.0 * f)  # per level-0 px
            gy = (pad[..., 2:, 1:-1] - pad[..., :-2, 1:-1]) / (2.0 * f)
            grid = ops.pixel_grid(h, w, Fl.dtype, Fl.device)
            u0 = f * (grid + 0.5) - 0.5  # level-0 template coordinates
            v = u0[None] - origin[:, None, :]  # (B, N, 2) relative to the reference point
            one, zero = torch.ones_like(v[..., 0]), torch.zeros_like(v[..., 0])
            # d u / d(tx, ty, theta, log s) at the identity: (1,0), (0,1), (v_y, -v_x), (v_x, v_y).
            D = torch.stack([torch.stack([one, zero, v[..., 1], v[..., 0]], -1),
                             torch.stack([zero, one, -v[..., 0], v[..., 1]], -1)], -2)
            span = u0.new_tensor([max(w * f, 1) / 2.0, max(h * f, 1) / 2.0])
            centre = u0.new_tensor([(w * f - 1) / 2.0, (h * f - 1) / 2.0])
            xy = (u0 - centre) / span
            basis = torch.cat([torch.ones_like(xy[:, :1]), xy], 1)[:, :P]
            outer = (basis[:, :, None] * basis[:, None, :]).reshape(len(u0), P * P)
            d0, d1 = D[..., 0, :], D[..., 1, :]
            DD = torch.stack([d0[..., :, None] * d0[..., None, :],
                              d0[..., :, None] * d1[..., None, :] + d1[..., :, None] * d0[..., None, :],
                              d1[..., :, None] * d1[..., None, :]], 1).reshape(B, 3 * len(u0), 16)
            out.append(TemplateFeatures(Fl.reshape(B, C, -1), gx.reshape(B, C, -1), gy.reshape(B, C, -1),
                                        Wl.reshape(B, -1), u0, D, DD, basis, outer, float(f), (h, w)))
        return out

    def image_features(self, image: torch.Tensor, solver: SolverConfig) -> list[torch.Tensor]:
        """Image feature pyramid (finest first) of raw gray images (B, 1, H, W)."""
        feats = self.features(ops.normalise(image, self.arch.highpass_sigma))
        return [feats if lev == 0 else F.avg_pool2d(feats, 2 ** lev) for lev in range(solver.levels)]

    # -- solver -----------------------------------------------------------------------------

    def forward(self, template_levels: list[TemplateFeatures], image_levels: list[torch.Tensor],
                origin: torch.Tensor, expected: torch.Tensor, p0: torch.Tensor, solver: SolverConfig,
                motion: str = "similarity") -> dict:
        """Iterate from ``p0`` (B, 4); returns ``poses`` (list of (B, 4) after every iteration),
        ``pose`` (final), ``covariance`` (B, 4, 4) over (tx, ty, theta, log_scale) in the image
        frame, ``score`` (B,) and the last step's ``residual`` (B, C, N) and ``valid`` (B, N)."""
        dof = p0.new_tensor(_MOTION_DOF[motion])
        p = p0
        poses = []
        last = None
        for lev in range(solver.levels - 1, -1, -1):
            for _ in range(solver.iterations[lev]):
                mode = solver.final_mode if lev == 0 else "bilinear"
                p, last = self._step(template_levels[lev], image_levels[lev], origin, expected, p, dof,
                                     solver, mode)
                poses.append(p)
        if last is None:
            raise ValueError("no iterations")
        cov = self._covariance(last, p, dof)
        return {"poses": poses, "pose": p, "covariance": cov, **last}

    def _step(self, tl: TemplateFeatures, feats: torch.Tensor, origin, expected, p, dof, solver, mode):
        x0 = ops.warp_points(p, tl.points, origin, expected)
        WI, valid = ops.sample(feats, (x0 + 0.5) / tl.factor - 0.5, mode)  # (B, C, N), (B, N)
        w = tl.weight * valid  # (B, N)
        T = tl.values  # (B, C, N)
        B, C, N = T.shape
        P = tl.basis.shape[1]
        # Photometric fit per channel, WI ≈ (a·φ) T + (b·φ), weighted least squares; the normal
        # equations' blocks are GEMMs against the basis' outer products.
        wT = w[:, None, :] * T
        blocks = [(m.reshape(B * C, N) @ tl.basis_outer).reshape(B, C, P, P)
                  for m in (wT * T, wT)]
        b11, b12 = blocks
        b22 = (w @ tl.basis_outer).reshape(B, 1, P, P).expand(B, C, P, P)
        A = torch.cat([torch.cat([b11, b12], -1), torch.cat([b12, b22], -1)], -2)
        eye = torch.eye(2 * P, dtype=A.dtype, device=A.device)
        A = A + (1e-6 * A.diagonal(dim1=-2, dim2=-1).mean(-1)[..., None, None] + 1e-12) * eye
        wI = w[:, None, :] * WI
        rhs = torch.cat([((wI * T).reshape(B * C, N) @ tl.basis).reshape(B, C, P),
                         (wI.reshape(B * C, N) @ tl.basis).reshape(B, C, P)], -1)
        coef = torch.linalg.solve(A, rhs[..., None])[..., 0]  # (B, C, 2P)
        gain = (coef[..., :P].reshape(B * C, P) @ tl.basis.T).reshape(B, C, N)
        offset = (coef[..., P:].reshape(B * C, P) @ tl.basis.T).reshape(B, C, N)
        r = WI - gain * T - offset  # (B, C, N)
        gx, gy = gain * tl.grad_x, gain * tl.grad_y
        # Per-point 2x2 structure tensor S and score vector q summed over channels, then through
        # the warp Jacobian D (2 x 4 per point): H = Σ Dᵀ S D, g = Σ Dᵀ q (as GEMMs).
        S = torch.stack([(gx * gx).sum(1), (gx * gy).sum(1), (gy * gy).sum(1)], 1) * w[:, None, :]
        q = torch.stack([(gx * r).sum(1), (gy * r).sum(1)], -1) * w[..., None]  # (B, N, 2)
        dof2 = dof[:, None] * dof[None, :]
        H = (S.reshape(B, 1, 3 * N) @ tl.jacobian_outer).reshape(B, 4, 4) * dof2
        D = tl.warp_jacobian
        g = (q.reshape(B, 1, 2 * N) @ D.reshape(B, 2 * N, 4)).reshape(B, 4) * dof
        diag = H.diagonal(dim1=-2, dim2=-1)
        scale = diag.mean(-1).clamp_min(1e-12)
        H = H + torch.diag_embed(solver.damping * diag + 1e-9 * scale[:, None] + (1 - dof) * scale[:, None])
        delta = torch.linalg.solve(H, g[..., None])[..., 0] * dof
        lim = solver.max_step * tl.factor
        delta = torch.cat([delta[:, :2].clamp(-lim, lim), delta[:, 2:3].clamp(-0.2, 0.2),
                           delta[:, 3:4].clamp(-0.2, 0.2)], 1)
        # Inverse compositional: the template moved by delta matches the warped image, so the
        # image pose is p ∘ delta⁻¹.
        p_new = ops.compose(p, ops.inverse(delta))
        wsum = w.sum(-1).clamp_min(1e-12)
        mean = (wI.sum(-1) / wsum[:, None])[..., None]
        tss = (w[:, None, :] * (WI - mean).pow(2)).sum((1, 2))
        rss = (w[:, None, :] * r.pow(2)).sum((1, 2))
        score = torch.sqrt((1.0 - rss / tss.clamp_min(1e-12)).clamp(0.0, 1.0))
        return p_new, {"H": H, "q": q, "D": D * dof, "residual": r, "valid": valid, "score": score,
                       "gain": gain}

    def _covariance(self, last: dict, p: torch.Tensor, dof: torch.Tensor) -> torch.Tensor:
        """Sandwich covariance ``H⁻¹ (Σ_n g_n g_nᵀ) H⁻¹`` of the last update (per-point score
        vectors summed over channels), times the learned calibration, mapped to the image frame."""
        gn = torch.einsum("bnik,bni->bnk", last["D"], last["q"])  # (B, N, 4)
        meat = gn.transpose(1, 2) @ gn
        Hi = torch.linalg.inv(last["H"])
        cov_d = torch.exp(self.log_kappa) * (Hi @ meat @ Hi) * (dof[:, None] * dof[None, :])
        # p ∘ d⁻¹: d(tx, ty) = -A d(t), d(theta) = -d(theta), d(log s) = -d(log s) to first order.
        B = p.shape[0]
        M = p.new_zeros(B, 4, 4)
        M[:, :2, :2] = -ops.linear(p)
        M[:, 2, 2] = -1.0
        M[:, 3, 3] = -1.0
        return M @ cov_d @ M.transpose(1, 2)


# ---------------------------------------------------------------------------------------------
# Detector


@dataclass
class DetectorArch:
    """Shape of the detector (stored in the weight file; a mismatch is a load error)."""

    channels: int = param(32, "backbone channels", lo=4, hi=256)
    head_channels: int = param(32, "head channels", lo=4, hi=256)
    kernel: int = param(21, "template kernel side, backbone cells (odd)", lo=3, hi=63)
    canonical_size: float = param(64.0, "the mark's extent after canonical resampling", lo=16.0,
                                  hi=512.0, unit="px")
    crop_factor: float = param(1.25, "template crop side / mark extent", lo=1.0, hi=3.0)
    highpass_sigma: float = param(12.0, "input normalisation: Gaussian local-mean scale at the "
                                  "canonical scale", lo=1.0, hi=256.0, unit="px")
    max_angle: float = param(0.524, "angle bank range (+-)", lo=0.0, hi=math.pi, unit="rad")
    angle_bins: int = param(7, "angles of the bank (odd: 0 included)", lo=1, hi=361)
    max_log_scale: float = param(0.223, "log-scale bank range (+-)", lo=0.0, hi=2.0)
    scale_bins: int = param(5, "scales of the bank (odd: 1 included)", lo=1, hi=101)

    def __post_init__(self):
        validate(self)
        from weak_template_ros.errors import InputError

        for name in ("kernel", "angle_bins", "scale_bins"):
            if getattr(self, name) % 2 == 0:
                raise InputError(name, "an odd number", getattr(self, name))

    def bank(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(angles (A,), log scales (S,)) of the pose bank."""
        return (torch.linspace(-self.max_angle, self.max_angle, self.angle_bins),
                torch.linspace(-self.max_log_scale, self.max_log_scale, self.scale_bins))


STRIDE = 4


class DetectorNet(nn.Module):
    """Template-conditioned detector (see the module docstring). Output maps are at stride 4.

    Two stages: (1) the channel-wise correlation of the template kernel with the image features
    feeds a head that regresses the centre heat map and the sub-cell centre offset; (2) at a
    centre, image features are cropped (RoIAlign-like, :func:`.ops.crop`) rotated and scaled by
    each pose of a bank, compared with the template kernel (cosine similarity), and the angle and
    log scale are the soft-argmax over the bank.
    """

    def __init__(self, arch: DetectorArch):
        super().__init__()
        self.arch = arch
        c = arch.channels
        h = c // 2

        def conv(i, o, s=1, d=1):
            # Group norm: trains from scratch in a few hundred steps; per image, so inference
            # does not depend on the batch.
            return [nn.Conv2d(i, o, 3, stride=s, padding=d, dilation=d, padding_mode="replicate"),
                    nn.GroupNorm(max(o // 8, 1), o), nn.ReLU(inplace=True)]

        # Downsample early (the costly layers run at stride 4), then widen the receptive field.
        self.backbone = nn.Sequential(*conv(1, h), *conv(h, (h + c) // 2, 2), *conv((h + c) // 2, c, 2),
                                      *conv(c, c), nn.Conv2d(c, c, 3, padding=2, dilation=2,
                                                             padding_mode="replicate"))
        hc = arch.head_channels
        self.head = nn.Sequential(nn.Conv2d(c, hc, 3, padding=1), nn.GroupNorm(max(hc // 8, 1), hc),
                                  nn.ReLU(inplace=True), nn.Conv2d(hc, hc, 3, padding=2, dilation=2),
                                  nn.GroupNorm(max(hc // 8, 1), hc), nn.ReLU(inplace=True),
                                  nn.Conv2d(hc, 3, 1))
        # Heat-map prior of 1 % (CenterNet): training starts without a flood of positives.
        nn.init.constant_(self.head[-1].bias, 0.0)
        with torch.no_grad():
            self.head[-1].bias[0] = -math.log(99.0)
        self.response_gain = nn.Parameter(torch.ones(1))
        self.log_temperature = nn.Parameter(torch.tensor(math.log(20.0)))

    def kernel(self, template: torch.Tensor, centre: torch.Tensor, extent: torch.Tensor) -> torch.Tensor:
        """Template kernels (B, C, K, K) from canonical-scale templates (B, 1, h, w), the mark
        centres (B, 2) and extents (B,) in template pixels."""
        ft = self.backbone(ops.normalise(template, self.arch.highpass_sigma))
        # Backbone cell j covers input pixels around STRIDE * j + (STRIDE - 1) / 2.
        c = (centre - (STRIDE - 1) / 2.0)
        return ops.crop(ft, c, extent * self.arch.crop_factor, self.arch.kernel, stride=STRIDE)

    def forward(self, kernel: torch.Tensor, image: torch.Tensor) -> dict:
        """Maps for canonical-scale images (B, 1, H, W): ``heat`` logits (B, H/4, W/4), ``offset``
        (B, 2, H/4, W/4) in cells, and the image ``features`` (for :meth:`pose`)."""
        fi = self.backbone(ops.normalise(image, self.arch.highpass_sigma))
        B, C, h, w = fi.shape
        K = kernel.shape[-1]
        resp = F.conv2d(fi.reshape(1, B * C, h, w), kernel.reshape(B * C, 1, K, K), padding=K // 2,
                        groups=B * C)
        resp = resp.reshape(B, C, h, w) * (self.response_gain / (K * K))
        out = self.head(resp)
        return {"heat": out[:, 0], "offset": out[:, 1:3], "features": fi}

    def _similarities(self, features: torch.Tensor, kernel: torch.Tensor, centre: torch.Tensor,
                      size: torch.Tensor, poses: torch.Tensor) -> torch.Tensor:
        """Cosine similarity (B, J) of the kernel with image-feature crops (RoIAlign-like) of side
        ``size`` (B,) px at ``poses`` (B, J, 4) = (dx, dy, theta, log s) around ``centre`` (B, 2)."""
        B, C = features.shape[:2]
        J = poses.shape[1]
        K = self.arch.kernel
        g = (torch.arange(K, dtype=features.dtype, device=features.device) - (K - 1) / 2) / K
        gy, gx = torch.meshgrid(g, g, indexing="ij")
        grid = torch.stack([gx.reshape(-1), gy.reshape(-1)], 1)  # (K², 2) crop units
        lin = ops.linear(poses.reshape(-1, 4)).reshape(B, J, 2, 2)  # s R(theta)
        c = centre - (STRIDE - 1) / 2.0  # canonical px -> cell-centred px
        x = (c[:, None, None, :] + poses[:, :, None, :2]
             + size[:, None, None, None] * torch.einsum("bjxy,ny->bjnx", lin, grid))
        v, _ = ops.sample(features, x.reshape(B, -1, 2) / STRIDE)  # (B, C, J K²)
        crops = v.reshape(B, C, J, K * K).transpose(1, 2).reshape(B, J, -1)
        k = kernel.reshape(B, 1, -1)
        return (crops * k).sum(-1) / (crops.norm(dim=-1) * k.norm(dim=-1)).clamp_min(1e-9)

    def pose(self, features: torch.Tensor, kernel: torch.Tensor, centre: torch.Tensor,
             extent: torch.Tensor, search: int = 3, log_scale: float | None = None) -> dict:
        """Angle, log scale and refined centre of the mark near ``centre`` (B, 2) canonical px
        (template mark extent ``extent`` (B,) px), by soft-argmax over crops compared with the
        template kernel: the (angle, scale) bank at the centre, then a (2 search + 1)² grid of
        one-cell shifts at that pose, then the bank again at the refined centre.

        Returns ``angle``, ``log_scale`` (B,), ``centre`` (B, 2) and the ``logits`` of the three
        stages (``bank0`` (B, A, S), ``shift`` (B, n, n), ``bank`` (B, A, S)). A known
        ``log_scale`` replaces the scale axis of the bank by that value.
        """
        angles, logs = (t.to(features.device) for t in self.arch.bank())
        if log_scale is not None:
            logs = logs.new_tensor([float(log_scale)])
        A, S = len(angles), len(logs)
        B = features.shape[0]
        size = extent * self.arch.crop_factor
        tau = torch.exp(self.log_temperature)
        zeros = torch.zeros(A * S, device=features.device)
        bank = torch.stack([zeros, zeros, angles[:, None].expand(A, S).reshape(-1),
                            logs[None, :].expand(A, S).reshape(-1)], 1)

        def on_bank(c):
            logit = tau * self._similarities(features, kernel, c, size, bank[None].expand(B, -1, -1))
            p = torch.softmax(logit, -1).reshape(B, A, S)
            return logit.reshape(B, A, S), (p.sum(2) * angles).sum(1), (p.sum(1) * logs).sum(1)

        logit0, a0, s0 = on_bank(centre)
        n = 2 * search + 1
        d = STRIDE * torch.arange(-search, search + 1, dtype=features.dtype, device=features.device)
        dy, dx = torch.meshgrid(d, d, indexing="ij")
        shifts = torch.stack([dx.reshape(-1), dy.reshape(-1)], 1)  # (n², 2) px
        poses = torch.cat([shifts[None].expand(B, -1, -1), a0[:, None, None].expand(B, n * n, 1),
                           s0[:, None, None].expand(B, n * n, 1)], -1)
        logit_t = tau * self._similarities(features, kernel, centre, size, poses)
        pt = torch.softmax(logit_t, -1)
        refined = centre + (pt[..., None] * shifts[None]).sum(1)
        logit1, a1, s1 = on_bank(refined)
        return {"angle": a1, "log_scale": s1, "centre": refined, "logits": logit1, "bank0": logit0,
                "shift": logit_t.reshape(B, n, n)}
