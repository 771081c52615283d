"""CLI command `eval`: the pose pipeline on a BOP dataset, scored with the BOP-19 metrics."""

from __future__ import annotations

import math
from pathlib import Path

import typer
from rich.table import Table

from weak_template_ros.cli.apps import app
from weak_template_ros.cli.common import console, print_json, progress, user_errors

DEFAULT_LINEMOD_CONFIG = Path(__file__).resolve().parents[2] / "config" / "linemod.yaml"


def _scene_ids(text: str | None) -> tuple[int, ...]:
    from weak_template_ros.errors import InputError

    if not text:
        return ()
    try:
        return tuple(int(s) for s in text.replace(" ", "").split(",") if s)
    except ValueError as exc:
        raise InputError("--scenes", "comma-separated integer scene ids, e.g. 1,2", repr(text)) from exc


def _fmt(v, spec: str = ".3f", scale: float = 1.0) -> str:
    return "-" if v is None else format(v * scale, spec)


EVAL_HELP = (
    "Evaluate 6D pose estimation (LINEMOD -> ICP -> verification) on a BOP dataset.\n\n"
    "Per object: ADD(-S) recall at 0.1 diameter, BOP-19 VSD / MSSD / MSPD average recalls and "
    "AR, median rotation / translation error of correct estimates, false detections on frames "
    "without the object, median / p90 time per stage, and ADD(-S) recall per occlusion bin "
    "(0-10, 10-30, 30-50, > 50 % from scene_gt_info's visib_fract).\n\n"
    "Works on any BOP dataset with depth and models/ (camera K and depth_scale are read per "
    "image). Example: weak-template eval --dataset bop/lm -t 1=obj1.wtl --json > eval.json"
)


@app.command("eval", help=EVAL_HELP)
def eval_cmd(
    dataset: Path = typer.Option(..., help="BOP dataset folder (the one holding camera.json, "
                                 "models/ and the split folders)"),
    templates: list[str] = typer.Option(..., "--templates", "-t", help="template library "
                                        "(.wtl); repeat for several objects. Paired with the "
                                        "BOP object by the library's model checksum, or "
                                        "explicitly as ID=path (e.g. 3=part3.wtl)"),
    split: str = typer.Option("test", help="split folder of the dataset"),
    scenes: str | None = typer.Option(None, help="comma-separated scene ids (default: all)"),
    max_frames: int = typer.Option(0, help="at most this many frames, spread over the scenes "
                                   "(0: all)"),
    negative_frames: int = typer.Option(-1, help="per object, frames where it is NOT annotated "
                                        "evaluated for false detections (-1: all, 0: none)"),
    icp: bool = typer.Option(True, "--icp/--no-icp", help="--no-icp: coarse LINEMOD pose + "
                             "verification only (shows what ICP adds)"),
    min_visib: float = typer.Option(0.1, help="ground-truth instances less visible are no "
                                    "targets (BOP-19: 0.1)"),
    pose_config: Path | None = typer.Option(None, help="YAML of the pose pipeline (PoseConfig, "
                                            "config/pose.yaml layout); default: built-in values"),
    matcher_config: Path | None = typer.Option(None, help="YAML with a 'matcher' section "
                                               f"(default: {DEFAULT_LINEMOD_CONFIG.name})"),
    as_json: bool = typer.Option(False, "--json", help="print the results as JSON on stdout "
                                 "(metres, radians, milliseconds)"),
    frames: bool = typer.Option(False, "--frames", help="with --json: one row per evaluated "
                                "(frame, object)"),
    png: Path | None = typer.Option(None, help="write a PNG of estimated (orange) vs "
                                    "ground-truth (blue) poses on a few frames"),
    bop_results: Path | None = typer.Option(None, help="write the estimates as a BOP-19 "
                                            "results CSV (mm, seconds) for the bop_toolkit"),
):
    from weak_template_ros.config import from_mapping, load_yaml, to_dict
    from weak_template_ros.linemod.matcher import MatcherConfig
    from weak_template_ros.pose.config import PoseConfig
    from weak_template_ros.pose.evaluate import (
        EvalConfig,
        draw_overlays,
        evaluate_bop,
        load_libraries,
    )
    from weak_template_ros.twin.bop import BopDataset

    with user_errors():
        cfg = from_mapping(EvalConfig, {"split": split, "scenes": _scene_ids(scenes),
                                        "max_frames": max_frames, "icp": icp,
                                        "negative_frames": negative_frames,
                                        "min_visib_fract": min_visib}, source="eval options")
        pcfg = load_yaml(PoseConfig, pose_config) if pose_config else PoseConfig()
        mcfg = load_yaml(MatcherConfig, matcher_config or DEFAULT_LINEMOD_CONFIG, section="matcher")
        ds = BopDataset(dataset)
        libs = load_libraries(ds, templates)
        with progress() as bar:
            task = bar.add_task("frames", total=None)
            result = evaluate_bop(ds, libs, cfg, pcfg, mcfg,
                                  on_progress=lambda i, n: bar.update(task, completed=i, total=n))
        if png is not None:
            draw_overlays(result, ds, png)
        if bop_results is not None:
            result.write_bop_results(bop_results)
    if as_json:
        out = result.to_dict(frames=frames)
        out["matcher_config"] = to_dict(mcfg)
        out["templates"] = {str(k): v.model_name for k, v in libs.items()}
        print_json(out)
        return
    table = Table("obj", "n", "ADD(-S)", "AR", "VSD", "MSSD", "MSPD", "deg", "mm", "FD",
                  "ms med/p90",
                  title=f"{ds.root} ({split}), ICP {'on' if icp else 'off'}")
    rows = [*result.objects.values()] + ([result.overall] if len(result.objects) > 1 else [])
    for r in rows:
        fd = "-" if r.false_detection_rate is None else f"{r.false_detections}/{r.frames_without}"
        t = r.times_ms["total"]
        if not r.targets:  # no recall without targets
            rec = ["-"] * 5
        else:
            rec = [f"{r.ad_recall:.0%}", f"{r.ar:.2f}", f"{r.ar_vsd:.2f}", f"{r.ar_mssd:.2f}",
                   f"{r.ar_mspd:.2f}"]
        table.add_row("all" if r.obj_id is None else str(r.obj_id), str(r.targets), *rec,
                      _fmt(r.median_rot_rad, ".2f", 180 / math.pi),
                      _fmt(r.median_trans_m, ".2f", 1e3), fd,
                      f"{_fmt(t['median'], '.0f')}/{_fmt(t['p90'], '.0f')}")
    console.print(table)
    console.print("n: targets; AR/VSD/MSSD/MSPD: BOP-19 average recalls; deg, mm: median errors "
                  "of correct estimates; FD: false detections / frames without the object")
    bins = Table("object", *result.overall.bins, title="ADD(-S) recall per occlusion bin (targets)")
    for r in rows:
        bins.add_row("all" if r.obj_id is None else str(r.obj_id),
                     *(f"{b.ad_recall:.0%} ({b.targets})" if b.targets else "-"
                       for b in r.bins.values()))
    console.print(bins)
    stages = Table("stage", "median ms", "p90 ms", title="time per frame and object")
    for s, v in result.overall.times_ms.items():
        stages.add_row(s, _fmt(v["median"], ".1f"), _fmt(v["p90"], ".1f"))
    console.print(stages)
    if png is not None:
        console.print(f"overlay: {png}")
