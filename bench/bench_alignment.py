"""Sub-pixel mark alignment against the Cramér–Rao bound and classical baselines (issue 4).

Grid: 4 marks (cross, L-corner, box-in-box, chevrons; 128 px, 12 px lines, in a 256x256 ROI)
x SNR {1, 2, 5, 20} x contrast {30 %, 3 %} x rotation {0, 0.5, 5} deg (random sign) x random
sub-pixel shifts in +-10 px, 50 trials per cell. Every image: defocus sigma 1 px, Gaussian +
shot noise (half the variance at the background), a 10 % illumination gradient in a random
direction and 10 % vignetting. The template is the golden design rendering (same defocus, uniform
light, no noise). Every method sees the same images and the same template:

- ours (euclidean): :func:`weak_template_ros.align.align`, scale known (fixed magnification)
- ours (similarity): the same, also estimating scale (the package default)
- cv2.phaseCorrelate (mean removed, Hann window), skimage phase_cross_correlation (upsample 100,
  mean removed, Hann window, plain cross-correlation), Gaussian blur + cv2.matchTemplate +
  parabola, cv2.findTransformECC translation and Euclidean (started at the integer NCC peak)

The CRB of (tx, ty, theta) is computed per cell from the noise-free rendering's gradients
(central differences of the exact renderer) with the per-pixel Gaussian + shot noise, averaged
over the first trials' poses; translation RMS is radial, sqrt(mean(ex² + ey²)), against
sqrt(CRB_xx + CRB_yy). Time is CPU time per 256x256 ROI in one single-threaded process
(OPENBLAS_NUM_THREADS=1, cv2.setNumThreads(1)). False accepts: mark-free images (same light and
noise) per mark template; ours decides with its configured min_score; for every method (ours
too) we also report the fraction of mark-free images scoring above the 1 % quantile of its own
scores on true marks in the same SNR/contrast condition (a threshold-free separability figure).

A robustness table (SNR 5, both contrasts) adds wafer texture, glare, particles, line-width bias
and a blur mismatch one at a time.

Writes docs/benchmarks/alignment.{json,md} and alignment_error_vs_snr.png,
alignment_overlay.png. ``--quick`` runs a tiny grid (smoke test, not written to docs).
"""

from __future__ import annotations

import os

# Single-threaded BLAS before NumPy loads: "per ROI on one core", and multithreaded BLAS on tiny
# matrices only adds latency.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import functools  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
from shapely.geometry import Polygon  # noqa: E402

from weak_template_ros.align import baselines as bl  # noqa: E402
from weak_template_ros.align.aligner import AlignerConfig, align, prepare_template  # noqa: E402
from weak_template_ros.align.crb import mark_crb  # noqa: E402
from weak_template_ros.align.preprocess import remove_shading  # noqa: E402
from weak_template_ros.align.similarity import Similarity  # noqa: E402
from weak_template_ros.twin.marks import Degradations, MarkSpec, golden_template, make_scene  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
SHAPE = (256, 256)
MAX_SHIFT = 10.0
MARKS = {
    "cross": MarkSpec("cross", 128.0, 12.0),
    "l_corner": MarkSpec("l_corner", 128.0, 12.0),
    "box_in_box": MarkSpec("box_in_box", 128.0, 12.0),
    "chevrons": MarkSpec("chevrons", 128.0, 12.0, count=4),
}
SNRS = (1.0, 2.0, 5.0, 20.0)
CONTRASTS = {"30%": 0.3, "3%": 0.03}
ROTATIONS_DEG = (0.0, 0.5, 5.0)
SHADING_ORDER = 3  # baselines' flat-field: robust cubic (gradient x vignetting is cubic)
OURS = {"ours (euclidean)": AlignerConfig(motion="euclidean"),
        "ours (similarity)": AlignerConfig(motion="similarity")}
METHODS = [*OURS, *bl.BASELINES]
ROBUSTNESS = {
    "wafer texture 0.5 %": {"texture": 0.005},
    "3 glare spots": {"glare_spots": 3, "glare_amplitude": 1.0, "glare_sigma": 8.0},
    "20 particles": {"particles": 20, "particle_radius": 5.0},
    "line width +2 px": {"line_width_bias": 2.0},
    "blur mismatch (image 1.5 px)": {"defocus_sigma": 1.5},
    "no extra degradation, baselines without flat-field": {"baseline_shading": False},
}


def degradations(contrast: float, snr: float, **extra) -> Degradations:
    base = dict(contrast=contrast, snr=snr, shot_fraction=0.5, defocus_sigma=1.0, gradient=0.1,
                vignetting=0.1)
    base.update(extra)
    return Degradations(**base)


def run_methods(img: np.ndarray, T: np.ndarray, T_flat: np.ndarray, preps: dict, shading: bool) -> dict:
    """{method: (dx, dy, dtheta or nan, score, ok, found, cpu seconds)}.

    Ours gets the raw image. Baselines get it flat-fielded by :func:`remove_shading` (a robust
    cubic fit; its CPU time is added to each baseline's) unless ``shading`` is False: without it
    they fail on 3 % marks under a 10 % light gradient.
    """
    out = {}
    t0 = time.process_time()
    flat = remove_shading(img, SHADING_ORDER) if shading else img
    t_flat = time.process_time() - t0 if shading else 0.0
    for name in METHODS:
        t0 = time.process_time()
        if name in OURS:
            r = align(img, preps[name])
            res = (r.dx, r.dy, r.dtheta, r.score, True, r.found)
            extra = 0.0
        else:
            r = bl.BASELINES[name](flat, T_flat if shading else T)
            res = (r.dx, r.dy, math.nan if r.dtheta is None else r.dtheta, r.score, r.ok, True)
            extra = t_flat
        out[name] = (*res, time.process_time() - t0 + extra)
    return out


def run_cell(task: dict) -> dict:
    """One grid cell: trials with the mark, mark-free images, and the CRB."""
    cv2.setNumThreads(1)
    spec = MARKS[task["mark"]]
    d = degradations(CONTRASTS[task["contrast"]], task["snr"], **task.get("extra", {}))
    template_d = degradations(CONTRASTS[task["contrast"]], task["snr"])
    T = golden_template(spec, SHAPE, template_d).astype(np.float32)
    T_flat = remove_shading(T, SHADING_ORDER)
    shading = task.get("baseline_shading", True)
    preps = {k: prepare_template(T, cfg) for k, cfg in OURS.items()}
    rot = math.radians(task["rotation_deg"])
    rows = {m: [] for m in METHODS}
    truth = []
    for i in range(task["trials"]):
        rng = np.random.default_rng([task["seed"], i])
        pose = Similarity(rng.uniform(-MAX_SHIFT, MAX_SHIFT), rng.uniform(-MAX_SHIFT, MAX_SHIFT),
                          rot * rng.choice([-1.0, 1.0]), 1.0)
        scene = make_scene(spec, SHAPE, d, rng)
        img, _ = scene.sample(pose, rng)
        for m, v in run_methods(img, T, T_flat, preps, shading).items():
            rows[m].append(v)
        truth.append((pose.tx, pose.ty, pose.theta))
    free = {m: [] for m in METHODS}
    for i in range(task["free"]):
        rng = np.random.default_rng([task["seed"], 10_000 + i])
        scene = dataclasses.replace(make_scene(spec, SHAPE, d, rng), geometry=Polygon())
        img, _ = scene.sample(Similarity(), rng)
        for m, v in run_methods(img, T, T_flat, preps, shading).items():
            free[m].append(v)
    crb = None
    if task["crb_trials"]:
        at_snr1 = crb_at(task["mark"], task["contrast"], task["rotation_deg"], task["crb_trials"])
        crb = at_snr1 / task["snr"] ** 2
    return {"task": task, "truth": truth, "rows": rows, "free": free,
            "crb": crb.tolist() if crb is not None else None}


@functools.cache
def crb_at(mark: str, contrast: str, rotation_deg: float, n: int) -> np.ndarray:
    """CRB of (tx, ty, theta) at SNR 1, averaged over n random shifts. With this noise model
    (sigma² = sigma0² ((1 - f) + f I / B), sigma0 = B c / SNR) the bound scales exactly as
    1 / SNR², so one computation serves the four SNRs."""
    d = degradations(CONTRASTS[contrast], 1.0)
    rng = np.random.default_rng([99, int(rotation_deg * 10)])
    out = []
    for _ in range(n):
        pose = Similarity(rng.uniform(-MAX_SHIFT, MAX_SHIFT), rng.uniform(-MAX_SHIFT, MAX_SHIFT),
                          math.radians(rotation_deg), 1.0)
        out.append(mark_crb(make_scene(MARKS[mark], SHAPE, d, rng), pose))
    return np.mean(out, axis=0)


def summarise_cell(res: dict) -> dict:
    truth = np.asarray(res["truth"])
    C = np.asarray(res["crb"]) if res["crb"] is not None else None
    out = {"crb_t": math.sqrt(C[0, 0] + C[1, 1]) if C is not None else None,
           "crb_theta_deg": math.degrees(math.sqrt(C[2, 2])) if C is not None else None, "methods": {}}
    for m, rows in res["rows"].items():
        a = np.asarray(rows, dtype=np.float64)
        ex, ey = a[:, 0] - truth[:, 0], a[:, 1] - truth[:, 1]
        err = np.hypot(ex, ey)
        eth = np.degrees(bl.angle_error(a[:, 2], truth[:, 2])) if np.all(np.isfinite(a[:, 2])) else None
        rms = float(np.sqrt(np.mean(err ** 2)))
        out["methods"][m] = {
            "rms_px": rms,
            "rms_over_crb": rms / out["crb_t"] if out["crb_t"] else None,
            "median_px": float(np.median(err)),
            "gross_failures": int(np.sum(err > 2.0)),
            "bias_px": [float(ex.mean()), float(ey.mean())],
            "rms_theta_deg": float(np.sqrt(np.mean(eth ** 2))) if eth is not None else None,
            "cpu_ms": float(np.median(a[:, 6]) * 1000),
            "not_ok": int(np.sum(a[:, 4] == 0)),
            "missed": int(np.sum(a[:, 5] == 0)),
            "scores": a[:, 3].tolist(),
            "free_scores": [float(v[3]) for v in res["free"][m]],
            "free_found": int(sum(1 for v in res["free"][m] if v[5])),
            "n": len(rows), "n_free": len(res["free"][m]),
        }
    return out


def tasks(quick: bool, trials: int, free: int) -> list[dict]:
    marks = ["cross", "l_corner"] if quick else list(MARKS)
    snrs = (2.0, 5.0) if quick else SNRS
    contrasts = ["30%"] if quick else list(CONTRASTS)
    rots = (0.5,) if quick else ROTATIONS_DEG
    out = []
    for mi, mark in enumerate(marks):
        for si, snr in enumerate(snrs):
            for ci, c in enumerate(contrasts):
                for ri, rot in enumerate(rots):
                    out.append({"mark": mark, "snr": snr, "contrast": c, "rotation_deg": rot,
                                "trials": trials, "crb_trials": 3, "free": free if ri == 0 else 0,
                                "seed": 1000 * mi + 100 * si + 10 * ci + ri})
    return out


def robustness_tasks(quick: bool, trials: int, free: int) -> list[dict]:
    out = []
    for ki, (name, extra) in enumerate(ROBUSTNESS.items()):
        if quick and ki > 1:
            break
        extra = dict(extra)
        shading = extra.pop("baseline_shading", True)
        for mi, mark in enumerate(MARKS):
            for ci, c in enumerate(CONTRASTS):
                out.append({"mark": mark, "snr": 5.0, "contrast": c, "rotation_deg": 0.5, "trials": trials,
                            "crb_trials": 0, "free": free, "extra": extra, "robustness": name,
                            "baseline_shading": shading, "seed": 50_000 + 1000 * ki + 10 * mi + ci})
    return out


def pooled(cells: list[dict], method: str, key_filter) -> dict:
    """RMS pooled over cells (sqrt of mean of per-cell MSE) and CRB pooled the same way."""
    sel = [c for c in cells if key_filter(c)]
    mse = [c["summary"]["methods"][method]["rms_px"] ** 2 for c in sel]
    crb = [c["summary"]["crb_t"] ** 2 for c in sel if c["summary"]["crb_t"] is not None]
    th = [c["summary"]["methods"][method]["rms_theta_deg"] for c in sel]
    th = [t ** 2 for t in th if t is not None]
    rms = math.sqrt(np.mean(mse)) if mse else math.nan
    crb_rms = math.sqrt(np.mean(crb)) if crb else math.nan
    return {"rms_px": rms, "crb_px": crb_rms, "rms_over_crb": rms / crb_rms if crb else math.nan,
            "rms_theta_deg": math.sqrt(np.mean(th)) if th else None,
            "cpu_ms": float(np.median([c["summary"]["methods"][method]["cpu_ms"] for c in sel])),
            "gross_failures": int(sum(c["summary"]["methods"][method]["gross_failures"] for c in sel)),
            "missed": int(sum(c["summary"]["methods"][method]["missed"] for c in sel)),
            "n": int(sum(c["summary"]["methods"][method]["n"] for c in sel))}


def false_accepts(cells: list[dict], method: str, snr: float, contrast: str) -> dict:
    sel = [c for c in cells if c["task"]["snr"] == snr and c["task"]["contrast"] == contrast]
    true_scores = np.concatenate([c["summary"]["methods"][method]["scores"] for c in sel])
    free = [c for c in sel if c["summary"]["methods"][method]["n_free"] > 0]
    free_scores = np.concatenate([c["summary"]["methods"][method]["free_scores"] for c in free])
    thr = float(np.quantile(true_scores, 0.01))
    out = {"threshold_99pct_detection": thr, "fa_at_99pct_detection": float(np.mean(free_scores >= thr)),
           "n_free": int(len(free_scores))}
    if method in OURS:
        out["fa_at_min_score"] = float(sum(c["summary"]["methods"][method]["free_found"] for c in free)
                                       / max(len(free_scores), 1))
        out["miss_at_min_score"] = float(sum(c["summary"]["methods"][method]["missed"] for c in sel)
                                         / max(len(true_scores), 1))
    return out


def overlay_picture(path: Path) -> None:
    """A detection at SNR 2, 3 % contrast, 5 deg: image, found template outline, truth."""
    spec = MARKS["cross"]
    d = degradations(0.03, 2.0)
    T = golden_template(spec, SHAPE, d).astype(np.float32)
    rng = np.random.default_rng(7)
    pose = Similarity(6.3, -4.7, math.radians(5.0), 1.0)
    img, _ = make_scene(spec, SHAPE, d, rng).sample(pose, rng)
    r = align(img, T, OURS["ours (euclidean)"])
    # Template outline: its 50 % iso-contour, mapped through the found warp.
    mid = float(T.min() + 0.5 * (T.max() - T.min()))
    contours, _ = cv2.findContours((T > mid).astype(np.uint8), cv2.RETR_LIST, cv2.CHAIN_APPROX_NONE)
    fig, axes = plt.subplots(1, 2, figsize=(10, 5))
    c = np.array([(SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2])
    for ax, zoom in zip(axes, (False, True), strict=True):
        ax.imshow(img, cmap="gray")
        for cont in contours:
            xy = np.vstack([cont[:, 0, :], cont[:1, 0, :]]).astype(float) @ r.affine[:, :2].T + r.affine[:, 2]
            ax.plot(xy[:, 0], xy[:, 1], "-", color="lime", lw=0.8)
        ax.plot(c[0] + pose.tx, c[1] + pose.ty, "r+", ms=14, mew=1.5, label="truth")
        ax.plot(r.dx + c[0], r.dy + c[1], "x", color="cyan", ms=10, mew=1.5, label="found")
        if zoom:
            ax.set_xlim(c[0] + pose.tx - 6, c[0] + pose.tx + 6)
            ax.set_ylim(c[1] + pose.ty + 6, c[1] + pose.ty - 6)
            ax.set_title(f"zoom: error {math.hypot(r.dx - pose.tx, r.dy - pose.ty):.3f} px")
        else:
            ax.set_title(f"SNR 2, contrast 3 %, 5°: score {r.score:.2f}, "
                         f"dθ err {math.degrees(r.dtheta - pose.theta):+.3f}°", fontsize=9)
            ax.legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close("all")


def plot_error_vs_snr(cells: list[dict], path: Path) -> None:
    fig, axes = plt.subplots(1, len(MARKS), figsize=(4.2 * len(MARKS), 4), sharey=True)
    for ax, mark in zip(np.atleast_1d(axes), MARKS, strict=False):
        snrs = sorted({c["task"]["snr"] for c in cells if c["task"]["mark"] == mark})
        if not snrs:
            continue
        for m in METHODS:
            ys = [pooled(cells, m, lambda c, s=s, k=mark: c["task"]["mark"] == k and c["task"]["snr"] == s)
                  ["rms_px"] for s in snrs]
            style = "-o" if m in OURS else "--."
            ax.loglog(snrs, ys, style, label=m, lw=1.5 if m in OURS else 1)
        crb = [pooled(cells, METHODS[0],
                      lambda c, s=s, k=mark: c["task"]["mark"] == k and c["task"]["snr"] == s)["crb_px"]
               for s in snrs]
        ax.loglog(snrs, crb, "k-", lw=2.5, label="Cramér–Rao bound")
        ax.set_title(mark)
        ax.set_xlabel("SNR (contrast amplitude / noise sigma)")
        ax.grid(True, which="both", alpha=0.3)
    np.atleast_1d(axes)[0].set_ylabel("translation RMS error (px), all contrasts and rotations")
    np.atleast_1d(axes)[0].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def fmt(v, nd=3):
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "–"
    return f"{v:.{nd}f}"


def write_markdown(result: dict, path: Path) -> None:
    cells = result["cells"]
    L = ["# Sub-pixel mark alignment: error vs the Cramér–Rao bound and classical baselines", "",
         f"Generated by `bench/bench_alignment.py` on {result['machine']} in {result['wall_s']:.0f} s "
         f"wall ({result['workers']} worker processes, {result['n_images']} images with a mark, "
         f"{result['n_free']} without).", "",
         "Setup: " + result["setup"], "",
         "Translation RMS is radial (sqrt(mean(ex² + ey²))), the CRB is sqrt(CRB_xx + CRB_yy) of the "
         "(tx, ty, θ) bound; both pooled over the cells of a row as sqrt(mean of squares). CPU ms is "
         "the median CPU time per 256x256 ROI in one single-threaded process.", "",
         "## Targets", ""]
    for t in result["targets"]:
        L.append(f"- {'PASS' if t['pass'] else 'FAIL'}: {t['what']}: {t['measured']}")
    L += ["", "## Per method (pooled over marks, contrasts and rotations)", ""]
    for m in METHODS:
        ours_cols = " FA @min_score | miss @min_score |" if m in OURS else ""
        L += [f"### {m}", "", "| SNR | RMS px | CRB px | RMS/CRB | rot RMS ° | CPU ms | gross (>2 px) | "
                             "FA @99 % det. (30 % / 3 %) |" + ours_cols,
              "|---|---|---|---|---|---|---|---|" + ("---|---|" if m in OURS else "")]
        for s in sorted({c["task"]["snr"] for c in cells}):
            p = result["pooled"][m][str(s)]
            fa = result["false_accepts"][m].get(str(s), {})
            fa_s = " / ".join(fmt(fa.get(c, {}).get("fa_at_99pct_detection"), 3) for c in CONTRASTS)
            row = (f"| {s:g} | {fmt(p['rms_px'], 4)} | {fmt(p['crb_px'], 4)} | {fmt(p['rms_over_crb'], 2)} | "
                   f"{fmt(p['rms_theta_deg'], 4)} | {fmt(p['cpu_ms'], 2)} | {p['gross_failures']}/{p['n']} | "
                   f"{fa_s} |")
            if m in OURS:
                fam = max(fa.get(c, {}).get("fa_at_min_score", 0.0) for c in CONTRASTS)
                miss = max(fa.get(c, {}).get("miss_at_min_score", 0.0) for c in CONTRASTS)
                row += f" {fmt(fam, 3)} | {fmt(miss, 3)} |"
            L.append(row)
        L.append("")
    L += ["Translation-only methods cannot follow a 5° rotation of the chevron set: along its diagonal "
          "arms the best translation-only fit slides ~4 px; those cells (chevrons at 5°, 100 trials per SNR) "
          "are all the gross failures of skimage, matchTemplate and ECC translation above. "
          "cv2.phaseCorrelate whitens the spectrum and loses the peak in noise at SNR <= 5.", ""]
    L += ["## Ours vs the best baseline, per mark / SNR / contrast (pooled over rotations)", "",
          "| mark | SNR | contrast | CRB px | ours px | ours/CRB | best baseline | its px | ours / best |"
          " ours rot ° | CRB rot ° |", "|---|---|---|---|---|---|---|---|---|---|---|"]
    for row in result["versus"]:
        L.append(f"| {row['mark']} | {row['snr']:g} | {row['contrast']} | {fmt(row['crb_px'], 4)} | "
                 f"{fmt(row['ours_px'], 4)} | {fmt(row['ours_over_crb'], 2)} | {row['best']} | "
                 f"{fmt(row['best_px'], 4)} | {fmt(row['ours_over_best'], 2)} | "
                 f"{fmt(row['ours_theta_deg'], 4)} | {fmt(row['crb_theta_deg'], 4)} |")
    if result.get("robustness"):
        L += ["", "## Robustness (SNR 5, rotation 0.5°, pooled over marks and both contrasts)", "",
              "| degradation | " + " | ".join(METHODS) + " |", "|---|" + "---|" * len(METHODS)]
        for name, per in result["robustness"].items():
            L.append(f"| {name} | " + " | ".join(f"{fmt(per[m]['rms_px'], 3)} ({per[m]['gross_failures']})"
                                                  for m in METHODS) + " |")
        L += ["", "RMS px (gross failures > 2 px in brackets) over all trials. The CRB does not apply "
              "(structured nuisances are not white noise). Ours' decisions on these images (found when "
              "the mark is there / false accepts on the same conditions without the mark):", ""]
        for name, per in result["robustness"].items():
            o = per["ours (euclidean)"]
            L.append(f"- {name}: missed {100 * o['miss_at_min_score']:.1f} %, false accepts "
                     f"{100 * o['fa_at_min_score']:.1f} %")
    L += ["", "![error vs SNR](alignment_error_vs_snr.png)", "",
          "Error vs SNR per mark, pooled over both contrasts and the three rotations (so translation-only "
          "methods carry their 5° errors); black: the Cramér–Rao bound.", "",
          "![detection](alignment_overlay.png)", "",
          "A detection at SNR 2, 3 % contrast, 5°: the template's outline mapped through the found warp "
          "(green), the true and the found reference point; right: the same, 12 px wide.", ""]
    path.write_text("\n".join(L) + "\n")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite alignment.md from an existing alignment.json (no computation)")
    ap.add_argument("--quick", action="store_true", help="tiny grid, results not written to docs/")
    ap.add_argument("--trials", type=int, default=None, help="trials per cell (default 50, quick 5)")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--out", type=Path, default=None)
    args = ap.parse_args()
    trials = args.trials or (5 if args.quick else 50)
    free = 4 if args.quick else 25
    out = args.out or (Path("out/bench_alignment_quick") if args.quick else OUT)
    out.mkdir(parents=True, exist_ok=True)
    if args.markdown_only:
        write_markdown(json.loads((out / "alignment.json").read_text()), out / "alignment.md")
        return
    t0 = time.perf_counter()
    grid = tasks(args.quick, trials, free)
    rob = robustness_tasks(args.quick, 3 if args.quick else 12, 2 if args.quick else 15)
    with mp.get_context("fork").Pool(args.workers) as pool:
        results = []
        for i, r in enumerate(pool.imap_unordered(run_cell, grid + rob)):
            results.append(r)
            print(f"\r{i + 1}/{len(grid) + len(rob)} cells", end="", flush=True)
    print()
    cells, rcells = [], []
    for r in results:
        cell = {"task": r["task"], "summary": summarise_cell(r)}
        (rcells if "robustness" in r["task"] else cells).append(cell)
    cells.sort(key=lambda c: c["task"]["seed"])
    snrs = sorted({c["task"]["snr"] for c in cells})
    result = {
        "machine": f"{platform.machine()} {platform.processor() or ''} ({os.cpu_count()} cores)".strip(),
        "workers": args.workers, "quick": args.quick, "trials_per_cell": trials,
        "n_images": sum(c["task"]["trials"] for c in cells + rcells),
        "n_free": sum(c["task"]["free"] for c in cells),
        "setup": ("256x256 ROI, marks 128 px with 12 px lines, defocus sigma 1 px, Gaussian + shot noise "
                  "(shot half the variance at the background), 10 % illumination gradient, 10 % vignetting, "
                  f"shifts uniform in +-{MAX_SHIFT:g} px, rotations with random sign; template = golden "
                  "design rendering (same defocus, uniform light, no noise)."),
        "pooled": {m: {str(s): pooled(cells, m, lambda c, s=s: c["task"]["snr"] == s) for s in snrs}
                   for m in METHODS},
        "false_accepts": {m: {str(s): {c: false_accepts(cells, m, s, c) for c in CONTRASTS
                                       if any(x["task"]["contrast"] == c for x in cells)} for s in snrs}
                          for m in METHODS},
    }
    baselines = list(bl.BASELINES)
    versus = []
    for mark in MARKS:
        for s in snrs:
            for c in CONTRASTS:
                def f(x, mark=mark, s=s, c=c):
                    return x["task"]["mark"] == mark and x["task"]["snr"] == s and x["task"]["contrast"] == c
                if not any(f(x) for x in cells):
                    continue
                ours = pooled(cells, "ours (euclidean)", f)
                base = {b: pooled(cells, b, f)["rms_px"] for b in baselines}
                best = min(base, key=base.get)
                sel = [x for x in cells if f(x)]
                crb_th = math.sqrt(np.mean([x["summary"]["crb_theta_deg"] ** 2 for x in sel]))
                versus.append({"mark": mark, "snr": s, "contrast": c, "crb_px": ours["crb_px"],
                               "ours_px": ours["rms_px"], "ours_over_crb": ours["rms_over_crb"], "best": best,
                               "best_px": base[best], "ours_over_best": ours["rms_px"] / base[best],
                               "ours_theta_deg": ours["rms_theta_deg"], "crb_theta_deg": crb_th})
    result["versus"] = versus
    if rcells:
        result["robustness"] = {}
        for name in ROBUSTNESS:
            sel = [c for c in rcells if c["task"]["robustness"] == name]
            if not sel:
                continue
            per = {m: pooled(rcells, m, lambda c, n=name: c["task"]["robustness"] == n) for m in METHODS}
            for m in OURS:
                n_free = sum(c["summary"]["methods"][m]["n_free"] for c in sel)
                found = sum(c["summary"]["methods"][m]["free_found"] for c in sel)
                per[m]["fa_at_min_score"] = found / max(n_free, 1)
                per[m]["miss_at_min_score"] = per[m]["missed"] / max(per[m]["n"], 1)
            result["robustness"][name] = per
    # Targets (issue 4).
    low = [v for v in versus if v["snr"] <= 5]
    worst_crb = max(low, key=lambda v: v["ours_over_crb"])
    worst_best = max(low, key=lambda v: v["ours_over_best"])
    rot = [x for x in cells if x["task"]["snr"] >= 5]
    rot_rms = math.sqrt(np.mean([x["summary"]["methods"]["ours (euclidean)"]["rms_theta_deg"] ** 2
                                 for x in rot])) \
        if rot else math.nan
    rot_crb = math.sqrt(np.mean([x["summary"]["crb_theta_deg"] ** 2 for x in rot])) if rot else math.nan
    cpu = result["pooled"]["ours (euclidean)"]
    cpu_ms = float(np.median([cpu[str(s)]["cpu_ms"] for s in snrs]))
    cpu_sim = float(np.median([result["pooled"]["ours (similarity)"][str(s)]["cpu_ms"] for s in snrs]))
    fa = max(result["false_accepts"]["ours (euclidean)"][str(s)][c].get("fa_at_min_score", 0.0)
             for s in snrs for c in result["false_accepts"]["ours (euclidean)"][str(s)])
    fa_hard = max((per["ours (euclidean)"]["fa_at_min_score"]
                   for per in result.get("robustness", {}).values()), default=0.0)
    result["targets"] = [
        {"what": "translation RMS <= 1.5x CRB at SNR <= 5, every mark/SNR/contrast (pooled over rotations)",
         "pass": worst_crb["ours_over_crb"] <= 1.5,
         "measured": f"worst {worst_crb['ours_over_crb']:.2f}x ({worst_crb['mark']}, "
                     f"SNR {worst_crb['snr']:g}, "
                     f"{worst_crb['contrast']}); median {np.median([v['ours_over_crb'] for v in low]):.2f}x"},
        {"what": "translation RMS <= 1.1x CRB (aim), same cells",
         "pass": worst_crb["ours_over_crb"] <= 1.1,
         "measured": f"{sum(v['ours_over_crb'] <= 1.1 for v in low)}/{len(low)} cells"},
        {"what": "translation RMS <= 0.5x the best baseline at SNR <= 5",
         "pass": worst_best["ours_over_best"] <= 0.5,
         "measured": f"worst {worst_best['ours_over_best']:.2f}x ({worst_best['mark']}, "
                     f"SNR {worst_best['snr']:g}, "
                     f"{worst_best['contrast']}, best = {worst_best['best']}); median "
                     f"{np.median([v['ours_over_best'] for v in low]):.2f}x"},
        {"what": "rotation RMS <= 0.01° for 128 px marks at SNR >= 5",
         "pass": rot_rms <= 0.01,
         "measured": f"{rot_rms:.4f}° pooled (CRB {rot_crb:.4f}°); per SNR: " + ", ".join(
             f"SNR {s:g}: {cpu_rot:.4f}°" for s, cpu_rot in
             ((s, result['pooled']['ours (euclidean)'][str(s)]['rms_theta_deg']) for s in snrs if s >= 5))},
        {"what": "<= 3 ms per 256x256 ROI on one core", "pass": cpu_ms <= 3.0,
         "measured": f"median CPU {cpu_ms:.2f} ms (similarity: {cpu_sim:.2f} ms)"},
        {"what": "false accepts <= 1 % on mark-free images (configured min_score)",
         "pass": max(fa, fa_hard) <= 0.01,
         "measured": f"worst SNR/contrast condition {100 * fa:.1f} %; with texture / glare / particles "
                     f"(robustness set) worst {100 * fa_hard:.1f} %"},
    ]
    result["cells"] = cells
    result["robustness_cells"] = rcells
    overlay_picture(out / "alignment_overlay.png")
    plot_error_vs_snr(cells, out / "alignment_error_vs_snr.png")
    result["wall_s"] = time.perf_counter() - t0
    (out / "alignment.json").write_text(json.dumps(result, indent=1, default=float))
    write_markdown(result, out / "alignment.md")
    print((out / "alignment.md").read_text().split("## Per method")[0])


if __name__ == "__main__":
    main()
