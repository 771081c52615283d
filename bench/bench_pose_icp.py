"""Pose refinement and verification on twin frames: which Open3D ICP, how accurate, how fast.

Part 1 (ICP choice): the six procedural part families on a table with three distractors,
640x480, exact and with the sensor model; starts are the ground truth rotated by ``deg`` about a
random axis and moved by ``mm`` in a random direction. The same visible model points and
observed points (``weak_template_ros.pose`` preparation) go to

* legacy generalized ICP (``registration_generalized_icp``, the one ``pose.icp`` uses),
* legacy point-to-plane (``registration_icp``) with the same levels and Tukey kernel,
* tensor point-to-plane (``o3d.t.pipelines.registration.multi_scale_icp``), same levels.

Success: error to the nearest symmetric equivalent below 2 deg and 5 mm ("converged") and
below 0.5 deg and 1 mm ("precise"). Time: the ICP call alone, median.

Part 2 (whole refine-and-verify): ``refine_and_verify`` from the perturbed start, per-stage
medians; verification scores of correct refinements vs wrong poses (30 deg off, unrefined) and
of the part's model hypothesised on another part (refined), with the acceptance rates at the
configured threshold.

Part 3 (whole pipeline, ``estimate_poses``): LINEMOD hypotheses from a template library
(1008 templates: 42 views x 12 in-plane angles x 2 distances, LINEMOD's config otherwise), ICP,
verification, on noisy cluttered frames with 0-30 % occlusion, and on frames without the part
(another part and distractors: every accepted estimate is a false detection).

Writes docs/benchmarks/pose_icp.{json,md,png}.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import open3d as o3d

from weak_template_ros.config import to_dict
from weak_template_ros.geometry import rotation_from_rotvec
from weak_template_ros.metrics import re_te_sym
from weak_template_ros.models import PART_FAMILIES, make_part
from weak_template_ros.pose import IcpConfig, PoseConfig, refine_and_verify
from weak_template_ros.pose.icp import refine_icp
from weak_template_ros.pose.model_points import model_points, visible_points
from weak_template_ros.pose.scene_points import observe_surface, scene_points, sphere_roi
from weak_template_ros.twin.renderer import Renderer
from weak_template_ros.twin.scenes import SceneSpec, iter_scene_frames

OUT = Path(__file__).resolve().parents[1] / "docs" / "benchmarks"
treg = o3d.t.pipelines.registration


def perturb(T: np.ndarray, rng: np.random.Generator, deg: float, metres: float) -> np.ndarray:
    axis = rng.normal(size=3)
    direction = rng.normal(size=3)
    out = T.copy()
    out[:3, :3] = rotation_from_rotvec(axis / np.linalg.norm(axis) * math.radians(deg)) @ T[:3, :3]
    out[:3, 3] += direction / np.linalg.norm(direction) * metres
    return out


def errors(T: np.ndarray, T_gt: np.ndarray, syms: np.ndarray) -> tuple[float, float]:
    r, t = re_te_sym(T[:3, :3], T[:3, 3], T_gt[:3, :3], T_gt[:3, 3], syms)
    return math.degrees(r), t * 1e3


def tensor_icp(src_p, src_n, tgt_p, tgt_n, T0, cfg: IcpConfig) -> np.ndarray:
    """Open3D tensor multi-scale point-to-plane ICP with the same levels and Tukey kernel."""
    f32 = o3d.core.float32
    s = o3d.t.geometry.PointCloud(o3d.core.Tensor(src_p, f32))
    s.point.normals = o3d.core.Tensor(src_n, f32)
    t = o3d.t.geometry.PointCloud(o3d.core.Tensor(tgt_p, f32))
    t.point.normals = o3d.core.Tensor(tgt_n, f32)
    # One kernel for all levels in the tensor API: a third of the coarsest distance was its best
    # (2 and 4 mm: more "singular 6x6" exceptions and fewer convergences).
    kernel = treg.robust_kernel.RobustKernel(treg.robust_kernel.RobustKernelMethod.TukeyLoss,
                                             cfg.max_distances[0] / 3)
    crit = [treg.ICPConvergenceCriteria(cfg.relative_tolerance, cfg.relative_tolerance, int(i))
            for i in cfg.iterations]
    res = treg.multi_scale_icp(s, t, o3d.utility.DoubleVector(list(cfg.voxel_sizes)), crit,
                               o3d.utility.DoubleVector(list(cfg.max_distances)),
                               o3d.core.Tensor(T0), treg.TransformationEstimationPointToPlane(kernel))
    return res.transformation.numpy()


def icp_part(frames_per_family: int, trials: int, starts) -> dict:
    default = IcpConfig()
    # Point-to-plane at its own best kernel width (0.33 of the distance; 0.1 and 1 were worse).
    p2l = IcpConfig(method="point_to_plane", kernel_scale=0.33)
    variants = {
        "legacy generalized ICP (chosen)": lambda *a: refine_icp(*a, default).T_cam_obj,
        "legacy point-to-plane": lambda *a: refine_icp(*a, p2l).T_cam_obj,
        "tensor point-to-plane": lambda *a: tensor_icp(*a, default),
    }
    rows = []
    for noise in (False, True):
        for fam_i, family in enumerate(PART_FAMILIES):
            part = make_part(family, seed=0)
            syms = part.symmetry_transforms(1e-3)
            spec = SceneSpec(parts_per_scene=1, distractors=3, frames_per_scene=frames_per_family,
                             noise=noise)
            cam = spec.camera
            renderer = Renderer(cam)
            renderer.add_mesh("m", part.mesh)
            mp = model_points(part, default.model_points)
            rng = np.random.default_rng([fam_i, int(noise)])
            for frame in iter_scene_frames({1: part}, spec, seed=1, scene_id=fam_i):
                T_gt = frame.objects[0].T_cam_obj
                for deg, mm in starts:
                    for _ in range(trials):
                        T0 = perturb(T_gt, rng, deg, mm / 1e3)
                        c = T0[:3, :3] @ mp.center + T0[:3, 3]
                        roi = sphere_roi(cam, c, mp.radius, 8)
                        surf = observe_surface(frame.depth, cam, roi)
                        tp, tn, _ = scene_points(surf, c, mp.radius, 0.03)
                        d0, _ = renderer.cast_object("m", T0)
                        vis = visible_points(mp.points, mp.normals, T0, d0, cam, 0.002)
                        sp, sn = mp.points[vis], mp.normals[vis]
                        for name, fn in variants.items():
                            t0 = time.perf_counter()
                            try:
                                T = fn(sp, sn, tp, tn, T0)
                                failed = not np.all(np.isfinite(T))
                            except RuntimeError:  # tensor ICP: "singular 6x6 linear system"
                                T, failed = T0, True
                            ms = (time.perf_counter() - t0) * 1e3
                            e_r, e_t = errors(T, T_gt, syms) if not failed else (180.0, 1e3)
                            rows.append(dict(variant=name, noise=noise, family=family, deg=deg, mm=mm,
                                             rot_deg=e_r, trans_mm=e_t, ms=ms, failed=failed,
                                             source=int(vis.sum()), target=len(tp)))
    return {"rows": rows}


def summarise_icp(rows: list[dict]) -> list[dict]:
    out = []
    keys = sorted({(r["variant"], r["noise"], r["deg"], r["mm"]) for r in rows},
                  key=lambda k: (k[1], k[2], k[3], k[0]))
    for variant, noise, deg, mm in keys:
        sel = [r for r in rows if (r["variant"], r["noise"], r["deg"], r["mm"]) == (variant, noise, deg, mm)]
        er = np.array([r["rot_deg"] for r in sel])
        et = np.array([r["trans_mm"] for r in sel])
        conv = (er < 2) & (et < 5)
        prec = (er < 0.5) & (et < 1)
        per_family = {f: float(np.mean([r["rot_deg"] < 2 and r["trans_mm"] < 5
                                        for r in sel if r["family"] == f])) for f in PART_FAMILIES}
        out.append(dict(variant=variant, noise=noise, deg=deg, mm=mm, n=len(sel),
                        converged=float(conv.mean()), precise=float(prec.mean()),
                        median_rot_deg=float(np.median(er[conv])) if conv.any() else None,
                        median_trans_mm=float(np.median(et[conv])) if conv.any() else None,
                        median_ms=float(np.median([r["ms"] for r in sel])),
                        p90_ms=float(np.percentile([r["ms"] for r in sel], 90)),
                        exceptions=int(sum(r["failed"] for r in sel)), per_family=per_family))
    return out


def pipeline_part(frames_per_family: int, trials: int) -> dict:
    """refine_and_verify from 10 deg / 2 cm starts in cluttered noisy frames with occlusion."""
    cfg = PoseConfig()
    no_refine = PoseConfig(refine=False)
    families = list(PART_FAMILIES)
    rows = []
    for i, family in enumerate(families):
        part = make_part(family, seed=0)
        other = make_part(families[(i + 1) % len(families)], seed=1)
        syms = part.symmetry_transforms(1e-3)
        spec = SceneSpec(parts_per_scene=2, distractors=3, frames_per_scene=frames_per_family,
                         noise=True, occlusion_max=0.3)
        rng = np.random.default_rng([100, i])
        for frame in iter_scene_frames({1: part, 2: other}, spec, seed=2, scene_id=i):
            gt = {o.obj_id: o for o in frame.objects}
            T_gt = gt[1].T_cam_obj
            visib = float(gt[1].mask_visib.sum() / max(gt[1].mask.sum(), 1))
            args = (frame.rgb, frame.depth, frame.camera, part)
            for _ in range(trials):
                e = refine_and_verify([perturb(T_gt, rng, 10.0, 0.02)], *args, cfg, return_rejected=True)[0]
                e_r, e_t = errors(e.T_cam_obj, T_gt, syms)
                rows.append(dict(kind="refined start 10 deg / 2 cm", family=family, visib=visib,
                                 score=e.score, accepted=e.accepted, rot_deg=e_r, trans_mm=e_t,
                                 timings=e.timings_ms))
                T30 = T_gt.copy()
                axis = rng.normal(size=3)
                R30 = rotation_from_rotvec(axis / np.linalg.norm(axis) * math.radians(30))
                T30[:3, :3] = R30 @ T_gt[:3, :3]
                if errors(T30, T_gt, syms)[0] > 5:  # not (nearly) a symmetry of the part
                    w = refine_and_verify([T30], *args, no_refine, return_rejected=True)[0]
                    rows.append(dict(kind="30 deg off, unrefined", family=family, visib=visib,
                                     score=w.score, accepted=w.accepted))
                o = refine_and_verify([perturb(gt[2].T_cam_obj, rng, 10.0, 0.01)], *args, cfg,
                                      return_rejected=True)[0]
                o_r, o_t = errors(o.T_cam_obj, T_gt, syms)
                rows.append(dict(kind="on the other part, refined", family=family, visib=visib,
                                 score=o.score, accepted=o.accepted,
                                 found_the_part=bool(o_r < 2 and o_t < 5)))
    return {"rows": rows, "threshold": cfg.verify.score_threshold}


def end_to_end_part(frames: int, families: tuple[str, ...]) -> dict:
    """LINEMOD + ICP + verification per frame, with and without the part."""
    from weak_template_ros.config import load_yaml
    from weak_template_ros.linemod.matcher import MatcherConfig
    from weak_template_ros.linemod.templates import TemplateConfig, build_templates
    from weak_template_ros.pose import estimate_poses

    root = Path(__file__).resolve().parents[1]
    tcfg = load_yaml(TemplateConfig, root / "config" / "linemod.yaml", section="templates")
    tcfg.subdivisions = 1
    mcfg = load_yaml(MatcherConfig, root / "config" / "linemod.yaml", section="matcher")
    rows = []
    all_families = list(PART_FAMILIES)
    for family in families:
        i = all_families.index(family)
        part = make_part(family, seed=0)
        other = make_part(all_families[(i + 1) % len(all_families)], seed=1)
        syms = part.symmetry_transforms(1e-3)
        spec = SceneSpec(parts_per_scene=1, distractors=3, frames_per_scene=frames, noise=True,
                         occlusion_max=0.3)
        t0 = time.perf_counter()
        library = build_templates(part, spec.camera, tcfg)
        build_s = time.perf_counter() - t0
        for with_part, models in ((True, {1: part}), (False, {2: other})):
            for frame in iter_scene_frames(models, spec, seed=7, scene_id=10 * i + int(with_part)):
                t0 = time.perf_counter()
                est = estimate_poses(frame.rgb, frame.depth, frame.camera, library, part,
                                     matcher_config=mcfg)
                ms = (time.perf_counter() - t0) * 1e3
                row = dict(family=family, with_part=with_part, ms=ms, detected=bool(est),
                           templates=len(library), build_s=build_s)
                if est:
                    row["timings"] = est[0].timings_ms
                    row["score"] = est[0].score
                if with_part:
                    T_gt = frame.objects[0].T_cam_obj
                    ob = frame.objects[0]
                    row["visib"] = float(ob.mask_visib.sum() / max(ob.mask.sum(), 1))
                    if est:
                        row["rot_deg"], row["trans_mm"] = errors(est[0].T_cam_obj, T_gt, syms)
                        row["add_s_ok"] = bool(adds_error(est[0].T_cam_obj, T_gt, part)
                                               < 0.1 * part.diameter)
                rows.append(row)
    return {"rows": rows}


def adds_error(T_e: np.ndarray, T_g: np.ndarray, part) -> float:
    """ADD-S (symmetric parts) or ADD, metres (weak_template_ros.metrics)."""
    from weak_template_ros.metrics import ad

    pts = model_points(part, 2000, seed=1).points
    return ad(T_e[:3, :3], T_e[:3, 3], T_g[:3, :3], T_g[:3, 3], pts,
              symmetric=bool(part.symmetries_discrete or part.symmetries_continuous))


def summarise_end_to_end(rows: list[dict]) -> dict:
    pos = [r for r in rows if r["with_part"]]
    neg = [r for r in rows if not r["with_part"]]
    found = [r for r in pos if r["detected"]]
    correct = [r for r in found if r.get("add_s_ok")]
    per_family = {}
    for f in sorted({r["family"] for r in rows}):
        fp = [r for r in pos if r["family"] == f]
        per_family[f] = {"frames": len(fp),
                         "add_s_recall": sum(bool(r.get("add_s_ok")) for r in fp) / max(len(fp), 1),
                         "false_detections": sum(r["detected"] for r in neg if r["family"] == f)}
    stage = {}
    for k in ("detect", "prepare", "icp", "verify", "total"):
        vals = [r["timings"].get(k, 0.0) for r in found if "timings" in r]
        stage[k] = float(np.median(vals)) if vals else None
    return {
        "frames_with_part": len(pos), "frames_without_part": len(neg),
        "add_s_0.1d_recall": len(correct) / max(len(pos), 1),
        "detected_but_wrong": len(found) - len(correct),
        "false_detection_rate": sum(r["detected"] for r in neg) / max(len(neg), 1),
        "median_rot_deg": float(np.median([r["rot_deg"] for r in correct])) if correct else None,
        "median_trans_mm": float(np.median([r["trans_mm"] for r in correct])) if correct else None,
        "median_frame_ms": float(np.median([r["ms"] for r in pos])),
        "p90_frame_ms": float(np.percentile([r["ms"] for r in pos], 90)),
        "median_frame_ms_without_part": float(np.median([r["ms"] for r in neg])),
        "median_stage_ms_first_estimate": stage,
        "per_family": per_family,
        "templates": pos[0]["templates"] if pos else 0,
    }


def summarise_pipeline(p: dict) -> dict:
    rows = p["rows"]
    ref = [r for r in rows if r["kind"].startswith("refined")]
    good = [r for r in ref if r["rot_deg"] < 2 and r["trans_mm"] < 5]
    bad = [r for r in ref if not (r["rot_deg"] < 2 and r["trans_mm"] < 5)]
    wrong30 = [r for r in rows if r["kind"].startswith("30 deg")]
    other = [r for r in rows if r["kind"].startswith("on the other") and not r["found_the_part"]]
    stages = {k: float(np.median([r["timings"].get(k, 0.0) for r in ref]))
              for k in ("prepare", "icp", "verify", "canonical", "total")}
    return {
        "n_refined": len(ref),
        "converged": len(good) / max(len(ref), 1),
        "accepted_given_converged": float(np.mean([r["accepted"] for r in good])) if good else None,
        "accepted_given_not_converged": float(np.mean([r["accepted"] for r in bad])) if bad else None,
        "accepted_30deg_off": float(np.mean([r["accepted"] for r in wrong30])) if wrong30 else None,
        "n_30deg_off": len(wrong30),
        "accepted_on_other_part": float(np.mean([r["accepted"] for r in other])) if other else None,
        "n_on_other_part": len(other),
        "median_rot_deg_converged": float(np.median([r["rot_deg"] for r in good])) if good else None,
        "median_trans_mm_converged": float(np.median([r["trans_mm"] for r in good])) if good else None,
        "median_stage_ms": stages,
        "scores": {"correct": [r["score"] for r in good], "not converged": [r["score"] for r in bad],
                   "30 deg off": [r["score"] for r in wrong30], "other part": [r["score"] for r in other]},
    }


def write(result: dict) -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "pose_icp.json").write_text(json.dumps(result, indent=1))
    s = result["pipeline"]
    lines = [
        "# Pose refinement: ICP choice, accuracy, verification, time",
        "",
        f"Twin frames 640x480, six part families (seed 0) on a table with three distractors; "
        f"{result['machine']}; 1-min load average at the end {result['load_end']:.1f} (other "
        "engineers' jobs were running: absolute times are inflated, ratios hold). "
        "Errors are to the nearest symmetric equivalent (`metrics.re_te_sym`). "
        "Generated by `bench/bench_pose_icp.py`.",
        "",
        "## Which Open3D ICP",
        "",
        "Same prepared points for every variant (model points visible at the start, observed "
        "points within the model radius + 3 cm, levels "
        f"{list(IcpConfig().voxel_sizes)} m voxels, {list(IcpConfig().max_distances)} m distances). "
        "Converged: < 2 deg and < 5 mm; precise: < 0.5 deg and < 1 mm; median errors over converged "
        "runs; time of the ICP call.",
        "",
        "| sensor noise | start | variant | runs | converged | precise | median rot deg | median trans mm "
        "| median ms | p90 ms | exceptions |",
        "|---|---|---|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    def f(v, d=3):
        return "-" if v is None else f"{v:.{d}f}"

    for r in result["icp_summary"]:
        lines.append(f"| {'on' if r['noise'] else 'off'} | {r['deg']:g} deg / {r['mm']:g} mm "
                     f"| {r['variant']} | {r['n']} | {r['converged']:.0%} | {r['precise']:.0%} "
                     f"| {f(r['median_rot_deg'])} | {f(r['median_trans_mm'])} | {r['median_ms']:.1f} "
                     f"| {r['p90_ms']:.1f} | {r['exceptions']} |")
    lines += ["", "Converged fraction per family (generalized ICP, 10 deg / 20 mm starts):", "",
              "| sensor noise | " + " | ".join(PART_FAMILIES) + " |",
              "|---|" + "---:|" * len(PART_FAMILIES)]
    for r in result["icp_summary"]:
        if r["variant"].startswith("legacy generalized") and r["deg"] == 10 and r["mm"] == 20:
            lines.append(f"| {'on' if r['noise'] else 'off'} | "
                         + " | ".join(f"{r['per_family'][fam]:.0%}" for fam in PART_FAMILIES) + " |")
    lines += [
        "",
        "## refine_and_verify (default PoseConfig)",
        "",
        "Noisy frames with two parts, three distractors and a controlled occluder (0-30 %). "
        f"{s['n_refined']} refinements from 10 deg / 2 cm starts; verification threshold "
        f"{result['pipeline_threshold']}.",
        "",
        "| quantity | value |",
        "|---|---:|",
        f"| converged (< 2 deg, < 5 mm) | {s['converged']:.0%} |",
        f"| median error of converged | {s['median_rot_deg_converged']:.3f} deg, "
        f"{s['median_trans_mm_converged']:.3f} mm |",
        f"| accepted when converged (true positives) | {s['accepted_given_converged']:.0%} |",
        f"| accepted when not converged | {s['accepted_given_not_converged'] or 0:.0%} |",
        f"| accepted, 30 deg off unrefined ({s['n_30deg_off']}) | {s['accepted_30deg_off']:.0%} |",
        f"| accepted, model refined on the other part ({s['n_on_other_part']}) "
        f"| {s['accepted_on_other_part'] or 0:.0%} |",
    ]
    for k, v in s["median_stage_ms"].items():
        lines.append(f"| median {k} ms (one hypothesis) | {v:.1f} |")
    e = result.get("end_to_end")
    if e:
        def g(v, fmt):
            return "-" if v is None else format(v, fmt)

        lines += [
            "",
            "## estimate_poses: LINEMOD + ICP + verification",
            "",
            f"{e['templates']} templates per part (42 views x 12 in-plane x 2 distances); noisy frames, "
            "three distractors, 0-30 % occlusion; frames without the part show another part and "
            "distractors; default PoseConfig (20 LINEMOD hypotheses through "
            "`hypothesis_matcher_config`, the first 10 distinct refined, ICP alternatives, threshold "
            f"{result['config']['verify']['score_threshold']}). Time per frame, 640x480, 1 object.",
            "",
            "| quantity | value |",
            "|---|---:|",
            f"| frames with the part / without | {e['frames_with_part']} / {e['frames_without_part']} |",
            f"| ADD(-S) < 0.1 d recall | {e['add_s_0.1d_recall']:.0%} |",
            f"| detected but wrong (published, ADD(-S) >= 0.1 d) | {e['detected_but_wrong']} |",
            f"| false detections on frames without the part | {e['false_detection_rate']:.0%} |",
            f"| median error of correct estimates | {g(e['median_rot_deg'], '.2f')} deg, "
            f"{g(e['median_trans_mm'], '.2f')} mm |",
            f"| median / p90 ms per frame with the part | {e['median_frame_ms']:.0f} / "
            f"{e['p90_frame_ms']:.0f} |",
            f"| median ms per frame without the part | {e['median_frame_ms_without_part']:.0f} |",
        ]
        for k, v in e["median_stage_ms_first_estimate"].items():
            lines.append(f"| median {k} ms (best estimate; icp/verify per hypothesis) | {g(v, '.1f')} |")
        lines += ["", "| family | frames | ADD(-S) recall | false detections |", "|---|---:|---:|---:|"]
        for f, v in e["per_family"].items():
            lines.append(f"| {f} | {v['frames']} | {v['add_s_recall']:.0%} | {v['false_detections']} |")
    lines += [
        "",
        "## Dev set: what each change of the pipeline gave",
        "",
        "`bench/dev_pose_recall.py` (fixed frames: six families, noisy, three distractors, 0-30 % "
        "occlusion; templates as above; 1-min load 1-8 during these runs, CPU ms = process time "
        "of the estimate_poses call). Recall = ADD(-S) < 0.1 d; wrong = published with "
        "ADD(-S) >= 0.1 d.",
        "",
        "| step | frames with / without part | recall (occl < 10 % / 10-30 %) | false detections "
        "| wrong | median ms per frame |",
        "|---|---|---:|---:|---:|---:|",
        "| before (5 LINEMOD hypotheses, generalized ICP, threshold 0.9) | 36 / 18 "
        "| 33 % (42 / 24 %) | 0 | 4 | 69 wall |",
        "| 20 hypotheses, LINEMOD score >= 0.3, boxes may overlap (0.95) | 36 / 18 "
        "| 44 % (58 / 29 %) | 0 | 4 | 233 wall |",
        "| + ICP alternatives (point-to-plane, edges kept) on the 2 best when none is sure "
        "| 36 / 18 | 50 % (58 / 41 %) | 1 | 5 | 277 wall |",
        "| same, larger set | 60 / 24 | 52 % (62 / 42 %) | 1 | 7 | 187 wall |",
        "| + LINEMOD keeps 96 / 48 candidates between levels | 60 / 24 | 62 % (76 / 48 %) | 1 "
        "| 6 | 209 CPU |",
        "| + coarse-to-fine ICP (finer levels only above a score after the first) | 60 / 24 "
        "| 62 % (76 / 48 %) | 1 | 6 | 160 CPU |",
        "| + verification threshold 0.95, gate 0.5 | 60 / 48 "
        "| 60 % (76 / 45 %) | 0 | 4 | 182 CPU |",
        "| + at most 10 of the 20 hypotheses refined | 60 / 48 | 62 % (76 / 48 %) | 0 | 3 "
        "| 174 CPU |",
        "| + verification reuses the refinement's observed surface (final defaults) | 60 / 48 "
        "| 62 % (79 / 45 %) | 0 | 3 | 167 CPU |",
        "",
        "Measured and not kept: 180-deg flip starts (60 -> 60-62 %, +6-40 ms), 90/180/270-deg "
        "turns about the principal axes as extra starts (60 %, 6 wrong, +80 ms), ICP iterations "
        "halved (55 %), two ICP levels (63 %, 2/24 false), first ICP level only (58 %), 3000 "
        "model points (57 %), alternatives on 1 or 4 estimates (60 / 62 %), early exit off "
        "(62 %, 2x time) or at 0.96 (60 %, 155 ms), 7 or 14 hypotheses (57 / 60 %), "
        "near-duplicate hypotheses kept (same recall, +5 % time).",
        "",
        "## What limits these figures",
        "",
        "* **Coarse hypotheses (LINEMOD)**, the largest loss. With the pose stage's matcher "
        "settings (`pose.hypothesis_matcher_config`) a hypothesis within 30 deg and 2 cm of the "
        "truth exists in 43 of the 60 dev frames. Misses: partly occluded bushings and nuts whose "
        "candidates lose to clutter at the intermediate pyramid level (7), a T-profile lying on "
        "its flange (the 6 mm flange barely above the table in depth: located within 13-23 mm but "
        "37-98 deg off), L-brackets proposed 90-160 deg off. Tried without gain (oracle out of "
        "60): a cap of candidates per image place between levels (41 at 8 per place, 37 at 4), "
        "the 162-view library (37: more templates compete for the same candidate slots), no "
        "depth modality (35), looser depth-scale tolerance (44), lower gradient noise factor "
        "(41), 512 coarse candidates (43, slower).",
        "* **Near-symmetric views.** The connector housing turned by 180 deg verifies as well as "
        "the truth after ICP (0.99 vs 1.00 on one frame; inlier depth RMSE 1.21 vs 1.18 mm): the "
        "3 mm latch and the slots are within the depth noise and the outline is the same. Tried: "
        "refining the 180-deg turns of the best estimate about its principal axes (no gain), an "
        "interior-edge cue (image edges inside the silhouette explained by rendered creases: as "
        "low on the truth, 0.26-0.99, as on the turn; not kept). Most published wrong poses are "
        "such turns.",
        "* **Thin and extruded parts in noisy depth.** Generalized ICP slides along the T-profile "
        "(16-18 mm off from the true pose in 3 of 6 frames), point-to-plane slides less there "
        "but diverges elsewhere, dropping pixels next to depth jumps starves the 3 mm L-bracket "
        "sheet. Both run as alternatives on the best estimates when none is sure and the best "
        "verification wins: 15 -> 21 of 24 starts 10 deg / 1 cm off recovered within 5 deg.",
        "* **False detections.** More hypotheses and alternatives give a wrong pose more "
        "chances: at the former threshold 0.9 this benchmark had 5/32 frames without the part "
        "detected (scores 0.913-0.943: the connector housing on a box distractor, the hex nut on "
        "a connector housing); at 0.95 the dev set has 0/48 (recall 62 -> 60 %).",
        "* **Time.** LINEMOD 30-50 ms; a refinement 10-25 ms (first ICP level, verification, the "
        "finer levels and a second verification only above 0.5); about 7 refinements per frame "
        "on average: early exit when one scores >= 0.97, else all 10 hypotheses plus 4 "
        "alternatives (frames without the part, misses). Median 167 ms CPU on the dev set, "
        "above the 100 ms target; measured while other jobs kept the 2-core host at a load of "
        "1-8.",
        "",
        "![verification scores](pose_icp.png)",
        "",
    ]
    (OUT / "pose_icp.md").write_text("\n".join(lines) + "\n")

    fig, ax = plt.subplots(figsize=(7, 3.5))
    bins = np.linspace(0, 1, 41)
    for label, scores in s["scores"].items():
        if scores:
            ax.hist(scores, bins=bins, alpha=0.55, label=f"{label} ({len(scores)})")
    ax.axvline(result["pipeline_threshold"], color="k", ls="--", label="threshold")
    ax.set_xlabel("verification score")
    ax.set_ylabel("count")
    ax.legend(fontsize=8)
    ax.set_title("render-and-compare verification on noisy twin frames")
    fig.tight_layout()
    fig.savefig(OUT / "pose_icp.png", dpi=110)


def rewrite_from_json() -> None:
    """Regenerate the markdown and plot from docs/benchmarks/pose_icp.json (no measuring)."""
    write(json.loads((OUT / "pose_icp.json").read_text()))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=3, help="frames per family")
    ap.add_argument("--trials", type=int, default=4, help="starts per frame and start size")
    ap.add_argument("--e2e-frames", type=int, default=8, help="frames per family, LINEMOD part")
    ap.add_argument("--e2e-families", default="hex_nut,l_bracket,connector_housing,bushing")
    args = ap.parse_args()
    starts = [(5.0, 5.0), (10.0, 20.0)]
    icp = icp_part(args.frames, args.trials, starts)
    pipe = pipeline_part(args.frames, max(1, args.trials // 2))
    e2e = end_to_end_part(args.e2e_frames, tuple(args.e2e_families.split(","))) if args.e2e_frames else None
    result = {
        "machine": f"{platform.machine()} {os.cpu_count()} CPUs, Open3D {o3d.__version__}",
        "load_end": os.getloadavg()[0],
        "config": to_dict(PoseConfig()),
        "icp_summary": summarise_icp(icp["rows"]),
        "icp_rows": icp["rows"],
        "pipeline": summarise_pipeline(pipe),
        "pipeline_threshold": pipe["threshold"],
        "pipeline_rows": [{k: v for k, v in r.items()} for r in pipe["rows"]],
    }
    if e2e:
        result["end_to_end"] = summarise_end_to_end(e2e["rows"])
        result["end_to_end_rows"] = e2e["rows"]
    write(result)
    print((OUT / "pose_icp.md").read_text())


if __name__ == "__main__":
    main()
