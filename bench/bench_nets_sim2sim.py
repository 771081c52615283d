"""Sim-to-sim of the learned detector (issue 8): fine-tuned on twin-only vs mixed twin + BlenderProc
data, evaluated on held-out BlenderProc images and on the twin's held-out set.

1. Renders (cached in ``out/nets_sim2sim/``, gitignored) two disjoint BlenderProc pools with
   :func:`weak_template_ros.nets.bproc_data.render_pool`: a training pool in the detector's
   training geometry (192x192 images, marks of the 6 training kinds, 56-72 px, scale 0.8-1.25,
   ±30°) and a held-out pool in its held-out geometry (256x256, 64 px marks with 6 px lines of
   the 4 evaluation kinds, scale 0.8-1.25, ±30°); polished wafer + coaxial light and glossy PCB +
   ring light in turn, 1-4 Cycles samples, sensor noise at SNR 1, 2, 5 or 20, some images without
   the mark (moved out of view) or scored against another kind's template.
2. Fine-tunes the shipped detector (weak_template_ros/nets/weights/detector.pt) the same number
   of steps with the same seed (a) on the twin stream only and (b) on
   :class:`~weak_template_ros.nets.bproc_data.MixedDetectorSource` (``--fraction`` of each batch
   from the training pool); one torch thread, data rendered in the training process.
3. Scores the shipped detector, (a) and (b) with :func:`weak_template_ros.nets.evaluate.
   evaluate_detector` (threshold 0.5) on the BlenderProc held-out pool and on the twin held-out
   set of the shipped card (seed 7).

The refiner is not part of it: its card says no checkpoint beat the initialisation (step 0) on
validation, so the shipped refiner is its initialisation and there is nothing to fine-tune.

Writes docs/benchmarks/nets_sim2sim.{json,md,png}. Run with ``nice -n 10``; one core.
"""

from __future__ import annotations

import os

for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import dataclasses  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import platform  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import matplotlib  # noqa: E402

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import torch  # noqa: E402

from weak_template_ros.nets import data as D  # noqa: E402
from weak_template_ros.nets.bproc_data import MixedDetectorSource, load_pool, render_pool  # noqa: E402
from weak_template_ros.nets.evaluate import detector_metrics, run_detector  # noqa: E402
from weak_template_ros.nets.infer import LearnedDetector  # noqa: E402
from weak_template_ros.nets.train import load_config, train  # noqa: E402
from weak_template_ros.nets.weights import shipped  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs" / "benchmarks"
THRESHOLD = 0.5


def load() -> float:
    return round(os.getloadavg()[0], 2)


def hits(samples, best, threshold=THRESHOLD, tolerance=0.1) -> np.ndarray:
    """Per image: the top detection is the mark (within 10 % of its extent, score >= threshold);
    the rule of evaluate.detector_metrics, per sample for paired comparisons."""
    out = np.zeros(len(samples), bool)
    for i, (s, b) in enumerate(zip(samples, best, strict=True)):
        if b is not None and s[3] and b.score >= threshold:
            out[i] = math.hypot(b.x - s[4][0], b.y - s[4][1]) <= tolerance * s[2][2] * math.exp(s[5])
    return out


def falses(samples, best, threshold=THRESHOLD) -> np.ndarray:
    h = hits(samples, best, threshold)
    score = np.array([b.score if b else 0.0 for b in best])
    return (score >= threshold) & ~h


def evaluate(model_path: Path, sets: dict) -> dict:
    det = LearnedDetector(model_path)
    out = {}
    for name, samples in sets.items():
        t0 = time.process_time()
        best = run_detector(det, samples)
        cpu = time.process_time() - t0
        m = detector_metrics(samples, best, THRESHOLD)
        m["cpu_ms_per_image"] = 1000 * cpu / len(samples)
        m["hit"] = hits(samples, best).tolist()
        m["false"] = falses(samples, best).tolist()
        groups = {}
        for key in ("look", "snr"):
            vals = sorted({_group(s, key) for s in samples}, key=lambda v: (str(type(v)), v))
            groups[key] = {str(v): {k: x for k, x in detector_metrics(
                [s for s in samples if _group(s, key) == v],
                [b for s, b in zip(samples, best, strict=True) if _group(s, key) == v], THRESHOLD).items()
                if k in ("n", "n_present", "recall", "false_detection_rate", "centre_rms_px")}
                for v in vals}
        m["by"] = groups
        out[name] = m
    return out


def _group(s, key):
    i = s[7]
    if key == "look":
        return f"{i['surface']}/{i['light']}" if "surface" in i else "twin"
    return i.get("snr")


def finetune(name: str, cfg, out: Path, batches=None) -> dict:
    path = out / "detector.pt"
    card_path = out / "card.json"
    if path.is_file() and card_path.is_file():
        card = json.loads(card_path.read_text())
        if card["training"]["config"] == json.loads(json.dumps(dataclasses.asdict(cfg))) and \
                card["training"].get("batches") == (repr(batches) if batches is not None else None):
            print(f"{name}: cached {path}", flush=True)
            return card
    t0 = time.time()

    def on_step(done, steps, stats):
        if done % 10 == 0 or done == steps:
            print(f"{name}: step {done}/{steps} loss {stats['loss']:.3f} ({time.time() - t0:.0f} s, load "
                  f"{load()})", flush=True)

    card = train("detector", cfg, out, resume=True, on_step=on_step, batches=batches,
                 init_weights=shipped("detector"))
    card["training"]["load_average_at_end"] = load()
    card_path.write_text(json.dumps(card, indent=1, default=str))
    return card


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--out", type=Path, default=ROOT / "out" / "nets_sim2sim")
    ap.add_argument("--train-jobs", type=int, default=100, help="BlenderProc runs of the training pool")
    ap.add_argument("--train-group", type=int, default=6, help="images per training-pool run")
    ap.add_argument("--heldout-jobs", type=int, default=50, help="BlenderProc runs of the held-out pool")
    ap.add_argument("--heldout-group", type=int, default=4, help="images per held-out run")
    ap.add_argument("--pool-seed", type=int, default=11)
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--lr", type=float, default=5e-4)
    ap.add_argument("--fraction", type=float, default=0.5, help="BlenderProc share of the mixed batches")
    ap.add_argument("--twin-n", type=int, default=192, help="twin held-out samples scored (seed 7)")
    ap.add_argument("--docs", type=Path, default=DOCS)
    ap.add_argument("--markdown-only", action="store_true",
                    help="rewrite nets_sim2sim.md and .png from the JSON of the last run")
    a = ap.parse_args()
    if a.markdown_only:
        report = json.loads((a.docs / "nets_sim2sim.json").read_text())
        plot(report, a.docs / "nets_sim2sim.png")
        (a.docs / "nets_sim2sim.md").write_text(markdown(report))
        return
    torch.set_num_threads(1)
    t_start = time.time()
    timing = {}

    # 1. BlenderProc pools (cached).
    t0 = time.time()
    train_s = dataclasses.replace(D.DetectorSampling(), group=a.train_group)
    held_s = dataclasses.replace(D.HELDOUT_DETECTOR, group=a.heldout_group)
    render_pool(a.out / "heldout_pool", range(a.heldout_jobs), a.pool_seed, D.HELDOUT_STREAM, held_s,
                D.EVAL_KINDS, fixed_mark=(64.0, 6.0))
    render_pool(a.out / "train_pool", range(a.train_jobs), a.pool_seed, D.TRAIN_STREAM, train_s,
                D.TRAIN_KINDS)
    heldout_bp = load_pool(a.out / "heldout_pool")[: a.heldout_jobs * a.heldout_group]
    train_pool = load_pool(a.out / "train_pool")[: a.train_jobs * a.train_group]
    timing["pools_s"] = time.time() - t0
    render_wall = sorted({(s[7]["job"], s[7]["render_wall_s"]) for s in train_pool + heldout_bp})
    print(f"pools: {len(train_pool)} training, {len(heldout_bp)} held-out BlenderProc images", flush=True)

    # 2. Fine-tuning, same seed and steps.
    cfg = load_config("detector", ROOT / "config" / "nets_detector.yaml",
                      {"steps": a.steps, "lr": a.lr, "workers": 0, "threads": 1, "heldout_n": 24,
                       "heldout_subset": 24, "checkpoint_every": max(a.steps // 4, 1)})
    mixed = MixedDetectorSource(train_pool, a.fraction)
    mixed.where = str((a.out / "train_pool").relative_to(ROOT))
    cards = {}
    for name, batches in (("twin_only", None), ("mixed", mixed)):
        t0 = time.time()
        cards[name] = finetune(name, cfg, a.out / name, batches)
        timing[f"finetune_{name}_s"] = time.time() - t0

    # 3. Evaluation.
    t0 = time.time()
    twin = D.heldout_samples("detector", 7, a.twin_n)
    sets = {"blenderproc_heldout": heldout_bp, "twin_heldout": twin}
    models = {"shipped": shipped("detector"), "twin_only": a.out / "twin_only" / "detector.pt",
              "mixed": a.out / "mixed" / "detector.pt"}
    results = {}
    for name, path in models.items():
        results[name] = evaluate(path, sets)
        print(name, {k: (v["recall"], v["false_detection_rate"], v["centre_rms_px"]) for k, v in
                     results[name].items()}, flush=True)
    timing["evaluation_s"] = time.time() - t0

    # Paired changes on the BlenderProc held-out set (same images): hits gained / lost.
    paired = {}
    for name in ("twin_only", "mixed"):
        for set_name in sets:
            h0 = np.array(results["shipped"][set_name]["hit"])
            h1 = np.array(results[name][set_name]["hit"])
            f0 = np.array(results["shipped"][set_name]["false"])
            f1 = np.array(results[name][set_name]["false"])
            paired[f"{name} vs shipped / {set_name}"] = {
                "hits_gained": int((h1 & ~h0).sum()), "hits_lost": int((h0 & ~h1).sum()),
                "false_gained": int((f1 & ~f0).sum()), "false_lost": int((f0 & ~f1).sum())}
    h_t = np.array(results["twin_only"]["blenderproc_heldout"]["hit"])
    h_m = np.array(results["mixed"]["blenderproc_heldout"]["hit"])
    f_t = np.array(results["twin_only"]["blenderproc_heldout"]["false"])
    f_m = np.array(results["mixed"]["blenderproc_heldout"]["false"])
    paired["mixed vs twin_only / blenderproc_heldout"] = {
        "hits_gained": int((h_m & ~h_t).sum()), "hits_lost": int((h_t & ~h_m).sum()),
        "false_gained": int((f_m & ~f_t).sum()), "false_lost": int((f_t & ~f_m).sum())}

    info = [s[7] for s in heldout_bp]
    report = {
        "issue": 8, "what": "learned detector fine-tuned on twin-only vs mixed (twin + BlenderProc) data",
        "created": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "machine": {"machine": platform.machine(), "cpu_count": os.cpu_count(), "torch": torch.__version__,
                    "threads": 1, "load_average_1min_at_end": load(), "shared": True},
        "setup": {
            "init_weights": str(shipped("detector").relative_to(ROOT)),
            "steps": a.steps, "batch": cfg.batch, "lr": a.lr, "seed": cfg.seed,
            "fraction_blenderproc": a.fraction,
            "threshold": THRESHOLD, "pool_seed": a.pool_seed,
            "train_pool": {"images": len(train_pool), "runs": a.train_jobs, "images_per_run": a.train_group,
                           "geometry": dataclasses.asdict(train_s), "kinds": list(D.TRAIN_KINDS)},
            "heldout_pool": {"images": len(heldout_bp), "runs": a.heldout_jobs,
                             "images_per_run": a.heldout_group,
                             "n_present": int(sum(s[3] for s in heldout_bp)),
                             "n_empty": sum(i["role"] == "empty" for i in info),
                             "n_distractor": sum(i["role"] == "distractor" for i in info),
                             "geometry": dataclasses.asdict(held_s), "kinds": list(D.EVAL_KINDS),
                             "mark": "64 px, 6 px lines"},
            "twin_heldout": {"seed": 7, "n": len(twin), "note": "the shipped card's held-out set (first "
                             f"{len(twin)} samples)"},
            "render_wall_s_per_run": {"median": float(np.median([w for _, w in render_wall])),
                                      "runs": len(render_wall)},
        },
        "training": {k: {"wall_s": c["training"]["wall_s"], "cpu_s": c["training"]["cpu_s_training_process"],
                         "samples_seen": c["training"]["samples_seen"],
                         "batches": c["training"].get("batches", "twin stream"),
                         "history_tail": c["training"]["history_tail"],
                         "load_average_at_end": c["training"].get("load_average_at_end")}
                     for k, c in cards.items()},
        "results": {m: {s: {k: v for k, v in r.items() if k not in ("hit", "false")} for s, r in rs.items()}
                    for m, rs in results.items()},
        "paired": paired, "timing_s": timing, "total_s": time.time() - t_start,
    }
    a.docs.mkdir(parents=True, exist_ok=True)
    (a.docs / "nets_sim2sim.json").write_text(json.dumps(report, indent=1, default=str))
    plot(report, a.docs / "nets_sim2sim.png")
    (a.docs / "nets_sim2sim.md").write_text(markdown(report))
    print(f"wrote {a.docs / 'nets_sim2sim.json'} and .png ({time.time() - t_start:.0f} s)")


def _f(v, digits=3) -> str:
    return "–" if v is None or (isinstance(v, float) and not math.isfinite(v)) else f"{v:.{digits}f}"


def _se(p: float, n: int) -> float:
    """Binomial standard error of a rate p over n trials."""
    return math.sqrt(max(p * (1 - p), 1.0 / max(n, 1)) / max(n, 1))


def markdown(r: dict) -> str:
    su, res = r["setup"], r["results"]
    tp, hp = su["train_pool"], su["heldout_pool"]
    L = ["# Sim-to-sim of the learned detector: twin-only vs mixed fine-tuning (issue 8)", "",
         f"Created {r['created']} by `nice -n 10 .venv/bin/python bench/bench_nets_sim2sim.py` "
         f"({r['total_s'] / 60:.1f} min for this run; BlenderProc pools and fine-tuned weights are cached in "
         "`out/nets_sim2sim/` and reused when present, the training times below are those of the runs "
         "that made the weights). "
         f"Machine: {r['machine']['cpu_count']} shared cores, one torch thread, 1-min load average "
         f"{r['machine']['load_average_1min_at_end']} at the end (other engineers' jobs: wall times are "
         "inflated, the metrics are not).", "",
         "## Setup", "",
         f"- **Start**: the shipped detector `{su['init_weights']}` (trained only on the mark twin). Both "
         f"fine-tunings run {su['steps']} steps x {su['batch']} samples, Adam lr {su['lr']} (5 % "
         f"warm-up, cosine), "
         f"seed {su['seed']}, the same config (`config/nets_detector.yaml` otherwise), data rendered in the "
         "training process on one core.",
         "- **(a) twin only**: the twin's on-the-fly stream (`data.detector_training_batch`).",
         f"- **(b) mixed**: `bproc_data.MixedDetectorSource`: {100 * su['fraction_blenderproc']:g} "
         f"% of each batch "
         "drawn (seeded) from the BlenderProc training pool, the rest the first samples of the twin batch of "
         "the same step.",
         f"- **BlenderProc training pool**: {tp['images']} images ({tp['runs']} BlenderProc runs x "
         f"{tp['images_per_run']} images of one mark), the detector's training geometry: 192x192 images, "
         "marks of the 6 training kinds at 56-72 px, scale 0.8-1.25, ±30°, anywhere in the image; "
         "~15 % of the "
         "images without the mark (the stage moves it out of view), ~15 % scored against another "
         "kind's template.",
         f"- **BlenderProc held-out set**: {hp['images']} images ({hp['runs']} runs x "
         f"{hp['images_per_run']}), "
         f"disjoint from the pool (own seed stream and geometry): the detector's held-out geometry, 256x256, "
         f"{hp['mark']} marks of the 4 evaluation kinds at scale 0.8-1.25 and ±30°; {hp['n_present']} images "
         f"with the template's mark, {hp['n_empty']} without any mark, {hp['n_distractor']} showing "
         f"another kind. "
         "The first image of each run always shows a mark (it sets the exposure and polarity), so "
         "the mark-free "
         "share is a little below the twin set's 12.5 %.",
         "- **Rendering** (`sim/mark_scene.py` via `bproc_data.render_detector_job`): the mark twin's exact "
         "coverage as a texture; runs alternate polished wafer + coaxial light and glossy PCB + ring light; "
         "1, 2 or 4 Cycles samples (Cycles' own noise stays in); then the twin's sensor noise at SNR 1, 2, 5 "
         "or 20 (mark-to-background step over the noise sigma at the background); golden template of the "
         "design with the measured polarity. Median BlenderProc wall time per run "
         f"{su['render_wall_s_per_run']['median']:.1f} s (mostly process start).",
         f"- **Twin held-out set**: {su['twin_heldout']['note']}, seed 7 (never trained on).",
         f"- **Metrics** (`nets.evaluate.evaluate_detector`, threshold {su['threshold']}): recall = top "
         "detection within 10 % of the mark's extent at score ≥ threshold; false detection rate = "
         "images whose "
         "top detection reaches the threshold but is not the mark, over all images; centre RMS over "
         "the hits.",
         "", "## Results", "",
         "| model | set | n (with mark) | recall | false det. rate | false on mark-free | recall @1 "
         "% false | "
         "centre RMS px | angle RMS ° |", "|---|---|---|---|---|---|---|---|---|"]
    for m, rs in res.items():
        for s, x in rs.items():
            L.append(f"| {m} | {s} | {x['n']} ({x['n_present']}) | {_f(x['recall'])} ± "
                     f"{_f(_se(x['recall'], x['n_present']))} | {_f(x['false_detection_rate'])} | "
                     f"{_f(x['false_on_mark_free'])} | {_f(x['recall_at_1pct_false'])} | "
                     f"{_f(x['centre_rms_px'])} | "
                     f"{_f(x['angle_rms_deg'], 2)} |")
    L += ["", "± is the binomial standard error of the recall. Paired changes on the same images "
          "(hits / false detections gained and lost):", "", "| comparison | hits gained | hits lost | "
          "false gained | false lost |", "|---|---|---|---|---|"]
    for k, v in r["paired"].items():
        L.append(f"| {k} | {v['hits_gained']} | {v['hits_lost']} | {v.get('false_gained', '–')} | "
                 f"{v.get('false_lost', '–')} |")
    L += ["", "BlenderProc held-out set by look and by SNR (recall / false detection rate / centre RMS px, "
          "n with mark):", "", "| group | " + " | ".join(res) + " |", "|---|" + "---|" * len(res)]
    first = next(iter(res))
    for key in ("look", "snr"):
        for g in sorted(res[first]["blenderproc_heldout"]["by"][key], key=_num_first):
            cells = []
            for m in res:
                x = res[m]["blenderproc_heldout"]["by"][key][g]
                cells.append(f"{_f(x['recall'], 2)} / {_f(x['false_detection_rate'], 2)} / "
                             f"{_f(x['centre_rms_px'], 2)} (n {x['n_present']})")
            L.append(f"| {key} {g} | " + " | ".join(cells) + " |")
    L += ["", "![recall, false detections, centre RMS](nets_sim2sim.png)", "", *conclusion(r), "",
          "Training wall time (one core, shared machine): " + "; ".join(
              f"{k} {v['wall_s']:.0f} s (training-process CPU {v['cpu_s']:.0f} s, load "
              f"{v['load_average_at_end']})"
              for k, v in r["training"].items()) + ".", ""]
    return "\n".join(L) + "\n"


def _num_first(v: str):
    try:
        return (0, float(v), "")
    except ValueError:
        return (1, 0.0, v)


def _paired_words(p: dict) -> str:
    g, lost = p["hits_gained"], p["hits_lost"]
    if g + lost == 0:
        return "the same images hit (0 gained, 0 lost)"
    # Sign test on the discordant images: a change within 2 sqrt(g + l) is not told from chance.
    sig = abs(g - lost) > 2 * math.sqrt(max(g + lost, 1))
    return (f"{g} hits gained, {lost} lost on the same images: "
            + ("a difference beyond chance (|g - l| > 2 sqrt(g + l))" if sig else
               "not distinguishable from chance (|g - l| <= 2 sqrt(g + l))"))


def _false_words(p: dict) -> str:
    g, lost = p.get("false_gained"), p.get("false_lost")
    if g is None:
        return ""
    if abs(g - lost) <= 2 * math.sqrt(max(g + lost, 1)):
        return (f"Mixed vs twin-only on the BlenderProc set: {g} false detections gained, {lost} lost on the "
                "same images (within chance): what fine-tuning changes against the shipped model, it changes "
                "with twin-only data as well; the BlenderProc images add nothing measurable.")
    return (f"Mixed vs twin-only on the BlenderProc set: {g} false detections gained, {lost} lost on the "
            "same images, beyond chance.")


def conclusion(r: dict) -> list[str]:
    """The conclusion, worded from the numbers (so a rerun cannot leave stale claims)."""
    res, pr = r["results"], r["paired"]
    bp, tw = "blenderproc_heldout", "twin_heldout"
    s = res["shipped"]
    n_bp = s[bp]["n_present"]
    L = ["## Conclusion", "",
         f"- **Twin → BlenderProc gap of the shipped (twin-only) detector**: recall "
         f"{_f(s[tw]['recall'])} on the "
         f"twin held-out set vs {_f(s[bp]['recall'])} on BlenderProc images; false detection rate "
         f"{_f(s[tw]['false_detection_rate'])} vs {_f(s[bp]['false_detection_rate'])}; centre RMS "
         f"{_f(s[tw]['centre_rms_px'], 2)} vs {_f(s[bp]['centre_rms_px'], 2)} px. With {n_bp} BlenderProc "
         f"images with a mark, one image is {100 / max(n_bp, 1):.1f} recall points and the standard error "
         f"is ±{100 * _se(s[bp]['recall'], n_bp):.1f} points: the gap is "
         + ("within the noise of this set." if abs(s[tw]["recall"] - s[bp]["recall"]) <=
            2 * math.hypot(_se(s[bp]["recall"], n_bp), _se(s[tw]["recall"], s[tw]["n_present"]))
            else "larger than the noise of this set.")
         + " The two sets' conditions differ (the twin set's regime grid includes 3 % contrast and strong "
           "illumination gradients; the BlenderProc set has the rendered surfaces' own "
           "contrast at SNR 1-20), "
           "so this is a comparison of two test sets, not a controlled measurement of the gap.",
         f"- **Mixed vs twin-only fine-tuning on BlenderProc held-out images**: recall "
         f"{_f(res['mixed'][bp]['recall'])} vs {_f(res['twin_only'][bp]['recall'])}, false detection rate "
         f"{_f(res['mixed'][bp]['false_detection_rate'])} vs "
         f"{_f(res['twin_only'][bp]['false_detection_rate'])}"
         f", centre RMS {_f(res['mixed'][bp]['centre_rms_px'], 2)} vs "
         f"{_f(res['twin_only'][bp]['centre_rms_px'], 2)} px; "
         + _paired_words(pr["mixed vs twin_only / blenderproc_heldout"]) + ".",
         f"- **On the twin held-out set** (does BlenderProc data cost twin accuracy?): recall "
         f"{_f(res['mixed'][tw]['recall'])} mixed vs {_f(res['twin_only'][tw]['recall'])} twin-only vs "
         f"{_f(s[tw]['recall'])} shipped; mixed vs shipped: "
         + _paired_words(pr[f"mixed vs shipped / {tw}"]) + ".",
         "- **False detections**: " + "; ".join(
             f"{set_name}: mark-free images answered above threshold "
             f"{_f(s[set_name]['false_on_mark_free'], 2)} "
             f"shipped, {_f(res['twin_only'][set_name]['false_on_mark_free'], 2)} twin-only, "
             f"{_f(res['mixed'][set_name]['false_on_mark_free'], 2)} mixed (of "
             f"{s[set_name]['n'] - s[set_name]['n_present']} images)" for set_name in (bp, tw))
         + ". " + _false_words(pr["mixed vs twin_only / blenderproc_heldout"]),
         "- **What limits this**: the sets are small (a difference under ~2 standard errors, a few images, "
         "cannot be told from chance) and the fine-tuning is short (minutes on one shared core); the shipped "
         "detector leaves little to gain on these BlenderProc images (see its recall), as they carry the "
         "twin's exact "
         "mark coverage and the twin's sensor-noise model: the domain shift tested is the surface (specular "
         "wafer, coated PCB), the light (coaxial, ring), Cycles' sampling noise and the rendered "
         "shading, not "
         "real optics or process variation; transfer to real images needs a real-image set.",
         "- **Refiner**: not fine-tuned. Its card says no checkpoint of its training beat step 0 on "
         "validation, "
         "so the shipped refiner is its initialisation (Gauss–Newton on normalised intensity); there is "
         "nothing learned to adapt with this budget."]
    return L


def plot(report: dict, path: Path) -> None:
    res = report["results"]
    models = list(res)
    sets = list(res[models[0]])
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.6))
    w = 0.8 / len(models)
    metrics = (("recall", "recall @ 0.5"), ("false_detection_rate", "false detection rate @ 0.5"),
               ("centre_rms_px", "centre RMS of hits (px)"))
    for ax, (metric, label) in zip(axes, metrics, strict=True):
        for j, m in enumerate(models):
            vals = [res[m][s][metric] for s in sets]
            err = ([_se(res[m][s]["recall"], res[m][s]["n_present"]) for s in sets] if metric == "recall"
                   else None)
            ax.bar(np.arange(len(sets)) + (j - (len(models) - 1) / 2) * w, vals, w, yerr=err, capsize=3,
                   label=m)
        ax.set_xticks(range(len(sets)), [s.replace("_", "\n") for s in sets])
        ax.set_title(label)
    axes[0].set_ylim(0.85, 1.0)  # recall is near 1: bars from 0 would hide the differences
    axes[0].legend(fontsize=8, loc="lower right")
    n = {s: res[models[0]][s]["n"] for s in sets}
    fig.suptitle(f"learned detector, fine-tuned {report['setup']['steps']} steps: twin-only vs mixed "
                 f"({100 * report['setup']['fraction_blenderproc']:g} % BlenderProc); held-out n = {n}",
                 fontsize=9)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


if __name__ == "__main__":
    main()
