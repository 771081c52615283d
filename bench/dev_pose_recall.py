"""Dev set of the end-to-end pose pipeline (``estimate_poses``): a quick, fixed measurement.

Six part families x ``--frames`` (10) noisy cluttered frames with the part (occlusion 0-30 %) and
x ``--negatives`` (8) frames without it (another part and distractors). Template libraries as in
``bench_pose_icp.py`` (42 views x 12 in-plane x 2 distances), cached under ``--cache``.

Prints ADD(-S) 0.1 d recall (all, occlusion < 10 %, 10-30 %), false detections, detected but
wrong, median errors, median/p90 frame time, and an oracle: the share of frames whose
``--oracle-k`` LINEMOD hypotheses include one within 30 deg and 2 cm of the truth (what ICP can
reach). Use it to measure a change before and after; the full benchmark is bench_pose_icp.py.

    OMP_NUM_THREADS=1 nice -n 10 .venv/bin/python bench/dev_pose_recall.py [--set key=value ...]

``--set`` overrides PoseConfig fields (``max_hypotheses=10``, ``verify.score_threshold=0.92``)
or matcher fields (``matcher.max_detections=20``).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import time
from pathlib import Path

import numpy as np

from weak_template_ros.config import from_mapping, load_yaml, to_dict
from weak_template_ros.linemod.matcher import Matcher, MatcherConfig
from weak_template_ros.linemod.templates import TemplateConfig, TemplateLibrary, build_templates
from weak_template_ros.metrics import ad, re_te_sym
from weak_template_ros.models import PART_FAMILIES, make_part
from weak_template_ros.pose import (
    PoseConfig,
    PoseEstimator,
    estimate_poses,
    hypothesis_matcher_config,
)
from weak_template_ros.pose.model_points import model_points
from weak_template_ros.twin.scenes import SceneSpec, iter_scene_frames

ROOT = Path(__file__).resolve().parents[1]
REFINED = [0]  # PoseEstimator._one calls (hypotheses refined and verified), a load-free cost


def _counting(one):
    def wrapper(*args, **kwargs):
        REFINED[0] += 1
        return one(*args, **kwargs)
    return wrapper


PoseEstimator._one = _counting(PoseEstimator._one)


def _set(d: dict, key: str, value: str) -> None:
    *path, last = key.split(".")
    for p in path:
        d = d.setdefault(p, {})
    d[last] = json.loads(value) if value[:1] in "[{0123456789-.tfn" else value


def library_for(part, camera, cache: Path) -> TemplateLibrary:
    tcfg = load_yaml(TemplateConfig, ROOT / "config" / "linemod.yaml", section="templates")
    tcfg.subdivisions = 1
    path = cache / f"{part.name}_{part.checksum[:12]}.wtl"
    if path.exists():
        return TemplateLibrary.load(path, part.checksum)
    lib = build_templates(part, camera, tcfg)
    cache.mkdir(parents=True, exist_ok=True)
    lib.save(path)
    return lib


def run(args) -> dict:
    pose_d = to_dict(PoseConfig())
    mdict = to_dict(load_yaml(MatcherConfig, ROOT / "config" / "linemod.yaml", section="matcher"))
    match_d = dict(mdict)
    for s in args.set:
        k, v = s.split("=", 1)
        if k.startswith("matcher."):
            _set(match_d, k[len("matcher."):], v)
        else:
            _set(pose_d, k, v)
    cfg = from_mapping(PoseConfig, pose_d)
    mcfg = from_mapping(MatcherConfig, match_d)
    # The oracle sees what estimate_poses asks the matcher for, ``--oracle-k`` of them.
    ocfg = dataclasses.replace(hypothesis_matcher_config(mcfg, cfg),
                               max_detections=max(args.oracle_k, 1))
    families = args.families.split(",")
    rows = []
    for family in families:
        fi = list(PART_FAMILIES).index(family)
        part = make_part(family, seed=0)
        other = make_part(list(PART_FAMILIES)[(fi + 1) % len(PART_FAMILIES)], seed=1)
        syms = part.symmetry_transforms(1e-3)
        pts = model_points(part, 2000, seed=1).points
        symmetric = bool(part.symmetries_discrete or part.symmetries_continuous)
        for with_part, models, n in ((True, {1: part}, args.frames), (False, {2: other}, args.negatives)):
            if n == 0:
                continue
            spec = SceneSpec(parts_per_scene=1, distractors=3, frames_per_scene=n, noise=True,
                             occlusion_max=0.3)
            lib = library_for(part, spec.camera, Path(args.cache))
            for frame in iter_scene_frames(models, spec, seed=11, scene_id=10 * fi + int(with_part)):
                t0, c0, n0 = time.perf_counter(), time.process_time(), REFINED[0]
                est = estimate_poses(frame.rgb, frame.depth, frame.camera, lib, part, cfg,
                                     matcher_config=mcfg)
                ms = (time.perf_counter() - t0) * 1e3
                row = dict(family=family, with_part=with_part, ms=ms, detected=bool(est),
                           cpu_ms=(time.process_time() - c0) * 1e3, refined=REFINED[0] - n0)
                if est:
                    row["score"] = est[0].score
                    row["hyp"] = est[0].hypothesis_index
                if with_part:
                    ob = frame.objects[0]
                    T_gt = ob.T_cam_obj
                    row["visib"] = float(ob.mask_visib.sum() / max(ob.mask.sum(), 1))
                    if est:
                        T = est[0].T_cam_obj
                        r, t = re_te_sym(T[:3, :3], T[:3, 3], T_gt[:3, :3], T_gt[:3, 3], syms)
                        row["rot_deg"], row["trans_mm"] = math.degrees(r), t * 1e3
                        row["ok"] = bool(ad(T[:3, :3], T[:3, 3], T_gt[:3, :3], T_gt[:3, 3], pts,
                                            symmetric=symmetric) < 0.1 * part.diameter)
                    if args.oracle_k:
                        m = Matcher(lib, ocfg)
                        best = 180.0
                        for h in m.match(frame.rgb, frame.depth, frame.camera):
                            T = h.T_cam_obj
                            r, t = re_te_sym(T[:3, :3], T[:3, 3], T_gt[:3, :3], T_gt[:3, 3], syms)
                            if t < 0.02:
                                best = min(best, math.degrees(r))
                        row["oracle_deg"] = best
                rows.append(row)
                if args.verbose:
                    print({k: (round(v, 2) if isinstance(v, float) else v) for k, v in row.items()},
                          flush=True)
    return summarise(rows)


def summarise(rows: list[dict]) -> dict:
    pos = [r for r in rows if r["with_part"]]
    neg = [r for r in rows if not r["with_part"]]
    ok = [r for r in pos if r.get("ok")]
    lo = [r for r in pos if r["visib"] > 0.9]
    mid = [r for r in pos if r["visib"] <= 0.9]
    out = {
        "frames_pos": len(pos), "frames_neg": len(neg),
        "recall": len(ok) / max(len(pos), 1),
        "recall_occ_lt10": sum(bool(r.get("ok")) for r in lo) / max(len(lo), 1),
        "recall_occ_10_30": sum(bool(r.get("ok")) for r in mid) / max(len(mid), 1),
        "n_occ_lt10": len(lo), "n_occ_10_30": len(mid),
        "detected_wrong": sum(r["detected"] and not r.get("ok") for r in pos),
        "false_det_rate": sum(r["detected"] for r in neg) / max(len(neg), 1),
        "median_rot_deg": float(np.median([r["rot_deg"] for r in ok])) if ok else None,
        "median_trans_mm": float(np.median([r["trans_mm"] for r in ok])) if ok else None,
        "median_ms": float(np.median([r["ms"] for r in rows])),
        "p90_ms": float(np.percentile([r["ms"] for r in rows], 90)),
        "median_ms_neg": float(np.median([r["ms"] for r in neg])) if neg else None,
        "median_cpu_ms": float(np.median([r["cpu_ms"] for r in rows])),
        "mean_refined": float(np.mean([r["refined"] for r in rows])),
        "median_refined": float(np.median([r["refined"] for r in rows])),
        "per_family": {f: sum(bool(r.get("ok")) for r in pos if r["family"] == f)
                       for f in sorted({r["family"] for r in pos})},
        "load": os.getloadavg()[0],
    }
    if pos and "oracle_deg" in pos[0]:
        out["oracle_30deg_2cm"] = float(np.mean([r["oracle_deg"] < 30 for r in pos]))
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--frames", type=int, default=10, help="frames with the part per family")
    ap.add_argument("--negatives", type=int, default=8, help="frames without the part per family")
    ap.add_argument("--families", default=",".join(PART_FAMILIES))
    ap.add_argument("--cache", default="/tmp/wtr_dev_templates")
    ap.add_argument("--oracle-k", type=int, default=0, help="hypotheses of the oracle (0: off)")
    ap.add_argument("--set", action="append", default=[], help="key=value override")
    ap.add_argument("--verbose", action="store_true")
    ap.add_argument("--json", help="write the summary here")
    args = ap.parse_args()
    s = run(args)
    print(json.dumps(s, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(s, indent=1))


if __name__ == "__main__":
    main()
