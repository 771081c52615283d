"""Held-out metrics of the nets (the numbers of the model cards, the tests and the bench).

Evaluation goes through the same inference objects as users do (:class:`.infer.LearnedRefiner`,
:class:`.infer.LearnedDetector`), built from a weight file or from a model in memory.
"""

from __future__ import annotations

import math

import numpy as np

from weak_template_ros.nets.data import pose_similarity
from weak_template_ros.nets.infer import Detection, LearnedDetector, LearnedRefiner


def angle_error(a, b):
    """Wrapped difference a - b of angles (rad), elementwise."""
    return (np.asarray(a) - np.asarray(b) + math.pi) % (2 * math.pi) - math.pi


def refiner_metrics(samples: list[tuple], pose: np.ndarray, covariance: np.ndarray) -> dict:
    """Translation / rotation errors of refined poses (B, 4) against the samples' truth, and the
    calibration of the covariances (B, 4, 4)."""
    truth = np.stack([s[2] for s in samples])
    start = np.stack([s[3] for s in samples])
    err = np.hypot(pose[:, 0] - truth[:, 0], pose[:, 1] - truth[:, 1])
    err0 = np.hypot(start[:, 0] - truth[:, 0], start[:, 1] - truth[:, 1])
    eth = np.degrees(angle_error(pose[:, 2], truth[:, 2]))
    d = np.stack([pose[:, 0] - truth[:, 0], pose[:, 1] - truth[:, 1]], 1)
    z2 = []
    for di, C in zip(d, covariance[:, :2, :2], strict=True):
        try:
            z2.append(float(di @ np.linalg.solve(C, di)))
        except np.linalg.LinAlgError:
            z2.append(math.inf)
    return {"n": len(samples), "rms_px": float(np.sqrt(np.mean(err ** 2))),
            "median_px": float(np.median(err)), "max_px": float(err.max()),
            "gross_over_1px": int(np.sum(err > 1.0)),
            "rms_theta_deg": float(np.sqrt(np.mean(eth ** 2))),
            "start_rms_px": float(np.sqrt(np.mean(err0 ** 2))), "z2_median": float(np.median(z2))}


def run_refiner(refiner: LearnedRefiner, samples: list[tuple]) -> tuple[np.ndarray, np.ndarray]:
    """(poses (B, 4) with log scale, covariances (B, 4, 4)) of the refiner from each sample's start."""
    poses, covs = [], []
    for s in samples:
        r = refiner.refine(s[1], s[0], start=pose_similarity(s[3]))
        poses.append([r.dx, r.dy, r.dtheta, math.log(r.scale) if r.scale > 0 else math.nan])
        covs.append(r.covariance)
    return np.asarray(poses), np.asarray(covs)


def evaluate_refiner(refiner: LearnedRefiner, samples: list[tuple]) -> dict:
    """Held-out refiner metrics, with the classical aligner's RMS on the same images for reference
    (it searches on its own, from no start)."""
    pose, cov = run_refiner(refiner, samples)
    out = refiner_metrics(samples, pose, cov)
    from weak_template_ros.align import AlignerConfig, align

    cfg = AlignerConfig(motion=refiner.motion)
    err = []
    for s in samples:
        r = align(s[1], s[0], cfg)
        err.append(math.hypot(r.dx - s[2][0], r.dy - s[2][1]) if math.isfinite(r.dx) else math.inf)
    out["classical_rms_px"] = float(np.sqrt(np.mean(np.square(err))))
    return out


def detector_metrics(samples: list[tuple], best: list[Detection | None], threshold: float,
                     tolerance: float = 0.1) -> dict:
    """Recall and false detections at ``threshold`` from the top detection of each image.

    A detection is right when its centre is within ``tolerance`` x the mark's extent of the truth.
    False detections: images without the template's mark whose top score reaches the threshold,
    plus images with it whose top detection (above threshold) is elsewhere. Also the threshold-free
    recall at the score that lets through at most 1 % of the mark-free images.
    """
    present = np.array([s[3] for s in samples], bool)
    score = np.array([b.score if b else 0.0 for b in best])
    err = np.full(len(samples), np.inf)
    eth = np.full(len(samples), np.nan)
    els = np.full(len(samples), np.nan)
    for i, (s, b) in enumerate(zip(samples, best, strict=True)):
        if b is not None and s[3]:
            err[i] = math.hypot(b.x - s[4][0], b.y - s[4][1])
            eth[i] = math.degrees(float(angle_error(b.angle, s[6])))
            els[i] = math.log(b.scale) - s[5]
    extent = np.array([s[2][2] * math.exp(s[5]) for s in samples])
    right = err <= tolerance * extent
    hit = present & right & (score >= threshold)
    false = (score >= threshold) & ~(present & right)
    neg = score[~present]
    thr1 = float(np.quantile(neg, 0.99)) if len(neg) else threshold
    ok = bool(hit.any())
    return {"n": len(samples), "n_present": int(present.sum()), "threshold": threshold,
            "recall": float(hit.sum() / max(present.sum(), 1)),
            "false_detection_rate": float(false.sum() / len(samples)),
            "false_on_mark_free": float(((~present) & (score >= threshold)).sum() / max((~present).sum(), 1)),
            "recall_at_1pct_false": float((present & right & (score > thr1)).sum() / max(present.sum(), 1)),
            "centre_rms_px": float(np.sqrt(np.mean(err[hit] ** 2))) if ok else math.nan,
            "angle_rms_deg": float(np.sqrt(np.nanmean(eth[hit] ** 2))) if ok else math.nan,
            "log_scale_rms": float(np.sqrt(np.nanmean(els[hit] ** 2))) if ok else math.nan}


def run_detector(detector: LearnedDetector, samples: list[tuple]) -> list[Detection | None]:
    """Top detection (or None) of each detector sample."""
    out = []
    for s in samples:
        d = detector.detect(s[1], s[0], max_detections=1)
        out.append(d[0] if d else None)
    return out


def evaluate_detector(detector: LearnedDetector, samples: list[tuple], threshold: float) -> dict:
    """Held-out detector metrics at ``threshold``."""
    return detector_metrics(samples, run_detector(detector, samples), threshold)
