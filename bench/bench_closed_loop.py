"""Closed-loop stage alignment in simulation (issue 4): moves needed to reach 0.05 px.

A stage twin (x, y, theta) carries a 128 px cross (12 px lines) under a camera of 1 µm/px: SNR 5,
30 % contrast, 10 % light gradient and vignetting, defocus 1 px. The controller believes the
nominal calibration while the true one has a 1 % scale error and a 0.5° axis rotation error;
the stage has 0.25 µm backlash per axis (the controller compensates a nominal 0.2 µm) and 5 nm
settling noise. Starts are uniform in the capture range (+-30 px, +-2°). The loop measures
(averaging 4 frames once the predicted residual is below 1 px), moves, and repeats until the
measured offset is below 0.035 px (and 0.011°).

Variants show what matters: single-frame measurements, no backlash compensation, 3 % contrast.

Writes docs/benchmarks/closed_loop.{json,md,png}; ``--quick`` for a smoke run (not written).
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import multiprocessing as mp  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import cv2  # noqa: E402
import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from weak_template_ros.align import AlignerConfig, Calibration, prepare_template  # noqa: E402
from weak_template_ros.align.closed_loop import LoopConfig, run_closed_loop  # noqa: E402
from weak_template_ros.twin.marks import Degradations, MarkSpec, golden_template  # noqa: E402
from weak_template_ros.twin.stage import StageConfig, make_stage  # noqa: E402

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
SPEC = MarkSpec("cross", 128.0, 12.0)
PIXEL = 1e-6
TARGET_PX = 0.05
START_PX, START_DEG = 30.0, 2.0
NOMINAL = Calibration(pixel_size=PIXEL)
TRUE = Calibration(pixel_size=PIXEL, scale=1.01, rotation=math.radians(0.5))
STAGE = StageConfig(backlash_xy=0.25e-6, backlash_theta=25e-6, settle_sigma_xy=5e-9, settle_sigma_theta=1e-6)
VARIANTS = {
    "baseline: SNR 5, 30 % contrast": {},
    "single-frame measurements": {"loop": {"fine_frames": 1}},
    "no backlash compensation": {"loop": {"backlash_xy": 0.0, "backlash_theta": 0.0}},
    "3 % contrast": {"contrast": 0.03},
}


def run_trial(args: tuple[str, int]) -> dict:
    cv2.setNumThreads(1)
    name, i = args
    v = VARIANTS[name]
    d = Degradations(contrast=v.get("contrast", 0.3), snr=5.0, gradient=0.1, vignetting=0.1,
                     defocus_sigma=1.0)
    prep = prepare_template(golden_template(SPEC, (256, 256), d), AlignerConfig(motion="euclidean"))
    loop = dataclasses.replace(LoopConfig(), **v.get("loop", {}))
    rng = np.random.default_rng([2024, i])
    start = np.array([rng.uniform(-START_PX, START_PX) * PIXEL, rng.uniform(-START_PX, START_PX) * PIXEL,
                      math.radians(rng.uniform(-START_DEG, START_DEG))])
    stage = make_stage(SPEC, d, TRUE, STAGE, start=start, rng=rng)
    t0 = time.process_time()
    res = run_closed_loop(stage, prep, NOMINAL, loop, rng)
    return {"variant": name, "trial": i, "moves_to_target": res.moves_to(TARGET_PX), "moves": res.moves,
            "done": res.done, "found": res.found, "true_px": res.true_px, "measured_px": res.measured_px,
            "true_theta_deg": [math.degrees(t) for t in res.true_theta], "frames": res.frames,
            "cpu_s": time.process_time() - t0}


def summarise(rows: list[dict]) -> dict:
    m = [r["moves_to_target"] for r in rows]
    reached = [x for x in m if x is not None]
    hist = {str(k): sum(1 for x in m if x == k) for k in range(0, 8)}
    hist["never"] = sum(1 for x in m if x is None)
    final = [r["true_px"][-1] for r in rows]
    return {
        "n": len(rows),
        "moves_to_target_hist": hist,
        "within_3_moves": sum(1 for x in reached if x <= 3) / len(rows),
        "mean_moves_to_target": float(np.mean(reached)) if reached else None,
        "loop_done": sum(r["done"] for r in rows) / len(rows),
        "loop_moves_hist": {str(k): sum(1 for r in rows if r["moves"] == k) for k in range(0, 8)},
        "final_true_px_median": float(np.median(final)), "final_true_px_p95": float(np.quantile(final, 0.95)),
        "final_true_theta_deg_p95": float(np.quantile([r["true_theta_deg"][-1] for r in rows], 0.95)),
        "residual_after_move_1_px_median": float(np.median([r["true_px"][1] for r in rows
                                                            if len(r["true_px"]) > 1])),
        "frames_per_run_mean": float(np.mean([sum(r["frames"]) for r in rows])),
        "not_found": sum(1 for r in rows if not r["found"]),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true")
    ap.add_argument("--trials", type=int, default=None, help="starts per variant (default 200, quick 6)")
    ap.add_argument("--workers", type=int, default=2)
    args = ap.parse_args()
    n = args.trials or (6 if args.quick else 200)
    out = Path("out/bench_closed_loop_quick") if args.quick else OUT
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    jobs = [(name, i) for name in VARIANTS
            for i in range(n if name.startswith("baseline") else max(n // 2, 3))]
    with mp.get_context("fork").Pool(args.workers) as pool:
        rows = pool.map(run_trial, jobs, chunksize=4)
    result = {"setup": __doc__.split("\n\n")[1].replace("\n", " "), "target_px": TARGET_PX,
              "variants": {name: summarise([r for r in rows if r["variant"] == name]) for name in VARIANTS},
              "wall_s": time.perf_counter() - t0, "trials": rows}
    base = result["variants"]["baseline: SNR 5, 30 % contrast"]
    result["target"] = {"what": "<= 0.05 px within 3 moves from random starts in the capture range",
                        "pass": base["within_3_moves"] >= 0.99, "within_3_moves": base["within_3_moves"]}
    (out / "closed_loop.json").write_text(json.dumps(result, indent=1))
    # Plot: histogram of moves needed + residual traces.
    fig, axes = plt.subplots(1, 2, figsize=(11, 4))
    ks = [str(k) for k in range(0, 6)] + ["never"]
    width = 0.8 / len(VARIANTS)
    for j, (name, s) in enumerate(result["variants"].items()):
        frac = [s["moves_to_target_hist"].get(k, 0) / s["n"] for k in ks]
        axes[0].bar(np.arange(len(ks)) + j * width, frac, width, label=name)
    axes[0].set_xticks(np.arange(len(ks)) + 0.4 - width / 2, ks)
    axes[0].set_xlabel(f"moves until the true residual is <= {TARGET_PX} px")
    axes[0].set_ylabel("fraction of runs")
    axes[0].legend(fontsize=7)
    for r in [r for r in rows if r["variant"].startswith("baseline")][:60]:
        axes[1].semilogy(range(len(r["true_px"])), np.maximum(r["true_px"], 1e-4), "-", color="C0", alpha=0.3)
    axes[1].axhline(TARGET_PX, color="k", ls="--", label=f"{TARGET_PX} px")
    axes[1].set_xlabel("moves")
    axes[1].set_ylabel("true residual (px)")
    axes[1].set_title("baseline variant, 60 runs")
    axes[1].legend()
    fig.tight_layout()
    fig.savefig(out / "closed_loop.png", dpi=110)
    plt.close(fig)
    L = ["# Closed-loop stage alignment (simulation)", "",
         f"Generated by `bench/bench_closed_loop.py` in {result['wall_s']:.0f} s wall "
         f"({args.workers} processes).", "", "Setup: " + result["setup"], "",
         f"Target: true residual <= {TARGET_PX} px within 3 moves: "
         f"**{'PASS' if result['target']['pass'] else 'FAIL'}** "
         f"({100 * base['within_3_moves']:.1f} % of {base['n']} runs).", "",
         "| variant | runs | moves to <= 0.05 px: 0 / 1 / 2 / 3 / 4 / 5+ / never | within 3 | residual after "
         "move 1 (median px) | loop declares done | final residual median / p95 px | final rot p95 ° | "
         "frames per run |", "|---|---|---|---|---|---|---|---|---|"]
    for name, s in result["variants"].items():
        h = s["moves_to_target_hist"]
        five = sum(h[str(k)] for k in range(5, 8))
        hist = f"{h['0']} / {h['1']} / {h['2']} / {h['3']} / {h['4']} / {five} / {h['never']}"
        L.append(f"| {name} | {s['n']} | {hist} | {100 * s['within_3_moves']:.1f} % | "
                 f"{s['residual_after_move_1_px_median']:.3f} | {100 * s['loop_done']:.0f} % | "
                 f"{s['final_true_px_median']:.4f} / {s['final_true_px_p95']:.4f} | "
                 f"{s['final_true_theta_deg_p95']:.4f} | {s['frames_per_run_mean']:.1f} |")
    L += ["", "Moves are stage moves; frames are camera images (several are averaged near the target). "
          "The first move leaves ~1.9 % of the start offset (1 % scale + 0.5° axis error); the second "
          "reaches the measurement noise.", "", "![closed loop](closed_loop.png)", ""]
    (out / "closed_loop.md").write_text("\n".join(L) + "\n")
    print("\n".join(L))


if __name__ == "__main__":
    main()
