"""BOP evaluation of the whole pose pipeline on a twin test set, ICP on and off.

Test set (a BOP dataset written with the twin's scene generator, cached under ``--cache``): the
six procedural part families, one part per scene with four distractors on the table, sensor
noise on, a controlled occluder hiding 0-10, 10-30 or 30-50 % of the part (a third of the scenes
each, uniform within), 640x480. Every object is
also evaluated on frames of the other families' scenes (another part and distractors, none of
it annotated as the object): an accepted estimate there is a false detection.

Pipeline: ``weak_template_ros.pose.evaluate.evaluate_bop`` = ``estimate_poses`` (LINEMOD
hypotheses from a template library built from the dataset's model with config/linemod.yaml,
``--subdivisions`` views, ICP, render-and-compare verification) with the default PoseConfig,
scored with the BOP-19 metrics (``weak_template_ros.metrics``). The same frames run with
``icp=False`` (coarse LINEMOD pose + verification) to show what ICP adds.

Writes docs/benchmarks/pose_eval.{json,md,png} and pose_eval_overlay.png (``--quick``: a small
set for development, written under the cache folder instead).

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/bench_pose_eval.py [--quick]
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import shutil
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np

from weak_template_ros.config import load_yaml, to_dict
from weak_template_ros.linemod.matcher import MatcherConfig
from weak_template_ros.linemod.templates import TemplateConfig, TemplateLibrary, build_templates
from weak_template_ros.models import PART_FAMILIES, make_part
from weak_template_ros.pose import PoseConfig
from weak_template_ros.pose.evaluate import (
    OCCLUSION_BINS,
    EvalConfig,
    draw_overlays,
    evaluate_bop,
    threshold_sweep,
)
from weak_template_ros.twin.bop import BopDataset, BopWriter
from weak_template_ros.twin.renderer import Renderer
from weak_template_ros.twin.scenes import SceneSpec, iter_scene_frames

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "benchmarks"
LINEMOD_YAML = ROOT / "config" / "linemod.yaml"

#: The issue's targets (issue 5), checked in the markdown.
TARGETS = {
    "add_s_occl_lt10": 0.98, "add_s_occl_10_30": 0.93, "bop_ar": 0.85, "median_rot_deg": 1.0,
    "median_trans_mm": 2.0, "false_detection_rate": 0.02, "median_frame_ms": 100.0,
}


#: Occluder strata (fraction of the part hidden, drawn uniformly): scene s of a family uses
#: stratum s % 3, so the bins of the issue's targets get the same number of frames.
OCCLUSION_STRATA = ((0.0, 0.1), (0.1, 0.3), (0.3, 0.5))


def scene_spec(frames_per_scene: int, stratum: int) -> SceneSpec:
    lo, hi = OCCLUSION_STRATA[stratum % len(OCCLUSION_STRATA)]
    return SceneSpec(parts_per_scene=1, distractors=4, frames_per_scene=frames_per_scene,
                     noise=True, occlusion_min=lo, occlusion_max=hi)


def make_dataset(cache: Path, families: list[str], scenes_per_family: int,
                 frames_per_scene: int, seed: int) -> tuple[Path, dict]:
    """Write (or reuse) the test set; obj_id k+1 = families[k], its scenes k*S .. k*S+S-1."""
    spec = scene_spec(frames_per_scene, 0)
    key = json.dumps({"families": families, "scenes": scenes_per_family, "seed": seed,
                      "spec": to_dict(spec), "strata": OCCLUSION_STRATA}, sort_keys=True, default=str)
    root = cache / f"dataset_{hashlib.sha256(key.encode()).hexdigest()[:12]}"
    info = {"families": families, "scenes_per_family": scenes_per_family,
            "frames_per_scene": frames_per_scene, "seed": seed, "spec": to_dict(spec),
            "occlusion_strata": OCCLUSION_STRATA}
    if (root / "done.json").is_file():
        return root, json.loads((root / "done.json").read_text())
    if root.exists():
        shutil.rmtree(root)
    parts = {k + 1: make_part(f, seed=0) for k, f in enumerate(families)}
    t0 = time.perf_counter()
    renderer = Renderer(spec.camera)
    with BopWriter(root) as writer:
        writer.write_camera(spec.camera, depth_scale=0.1)
        writer.write_models(parts)
        for obj_id in parts:
            for s in range(scenes_per_family):
                scene_id = (obj_id - 1) * scenes_per_family + s
                spec = scene_spec(frames_per_scene, s)
                for frame in iter_scene_frames({obj_id: parts[obj_id]}, spec, seed, scene_id,
                                               renderer):
                    writer.write_frame(scene_id, frame.im_id, frame)
                renderer.remove_meshes(lambda k: isinstance(k, tuple) and k[0] == "distractor")
    info["generate_s"] = time.perf_counter() - t0
    (root / "done.json").write_text(json.dumps(info, indent=1))
    return root, info


def template_config(subdivisions: int) -> TemplateConfig:
    cfg = load_yaml(TemplateConfig, LINEMOD_YAML, section="templates")
    cfg.subdivisions = subdivisions
    return cfg


def libraries(ds: BopDataset, cache: Path, tcfg: TemplateConfig) -> tuple[dict, dict]:
    """Template library per object, built from the dataset's model (cached by checksum+config)."""
    libs, build_s = {}, {}
    ckey = hashlib.sha256(json.dumps(to_dict(tcfg), sort_keys=True, default=str).encode()).hexdigest()
    for obj_id in ds.models_info:
        model = ds.load_model(obj_id)
        path = cache / "templates" / f"obj{obj_id}_{model.checksum[:10]}_{ckey[:10]}.wtl"
        if path.is_file():
            libs[obj_id] = TemplateLibrary.load(path, model.checksum, ds.camera)
            continue
        t0 = time.perf_counter()
        libs[obj_id] = build_templates(model, ds.camera, tcfg)
        build_s[obj_id] = time.perf_counter() - t0
        libs[obj_id].save(path)
    return libs, build_s


def code_state() -> dict:
    """Commit measured and the pipeline files that differed from it (others edit in parallel)."""
    import subprocess

    def git(*a):
        try:
            return subprocess.run(["git", *a], cwd=ROOT, capture_output=True, text=True,
                                  timeout=10).stdout.strip()
        except (OSError, subprocess.SubprocessError):
            return ""

    dirty = git("status", "--porcelain", "--", "weak_template_ros/pose", "weak_template_ros/linemod",
                "weak_template_ros/metrics.py", "config/pose.yaml", "config/linemod.yaml")
    return {"commit": git("rev-parse", "--short", "HEAD"),
            "uncommitted_pipeline_files": [ln[3:] for ln in dirty.splitlines()]}


def run(args) -> dict:
    cache = Path(args.cache)
    families = args.families.split(",")
    root, ds_info = make_dataset(cache, families, args.scenes_per_family, args.frames_per_scene,
                                 args.seed)
    ds = BopDataset(root)
    tcfg = template_config(args.subdivisions)
    libs, build_s = libraries(ds, cache, tcfg)
    mcfg = load_yaml(MatcherConfig, LINEMOD_YAML, section="matcher")
    pcfg = PoseConfig()
    state = code_state()
    load_start = os.getloadavg()[0]
    results, objs = {}, {}
    for icp in (True, False):
        cfg = EvalConfig(icp=icp, negative_frames=args.negatives)
        t0 = time.perf_counter()
        tag = "ICP on " if icp else "ICP off"
        res = evaluate_bop(ds, libs, cfg, pcfg, mcfg,
                           on_progress=lambda i, n, tag=tag: print(f"\r {tag} {i}/{n}", end="",
                                                                   flush=True))
        print(f"  {time.perf_counter() - t0:.0f} s")
        results["icp_on" if icp else "icp_off"] = res.to_dict(frames=True)
        objs[icp] = res
    overlay = OUT / "pose_eval_overlay.png"
    draw_overlays(objs[True], ds, overlay, n=6)
    diam = {o: ds.load_model(o).diameter for o in ds.models_info}
    sweep_t = sorted({0.6, 0.7, 0.8, 0.85, 0.88, 0.92, 0.95, pcfg.verify.score_threshold})
    sweep = {label: threshold_sweep(objs[True].records, sweep_t, bin_range=rng)
             for label, rng in (("all", None), ("0-10%", OCCLUSION_BINS["0-10%"]),
                                ("10-30%", OCCLUSION_BINS["10-30%"]))}
    return {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, {platform.python_version()}",
        "load_start": load_start, "load_end": os.getloadavg()[0],
        "quick": args.quick, "code": state, "dataset": ds_info, "dataset_path": str(root.relative_to(ROOT))
        if root.is_relative_to(ROOT) else str(root),
        "families": {str(k + 1): f for k, f in enumerate(families)},
        "diameters_m": {str(k): v for k, v in diam.items()},
        "templates": {"config": to_dict(tcfg), "count": {str(k): len(v) for k, v in libs.items()},
                      "build_s": {str(k): v for k, v in build_s.items()}},
        "matcher_config": to_dict(mcfg), "pose_config": to_dict(pcfg),
        "targets": TARGETS, "results": results, "threshold_sweep": sweep,
        "score_threshold": pcfg.verify.score_threshold,
    }


# ------------------------------------------------------------------------------------------
# Report


def _pct(v) -> str:
    return "-" if v is None else f"{100 * v:.1f} %"


def _f(v, spec=".2f", scale=1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


def _ok(value, target, higher_is_better: bool) -> str:
    if value is None:
        return "-"
    return "yes" if (value >= target if higher_is_better else value <= target) else "**no**"


def _deg(v):
    return None if v is None else math.degrees(v)


def _mm(v):
    return None if v is None else v * 1e3


def target_rows(on: dict, off: dict, tgt: dict, n_neg: int) -> list[str]:
    """Markdown rows: quantity, target, ICP on, met, ICP off."""
    b_on, b_off = on["bins"], off["bins"]
    rows = []

    def row(name, target_text, v_on, v_off, target, higher, fmt):
        rows.append(f"| {name} | {target_text} | {fmt(v_on)} | {_ok(v_on, target, higher)} "
                    f"| {fmt(v_off)} |")

    row("ADD(-S) 0.1 d recall, occlusion < 10 %", f">= {_pct(tgt['add_s_occl_lt10'])}",
        b_on["0-10%"]["ad_recall"], b_off["0-10%"]["ad_recall"], tgt["add_s_occl_lt10"], True, _pct)
    row("ADD(-S) 0.1 d recall, occlusion 10-30 %", f">= {_pct(tgt['add_s_occl_10_30'])}",
        b_on["10-30%"]["ad_recall"], b_off["10-30%"]["ad_recall"], tgt["add_s_occl_10_30"], True,
        _pct)
    row("BOP AR (all targets)", f">= {tgt['bop_ar']}", on["ar"], off["ar"], tgt["bop_ar"], True,
        lambda v: f"{v:.3f}")
    row("median rotation error of correct estimates", f"<= {tgt['median_rot_deg']} deg",
        _deg(on["median_rot_rad"]), _deg(off["median_rot_rad"]), tgt["median_rot_deg"], False,
        lambda v: f"{_f(v)} deg")
    row("median translation error of correct estimates", f"<= {tgt['median_trans_mm']} mm",
        _mm(on["median_trans_m"]), _mm(off["median_trans_m"]), tgt["median_trans_mm"], False,
        lambda v: f"{_f(v)} mm")
    row(f"false detections on frames without the part ({n_neg})",
        f"<= {_pct(tgt['false_detection_rate'])}", on["false_detection_rate"],
        off["false_detection_rate"], tgt["false_detection_rate"], False, _pct)
    row("median time per frame (LINEMOD + ICP + verification)", f"<= {tgt['median_frame_ms']:.0f} ms",
        on["times_ms"]["total"]["median"], off["times_ms"]["total"]["median"],
        tgt["median_frame_ms"], False, lambda v: f"{_f(v, '.0f')} ms")
    return rows


def write(result: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pose_eval.json").write_text(json.dumps(result, indent=1))
    on, off = result["results"]["icp_on"], result["results"]["icp_off"]
    fam = result["families"]
    d = result["dataset"]
    n_pos = on["overall"]["frames"]
    n_neg = on["overall"]["frames_without"]
    tgt = result["targets"]
    ov_on, ov_off = on["overall"], off["overall"]
    b_on, b_off = ov_on["bins"], ov_off["bins"]
    counts = sorted(set(result["templates"]["count"].values()))
    lines = [
        "# Pose pipeline on a twin BOP test set: BOP-19 metrics, ICP on and off",
        "",
        f"{'QUICK RUN (development), not the benchmark. ' if result['quick'] else ''}"
        f"{len(fam)} part families x {d['scenes_per_family']} scenes x {d['frames_per_scene']} "
        f"frames = {n_pos} frames with the part (one part, four distractors, a controlled occluder "
        "hiding 0-10, 10-30 or 30-50 % of it in a third of the scenes each, sensor noise on, "
        "640x480); each object is also run on "
        f"{n_neg // max(len(fam), 1)} frames of other families' scenes ({n_neg} frames without "
        "the part: another part and distractors) to count false detections. "
        f"Templates: config/linemod.yaml with {counts} templates per part "
        f"(subdivisions {result['templates']['config']['subdivisions']}); pose: default PoseConfig; "
        "matcher: config/linemod.yaml. Scored by `weak_template_ros.pose.evaluate` with "
        "`weak_template_ros.metrics` (BOP-19: VSD tau 0.05-0.5 d with delta 15 mm, MSSD 0.05-0.5 d, "
        "MSPD 5-50 px, AR = mean; ADD(-S) < 0.1 d; targets: visib_fract >= 0.1; occlusion = "
        "1 - visib_fract from scene_gt_info). Times per (frame, object), 640x480, one object, "
        f"{result['machine']}, 1-min load average {result['load_start']:.1f} at the start and "
        f"{result['load_end']:.1f} at the end (2 cores shared with other engineers' jobs: absolute "
        "times are inflated, ratios hold). Generated by `bench/bench_pose_eval.py` at commit "
        f"{result.get('code', {}).get('commit', '?')}"
        + (f" with uncommitted changes in {', '.join(result['code']['uncommitted_pipeline_files'])}"
           if result.get("code", {}).get("uncommitted_pipeline_files") else "")
        + f"; wall time {result.get('wall_s', 0) / 60:.1f} min.",
        "",
        "## Against the targets (issue 5)",
        "",
        "| quantity | target | ICP on | met | ICP off |",
        "|---|---:|---:|:-:|---:|",
        *target_rows(ov_on, ov_off, tgt, n_neg),
        "",
        f"Median errors are over the correct (ADD(-S) < 0.1 d) estimates; the parts' diameters are "
        f"{min(result['diameters_m'].values()) * 1e3:.0f}-{max(result['diameters_m'].values()) * 1e3:.0f} mm "
        "at 0.45-0.75 m (the target is stated for a 100 mm part at 0.6 m). Detected but wrong "
        f"(accepted, matching no target): {ov_on['wrong_detections']} with ICP, "
        f"{ov_off['wrong_detections']} without.",
        "",
        "## Per part family",
        "",
        "| family | targets | ADD(-S) on / off | AR on / off | AR_VSD | AR_MSSD | AR_MSPD "
        "| median deg | median mm | false det. on / off | wrong det. on / off |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for k in on["objects"]:
        a, b = on["objects"][k], off["objects"][k]
        lines.append(
            f"| {fam[k]} | {a['targets']} | {_pct(a['ad_recall'])} / {_pct(b['ad_recall'])} "
            f"| {a['ar']:.3f} / {b['ar']:.3f} | {a['ar_vsd']:.3f} | {a['ar_mssd']:.3f} "
            f"| {a['ar_mspd']:.3f} | {_f(a['median_rot_rad'], '.2f', 180 / math.pi)} "
            f"| {_f(a['median_trans_m'], '.2f', 1e3)} "
            f"| {a['false_detections']}/{a['frames_without']} / "
            f"{b['false_detections']}/{b['frames_without']} "
            f"| {a['wrong_detections']} / {b['wrong_detections']} |")
    a, b = ov_on, ov_off
    lines.append(f"| **all** | {a['targets']} | {_pct(a['ad_recall'])} / {_pct(b['ad_recall'])} "
                 f"| {a['ar']:.3f} / {b['ar']:.3f} | {a['ar_vsd']:.3f} | {a['ar_mssd']:.3f} "
                 f"| {a['ar_mspd']:.3f} | {_f(a['median_rot_rad'], '.2f', 180 / math.pi)} "
                 f"| {_f(a['median_trans_m'], '.2f', 1e3)} | {a['false_detections']}/{n_neg} / "
                 f"{b['false_detections']}/{n_neg} | {a['wrong_detections']} / {b['wrong_detections']} |")
    lines += [
        "",
        "AR_VSD / AR_MSSD / AR_MSPD with ICP on. Wrong detections: accepted estimates on frames "
        "with the part that match no target under ADD(-S) < 0.1 d.",
        "",
        "Missed targets by cause (ICP on / off): a refined pose was correct but verification "
        "rejected it (of those: by the score threshold alone, not by the visibility or inlier "
        "gates) / a wrong pose was accepted instead / no hypothesis ended correct and nothing "
        "was accepted:",
        "",
        "| family | rejected correct | of those by score only | wrong accepted | no correct pose |",
        "|---|---:|---:|---:|---:|",
    ]
    for k in [*on["objects"], None]:
        a = on["objects"][k]["misses"] if k else ov_on["misses"]
        b = off["objects"][k]["misses"] if k else ov_off["misses"]
        lines.append(f"| {fam[k] if k else '**all**'} | " + " | ".join(
            f"{a[c]} / {b[c]}" for c in ("rejected_correct", "rejected_correct_score_only",
                                         "wrong_accepted", "no_correct_pose"))
            + " |")
    lines += [
        "",
        "## Per occlusion bin (all families)",
        "",
        "| occlusion | targets | ADD(-S) on / off | AR on / off | AR_VSD on | AR_MSSD on | AR_MSPD on "
        "| median deg on | median mm on |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for label in OCCLUSION_BINS:
        a, b = b_on[label], b_off[label]
        if not a["targets"]:
            continue
        lines.append(f"| {label} | {a['targets']} | {_pct(a['ad_recall'])} / {_pct(b['ad_recall'])} "
                     f"| {a['ar']:.3f} / {b['ar']:.3f} | {a['ar_vsd']:.3f} | {a['ar_mssd']:.3f} "
                     f"| {a['ar_mspd']:.3f} | {_f(a['median_rot_rad'], '.2f', 180 / math.pi)} "
                     f"| {_f(a['median_trans_m'], '.2f', 1e3)} |")
    lines += ["", "ADD(-S) recall per family and bin, ICP on:", "",
              "| family | " + " | ".join(OCCLUSION_BINS) + " |",
              "|---|" + "---:|" * len(OCCLUSION_BINS)]
    for k, o in on["objects"].items():
        lines.append(f"| {fam[k]} | " + " | ".join(
            f"{_pct(v['ad_recall'])} ({v['targets']})" if v["targets"] else "-"
            for v in o["bins"].values()) + " |")
    lines += [
        "",
        "## Time per frame and stage (ms, one object, 640x480)",
        "",
        "detect: LINEMOD matching; prepare, icp, verify: summed over the hypotheses refined in the "
        "frame (up to max_hypotheses, early exit at a sure estimate); total: the whole "
        "`estimate_poses` call. All evaluated frames (with and without the part).",
        "",
        "| stage | ICP on median | ICP on p90 | ICP off median | ICP off p90 |",
        "|---|---:|---:|---:|---:|",
    ]
    for s in ov_on["times_ms"]:
        x, y = ov_on["times_ms"][s], ov_off["times_ms"][s]
        lines.append(f"| {s} | {_f(x['median'], '.1f')} | {_f(x['p90'], '.1f')} "
                     f"| {_f(y['median'], '.1f')} | {_f(y['p90'], '.1f')} |")
    sw = result.get("threshold_sweep")
    if sw:
        lines += [
            "",
            "## Verification threshold, post hoc (ICP on)",
            "",
            "What another `verify.score_threshold` would have given on the same estimates: an "
            "estimate counts when its score reaches the threshold and it was accepted or rejected "
            "by the score alone; the best-scored one per frame is matched. Approximate (early exit "
            "and alternative refinements depend on the threshold). Current: "
            f"{result['score_threshold']}.",
            "",
            "| threshold | ADD(-S) recall all | occlusion < 10 % | 10-30 % | false detections |",
            "|---:|---:|---:|---:|---:|",
        ]
        for a, b, c in zip(sw["all"], sw["0-10%"], sw["10-30%"], strict=True):
            lines.append(f"| {a['threshold']:.2f} | {_pct(a['ad_recall'])} | {_pct(b['ad_recall'])} "
                         f"| {_pct(c['ad_recall'])} | {_pct(a['false_detection_rate'])} |")
    lines += ["", "![recall per occlusion bin, ICP on vs off](pose_eval.png)", "",
              "Estimated (orange) vs ground-truth (blue) silhouettes and axes, ICP on:", "",
              "![overlay](pose_eval_overlay.png)", ""]
    if result.get("notes"):
        lines += ["## What limits these figures", "", *result["notes"], ""]
    (OUT / "pose_eval.md").write_text("\n".join(lines) + "\n")
    plot(result)


def plot(result: dict) -> None:
    on, off = result["results"]["icp_on"]["overall"], result["results"]["icp_off"]["overall"]
    labels = [b for b in OCCLUSION_BINS if on["bins"][b]["targets"] >= 5]  # no 1-target bars
    x = np.arange(len(labels))
    sweep = result.get("threshold_sweep")
    fig, axes = plt.subplots(1, 4 if sweep else 3, figsize=(17 if sweep else 13, 3.8))
    for ax, key, title in ((axes[0], "ad_recall", "ADD(-S) < 0.1 d recall"),
                           (axes[1], "ar", "BOP-19 AR")):
        ax.bar(x - 0.2, [on["bins"][b][key] for b in labels], 0.4, label="ICP on")
        ax.bar(x + 0.2, [off["bins"][b][key] for b in labels], 0.4, label="ICP off (coarse + verify)")
        ax.set_xticks(x, [f"{b}\n({on['bins'][b]['targets']})" for b in labels])
        ax.set_xlabel("occlusion (targets)")
        ax.set_ylim(0, 1)
        ax.set_title(title)
        ax.grid(axis="y", alpha=0.3)
    axes[0].axhline(0.98, color="k", ls=":", lw=1, label="target < 10 %")
    axes[0].axhline(0.93, color="grey", ls=":", lw=1, label="target 10-30 %")
    axes[1].axhline(0.85, color="k", ls=":", lw=1, label="target AR")
    axes[0].legend(fontsize=7)
    axes[1].legend(fontsize=7)
    fams = result["families"]
    objs_on = result["results"]["icp_on"]["objects"]
    objs_off = result["results"]["icp_off"]["objects"]
    y = np.arange(len(objs_on))
    axes[2].barh(y - 0.2, [objs_on[k]["ad_recall"] for k in objs_on], 0.4, label="ICP on")
    axes[2].barh(y + 0.2, [objs_off[k]["ad_recall"] for k in objs_on], 0.4, label="ICP off")
    axes[2].set_yticks(y, [fams[k] for k in objs_on], fontsize=8)
    axes[2].set_xlim(0, 1)
    axes[2].set_title("ADD(-S) recall per family")
    axes[2].legend(fontsize=7)
    if sweep:
        ax = axes[3]
        for label, rows in sweep.items():
            fd = [r["false_detection_rate"] for r in rows]
            rec = [r["ad_recall"] for r in rows]
            ax.plot(fd, rec, "o-", ms=3, label=f"targets: {label}")
            if label == "all":
                for r in rows:
                    ax.annotate(f"{r['threshold']:.2f}", (r["false_detection_rate"], r["ad_recall"]),
                                fontsize=6, xytext=(3, -8), textcoords="offset points")
        ax.axvline(0.02, color="k", ls=":", lw=1, label="target false det.")
        ax.set_xlabel("false detection rate (frames without the part)")
        ax.set_ylabel("ADD(-S) recall")
        ax.set_xlim(0, 1)
        ax.set_ylim(0, 1)
        ax.set_title("verification threshold, post hoc (ICP on)")
        ax.legend(fontsize=7)
        ax.grid(alpha=0.3)
    fig.suptitle("pose pipeline on noisy twin frames" + (" (QUICK run)" if result["quick"] else ""))
    fig.tight_layout()
    fig.savefig(OUT / "pose_eval.png", dpi=100)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="small set for development (minutes)")
    ap.add_argument("--families", default=",".join(PART_FAMILIES))
    ap.add_argument("--scenes-per-family", type=int, default=None, help="default 9 (quick: 3)")
    ap.add_argument("--frames-per-scene", type=int, default=None, help="default 6 (quick: 1)")
    ap.add_argument("--negatives", type=int, default=None,
                    help="frames without the part per object (default 36, quick: 3)")
    ap.add_argument("--subdivisions", type=int, default=1,
                    help="template viewpoints: icosphere subdivisions (1: 42 views)")
    ap.add_argument("--seed", type=int, default=11)
    ap.add_argument("--cache", default=str(ROOT / "out" / "bench_pose_eval"),
                    help="dataset and template cache (gitignored)")
    ap.add_argument("--notes", default=None, help="JSON file with a list of markdown lines "
                    "(what limits the figures) for the report")
    ap.add_argument("--rewrite", action="store_true",
                    help="regenerate the markdown and plot from pose_eval.json (no measuring)")
    args = ap.parse_args()
    global OUT
    if args.rewrite:
        result = json.loads((OUT / "pose_eval.json").read_text())
        if args.notes:
            result["notes"] = json.loads(Path(args.notes).read_text())
        write(result)
        return
    q = args.quick
    if q:  # development runs never overwrite the committed results
        OUT = Path(args.cache) / "quick"
    args.scenes_per_family = args.scenes_per_family or (3 if q else 9)
    args.frames_per_scene = args.frames_per_scene or (1 if q else 6)
    args.negatives = args.negatives if args.negatives is not None else (3 if q else 36)
    t0 = time.perf_counter()
    result = run(args)
    result["wall_s"] = time.perf_counter() - t0
    if args.notes:
        result["notes"] = json.loads(Path(args.notes).read_text())
    write(result)
    print((OUT / "pose_eval.md").read_text())
    print(f"wall {result['wall_s']:.0f} s")


if __name__ == "__main__":
    main()
