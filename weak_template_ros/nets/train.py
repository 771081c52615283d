"""Training of the refiner and the detector on twin data generated on the fly.

``train(kind, config, out)`` runs (or resumes) a training: batch ``k`` is a pure function of
``(seed, k)`` (:mod:`.data`), the model starts from ``torch.manual_seed(seed)``, and a
checkpoint (model, optimiser, step, elapsed time, config) is written every
``checkpoint_every`` steps, so an interrupted run resumed from its checkpoint ends with the same
weights as an uninterrupted one (same thread count). At the end the held-out set is drawn (or
read back: ``out/heldout.npz``, checked against its sha256), the model is scored on it and
``out/<kind>.pt`` is written with its model card (``out/<kind>.md``).

The data are rendered by DataLoader worker processes (spawned) while the main process trains (the
two cores of the target machine: one renders, one trains).
"""

from __future__ import annotations

import datetime
import json
import math
import os
import platform
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from weak_template_ros.config import from_mapping, load_yaml, param, to_dict, validate
from weak_template_ros.errors import InputError
from weak_template_ros.linemod.features import resolve_device
from weak_template_ros.nets import data as D
from weak_template_ros.nets import ops
from weak_template_ros.nets.evaluate import evaluate_detector, evaluate_refiner
from weak_template_ros.nets.infer import LearnedDetector, LearnedRefiner
from weak_template_ros.nets.models import (
    MOTIONS,
    STRIDE,
    DetectorArch,
    DetectorNet,
    RefinerArch,
    RefinerNet,
    SolverConfig,
)
from weak_template_ros.nets.weights import save_weights


@dataclass
class RefinerTrainConfig:
    """Training of the refiner (YAML: config/nets_refiner*.yaml)."""

    seed: int = param(0, "random seed: model initialisation and every batch", lo=0, hi=2**31 - 1)
    steps: int = param(300, "optimiser steps", lo=1, hi=10_000_000)
    batch: int = param(8, "samples per step", lo=1, hi=4096)
    lr: float = param(1e-3, "Adam learning rate (cosine decay)", lo=1e-7, hi=1.0)
    lr_final: float = param(0.05, "final learning rate as a fraction of lr", lo=0.0, hi=1.0)
    grad_clip: float = param(1.0, "gradient norm clip", lo=0.0, hi=1e6)
    motion: str = param("similarity", "motion model trained", choices=MOTIONS)
    eval_motion: str = param("euclidean", "motion model of the held-out scoring (the bench's: fixed "
                             "magnification)", choices=MOTIONS)
    iteration_decay: float = param(0.5, "weight of iteration i's corner loss: decay^(last - i)", lo=0.0,
                                   hi=1.0)
    photometric_weight: float = param(0.2, "weight of the photometric-consistency loss (1 - NCC)", lo=0.0,
                                      hi=100.0)
    validation_n: int = param(24, "validation samples from the training distribution (own stream), "
                              "scored at every checkpoint; 0: none", lo=0, hi=100_000)
    select_best: bool = param(True, "ship the checkpoint with the lowest validation RMS (else the last)")
    snr_weight_cap: float = param(20.0, "corner errors weighted by the sample's SNR clipped to [1, this] "
                                  "(errors in units of the noise floor; 0: unweighted)", lo=0.0, hi=1e4)
    nll_weight: float = param(0.01, "weight of the covariance calibration loss", lo=0.0, hi=100.0)
    device: str = param("cpu", "torch device: cpu, cuda, cuda:N or auto (CUDA if present); held-out "
                        "scoring and the saved weights are always on the CPU")
    threads: int = param(1, "torch threads of the training process", lo=1, hi=256)
    workers: int = param(1, "data worker processes (0: render in the training process)", lo=0, hi=64)
    checkpoint_every: int = param(25, "steps between checkpoints", lo=1, hi=1_000_000)
    heldout_seed: int = param(7, "seed of the held-out set (its own stream)", lo=0, hi=2**31 - 1)
    heldout_n: int = param(96, "held-out samples", lo=1, hi=100_000)
    heldout_subset: int = param(8, "first held-out samples also scored alone (the tests re-score them)",
                                lo=1, hi=100_000)
    arch: RefinerArch = field(default_factory=RefinerArch)
    solver: SolverConfig = field(default_factory=SolverConfig)
    sampling: D.RefinerSampling = field(default_factory=D.RefinerSampling)
    twin: D.TwinConfig = field(default_factory=D.TwinConfig)

    def __post_init__(self):
        validate(self)


@dataclass
class DetectorTrainConfig:
    """Training of the detector (YAML: config/nets_detector*.yaml)."""

    seed: int = param(0, "random seed: model initialisation and every batch", lo=0, hi=2**31 - 1)
    steps: int = param(850, "optimiser steps", lo=1, hi=10_000_000)
    batch: int = param(12, "samples per step", lo=1, hi=4096)
    lr: float = param(2e-3, "Adam learning rate (cosine decay)", lo=1e-7, hi=1.0)
    lr_final: float = param(0.05, "final learning rate as a fraction of lr", lo=0.0, hi=1.0)
    grad_clip: float = param(5.0, "gradient norm clip", lo=0.0, hi=1e6)
    heat_sigma: float = param(1.0, "Gaussian radius of the centre heat-map target", lo=0.3, hi=10.0,
                              unit="cells")
    regression_weight: float = param(1.0, "weight of the offset and pose-bank losses", lo=0.0, hi=100.0)
    pose_jitter: float = param(8.0, "the pose stage is trained at the true centre moved by up to this",
                               lo=0.0, hi=64.0, unit="px")
    score_threshold: float = param(0.5, "operating threshold of the held-out metrics", lo=0.0, hi=1.0)
    device: str = param("cpu", "torch device: cpu, cuda, cuda:N or auto (CUDA if present); held-out "
                        "scoring and the saved weights are always on the CPU")
    threads: int = param(1, "torch threads of the training process", lo=1, hi=256)
    workers: int = param(1, "data worker processes (0: render in the training process)", lo=0, hi=64)
    checkpoint_every: int = param(25, "steps between checkpoints", lo=1, hi=1_000_000)
    heldout_seed: int = param(7, "seed of the held-out set (its own stream)", lo=0, hi=2**31 - 1)
    heldout_n: int = param(192, "held-out samples", lo=1, hi=100_000)
    heldout_subset: int = param(24, "first held-out samples also scored alone (the tests re-score them)",
                                lo=1, hi=100_000)
    arch: DetectorArch = field(default_factory=DetectorArch)
    sampling: D.DetectorSampling = field(default_factory=D.DetectorSampling)
    twin: D.TwinConfig = field(default_factory=D.TwinConfig)

    def __post_init__(self):
        validate(self)


CONFIGS = {"refiner": RefinerTrainConfig, "detector": DetectorTrainConfig}


def load_config(kind: str, path: str | Path | None = None, overrides: dict | None = None):
    """The training config of ``kind`` from YAML (defaults without a file), with overrides."""
    if kind not in CONFIGS:
        raise InputError("kind", f"one of {sorted(CONFIGS)}", repr(kind))
    cfg = load_yaml(CONFIGS[kind], path) if path else CONFIGS[kind]()
    if overrides:
        cfg = from_mapping(CONFIGS[kind], {**to_dict(cfg), **overrides})
    return cfg


# ---------------------------------------------------------------------------------------------
# Losses


def refiner_loss(model: RefinerNet, b: D.RefinerBatch, cfg: RefinerTrainConfig) -> tuple[torch.Tensor, dict]:
    """Corner loss over the iterations + photometric consistency + covariance calibration."""
    dev = model.log_kappa.device
    T = torch.from_numpy(b.template)[:, None].to(dev)
    img = torch.from_numpy(b.image)[:, None].to(dev)
    origin = torch.tensor(b.origin, dtype=torch.float32, device=dev)
    expected = torch.tensor(b.expected, dtype=torch.float32, device=dev)
    truth = torch.tensor(b.truth, dtype=torch.float32, device=dev)
    start = torch.tensor(b.start, dtype=torch.float32, device=dev)
    out = model(model.prepare(T, origin, cfg.solver), model.image_features(img, cfg.solver), origin, expected,
                start, cfg.solver, cfg.motion)
    h, w = T.shape[-2:]
    corners = T.new_tensor([[0.0, 0.0], [w - 1.0, 0.0], [0.0, h - 1.0], [w - 1.0, h - 1.0]])
    x_true = ops.warp_points(truth, corners, origin, expected)
    n = len(out["poses"])
    weights = [cfg.iteration_decay ** (n - 1 - i) for i in range(n)]
    # Errors in units of the sample's noise floor (which scales as 1 / SNR): without it the
    # low-SNR samples' noise swamps the loss and training trades bias at high SNR for variance.
    snr = torch.tensor([i["snr"] for i in b.info], dtype=torch.float32, device=dev)
    sw = snr.clamp(1.0, cfg.snr_weight_cap) if cfg.snr_weight_cap > 0 else torch.ones_like(snr)
    sw = sw / sw.mean()
    pose_loss = sum(wi * ((ops.warp_points(p, corners, origin, expected) - x_true).pow(2).sum(-1)
                          .add(1e-6).sqrt().mean(-1) * sw).mean()
                    for wi, p in zip(weights, out["poses"], strict=True)) / sum(weights)
    # Photometric consistency: the image warped back by the final pose against the template.
    Tn = ops.normalise(T, model.arch.highpass_sigma).reshape(len(T), -1)
    In = ops.normalise(img, model.arch.highpass_sigma)
    grid = ops.pixel_grid(h, w, device=dev)
    v, valid = ops.sample(In, ops.warp_points(out["pose"], grid, origin, expected))
    v = v[:, 0]
    wsum = valid.sum(-1).clamp_min(1.0)
    a = Tn - (Tn * valid).sum(-1, keepdim=True) / wsum[:, None]
    c = v - (v * valid).sum(-1, keepdim=True) / wsum[:, None]
    norm = torch.sqrt((valid * a * a).sum(-1) * (valid * c * c).sum(-1)).clamp_min(1e-12)
    ncc = (valid * a * c).sum(-1) / norm
    photo = (1.0 - ncc).mean()
    # Calibration of the covariance: Gaussian NLL of the translation error, through kappa only.
    e = (out["pose"][:, :2] - truth[:, :2]).detach()
    kappa = torch.exp(model.log_kappa)
    base = (out["covariance"][:, :2, :2] / kappa).detach() + 1e-8 * torch.eye(2, device=dev)
    S = kappa * base
    nll = 0.5 * (torch.einsum("bi,bij,bj->b", e, torch.linalg.inv(S), e) + torch.logdet(S)).mean()
    loss = pose_loss + cfg.photometric_weight * photo + cfg.nll_weight * nll
    err = (out["pose"][:, :2] - truth[:, :2]).norm(dim=-1).detach()
    err0 = (start[:, :2] - truth[:, :2]).norm(dim=-1)
    return loss, {"loss": float(loss.detach()), "corner_px": float(pose_loss.detach()),
                  "ncc": float(ncc.detach().mean()),
                  "err_px": float(err.median()), "start_px": float(err0.median()),
                  "kappa": float(kappa.detach())}


def detector_targets(b: D.DetectorBatch, h: int, w: int, sigma: float) -> dict:
    """Heat map (B, h, w), offset-regression mask and offsets (cells) near each true centre."""
    B = len(b.present)
    heat = np.zeros((B, h, w), np.float32)
    mask = np.zeros((B, h, w), np.float32)
    off = np.zeros((B, 2, h, w), np.float32)
    ys, xs = np.mgrid[0:h, 0:w].astype(np.float32)
    for i in range(B):
        if not b.present[i]:
            continue
        cx = (b.centre[i, 0] - (STRIDE - 1) / 2.0) / STRIDE
        cy = (b.centre[i, 1] - (STRIDE - 1) / 2.0) / STRIDE
        d2 = (xs - cx) ** 2 + (ys - cy) ** 2
        g = np.exp(-d2 / (2 * sigma * sigma))
        r, c = int(np.clip(round(cy), 0, h - 1)), int(np.clip(round(cx), 0, w - 1))
        g[r, c] = 1.0  # the positive cell of the focal loss
        heat[i] = g
        near = d2 <= 1.5 ** 2
        near[r, c] = True
        mask[i] = near
        off[i, 0] = cx - xs
        off[i, 1] = cy - ys
    return {"heat": torch.from_numpy(heat), "mask": torch.from_numpy(mask), "offset": torch.from_numpy(off)}


def detector_loss(model: DetectorNet, b: D.DetectorBatch, cfg: DetectorTrainConfig
                  ) -> tuple[torch.Tensor, dict]:
    """CenterNet focal loss on the heat map + smooth-L1 offsets + the pose bank: cross-entropy of
    its logits against a Gaussian around the true (angle, log scale) and smooth L1 of the
    soft-argmax, both at the true centre moved by up to ``pose_jitter`` px (a detection's error)."""
    dev = model.response_gain.device
    T = torch.from_numpy(b.template)[:, None].to(dev)
    img = torch.from_numpy(b.image)[:, None].to(dev)
    box = torch.tensor(b.box, dtype=torch.float32, device=dev)
    kernel = model.kernel(T, box[:, :2], box[:, 2])
    out = model(kernel, img)
    h, w = out["heat"].shape[-2:]
    t = {k: v.to(dev) for k, v in detector_targets(b, h, w, cfg.heat_sigma).items()}
    p = torch.sigmoid(out["heat"]).clamp(1e-4, 1 - 1e-4)
    pos = (t["heat"] == 1.0).float()
    focal = -(pos * (1 - p) ** 2 * torch.log(p)
              + (1 - pos) * (1 - t["heat"]) ** 4 * p ** 2 * torch.log(1 - p)).sum() / pos.sum().clamp_min(1.0)
    m = t["mask"]
    nm = m.sum().clamp_min(1.0)
    offset = sum((F.smooth_l1_loss(out["offset"][:, i], t["offset"][:, i], reduction="none", beta=0.1) * m
                  ).sum() / nm for i in range(2))
    stats = {"focal": float(focal.detach()), "offset": float(offset.detach())}
    loss = focal + cfg.regression_weight * offset
    present = np.flatnonzero(b.present)
    if len(present):
        idx = torch.from_numpy(present).to(dev)
        jitter = cfg.pose_jitter * (b.jitter[present] if b.jitter is not None else 0.0)
        centre = torch.tensor(b.centre[present] + jitter, dtype=torch.float32, device=dev)
        pose = model.pose(out["features"][idx], kernel[idx], centre, box[idx, 2])
        angles, logs = (t.to(dev) for t in model.arch.bank())
        da = float(angles[1] - angles[0]) if len(angles) > 1 else 1.0
        dl = float(logs[1] - logs[0]) if len(logs) > 1 else 1.0
        ta = torch.tensor(b.angle[present], dtype=torch.float32, device=dev)
        tl = torch.tensor(b.log_scale[present], dtype=torch.float32, device=dev)
        tc = torch.tensor(b.centre[present], dtype=torch.float32, device=dev)

        def soft_ce(logits, target):
            target = target / target.sum(tuple(range(1, target.dim())), keepdim=True)
            lp = torch.log_softmax(logits.reshape(len(idx), -1), -1).reshape_as(target)
            return -(target * lp).sum(tuple(range(1, target.dim()))).mean()

        bank_target = torch.exp(-0.5 * (((angles[None, :, None] - ta[:, None, None]) / da) ** 2
                                        + ((logs[None, None, :] - tl[:, None, None]) / dl) ** 2))
        n = pose["shift"].shape[-1]
        d = STRIDE * (torch.arange(n, dtype=torch.float32, device=dev) - (n - 1) / 2)
        off = tc - centre  # where the truth is relative to the jittered centre, px
        shift_target = torch.exp(-0.5 * (((d[None, None, :] - off[:, 0, None, None]) / STRIDE) ** 2
                                         + ((d[None, :, None] - off[:, 1, None, None]) / STRIDE) ** 2))
        ce = (soft_ce(pose["bank0"], bank_target) + soft_ce(pose["logits"], bank_target)
              + soft_ce(pose["shift"], shift_target))
        reg = (F.smooth_l1_loss(pose["angle"] / da, ta / da, beta=0.1)
               + F.smooth_l1_loss(pose["log_scale"] / dl, tl / dl, beta=0.1)
               + F.smooth_l1_loss(pose["centre"] / STRIDE, tc / STRIDE, beta=0.1))
        loss = loss + cfg.regression_weight * (ce + reg)
        stats.update(pose_ce=float(ce.detach()),
                     angle_deg=float((pose["angle"] - ta).abs().mean().detach()) * 180 / math.pi,
                     centre_px=float((pose["centre"] - tc).norm(dim=-1).mean().detach()))
    return loss, {"loss": float(loss.detach()), **stats}


# ---------------------------------------------------------------------------------------------
# Loop


class _Batches(torch.utils.data.IterableDataset):
    """Training batches ``start .. steps - 1`` in order (rendered in a worker process)."""

    def __init__(self, kind: str, cfg, start: int, batches: Callable | None = None):
        super().__init__()
        self.kind, self.cfg, self.start, self.batches = kind, cfg, start, batches

    def __iter__(self):
        c = self.cfg
        info = torch.utils.data.get_worker_info()
        # Worker w of n renders steps start + w, start + w + n, ...; the DataLoader takes them
        # round-robin, so the steps arrive in order.
        first, stride = (0, 1) if info is None else (info.id, info.num_workers)
        for step in range(self.start + first, c.steps, stride):
            if self.batches is not None:  # another data source (e.g. bproc_data.MixedDetectorSource)
                yield step, self.batches(c.seed, step, c.batch, c.twin, c.sampling)
            elif self.kind == "refiner":
                yield step, D.refiner_training_batch(c.seed, step, c.batch, c.twin, c.sampling)
            else:
                yield step, D.detector_training_batch(c.seed, step, c.batch, c.twin, c.sampling)


def _identity(x):
    return x


def _worker_init(_):
    import cv2

    cv2.setNumThreads(1)
    torch.set_num_threads(1)


def _lr(cfg, step: int) -> float:
    """Linear warm-up over the first 5 % of the steps, then cosine decay to ``lr_final``."""
    warm = max(cfg.steps // 20, 1)
    f = 0.5 * (1 + math.cos(math.pi * min(step / max(cfg.steps, 1), 1.0)))
    return cfg.lr * min(1.0, (step + 1) / warm) * (cfg.lr_final + (1 - cfg.lr_final) * f)


def hardware(device: str = "cpu") -> dict:
    """The machine a model was trained on (for its card)."""
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    return {"machine": platform.machine(), "processor": platform.processor() or None,
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "device": str(device),
            "load_average_at_end": load, "python": platform.python_version(),
            "cuda": torch.cuda.get_device_name() if torch.cuda.is_available() else None}


def validation_samples(cfg) -> list[tuple]:
    """The validation set: refiner samples from the training distribution, on their own stream."""
    out: list[tuple] = []
    g = 0
    while len(out) < cfg.validation_n:
        out += D.refiner_group(np.random.default_rng([cfg.seed, D.VALID_STREAM, g]), cfg.twin, cfg.sampling)
        g += 1
    return out[: cfg.validation_n]


def validation_rms(model: RefinerNet, samples: list[tuple], cfg) -> float:
    """RMS translation error of the refiner (training motion, the inference solver) on samples."""
    ref = LearnedRefiner(model, SolverConfig(), cfg.motion)
    err = []
    for T, img, truth, start, _ in samples:
        r = ref.refine(img, T, start=D.pose_similarity(start))
        err.append(math.hypot(r.dx - truth[0], r.dy - truth[1]) if math.isfinite(r.dx) else 1e3)
    return float(np.sqrt(np.mean(np.square(err))))


def calibrate_covariance(model: RefinerNet, samples: list[tuple], cfg) -> float:
    """Set the covariance calibration ``log_kappa`` so that the median squared Mahalanobis
    translation error on (validation) samples is that of a 2-D Gaussian, 2 ln 2; returns kappa.

    The trained scalar follows the features during training; after a checkpoint is selected the
    factor is re-fitted to that checkpoint.
    """
    with torch.no_grad():
        model.log_kappa.zero_()
    ref = LearnedRefiner(model, SolverConfig(), cfg.motion)
    z2 = []
    for T, img, truth, start, _ in samples:
        r = ref.refine(img, T, start=D.pose_similarity(start))
        d = np.array([r.dx - truth[0], r.dy - truth[1]])
        try:
            z2.append(float(d @ np.linalg.solve(r.covariance[:2, :2], d)))
        except np.linalg.LinAlgError:
            continue
    kappa = float(np.median(z2) / (2 * math.log(2))) if z2 else 1.0
    with torch.no_grad():
        model.log_kappa.fill_(math.log(max(kappa, 1e-6)))
    return kappa


def _build(kind: str, cfg) -> torch.nn.Module:
    return RefinerNet(cfg.arch) if kind == "refiner" else DetectorNet(cfg.arch)


def heldout(kind: str, cfg, out: Path) -> tuple[list[tuple], str]:
    """The held-out set of a training config: read back from ``out/heldout.npz`` if it is there
    and was drawn with the same seed and size, else drawn and written there. (samples, sha256)"""
    path = out / "heldout.npz"
    if path.is_file():
        try:
            header, samples = D.load_heldout(path)
        except InputError:  # another format version or a damaged file: draw it again
            header = {}
        if header.get("kind") == kind and header.get("seed") == cfg.heldout_seed \
                and header.get("n") == cfg.heldout_n:
            return samples, header["sha256"]
    samples = D.heldout_samples(kind, cfg.heldout_seed, cfg.heldout_n)
    return samples, D.save_heldout(path, kind, cfg.heldout_seed, samples)


def score(kind: str, model: torch.nn.Module, cfg, samples: list[tuple]) -> dict:
    """Held-out metrics of a model in memory, as the card records them (inference path, one thread)."""
    if kind == "refiner":
        return evaluate_refiner(LearnedRefiner(model, SolverConfig(), cfg.eval_motion), samples)
    return evaluate_detector(LearnedDetector(model), samples, cfg.score_threshold)


def train(kind: str, cfg, out: str | Path, resume: bool = True,
          on_step: Callable[[int, int, dict], None] | None = None,
          on_phase: Callable[[str], None] | None = None, batches: Callable | None = None,
          init_weights: str | Path | None = None) -> dict:
    """Train (or resume) ``kind`` with ``cfg`` into folder ``out``; returns the model card.

    ``on_step(step, steps, stats)`` is called after every step, ``on_phase(name)`` when a phase
    starts (progress display). ``batches(seed, step, batch, twin, sampling)``: the training batch
    of a step (default: the twin's, :func:`.data.detector_training_batch` /
    :func:`.data.refiner_training_batch`; it must be picklable when ``cfg.workers`` > 0).
    ``init_weights``: a weight file of ``kind`` to start from (fine-tuning) instead of the seeded
    initialisation; its architecture must be ``cfg.arch``. Both are recorded in the card.
    """
    if kind not in CONFIGS or not isinstance(cfg, CONFIGS[kind]):
        raise InputError("config", f"a {CONFIGS.get(kind, RefinerTrainConfig).__name__}", type(cfg).__name__)
    validate(cfg)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    device = resolve_device(cfg.device)
    model = _build(kind, cfg)
    if init_weights is not None:
        from weak_template_ros.nets.weights import load_model

        init_model, _ = load_model(init_weights, kind)
        if to_dict(init_model.arch) != to_dict(cfg.arch):
            raise InputError(str(init_weights), f"weights of the config's architecture {to_dict(cfg.arch)}",
                             f"architecture {to_dict(init_model.arch)}")
        model.load_state_dict(init_model.state_dict())
    model = model.to(device)
    # The covariance calibration (one scalar, to move by ~log 5) learns with a 20x learning rate.
    calib = [p for n, p in model.named_parameters() if n == "log_kappa"]
    rest = [p for n, p in model.named_parameters() if n != "log_kappa"]
    groups = [{"params": rest, "lr_scale": 1.0}] + ([{"params": calib, "lr_scale": 20.0}] if calib else [])
    opt = torch.optim.Adam(groups, lr=cfg.lr)
    ckpt = out / "checkpoint.pt"
    start, elapsed, cpu, skipped = 0, 0.0, 0.0, 0
    state: dict = {}
    cfg_dict = json.loads(json.dumps(to_dict(cfg)))
    if resume and ckpt.is_file():
        state = torch.load(ckpt, map_location="cpu", weights_only=True)
        if state.get("config") != cfg_dict or state.get("kind") != kind:
            raise InputError(str(ckpt), "a checkpoint of this kind and config (or use a new --out, or "
                             "--no-resume)", "a checkpoint made with another config")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, elapsed, cpu, skipped = state["step"], state["elapsed_s"], state["cpu_s"], state["skipped"]
    loss_fn = refiner_loss if kind == "refiner" else detector_loss
    stats: dict = {}
    history = []
    val_n = getattr(cfg, "validation_n", 0)
    val = validation_samples(cfg) if val_n else []
    best = state.get("best") if resume and ckpt.is_file() else None
    curve = list(state.get("validation", [])) if resume and ckpt.is_file() else []

    def check(step: int):
        nonlocal best
        if not val:
            return
        v = validation_rms(model, val, cfg)
        model.train()
        curve.append([step, v])
        if best is None or v < best["rms_px"]:
            best = {"step": step, "rms_px": v, "model": {k: t.detach().clone() for k, t in
                                                          model.state_dict().items()}}

    if start == 0 and not curve:
        check(0)
    if start < cfg.steps:
        if on_phase:
            on_phase("train")
        loader = torch.utils.data.DataLoader(
            _Batches(kind, cfg, start, batches), batch_size=None, collate_fn=_identity,
            num_workers=cfg.workers,
            worker_init_fn=_worker_init if cfg.workers else None,
            prefetch_factor=2 if cfg.workers else None,
            # spawn, not fork: a process that already ran OpenMP-parallel torch code (a test
            # session, a notebook) deadlocks in forked workers.
            multiprocessing_context="spawn" if cfg.workers else None)
        t0, c0 = time.perf_counter(), time.process_time()
        model.train()
        for step, batch in loader:
            for g in opt.param_groups:
                g["lr"] = _lr(cfg, step) * g["lr_scale"]
            loss, stats = loss_fn(model, batch, cfg)
            opt.zero_grad(set_to_none=True)
            if torch.isfinite(loss):
                loss.backward()
                if cfg.grad_clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                opt.step()
            else:  # a diverged sample: skip the update, keep the count
                skipped += 1
            done = step + 1
            if done % max(cfg.steps // 50, 1) == 0 or done == cfg.steps:
                history.append({"step": done, **stats})
            if done % cfg.checkpoint_every == 0 or done == cfg.steps:
                check(done)
                torch.save({"kind": kind, "config": cfg_dict, "model": model.state_dict(),
                            "optimizer": opt.state_dict(), "step": done,
                            "elapsed_s": elapsed + time.perf_counter() - t0,
                            "cpu_s": cpu + time.process_time() - c0, "skipped": skipped,
                            "best": best, "validation": curve}, ckpt)
            if on_step:
                on_step(done, cfg.steps, stats)
        elapsed += time.perf_counter() - t0
        cpu += time.process_time() - c0
    model = model.cpu().eval()
    selected = cfg.steps
    if best is not None and getattr(cfg, "select_best", False):
        model.load_state_dict(best["model"])
        selected = best["step"]
    if val and kind == "refiner":
        calibrate_covariance(model, val, cfg)
    validation = {"n": val_n, "curve": curve, "selected_step": selected,
                  "metric": "RMS translation error (px) from the perturbed starts, training motion"}
    if on_phase:
        on_phase("held-out set")
    samples, digest = heldout(kind, cfg, out)
    if on_phase:
        on_phase("evaluation")
    metrics = score(kind, model, cfg, samples)
    subset = score(kind, model, cfg, samples[: cfg.heldout_subset])
    card = model_card(kind, cfg, cfg_dict, elapsed, cpu, skipped, history, digest, len(samples), metrics,
                      subset)
    if val_n:
        card["training"]["validation"] = validation
    if batches is not None:
        card["training"]["batches"] = repr(batches)
    if init_weights is not None:
        card["training"]["init_weights"] = str(init_weights)
    save_weights(out / f"{kind}.pt", kind, model, card)
    (out / f"{kind}.md").write_text(card_markdown(card))
    (out / "history.json").write_text(json.dumps(history, indent=1))
    return card


# ---------------------------------------------------------------------------------------------
# Model card


def model_card(kind, cfg, cfg_dict, wall_s, cpu_s, skipped, history, digest, n_heldout, metrics, subset
               ) -> dict:
    """The model card (JSON-ready) of a finished training."""
    twin = cfg_dict["twin"]
    data = {
        "source": "weak_template_ros mark twin (exact analytic-coverage rendering), generated on the fly",
        "mark_kinds": list(D.TRAIN_KINDS), "sampling": cfg_dict["sampling"], "degradations": twin,
        "degradations_in_words": (
            f"SNR log-uniform in [{twin['snr_min']}, {twin['snr_max']}] (Gaussian + shot noise, shot share "
            f"uniform in [0, 1]); contrast {twin['contrast_low_min']}-{twin['contrast_low_max']} in "
            f"{100 * twin['low_contrast_fraction']:.0f} % of samples, else {twin['contrast_min']}-"
            f"{twin['contrast_max']}; illumination gradient up to {twin['gradient_max']} across the image "
            f"(+ vignetting up to {twin['vignetting_max']}) in {100 * twin['gradient_fraction']:.0f} %; "
            f"line-width bias up to ±{twin['bias_max']} px in {100 * twin['bias_fraction']:.0f} %; defocus "
            f"sigma {twin['blur_min']}-{twin['blur_max']} px (template blur within "
            f"±{100 * twin['template_blur_jitter']:.0f} %); wafer texture / glare / particles in "
            f"{100 * twin['texture_fraction']:.0f} / {100 * twin['glare_fraction']:.0f} / "
            f"{100 * twin['particle_fraction']:.0f} %; both polarities"),
    }
    heldout_desc = (
        "the bench geometry: 128 px marks (12 px lines) of the 4 evaluation kinds in 256x256 images, the "
        "golden template as large as the image, offsets in ±10 px, rotations in ±5°, starts perturbed by up "
        "to 4 px and 2°; regimes in turn" if kind == "refiner" else
        "64 px marks (6 px lines) of the 4 evaluation kinds in 256x256 images at scale 0.8-1.25 and ±30°, "
        "12.5 % images without a mark and 12.5 % showing another kind; regimes in turn")
    return {
        "model": kind, "format_version": 1,
        "created": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "architecture": cfg_dict["arch"], "data": data,
        "training": {"seed": cfg.seed, "steps": cfg.steps, "batch": cfg.batch,
                     "samples_seen": cfg.steps * cfg.batch,
                     "lr": cfg.lr, "wall_s": round(wall_s, 1), "cpu_s_training_process": round(cpu_s, 1),
                     "threads": cfg.threads, "data_workers": cfg.workers, "skipped_steps": skipped,
                     "hardware": hardware(cfg.device), "config": cfg_dict, "history_tail": history[-5:]},
        "heldout": {"seed": cfg.heldout_seed, "n": n_heldout, "sha256": digest, "description": heldout_desc,
                    "scored_with": ({"motion": cfg.eval_motion, "solver": to_dict(SolverConfig())}
                                    if kind == "refiner" else {"threshold": cfg.score_threshold}),
                    "regimes": [r.key for r in D.REGIMES], "metrics": metrics,
                    "subset_n": min(cfg.heldout_subset, n_heldout), "subset_metrics": subset},
    }


def _fmt(v) -> str:
    if isinstance(v, float):
        return "–" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def card_markdown(card: dict) -> str:
    """The model card as Markdown."""
    t, h = card["training"], card["heldout"]
    hw = t["hardware"]
    L = [f"# Model card: learned {card['model']}", "",
         f"Created {card['created']} by `weak-template train {card['model']}`. Weights format version "
         f"{card['format_version']}. Trained only on the digital twin; no pretrained weights.", "",
         "## Architecture", "", "```json", json.dumps(card["architecture"], indent=1), "```", "",
         "## Training data", "", card["data"]["source"] + ".", "",
         f"Mark kinds: {', '.join(card['data']['mark_kinds'])}.", "",
         "Degradations: " + card["data"]["degradations_in_words"] + ".", "",
         "## Training", "",
         f"- seed {t['seed']}, {t['steps']} steps x {t['batch']} samples = {t['samples_seen']} samples, Adam "
         f"lr {t['lr']} (cosine)",
         f"- wall time {t['wall_s']} s ({t['wall_s'] / 60:.1f} min), training-process CPU "
         f"{t['cpu_s_training_process']} s, "
         f"{t['threads']} torch thread(s) + {t['data_workers']} data worker(s); skipped (non-finite) steps: "
         f"{t['skipped_steps']}",
         f"- hardware: {hw['machine']} {hw['processor'] or ''}, {hw['cpu_count']} cores (shared; load "
         "average "
         f"{_fmt(hw['load_average_at_end'])} at the end), torch {hw['torch']}, device {hw['device']}"]
    if t.get("init_weights"):
        L.append(f"- fine-tuned from `{t['init_weights']}` (not the seeded initialisation)")
    if t.get("batches"):
        L.append(f"- training batches: {t['batches']} (not only the twin, despite the line above)")
    v = t.get("validation")
    if v:
        curve = ", ".join(f"{st}: {rms:.4f}" for st, rms in v["curve"])
        L.append(f"- validation ({v['n']} samples of the training distribution, own stream; {v['metric']}) "
                 f"per checkpoint, step: px — {curve}; shipped: step {v['selected_step']}")
        if v["selected_step"] == 0:
            L.append("- note: no checkpoint beat the initial model on validation, so the shipped weights are "
                     "the initialisation: the learned channels start at ~0, i.e. Gauss–Newton on the "
                     "normalised intensity with per-channel gain/offset fields; training on this "
                     "budget did not improve on it")
    L += ["",
         "## Held-out metrics", "",
         f"Held-out set: seed {h['seed']}, {h['n']} samples ({h['description']}); sha256 of its arrays "
         f"`{h['sha256'][:16]}…`. Scored with {json.dumps(h['scored_with'])}.", "",
         f"| metric | all | first {h['subset_n']} |", "|---|---|---|"]
    for k, v in h["metrics"].items():
        L.append(f"| {k} | {_fmt(v)} | {_fmt(h['subset_metrics'].get(k))} |")
    L += ["", "The tests re-score the shipped weights on the first samples (redrawn from the seed) and "
          "compare with the right-hand column.", ""]
    return "\n".join(L) + "\n"


__all__ = ["CONFIGS", "DetectorTrainConfig", "RefinerTrainConfig", "card_markdown", "detector_loss",
           "hardware", "heldout", "load_config", "model_card", "refiner_loss", "score", "train"]
