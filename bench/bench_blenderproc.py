"""BlenderProc backend: render speed on this machine and cross-backend calibration at 640x480.

One scene (3 parts, 3 distractors, an occluder hiding 20-40 % of the first part) with 3 camera
views is rendered by BlenderProc (Cycles, CPU, no denoiser) at 1 and 16 samples with the twin's
grey materials and at 16 samples with the metal/plastic PBR presets; each run is checked
against the embedded renderer with :func:`compare_backends` (poses, depth on surfaces, visible
mask IoU). Time per frame = the colour render of the 3 frames / 3 (BlenderProc's own timer) plus
the one-sample ground-truth pass; the process start (bpy + BlenderProc import, scene set-up) is
reported separately, it is paid once per scene.

Writes docs/benchmarks/blenderproc.{json,md,png}. Target (issue 8): <= 3 s per 640x480 frame at
16 samples on this 2-core machine; calibration: depth within 1 mm, mask IoU >= 0.99.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import tempfile
from dataclasses import replace
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from weak_template_ros.twin import blenderproc as bp
from weak_template_ros.twin.scenes import SceneSpec, iter_scene_frames, make_part_set

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
TARGET_S_PER_FRAME_16 = 3.0


def run(name: str, models, spec: SceneSpec, cfg: bp.BlenderProcConfig, env, work: Path) -> dict:
    rep = bp.compare_backends(models, spec, seed=0, scene_id=0, cfg=cfg, env=env, work_dir=work / name)
    n = spec.frames_per_scene
    colour = rep["timing"]["colour_render_s"] / n
    gt = rep["timing"].get("gt_render_s", 0.0) / n
    renders = rep["timing"]["colour_render_s"] + rep["timing"].get("gt_render_s", 0.0)
    rec = {"name": name, "samples": cfg.samples, "materials": cfg.materials,
           "colour_s_per_frame": colour, "gt_pass_s_per_frame": gt, "s_per_frame": colour + gt,
           "cpu_s_per_frame": (rep["timing"].get("colour_render_cpu_s", math.nan)
                               + rep["timing"].get("gt_render_cpu_s", 0.0)) / n,
           "process_overhead_s": rep["blenderproc_wall_s"] - renders,
           "wall_s": rep["blenderproc_wall_s"], "pose_max_abs": rep["pose_max_abs"],
           "depth_max_abs_mm": 1000 * rep["depth_max_abs_m"],
           "depth_p99_abs_mm": 1000 * max(f["depth_p99_abs_m"] for f in rep["frames"]),
           "min_mask_iou": rep["min_mask_iou"], "calibration_passed": rep["passed"]}
    print(json.dumps(rec))
    return rec


def picture(models, spec: SceneSpec, env, work: Path, path: Path) -> None:
    """Frame 0 by the embedded renderer and by BlenderProc (twin and PBR materials, 16 samples)."""
    emb = next(iter_scene_frames(models, spec, 0, 0)).rgb
    panels = [("embedded", emb)]
    for mat in ("twin", "pbr"):
        cfg = bp.BlenderProcConfig(samples=16, materials=mat)
        frame = next(bp.iter_blenderproc_frames(models, spec, 0, 0, cfg, env, work / f"pic_{mat}"))
        panels.append((f"BlenderProc, {mat} materials, 16 samples", frame.rgb))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for ax, (title, img) in zip(axes, panels, strict=True):
        ax.imshow(img)
        ax.set_title(title)
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(path, dpi=80)
    plt.close(fig)


#: Speed variants at 16 samples (name, BlenderProcConfig overrides), each measured against the
#: baseline's time and against a 64-sample reference render's pixels.
VARIANTS = [
    ("baseline (3 bounces, caustics, 2048 px tiles, Cycles GT pass)", {}),
    ("GT pass from the embedded ray caster", {"gt_pass": "embedded"}),
    ("set_cpu_threads(2)", {"threads": 2}),
    ("caustics off", {"caustics": False}),
    ("1 bounce (set_light_bounces)", {"max_bounces": 1}),
    ("0 bounces (direct light only)", {"max_bounces": 0}),
    ("adaptive sampling, noise threshold 0.1, min 4", {"noise_threshold": 0.1, "adaptive_min_samples": 4}),
    ("256 px tiles", {"tile_size": 256}),
    ("persistent data off", {"persistent_data": False}),
    ("1 bounce + caustics off + embedded GT pass",
     {"max_bounces": 1, "caustics": False, "gt_pass": "embedded"}),
]


def speed_variants(models, spec: SceneSpec, env, work: Path, rounds: int = 2) -> dict:
    """Each variant's render time per frame (best of ``rounds`` interleaved runs: wall time, and
    CPU time of Blender's threads, which load barely changes) and its image error against a
    64-sample render."""
    import numpy as np

    def render(name, cfg):
        frames, timing, wall = [], {}, 0.0
        for _frame, _gt, raw in bp._iter_frame_triples(models, spec, 0, 0, cfg, env, work / name):
            frames.append(np.clip(raw["radiance"] * 255.0, 0, 255))
            timing, wall = raw["result"]["timing"], raw["wall_s"]
        return frames, timing, wall

    load0 = os.getloadavg()[0]
    ref, ref_timing, _ = render("reference", bp.BlenderProcConfig(samples=64))
    n = spec.frames_per_scene
    out = [{"name": name, "overrides": overrides, "runs": []} for name, overrides in VARIANTS]
    for rnd in range(rounds):
        for k, rec in enumerate(out):
            cfg = replace(bp.BlenderProcConfig(samples=16), **rec["overrides"])
            load = os.getloadavg()[0]
            frames, t, wall = render(f"variant_{k}_{rnd}", cfg)
            run_rec = {"colour_s": t["colour_render_s"] / n, "gt_s": t.get("gt_render_s", 0.0) / n,
                       "colour_cpu_s": t["colour_render_cpu_s"] / n,
                       "gt_cpu_s": t.get("gt_render_cpu_s", 0.0) / n,
                       "wall_s": wall, "load_before": round(load, 2)}
            if rnd == 0:
                rec["rms_vs_64_samples_8bit"] = float(np.sqrt(np.mean(
                    [np.mean((f - r) ** 2) for f, r in zip(frames, ref, strict=True)])))
            rec["runs"].append(run_rec)
            print(json.dumps({"name": rec["name"], **run_rec}), flush=True)
    for rec in out:
        best = min(rec["runs"], key=lambda r: r["colour_s"] + r["gt_s"])
        rec.update(colour_s_per_frame=best["colour_s"], gt_pass_s_per_frame=best["gt_s"],
                   s_per_frame=best["colour_s"] + best["gt_s"],
                   cpu_s_per_frame=min(r["colour_cpu_s"] + r["gt_cpu_s"] for r in rec["runs"]))
    base, base_cpu = out[0]["s_per_frame"], out[0]["cpu_s_per_frame"]
    for rec in out:
        rec["speedup"] = base / rec["s_per_frame"]
        rec["cpu_speedup"] = base_cpu / rec["cpu_s_per_frame"]
    return {"frames": n, "rounds": rounds, "reference_samples": 64,
            "reference_colour_s_per_frame": ref_timing["colour_render_s"] / n,
            "load_average_1min": [round(load0, 2), round(os.getloadavg()[0], 2)], "variants": out}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--frames", type=int, default=3)
    ap.add_argument("--part", choices=("all", "calibration", "speed"), default="all",
                    help="calibration runs + picture, speed variants, or both (the JSON keeps the other)")
    args = ap.parse_args()
    env = bp.BlenderProcEnv.locate()
    models = make_part_set(["all"], seed=0)
    spec = SceneSpec(frames_per_scene=args.frames, occlusion_min=0.2, occlusion_max=0.4)
    configs = [("1 sample, twin", bp.BlenderProcConfig(samples=1)),
               ("16 samples, twin", bp.BlenderProcConfig(samples=16)),
               ("16 samples, pbr", bp.BlenderProcConfig(samples=16, materials="pbr"))]
    OUT.mkdir(parents=True, exist_ok=True)
    path = OUT / "blenderproc.json"
    data = json.loads(path.read_text()) if path.is_file() else {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if args.part in ("all", "calibration"):
            load_before = os.getloadavg()[0]
            data["results"] = [run(name, models, spec, cfg, env, work) for name, cfg in configs]
            load_after = os.getloadavg()[0]
            picture(models, replace(spec, frames_per_scene=1), env, work, OUT / "blenderproc.png")
            data["meta"] = {
                "machine": platform.machine(), "cpus": os.cpu_count(), "python": platform.python_version(),
                "environment": env.stamp, "image": f"{spec.width}x{spec.height}",
                "frames_per_run": spec.frames_per_scene, "denoiser": "none",
                "load_average_1min": [round(load_before, 2), round(load_after, 2)],
                "target_s_per_frame_16_samples": TARGET_S_PER_FRAME_16}
        if args.part in ("all", "speed"):
            data["speed"] = speed_variants(models, replace(spec, frames_per_scene=2), env, work)
    path.write_text(json.dumps(data, indent=1) + "\n")
    write_markdown(data["meta"], data["results"], data.get("speed"))


def write_markdown(meta: dict, results: list[dict], speed: dict | None = None) -> None:
    r16 = next(r for r in results if r["samples"] == 16 and r["materials"] == "twin")
    lines = [
        "# BlenderProc backend: speed and calibration",
        "",
        f"`python bench/bench_blenderproc.py` on {meta['cpus']} CPU cores ({meta['machine']}), "
        f"BlenderProc {meta['environment']['blenderproc'].split('==')[1]} with PyPI bpy "
        f"{meta['environment']['bpy']}, Cycles on the CPU, {meta['image']}, no denoiser, "
        f"{meta['frames_per_run']} frames per run (one scene: 3 parts, 3 distractors, an occluder "
        "hiding 20-40 % of the first part). The calibration columns compare each run with the "
        "embedded renderer on the same scene spec (`compare_backends`).",
        "",
        "| run | s/frame (colour + GT pass) | colour | GT pass | process start | pose max abs "
        "| depth max / p99 [mm] | min mask IoU | calibration |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        lines.append(
            f"| {r['name']} | {r['s_per_frame']:.2f} | {r['colour_s_per_frame']:.2f} | "
            f"{r['gt_pass_s_per_frame']:.2f} | {r['process_overhead_s']:.1f} s | {r['pose_max_abs']:.1e} | "
            f"{r['depth_max_abs_mm']:.4f} / {r['depth_p99_abs_mm']:.4f} | {r['min_mask_iou']:.4f} | "
            f"{'pass' if r['calibration_passed'] else 'FAIL'} |")
    verdict = "meets" if r16["s_per_frame"] <= TARGET_S_PER_FRAME_16 else "misses"
    lines += [
        "",
        f"Target: <= {TARGET_S_PER_FRAME_16:.0f} s per 640x480 frame at 16 samples: "
        f"{r16['s_per_frame']:.2f} s, {verdict} it (1-min load average {meta['load_average_1min'][0]} "
        f"before, {meta['load_average_1min'][1]} after the runs: other processes shared the 2 cores; the "
        "colour render dominates, the one-sample pixel-centred GT pass for depth and masks adds "
        f"{r16['gt_pass_s_per_frame']:.2f} s). CPU time of Blender's threads: "
        f"{r16.get('cpu_s_per_frame', math.nan):.2f} s/frame, about "
        f"{r16.get('cpu_s_per_frame', math.nan) / 2:.2f} s of wall time on an idle 2-core machine. "
        "The process start is paid once per scene.",
        "",
        f"Environment build (`make sim-setup`, wheels from the package cache): "
        f"{meta['environment']['build_seconds']} s.",
        "",
        "![embedded vs BlenderProc](blenderproc.png)",
        "",
    ]
    if speed:
        best = min(speed["variants"], key=lambda r: r["s_per_frame"])
        lines += [
            "## Where the time goes: speed variants at 16 samples",
            "",
            f"`python bench/bench_blenderproc.py --part speed`: the same scene, {speed['frames']} frames "
            "per run, twin materials, one variant at a time (`BlenderProcConfig` fields). Image error: "
            f"RMS difference (8-bit units) of the noise-free colour images to a {speed['reference_samples']}"
            f"-sample render of the same frames ({speed['reference_colour_s_per_frame']:.1f} s/frame); "
            "at 16 samples most of it is sampling noise. Times: best of "
            f"{speed['rounds']} interleaved runs; CPU s = CPU time of all Blender threads during the "
            "renders (what an idle 2-core machine would divide by about 2). 1-min load average "
            f"{speed['load_average_1min'][0]} before, {speed['load_average_1min'][1]} after (shared "
            "cores: absolute times are inflated, ratios within this table hold better).",
            "",
            "| variant | s/frame (best of runs) | colour | GT pass | speed-up | CPU s/frame | CPU "
            "speed-up | RMS vs 64 spp | load before runs |",
            "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
        ]
        for r in speed["variants"]:
            lines.append(f"| {r['name']} | {r['s_per_frame']:.2f} | {r['colour_s_per_frame']:.2f} | "
                         f"{r['gt_pass_s_per_frame']:.2f} | {r['speedup']:.2f}x | "
                         f"{r['cpu_s_per_frame']:.2f} | "
                         f"{r['cpu_speedup']:.2f}x | {r['rms_vs_64_samples_8bit']:.2f} | "
                         f"{', '.join(str(x['load_before']) for x in r['runs'])} |")
        base = speed["variants"][0]
        idle = base["cpu_s_per_frame"] / 2
        spread = [r["cpu_speedup"] for r in speed["variants"]]
        lines += [
            "",
            f"Read the CPU columns: the wall times follow the other engineers' load (the fastest wall "
            f"time, {best['name']} at {best['s_per_frame']:.2f} s, ran at a quieter moment), while the "
            f"CPU time of every variant is within {100 * (min(spread) - 1):+.0f} / "
            f"{100 * (max(spread) - 1):+.0f} % of the baseline's {base['cpu_s_per_frame']:.2f} s/frame. "
            "At 16 samples this scene's cost is camera rays and direct light: bounces, caustics, "
            "tiles, adaptive sampling (no pixel converges to 0.1 within 16 samples: the images are "
            "identical), an explicit thread count and persistent data change nothing measurable; "
            "the one saving is the GT pass (a second render for pixel-centred depth and masks), "
            "which `gt_pass=\"embedded\"` replaces by the exact ray caster's passes (equal within "
            "0.02 mm, see the calibration table). On an idle 2-core machine (Cycles' two threads "
            f"busy) that is about {idle:.2f} s/frame with the Cycles GT pass: "
            f"{'within' if idle <= TARGET_S_PER_FRAME_16 else 'above'} the "
            f"{TARGET_S_PER_FRAME_16:.0f} s target; under the measured load the wall time is "
            f"{base['s_per_frame']:.1f} s or more.", ""]
    lines += [
        "The sim-to-sim gap (pose pipeline and mark aligners on BlenderProc vs embedded renders of "
        "the same specs) is in [sim2sim.md](sim2sim.md).",
    ]
    (OUT / "blenderproc.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
