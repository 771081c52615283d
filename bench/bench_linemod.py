"""LINEMOD side by side: our PyTorch matcher vs OpenCV's C++ ``cv2.linemod``, in one run.

Both get the SAME templates: every view our library renders (part on a dark background, 640x480
camera, object origin on the optical axis) is also handed to ``cv2.linemod.Detector.addTemplate``
with its silhouette mask. OpenCV keeps its defaults (``getDefaultLINE``: ColorGradient(10, 63,
55), T = [5, 8]); it caps templates at 63 features, ours use 96/64/32 per level.

Measured:

1. Match time on the same 640x480 frames for 500, 2000 and 8000 templates of one part (our
   library subsets, OpenCV detectors fed the same subsets), ours with 1 and 2 torch threads.
2. Top-1 detection recall (visible bounding box IoU >= 0.5) and false positives per image on a
   twin test set: 6 part families on a table with distractors, three contrast levels (part
   albedo = table albedo x (1 + 0.8 / 0.2 / 0.05)), half the scenes with an occluder hiding
   20-30 % of the first part, the full sensor model (blur, shot and read noise). Every
   annotated part of every frame is one query to that part's detector. Ours is run on RGB
   (LINE-2D, like OpenCV's getDefaultLINE) and on RGB-D (LINE-MOD).

Writes docs/benchmarks/linemod.{json,md,png} and linemod_detections.png. Libraries and OpenCV
detectors are cached under out/bench_linemod/ (rebuilt when the configuration changes).

Usage: ``.venv/bin/python bench/bench_linemod.py [--quick]``
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import cv2
import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import torch

from weak_template_ros import viz
from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.config import to_dict
from weak_template_ros.errors import InputError
from weak_template_ros.linemod import Matcher, MatcherConfig, TemplateConfig, TemplateLibrary, build_templates
from weak_template_ros.linemod.matcher import nms
from weak_template_ros.linemod.templates import EXTRACTION_VERSION
from weak_template_ros.twin.scenes import SceneSpec, iter_scene_frames, make_part_set

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
WORK = ROOT / "out" / "bench_linemod"
FAMILIES = ["l_bracket", "flange", "hex_nut", "connector_housing", "t_profile", "bushing"]
CONTRASTS = {"normal": 0.8, "low": 0.2, "very_low": 0.05}
TIMING_COUNTS = (500, 2000, 8000)
IOU_MIN = 0.5
MAX_DET = 5
NMS_IOU = 0.4
OURS_SWEEP_MIN = 0.2     # our hypotheses are collected down to this score for the sweeps
CV_SWEEP_MIN = 50.0      # OpenCV's match threshold (percent) for the sweeps


def library_config(quick: bool) -> TemplateConfig:
    if quick:
        return TemplateConfig(subdivisions=1, distances=(0.5, 0.65), inplane_steps=8)
    # 162 views x 4 distances x 13 in-plane angles = 8424 templates per part.
    return TemplateConfig(subdivisions=2, distances=(0.45, 0.55, 0.67, 0.82), inplane_steps=13)


# ---------------------------------------------------------------------------------------------
# Template libraries, ours and OpenCV's, from the same renders


class CvLibrary:
    """An OpenCV LINE detector holding a subset of our templates, with the index mapping."""

    def __init__(self, name: str):
        self.name = name
        self.det = cv2.linemod.getDefaultLINE()
        self.ours: list[int] = []        # our template index of each OpenCV template id
        self.offset: list[tuple] = []    # anchor minus OpenCV's bounding-box corner
        self.failed = 0

    def add(self, i: int, rgb: np.ndarray, mask: np.ndarray, anchor) -> None:
        bgr = np.ascontiguousarray(rgb[..., ::-1])  # OpenCV wants BGR (gray input is broken)
        tid, bb = self.det.addTemplate([bgr], "obj", mask.astype(np.uint8) * 255)
        if tid < 0:
            self.failed += 1
            return
        assert tid == len(self.ours)
        self.ours.append(i)
        self.offset.append((anchor[0] - bb[0], anchor[1] - bb[1]))

    def save(self, folder: Path) -> None:
        folder.mkdir(parents=True, exist_ok=True)
        self.det.writeClasses(str(folder / f"{self.name}_%s.yml.gz"))
        np.savez(folder / f"{self.name}_map.npz", ours=np.asarray(self.ours, np.int64),
                 offset=np.asarray(self.offset, np.float64).reshape(-1, 2), failed=self.failed)

    @classmethod
    def load(cls, folder: Path, name: str) -> CvLibrary:
        lib = cls(name)
        lib.det.readClasses(["obj"], str(folder / f"{name}_%s.yml.gz"))
        z = np.load(folder / f"{name}_map.npz")
        lib.ours, lib.offset, lib.failed = list(z["ours"]), [tuple(o) for o in z["offset"]], int(z["failed"])
        assert lib.det.numTemplates() == len(lib.ours)
        return lib

    def __len__(self) -> int:
        return len(self.ours)


def subset_indices(n: int, k: int) -> np.ndarray:
    return np.unique(np.round(np.linspace(0, n - 1, min(k, n))).astype(np.int64))


def build_libraries(models: dict, camera: CameraIntrinsics, cfg: TemplateConfig, timing_family: str,
                    counts: tuple) -> tuple[dict, dict, dict]:
    """Ours and OpenCV's libraries for every part (cached), plus timing subsets of one part."""
    desc = [to_dict(cfg), camera.K.tolist(), camera.shape, cv2.__version__, list(counts), EXTRACTION_VERSION]
    key = hashlib.sha256(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:12]
    folder = WORK / f"libs_{key}"
    ours, cvs, timing = {}, {}, {}
    for obj_id, model in models.items():
        fam = model.name.rsplit("_", 1)[0]
        lib_path = folder / f"{fam}.wtl"
        names = ["all"] + ([f"n{k}" for k in counts] if fam == timing_family else [])
        if lib_path.exists() and all((folder / f"{fam}_{nm}_map.npz").exists() for nm in names):
            ours[obj_id] = TemplateLibrary.load(lib_path, model_checksum=model.checksum, camera=camera)
            cvs[obj_id] = CvLibrary.load(folder, f"{fam}_all")
            if fam == timing_family:
                timing = {k: CvLibrary.load(folder, f"{fam}_n{k}") for k in counts}
            print(f"  {fam}: cached ({len(ours[obj_id])} templates)", flush=True)
            continue
        n_total = len(cfg.distances) * cfg.inplane_steps * _n_views(cfg)
        members = ({k: set(subset_indices(n_total, k).tolist()) for k in counts}
                   if fam == timing_family else {})
        cv_all = CvLibrary(f"{fam}_all")
        cv_sub = {k: CvLibrary(f"{fam}_n{k}") for k in members}

        def on_view(i, out, anchor, cv_all=cv_all, cv_sub=cv_sub, members=members):
            mask = out.masks_full[0]
            cv_all.add(i, out.rgb, mask, anchor)
            for k, lib in cv_sub.items():
                if i in members[k]:
                    lib.add(i, out.rgb, mask, anchor)

        t0 = time.perf_counter()
        lib = build_templates(model, camera, cfg, on_view=on_view)
        print(f"  {fam}: built {len(lib)} templates in {time.perf_counter() - t0:.0f} s "
              f"(OpenCV refused {cv_all.failed})", flush=True)
        folder.mkdir(parents=True, exist_ok=True)
        lib.save(lib_path)
        cv_all.save(folder)
        for c in cv_sub.values():
            c.save(folder)
        ours[obj_id], cvs[obj_id] = lib, cv_all
        if fam == timing_family:
            timing = cv_sub
    return ours, cvs, timing


def _n_views(cfg: TemplateConfig) -> int:
    from weak_template_ros.linemod import sample_viewpoints

    return len(sample_viewpoints(cfg.subdivisions, cfg.viewpoints == "hemisphere"))


# ---------------------------------------------------------------------------------------------
# Test set


def make_frames(models: dict, contrast: float, scenes: int, frames_per_scene: int, seed: int) -> list:
    """Frames of ``scenes`` scenes: the first half without occluder, the second half with an
    occluder hiding 20-30 % of the first part."""
    out = []
    made, scene_id = 0, 0
    while made < scenes:
        occluded = made >= scenes // 2
        spec = SceneSpec(frames_per_scene=frames_per_scene, contrast=contrast,
                         occlusion_min=0.2 if occluded else 0.0, occlusion_max=0.3 if occluded else 0.0)
        try:
            frames = list(iter_scene_frames(models, spec, seed, scene_id))
        except InputError as exc:  # no room to place every part: the generator's next scene
            print(f"  scene {scene_id} skipped: {exc}", flush=True)
            scene_id += 1
            continue
        out.extend(frames)
        made += 1
        scene_id += 1
    return out


def visible_box(mask: np.ndarray):
    ys, xs = np.nonzero(mask)
    if xs.size == 0:
        return None
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float64)


def iou(a: np.ndarray, b: np.ndarray) -> float:
    w = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    h = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    inter = w * h
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - inter
    return inter / union if union > 0 else 0.0


# ---------------------------------------------------------------------------------------------
# Detection with both


def detect_ours(matcher: Matcher, frame, use_depth: bool) -> list[tuple[float, np.ndarray]]:
    hyps = matcher.match(frame.rgb, frame.depth if use_depth else None, frame.camera)
    return [(h.score, np.asarray(h.bbox, np.float64)) for h in hyps]


def detect_cv(cvlib: CvLibrary, ours_lib: TemplateLibrary, bgr: np.ndarray, threshold: float):
    matches, _ = cvlib.det.match([bgr], threshold, ["obj"])
    if not matches:
        return []
    sim = np.array([m.similarity for m in matches], np.float64)
    boxes = np.empty((len(matches), 4), np.float64)
    for j, m in enumerate(matches):
        ours_i = cvlib.ours[m.template_id]
        ox, oy = cvlib.offset[m.template_id]
        ax, ay = m.x + ox, m.y + oy  # OpenCV's x, y is the corner of the feature bounding box
        boxes[j] = ours_lib.bboxes[ours_i] + np.array([ax, ay, ax, ay])
    keep = nms(boxes, sim, NMS_IOU, MAX_DET)
    return [(sim[k] / 100.0, boxes[k]) for k in keep]


# ---------------------------------------------------------------------------------------------
# Metrics


def sweep(queries: list[dict], method: str, n_images: int, thresholds: np.ndarray) -> dict:
    """Recall of the top-1 hypothesis and false positives per image at each score threshold."""
    recall, fppi = [], []
    for t in thresholds:
        tp, fp = 0, 0
        for q in queries:
            hyps = [h for h in q[method] if h[0] >= t]
            if hyps and hyps[0][1] >= IOU_MIN:
                tp += 1
            fp += sum(1 for h in hyps if h[1] < IOU_MIN)
        recall.append(tp / max(len(queries), 1))
        fppi.append(fp / max(n_images, 1))
    return {"thresholds": thresholds.tolist(), "recall": recall, "fp_per_image": fppi}


def recall_at_fppi(curve: dict, fppi: float) -> float:
    """Best recall over thresholds whose false positives per image are <= ``fppi``."""
    ok = [r for r, f in zip(curve["recall"], curve["fp_per_image"], strict=True) if f <= fppi + 1e-12]
    return max(ok) if ok else 0.0


def at_threshold(queries: list[dict], method: str, n_images: int, t: float) -> dict:
    c = sweep(queries, method, n_images, np.array([t]))
    return {"recall": c["recall"][0], "fp_per_image": c["fp_per_image"][0], "queries": len(queries)}


# ---------------------------------------------------------------------------------------------
# Timing


def interleaved_ms(methods: dict, frames: list, repeats: int) -> dict:
    """Time every method on every frame, methods interleaved frame by frame (all see the same
    machine load), ``repeats`` rounds.

    Returns per method: ``median`` of all calls and ``best`` = median over frames of each
    frame's fastest call (best-of-``repeats``: the uncontended time on a shared host).
    """
    for fn in methods.values():
        fn(frames[0])  # warm-up (allocations, caches, lazy precomputation)
    times = {name: np.zeros((repeats, len(frames))) for name in methods}
    for r in range(repeats):
        for j, f in enumerate(frames):
            for name, fn in methods.items():
                t0 = time.perf_counter()
                fn(f)
                times[name][r, j] = time.perf_counter() - t0
    return {name: {"median": 1000.0 * float(np.median(t)), "best": 1000.0 * float(np.median(t.min(0)))}
            for name, t in times.items()}


def run_timing(lib: TemplateLibrary, cv_subsets: dict, frames: list, repeats: int, ours_thr: float,
               cv_thr: float) -> list[dict]:
    rows = []
    for k, cvlib in sorted(cv_subsets.items()):
        sub = lib.subset(cvlib.ours)  # exactly the templates OpenCV accepted
        methods = {}
        for threads in (1, 2):
            m = Matcher(sub, MatcherConfig(device="cpu", threads=threads, score_threshold=ours_thr,
                                           max_detections=MAX_DET))
            methods[f"ours_rgb_{threads}t"] = lambda f, m=m: m.match(f.rgb, camera=f.camera)
            methods[f"ours_rgbd_{threads}t"] = lambda f, m=m: m.match(f.rgb, f.depth, camera=f.camera)
        methods["opencv"] = lambda f, c=cvlib: c.det.match([np.ascontiguousarray(f.rgb[..., ::-1])],
                                                            cv_thr, ["obj"])
        t = interleaved_ms(methods, frames, repeats)
        row = {"templates": len(sub), "opencv_templates": len(cvlib)}
        for name, v in t.items():
            row[f"{name}_ms"] = v["best"]
            row[f"{name}_median_ms"] = v["median"]
        row["ratio_1t"] = row["ours_rgb_1t_ms"] / row["opencv_ms"]
        row["ratio_2t"] = row["ours_rgb_2t_ms"] / row["opencv_ms"]
        row["ratio_1t_median"] = row["ours_rgb_1t_median_ms"] / row["opencv_median_ms"]
        print(f"  {k}: " + ", ".join(f"{a}={b:.2f}" if isinstance(b, float) else f"{a}={b}"
                                     for a, b in row.items()), flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------------------------------------
# Outputs


def _xywh(b) -> tuple:
    return (b[0], b[1], b[2] - b[0], b[3] - b[1])


def draw_examples(examples: list, path: Path) -> None:
    tiles = []
    for ex in examples:
        img = ex["rgb"].copy()
        img = viz.draw_box(img, _xywh(ex["gt"]), col=(0, 255, 0), label="truth")
        if ex["ours"] is not None:
            img = viz.draw_box(img, _xywh(ex["ours"][1]), col=(255, 200, 0),
                               label=f"ours {ex['ours'][0]:.2f}")
        if ex["cv"] is not None:
            img = viz.draw_box(img, _xywh(ex["cv"][1]), col=(255, 0, 255), label=f"OpenCV {ex['cv'][0]:.2f}")
        # The central 400x300 around the part (keeps the file small and the labels readable).
        cx = int(np.clip((ex["gt"][0] + ex["gt"][2]) / 2 - 200, 0, img.shape[1] - 400))
        cy = int(np.clip((ex["gt"][1] + ex["gt"][3]) / 2 - 150, 0, img.shape[0] - 300))
        tiles.append(viz.label(np.ascontiguousarray(img[cy:cy + 300, cx:cx + 400]), ex["title"]))
    viz.save_png(path, viz.tile(tiles, cols=3))


def plot(result: dict, path: Path) -> None:
    fig, axes = plt.subplots(1, 4, figsize=(20, 4.6))
    t = result["timing"]
    n = [r["templates"] for r in t]
    ax = axes[0]
    ax.plot(n, [r["opencv_ms"] for r in t], "o-", label="OpenCV cv2.linemod (C++)")
    ax.plot(n, [r["ours_rgb_1t_ms"] for r in t], "s-", label="ours RGB, 1 thread")
    ax.plot(n, [r["ours_rgb_2t_ms"] for r in t], "s--", label="ours RGB, 2 threads")
    ax.plot(n, [r["ours_rgbd_1t_ms"] for r in t], "^-", label="ours RGB-D, 1 thread")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("templates")
    ax.set_ylabel("match time per 640x480 frame [ms]")
    ax.set_title("cost vs template count")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    for ax, (name, res) in zip(axes[1:], result["recall"].items(), strict=True):
        for method, style, label in (("opencv", "o-", "OpenCV"), ("ours_rgb", "s-", "ours RGB"),
                                     ("ours_rgbd", "^-", "ours RGB-D")):
            c = res["curves"][method]
            ax.plot(c["fp_per_image"], c["recall"], style, ms=3, label=label)
        ax.set_xscale("symlog", linthresh=0.1)
        ax.set_xlim(0, 15)
        ax.set_ylim(0, 1.02)
        ax.set_xlabel("false positives per image")
        ax.set_ylabel("top-1 recall (visible bbox IoU >= 0.5)")
        ax.set_title(f"contrast {name} ({res['contrast']})")
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def _load() -> str:
    return " ".join(f"{x:.2f}" for x in os.getloadavg())


def _cpu() -> str:
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=False).stdout
        name = next((ln.split(":", 1)[1].strip() for ln in out.splitlines()
                     if ln.startswith("Model name")), "")
        return f"{name}, {os.cpu_count()} cores"
    except OSError:
        return f"{platform.processor()}, {os.cpu_count()} cores"


SHORTFALLS = [
    "Recall is far below the 98 % / 90 % targets for BOTH matchers on this test set. Causes, "
    "seen on the failure images (scripts of this analysis: the bench's trace option, "
    "`Matcher.trace`): (1) look-alikes: the scenes hold 3 parts + 3 distractors within 12 cm, and "
    "edge templates cannot tell an L-bracket plate from a box face, a hex nut from the bushing "
    "(both a ring around a hole), a plate edge-on from any bar; the best wrong fit scores 0.7-0.85, "
    "the right template 0.6-0.8; (2) library discretisation: 162 views (~15 deg apart), 4 "
    "distances (22 % apart) and 13 in-plane angles (28 deg apart) leave the nearest template 5-14 "
    "deg from the true view, so many of its features miss by several pixels at full resolution; "
    "(3) the twin's sensor noise is strong (estimated 9 grey levels per pixel at full "
    "resolution), so level 0 is noisy. LINEMOD papers reach ~97 % on LINEMOD only with a colour "
    "check, a depth/ICP verification and denser templates; here the verification belongs to the "
    "pose stage (ICP + render-and-compare), which is a later issue.",
    "Occlusion 20-30 %: the occluder is a large box whose straight edges next to the part feed "
    "exactly the false fits of (1); the parts it hides here are mostly the hex nut and bushing, "
    "the worst-confused pair.",
    "Timing: our fixed cost per frame (pyramid, gradients, quantisation, ~10 ms on one thread) is "
    "above OpenCV's hand-vectorised C++ at 500 templates; from ~2000 templates on we are faster, "
    "and at 8000 clearly so. The host is shared: the load averages above say how noisy the "
    "timings are (2-thread timings suffer most: a parallel region waits for its slowest thread).",
    "No GPU on this host: the matcher is device-agnostic PyTorch but its GPU speed is not measured.",
]


def write_markdown(result: dict, path: Path) -> None:
    r = result
    L = ["# LINEMOD: ours (PyTorch) vs OpenCV cv2.linemod (C++), side by side", "",
         f"Machine: {r['machine']['cpu']}; {r['machine']['device']}. Load average (1/5/15 min) at start "
         f"`{r['machine']['load_start']}`, before timing `{r['machine']['load_timing']}`, at end "
         f"`{r['machine']['load_end']}` (other engineers share this 2-core host: timings are noisy). "
         f"torch {r['versions']['torch']}, OpenCV {r['versions']['opencv']}.", "",
         f"Same templates for both: {r['library']['templates_per_part']} views per part "
         f"({r['library']['views']} viewpoints on the sphere x {len(r['library']['config']['distances'])} "
         f"distances x {r['library']['config']['inplane_steps']} in-plane angles), rendered once and given "
         f"to both. OpenCV: `getDefaultLINE()` (63 features per level, T = [5, 8]), refused "
         f"{r['library']['opencv_refused']} of them. Ours: {r['library']['config']['grad_features']} "
         "gradient "
         f"and {r['library']['config']['depth_features']} normal features per level (finest first).", "",
         "## Match time, 640x480", "",
         f"Both matchers are timed on the same {r['timing_frames']} frames, interleaved frame by frame "
         f"(same load), {r['timing_repeats']} rounds. Main figures: best of the rounds per frame, "
         "median over frames (the uncontended time on this shared host); in brackets the plain "
         "median of all calls.", "",
         "| templates | OpenCV [ms] | ours RGB 1 thread [ms] | ours RGB 2 threads [ms] | ratio 1t | ratio 2t "
         "| ours RGB-D 1t [ms] |", "|---|---|---|---|---|---|---|"]
    for t in r["timing"]:
        L.append(f"| {t['templates']} | {t['opencv_ms']:.1f} ({t['opencv_median_ms']:.1f}) | "
                 f"{t['ours_rgb_1t_ms']:.1f} ({t['ours_rgb_1t_median_ms']:.1f}) | "
                 f"{t['ours_rgb_2t_ms']:.1f} ({t['ours_rgb_2t_median_ms']:.1f}) | {t['ratio_1t']:.2f} | "
                 f"{t['ratio_2t']:.2f} | {t['ours_rgbd_1t_ms']:.1f} ({t['ours_rgbd_1t_median_ms']:.1f}) |")
    g = r["growth"]
    L += ["", f"Cost growth from {g['from']} to {g['to']} templates (x{g['to'] / g['from']:.0f}): OpenCV "
          f"x{g['opencv']:.2f}, ours x{g['ours_rgb_1t']:.2f} (1 thread); sub-linear means < "
          f"x{g['to'] / g['from']:.0f}.", "",
          f"Operating thresholds in the timing: ours score >= {r['operating']['ours']}, OpenCV "
          f"similarity >= {r['operating']['opencv']} %.", "",
          "## Detection on the twin test set", "",
          f"{r['dataset']['frames']} frames (640x480, sensor noise), {r['dataset']['queries']} part "
          f"queries over {len(FAMILIES)} families ({', '.join(FAMILIES)}), 3 parts + 3 distractors per "
          "scene, half the scenes with an occluder hiding 20-30 % of one part. A query is one part's "
          "detector on one frame; it is found when its top-1 hypothesis overlaps the part's visible "
          "box with IoU >= 0.5. False positives: every other reported hypothesis (up to 5 per query "
          "after NMS) per image.", "",
          "Top-1 recall at the operating thresholds, by occlusion of the part (visible fraction):", "",
          "| contrast | group | queries | OpenCV recall | ours RGB recall | ours RGB-D recall |",
          "|---|---|---|---|---|---|"]
    for name, res in r["recall"].items():
        for grp, v in res["groups"].items():
            L.append(f"| {name} | {grp} | {v['opencv']['queries']} | {v['opencv']['recall']:.3f} | "
                     f"{v['ours_rgb']['recall']:.3f} | {v['ours_rgbd']['recall']:.3f} |")
    L += ["", "False positives per image at the operating thresholds, and recall at equal false-positive "
          "rates (best threshold of each method with FP/image <= the rate):", "",
          "| contrast | FP/img OpenCV | FP/img ours RGB | FP/img ours RGB-D | rate | recall OpenCV | "
          "recall ours RGB | recall ours RGB-D |", "|---|---|---|---|---|---|---|---|"]
    for name, res in r["recall"].items():
        a = res["groups"]["all"]
        for rate, v in res["recall_at_fppi"].items():
            L.append(f"| {name} | {a['opencv']['fp_per_image']:.2f} | {a['ours_rgb']['fp_per_image']:.2f} | "
                     f"{a['ours_rgbd']['fp_per_image']:.2f} | {rate} | {v['opencv']:.3f} | "
                     f"{v['ours_rgb']:.3f} | {v['ours_rgbd']:.3f} |")
    L += ["", "![cost and recall](linemod.png)", "", "![detections](linemod_detections.png)", "",
          "## Targets (issue 3)", ""]
    for line in r["targets"]:
        L.append(f"- {line}")
    L += ["", "## What ours does differently", "",
          "- Coarse search over every template at every 8th anchor of the quarter-resolution image "
          "as one `embedding_bag` over a table of shifted responses (one row per feature key), then "
          "half resolution around the best templates, then full resolution only in the region the "
          "survivors can reach: the cost hardly grows with the template count.",
          "- Gradient threshold per pyramid level from the image's own noise (OpenCV: fixed 10 on "
          "the Sobel magnitude), orientations kept only at maxima across edges (smooth shading of "
          "curved clutter otherwise answers every template).",
          "- The final candidates are also tried scaled (0.9-1.1) and turned (+-12 deg): the library "
          "is discrete, and the right template 10 deg off otherwise loses to a wrong one fitting a "
          "part of the object exactly.",
          "- Templates whose features share one orientation (a flat part seen edge-on: two parallel "
          "lines) are discounted; with depth, hypotheses whose size disagrees with the measured "
          "distance are faded out, and surface normals are a second modality.", "",
          "## Shortfalls and their causes", ""]
    L += [f"- {line}" for line in SHORTFALLS]
    L += ["", f"Reproduce: `.venv/bin/python bench/bench_linemod.py` ({r['elapsed_s']:.0f} s here, "
          "most of it building the template libraries once; they are cached in out/bench_linemod/)."]
    path.write_text("\n".join(L) + "\n")


# ---------------------------------------------------------------------------------------------


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small libraries and test set (smoke run)")
    ap.add_argument("--scenes", type=int, default=12, help="scenes per contrast level")
    ap.add_argument("--frames-per-scene", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=5, help="timing rounds over the timing frames")
    ap.add_argument("--ours-threshold", type=float, default=None, help="operating score (default: config)")
    ap.add_argument("--opencv-threshold", type=float, default=80.0, help="OpenCV operating similarity [%]")
    ap.add_argument("--out", type=Path, default=OUT)
    ap.add_argument("--build-only", action="store_true", help="build and cache the libraries, then stop")
    args = ap.parse_args()
    t_start = time.perf_counter()
    load_start = _load()
    camera = SceneSpec().camera
    cfg = library_config(args.quick)
    scenes = 4 if args.quick else args.scenes
    counts = (50, 200, 800) if args.quick else TIMING_COUNTS
    ours_thr = MatcherConfig().score_threshold if args.ours_threshold is None else args.ours_threshold

    models = make_part_set(FAMILIES)
    print(f"templates ({len(models)} parts)...", flush=True)
    libs, cvlibs, timing_cv = build_libraries(models, camera, cfg, FAMILIES[0], counts)
    if args.build_only:
        return

    print("test set...", flush=True)
    frames = {name: make_frames(models, c, scenes, args.frames_per_scene, seed=3)
              for name, c in CONTRASTS.items()}

    print("detection...", flush=True)
    matchers = {i: Matcher(lib, MatcherConfig(device="cpu", score_threshold=OURS_SWEEP_MIN,
                                              max_detections=MAX_DET, nms_iou=NMS_IOU))
                for i, lib in libs.items()}
    recall, examples = {}, []
    ours_grid = np.round(np.arange(OURS_SWEEP_MIN, 1.0001, 0.02), 3)
    cv_grid = np.round(np.arange(CV_SWEEP_MIN, 100.001, 2.0) / 100.0, 3)
    n_queries = 0
    for name, frs in frames.items():
        queries = []
        for fi, f in enumerate(frs):
            bgr = np.ascontiguousarray(f.rgb[..., ::-1])
            for obj in f.objects:
                gt = visible_box(obj.mask_visib)
                if gt is None:
                    continue
                full = obj.px_count_all or int(obj.mask.sum())
                q = {"frame": fi, "obj_id": obj.obj_id, "visib": float(obj.mask_visib.sum() / max(full, 1))}
                res = {"opencv": detect_cv(cvlibs[obj.obj_id], libs[obj.obj_id], bgr, CV_SWEEP_MIN),
                       "ours_rgb": detect_ours(matchers[obj.obj_id], f, False),
                       "ours_rgbd": detect_ours(matchers[obj.obj_id], f, True)}
                for k, hyps in res.items():
                    q[k] = [(float(s), iou(b, gt)) for s, b in hyps]
                queries.append(q)
                if obj is f.objects[0] and fi in (0, len(frs) - 1) and len(examples) < 6:
                    examples.append({"rgb": f.rgb, "gt": gt,
                                     "title": f"{name}, {models[obj.obj_id].name}, vis {q['visib']:.0%}",
                                     "ours": next(((s, b) for s, b in res["ours_rgb"] if s >= ours_thr),
                                                  None),
                                     "cv": next(((s, b) for s, b in res["opencv"]
                                                 if s >= args.opencv_threshold / 100), None)})
        n_queries += len(queries)
        n_img = len(frs)
        fams = {f"family {models[i].name}": [q for q in queries if q["obj_id"] == i] for i in models}
        groups = {"all": queries,
                  "unoccluded (visible >= 95 %)": [q for q in queries if q["visib"] >= 0.95],
                  "occluded 5-20 %": [q for q in queries if 0.8 <= q["visib"] < 0.95],
                  "occluded 20-30 %": [q for q in queries if 0.7 <= q["visib"] < 0.8],
                  "occluded > 30 %": [q for q in queries if q["visib"] < 0.7], **fams}
        thr = {"opencv": args.opencv_threshold / 100, "ours_rgb": ours_thr, "ours_rgbd": ours_thr}
        out = {"contrast": CONTRASTS[name], "frames": n_img, "groups": {}, "curves": {}}
        for g, qs in groups.items():
            out["groups"][g] = {m: at_threshold(qs, m, n_img, t) for m, t in thr.items()}
        out["curves"] = {"opencv": sweep(queries, "opencv", n_img, cv_grid),
                         "ours_rgb": sweep(queries, "ours_rgb", n_img, ours_grid),
                         "ours_rgbd": sweep(queries, "ours_rgbd", n_img, ours_grid)}
        out["recall_at_fppi"] = {str(rate): {m: recall_at_fppi(out["curves"][m], rate) for m in out["curves"]}
                                 for rate in (0.1, 0.5, 1.0, 2.0)}
        recall[name] = out
        a = out["groups"]["all"]
        print(f"  {name}: " + ", ".join(f"{m} recall {v['recall']:.3f} fp/img {v['fp_per_image']:.2f}"
                                        for m, v in a.items()), flush=True)

    print("timing...", flush=True)
    load_timing = _load()
    timing_frames = frames["normal"][: (4 if args.quick else 10)]
    timing = run_timing(libs[1], timing_cv, timing_frames, args.repeats, ours_thr, args.opencv_threshold)
    t0, t1 = timing[0], timing[-1]
    growth = {"from": t0["templates"], "to": t1["templates"], "opencv": t1["opencv_ms"] / t0["opencv_ms"],
              "ours_rgb_1t": t1["ours_rgb_1t_ms"] / t0["ours_rgb_1t_ms"]}

    mid = [t for t in timing if t["templates"] >= 1000]
    normal = recall["normal"]["groups"]
    vlow = recall["very_low"]["recall_at_fppi"]
    targets = [
        "time ratio ours/OpenCV <= 1.5 (aim 1.0): " + ", ".join(
            f"{t['templates']}: {t['ratio_1t']:.2f} (1 thread) / {t['ratio_2t']:.2f} (2 threads)"
            for t in timing),
        f"recall >= 98 % unoccluded, normal contrast: ours RGB "
        f"{normal['unoccluded (visible >= 95 %)']['ours_rgb']['recall']:.3f}, RGB-D "
        f"{normal['unoccluded (visible >= 95 %)']['ours_rgbd']['recall']:.3f} (OpenCV "
        f"{normal['unoccluded (visible >= 95 %)']['opencv']['recall']:.3f})",
        f"recall >= 90 % at 20-30 % occlusion, normal contrast: ours RGB "
        f"{normal['occluded 20-30 %']['ours_rgb']['recall']:.3f}, RGB-D "
        f"{normal['occluded 20-30 %']['ours_rgbd']['recall']:.3f} "
        f"(OpenCV {normal['occluded 20-30 %']['opencv']['recall']:.3f})",
        "very low contrast, recall at equal FP/image (0.5 / 1 / 2): ours RGB "
        + " / ".join(f"{vlow[k]['ours_rgb']:.3f}" for k in ("0.5", "1.0", "2.0")) + ", OpenCV "
        + " / ".join(f"{vlow[k]['opencv']:.3f}" for k in ("0.5", "1.0", "2.0")),
        f"sub-linear cost growth: x{growth['ours_rgb_1t']:.2f} for x{growth['to'] / growth['from']:.0f} "
        "templates "
        f"(OpenCV x{growth['opencv']:.2f})",
    ]
    _ = mid
    result = {
        "machine": {"cpu": _cpu(), "device": "CPU only (no GPU on this host)", "load_start": load_start,
                    "load_timing": load_timing, "load_end": _load(), "python": sys.version.split()[0]},
        "versions": {"torch": torch.__version__, "opencv": cv2.__version__, "numpy": np.__version__},
        "library": {"config": to_dict(cfg), "views": _n_views(cfg),
                    "templates_per_part": len(libs[1]),
                    "opencv_refused": int(sum(c.failed for c in cvlibs.values()))},
        "dataset": {"frames": sum(len(f) for f in frames.values()), "queries": n_queries,
                    "scenes_per_contrast": scenes, "frames_per_scene": args.frames_per_scene,
                    "contrasts": CONTRASTS, "families": FAMILIES},
        "operating": {"ours": ours_thr, "opencv": args.opencv_threshold},
        "timing": timing, "timing_frames": len(timing_frames), "timing_repeats": args.repeats,
        "growth": growth, "recall": recall, "targets": targets,
        "matcher_config": to_dict(MatcherConfig()),
        "elapsed_s": time.perf_counter() - t_start,
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "linemod.json").write_text(json.dumps(result, indent=1))
    write_markdown(result, args.out / "linemod.md")
    plot(result, args.out / "linemod.png")
    draw_examples(examples, args.out / "linemod_detections.png")
    print("\n".join(targets))
    print(f"wrote {args.out}/linemod.{{json,md,png}} in {result['elapsed_s']:.0f} s")


if __name__ == "__main__":
    main()
