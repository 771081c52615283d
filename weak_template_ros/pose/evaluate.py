"""Evaluate the pose pipeline on any BOP dataset: BOP-19 recalls, ADD(-S), errors, times, bins.

ROS-free. For every frame of the chosen scenes and every object that has a template library,
:func:`estimate_poses` (LINEMOD -> ICP -> verification) runs on the frame's RGB-D with the
frame's own intrinsics (``scene_camera.json`` ``cam_K``, depth scaled by its ``depth_scale``).
Estimates are scored with :mod:`weak_template_ros.metrics` exactly as the BOP toolkit scores
them (greedy matching per image and object, as many estimates as ground-truth instances), and
frames where the object is not annotated count its accepted estimates as false detections.

Three lines::

    from weak_template_ros.pose.evaluate import evaluate_bop, load_libraries
    libs = load_libraries("bop/lm", ["part.wtl"])
    print(evaluate_bop("bop/lm", libs).to_dict()["objects"])

Units: metres and radians in the API and in :meth:`EvalResult.to_dict`; the BOP results file
(:meth:`EvalResult.write_bop_results`) keeps BOP's millimetres and seconds.

Occlusion bins use ``visib_fract`` from ``scene_gt_info.json`` (occlusion = 1 - visib_fract;
from the masks when the file is absent): 0-10 %, 10-30 %, 30-50 %, > 50 %. Targets are ground
truth instances with ``visib_fract >= min_visib_fract`` (BOP-19: 0.1).
"""

from __future__ import annotations

import csv
import dataclasses
import math
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from weak_template_ros.camera import CameraIntrinsics
from weak_template_ros.config import param, to_dict, validate
from weak_template_ros.errors import InputError
from weak_template_ros.metrics import (
    MSPD_REFERENCE_WIDTH,
    BopMetricsConfig,
    MatchGroup,
    is_symmetric,
    match_poses,
    pose_errors,
    re_te_sym,
    recall_matched,
    renderer_depth,
)
from weak_template_ros.metrics import ad as ad_error
from weak_template_ros.models import PartModel
from weak_template_ros.pose.config import PoseConfig
from weak_template_ros.pose.estimator import estimate_poses
from weak_template_ros.twin.bop import BopDataset, BopFrame
from weak_template_ros.twin.renderer import Renderer

__all__ = [
    "OCCLUSION_BINS",
    "STAGES",
    "EvalConfig",
    "EvalResult",
    "FrameRecord",
    "ObjectResult",
    "draw_overlays",
    "evaluate_bop",
    "load_libraries",
    "summarise",
    "threshold_sweep",
]

#: Occlusion bins (fraction of the silhouette hidden, [lo, hi)); the issue's targets use the first two.
OCCLUSION_BINS: dict[str, tuple[float, float]] = {
    "0-10%": (0.0, 0.1), "10-30%": (0.1, 0.3), "30-50%": (0.3, 0.5), ">50%": (0.5, 1.01)}
#: Stages whose per-frame times are reported (ms): detect (LINEMOD), prepare, icp, verify summed
#: over the hypotheses refined in the frame, total = wall time of the estimate_poses call.
STAGES = ("detect", "prepare", "icp", "verify", "total")


@dataclass
class EvalConfig:
    """What to evaluate and how (pipeline tunables are in PoseConfig / MatcherConfig)."""

    split: str = param("test", "dataset split folder")
    scenes: tuple[int, ...] = param((), "scene ids to evaluate (empty: all)")
    max_frames: int = param(0, "at most this many frames (0: all), taken evenly over the scenes",
                            lo=0, hi=10_000_000)
    negative_frames: int = param(-1, "per object, frames where it is not annotated that are "
                                 "evaluated for false detections, spread evenly (-1: all, 0: none)",
                                 lo=-1, hi=10_000_000)
    icp: bool = param(True, "run ICP (False: coarse LINEMOD pose + verification only)")
    min_visib_fract: float = param(0.1, "ground-truth instances less visible are no targets "
                                   "(BOP-19: 0.1)", lo=0.0, hi=1.0)
    model_points: int = param(2000, "surface points per model for ADD(-S), MSSD, MSPD",
                              lo=10, hi=1_000_000)

    def __post_init__(self):
        try:
            self.scenes = tuple(int(s) for s in self.scenes)
        except (TypeError, ValueError) as exc:
            raise InputError("scenes", "a list of integer scene ids", repr(self.scenes)) from exc


@dataclass
class FrameRecord:
    """One (frame, object) evaluation.

    ``T_est`` / ``scores`` are the ACCEPTED estimates (best first); errors are per (estimate,
    ground-truth instance): ``ad``, ``mssd`` as fractions of the diameter, ``mspd`` in px at
    640 px width, ``vsd`` (n_est, n_gt, n_tau), ``rot`` (rad) / ``trans`` (m) to the nearest
    symmetric equivalent (:func:`~weak_template_ros.metrics.re_te_sym`). ``rejected_ad``:
    ADD(-S) / diameter of the estimates verification rejected (why a target was missed), with
    their scores and whether the score threshold was the only reason (:func:`threshold_sweep`).
    ``times_ms`` per stage (see :data:`STAGES`).
    """

    scene_id: int
    im_id: int
    obj_id: int
    T_gt: np.ndarray                 # (n_gt, 4, 4) metres
    visib_fract: np.ndarray          # (n_gt,)
    T_est: np.ndarray                # (n_est, 4, 4) metres
    scores: np.ndarray               # (n_est,)
    ad: np.ndarray                   # (n_est, n_gt)
    mssd: np.ndarray                 # (n_est, n_gt)
    mspd: np.ndarray                 # (n_est, n_gt)
    vsd: np.ndarray                  # (n_est, n_gt, n_tau)
    rot: np.ndarray                  # (n_est, n_gt) rad, to the nearest symmetric equivalent
    trans: np.ndarray                # (n_est, n_gt) m, idem
    times_ms: dict[str, float]
    rejected: int = 0                # hypotheses refined and rejected by verification
    rejected_ad: np.ndarray = field(default_factory=lambda: np.zeros((0, 0)))  # (n_rej, n_gt)
    rejected_scores: np.ndarray = field(default_factory=lambda: np.zeros(0))    # (n_rej,)
    rejected_by_score_only: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))

    @property
    def n_gt(self) -> int:
        return int(self.T_gt.shape[0])

    @property
    def n_est(self) -> int:
        return int(self.T_est.shape[0])


@dataclass
class ObjectResult:
    """Figures of one object (or one occlusion bin of it). Metres, radians, milliseconds.

    ``ad_recall``: ADD(-S) < ``add_threshold`` diameters; ``ar_*``: BOP-19 average recalls;
    ``recall_*``: recall at each BOP-19 threshold; medians over correct (ADD(-S)) estimates;
    ``false_detections``: frames without the object that got an accepted estimate;
    ``wrong_detections``: accepted estimates on frames with the object that match no target.
    ``misses``: targets without a correct estimate, by cause: ``rejected_correct`` (a refined
    pose was correct but verification rejected it; ``rejected_correct_score_only``: of those, by
    the score threshold alone, not by a visibility / inlier gate), ``wrong_accepted`` (a wrong
    pose was accepted instead), ``no_correct_pose`` (no hypothesis ended within ADD(-S) < 0.1 d,
    nothing accepted).
    """

    obj_id: int | None
    name: str
    targets: int
    frames: int
    frames_without: int
    ad_recall: float
    ar_vsd: float
    ar_mssd: float
    ar_mspd: float
    ar: float
    recall_vsd: list[float]
    recall_mssd: list[float]
    recall_mspd: list[float]
    median_rot_rad: float | None
    median_trans_m: float | None
    false_detections: int
    false_detection_rate: float | None
    wrong_detections: int
    misses: dict[str, int]
    times_ms: dict[str, dict[str, float | None]]
    bins: dict[str, ObjectResult] = field(default_factory=dict)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["bins"] = {k: v.to_dict() for k, v in self.bins.items()}
        return d


@dataclass
class EvalResult:
    """Everything :func:`evaluate_bop` measured."""

    dataset: str
    split: str
    config: EvalConfig
    pose_config: PoseConfig
    objects: dict[int, ObjectResult]
    overall: ObjectResult
    records: list[FrameRecord]
    names: dict[int, str]
    wall_s: float

    def to_dict(self, frames: bool = False) -> dict:
        """JSON-ready: metres, radians, milliseconds; ``frames`` adds one row per evaluation."""
        out = {
            "dataset": self.dataset, "split": self.split, "icp": self.config.icp,
            "units": {"trans": "m", "rot": "rad", "times": "ms", "mspd": "px at 640 px width",
                      "ad_mssd_thresholds": "fraction of the object diameter"},
            "config": to_dict(self.config), "pose_config": to_dict(self.pose_config),
            "wall_s": self.wall_s,
            "objects": {str(k): v.to_dict() for k, v in self.objects.items()},
            "overall": self.overall.to_dict(),
        }
        if frames:
            out["frames"] = [_record_row(r) for r in self.records]
        return out

    def write_bop_results(self, path) -> Path:
        """BOP-19 results CSV (scene_id,im_id,obj_id,score,R,t,time): t in mm, time in s."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as fh:
            w = csv.writer(fh)
            w.writerow(["scene_id", "im_id", "obj_id", "score", "R", "t", "time"])
            for r in self.records:
                for T, s in zip(r.T_est, r.scores, strict=True):
                    w.writerow([r.scene_id, r.im_id, r.obj_id, f"{s:.6f}",
                                " ".join(f"{v:.8f}" for v in T[:3, :3].reshape(-1)),
                                " ".join(f"{v * 1e3:.4f}" for v in T[:3, 3]),
                                f"{r.times_ms['total'] / 1e3:.4f}"])
        return path


def _record_row(r: FrameRecord) -> dict:
    best = _correct_pairs(r, BopMetricsConfig().add_threshold, None)
    return {"scene_id": r.scene_id, "im_id": r.im_id, "obj_id": r.obj_id,
            "visib_fract": [round(float(v), 4) for v in r.visib_fract],
            "estimates": [{"score": round(float(s), 4), "t_m": np.round(T[:3, 3], 6).tolist()}
                          for T, s in zip(r.T_est, r.scores, strict=True)],
            "ad_rel": [[round(float(v), 4) if math.isfinite(v) else None for v in row]
                       for row in r.ad], "correct": len(best), "rejected": r.rejected,
            "times_ms": {k: round(v, 2) for k, v in r.times_ms.items()}}


# ------------------------------------------------------------------------------------------
# Inputs: which library belongs to which object


def load_libraries(dataset, templates: Sequence, split_camera: CameraIntrinsics | None = None
                   ) -> dict[int, object]:
    """Template libraries keyed by BOP obj_id, checked against the dataset's models.

    Parameters
    ----------
    dataset : BopDataset or path
    templates : sequence of path, ``"ID=path"`` string, ``(obj_id, path)`` or TemplateLibrary
        Without an id, the object is found by the library's model checksum (the sha256 of the
        ``models/obj_NNNNNN.ply`` it was built from).
    split_camera : CameraIntrinsics, optional
        Camera to check the libraries against (default: the dataset's ``camera.json``).

    Raises
    ------
    InputError
        Naming the templates file: unreadable, built from another model than the object it is
        paired with (or than any of the dataset's objects), for another camera, or two
        libraries for one object.
    """
    from weak_template_ros.linemod.templates import TemplateLibrary

    ds = dataset if isinstance(dataset, BopDataset) else BopDataset(dataset)
    if not ds.models_info:
        raise InputError(f"{ds.root}/models", "the object models (models/models_info.json and "
                         "obj_NNNNNN.ply) to evaluate against", "no models/ folder")
    checksums: dict[int, str] = {}

    def checksum(obj_id: int) -> str:
        if obj_id not in checksums:
            checksums[obj_id] = _model(ds, obj_id).checksum
        return checksums[obj_id]

    camera = split_camera or ds.camera
    out: dict[int, TemplateLibrary] = {}
    for item in templates:
        obj_id, src = _parse_template_arg(item)
        where = str(src) if not isinstance(src, TemplateLibrary) else f"library {src.model_name!r}"
        lib = src if isinstance(src, TemplateLibrary) else TemplateLibrary.load(src)
        if obj_id is None:
            hits = [o for o in ds.models_info if checksum(o) == lib.model_checksum]
            if not hits:
                raise InputError(f"{where}: model checksum", "a library built from one of the "
                                 f"dataset's models (obj_ids {list(ds.models_info)}; pair "
                                 "explicitly with ID=path)", f"model {lib.model_name!r} "
                                 f"{lib.model_checksum[:16]}..., which no object of {ds.root} has")
            obj_id = hits[0]
        elif obj_id not in ds.models_info:
            raise InputError(f"{where}: obj_id", f"one of the dataset's objects "
                             f"{list(ds.models_info)}", obj_id)
        elif checksum(obj_id) != lib.model_checksum:
            raise InputError(f"{where}: model checksum", f"a library built from obj_{obj_id:06d}.ply "
                             f"of {ds.root} ({checksum(obj_id)[:16]}...)",
                             f"model {lib.model_name!r} {lib.model_checksum[:16]}...")
        if obj_id in out:
            raise InputError(where, f"one library per object (obj_id {obj_id} has one already)",
                             "a second library")
        lib.check_compatible(None, camera, where=where)
        out[obj_id] = lib
    if not out:
        raise InputError("templates", "at least one template library", "none")
    return out


def _parse_template_arg(item) -> tuple[int | None, object]:
    if isinstance(item, tuple):
        return int(item[0]), item[1]
    if isinstance(item, str) and "=" in item:
        k, v = item.split("=", 1)
        try:
            return int(k), Path(v)
        except ValueError as exc:
            raise InputError(item, "ID=path with an integer BOP obj_id", repr(k)) from exc
    return None, (Path(item) if isinstance(item, str) else item)


_MODEL_CACHE: dict[tuple[str, int], PartModel] = {}


def _model(ds: BopDataset, obj_id: int) -> PartModel:
    ply = ds.root / "models" / f"obj_{int(obj_id):06d}.ply"
    # the file's mtime: a dataset rewritten in place (same path) is not served stale
    key = (str(ds.root.resolve()), int(obj_id), ply.stat().st_mtime_ns if ply.is_file() else 0)
    if key not in _MODEL_CACHE:
        if len(_MODEL_CACHE) > 32:
            _MODEL_CACHE.clear()
        _MODEL_CACHE[key] = ds.load_model(obj_id)
    return _MODEL_CACHE[key]


# ------------------------------------------------------------------------------------------
# The evaluation loop


def _visib_fract(obj) -> float:
    if obj.raw_info is not None and "visib_fract" in obj.raw_info:
        return float(obj.raw_info["visib_fract"])
    if obj.mask_visib is not None:
        n_all = obj.px_count_all if obj.px_count_all is not None else (
            int(obj.mask.sum()) if obj.mask is not None else 0)
        return float(obj.mask_visib.sum() / n_all) if n_all > 0 else 0.0
    return 1.0  # unknown: counted as a target in the 0-10 % bin


def _evenly(items: list, n: int) -> list:
    if n < 0 or n >= len(items):
        return list(items)
    if n == 0:
        return []
    idx = np.unique(np.linspace(0, len(items) - 1, n).round().astype(int))
    return [items[i] for i in idx]


def _plan(ds: BopDataset, cfg: EvalConfig, obj_ids: Iterable[int]) -> list[tuple[int, int, list[int]]]:
    """(scene_id, im_id, obj_ids to evaluate there) in dataset order."""
    scenes = ds.scene_ids(cfg.split)
    if cfg.scenes:
        missing = sorted(set(cfg.scenes) - set(scenes))
        if missing:
            raise InputError("scenes", f"scene ids of split {cfg.split!r} ({scenes})", missing)
        scenes = [s for s in scenes if s in cfg.scenes]
    frames = [(s, i) for s in scenes for i in ds.im_ids(cfg.split, s)]
    if cfg.max_frames:
        frames = _evenly(frames, cfg.max_frames)
    present = {}
    for s in scenes:
        gt_ids = _scene_obj_ids(ds, cfg.split, s)
        for i in ds.im_ids(cfg.split, s):
            present[(s, i)] = gt_ids.get(i, set())
    todo: dict[tuple[int, int], list[int]] = {f: [] for f in frames}
    for o in obj_ids:
        for f in frames:
            if o in present[f]:
                todo[f].append(o)
        for f in _evenly([f for f in frames if o not in present[f]], cfg.negative_frames):
            todo[f].append(o)
    return [(s, i, sorted(todo[(s, i)])) for (s, i) in frames if todo[(s, i)]]


def _scene_obj_ids(ds: BopDataset, split: str, scene_id: int) -> dict[int, set[int]]:
    """obj_ids annotated in each image of a scene (scene_gt.json; no image is read)."""
    import json

    scene_dir = next(p for p in (ds.root / split).iterdir()
                     if p.is_dir() and p.name.isdigit() and int(p.name) == scene_id)
    raw = json.loads((scene_dir / "scene_gt.json").read_text())
    return {int(k): {int(g["obj_id"]) for g in v} for k, v in raw.items()}


class _Scorer:
    """Per-object model points, symmetries and a depth renderer per camera (VSD)."""

    def __init__(self, models: dict[int, PartModel], cfg: EvalConfig, mcfg: BopMetricsConfig):
        self.models = models
        self.mcfg = mcfg
        self.pts = {o: m.sample_points(cfg.model_points, seed=0)[0] for o, m in models.items()}
        self.syms = {o: m.symmetry_transforms(mcfg.max_sym_disc_step) for o, m in models.items()}
        self.sym_flag = {o: is_symmetric(m) for o, m in models.items()}
        self.diam = {o: m.diameter for o, m in models.items()}
        self._renderers: dict[CameraIntrinsics, Renderer] = {}

    def renderer(self, camera: CameraIntrinsics) -> Renderer:
        r = self._renderers.get(camera)
        if r is None:
            if len(self._renderers) > 4:
                self._renderers.clear()
            r = Renderer(camera)
            for o, m in self.models.items():
                r.add_mesh(o, m.mesh)
            self._renderers[camera] = r
        return r

    def ad_only(self, obj_id: int, T_est: list, T_gt: np.ndarray) -> np.ndarray:
        """ADD(-S) / diameter of each (estimate, gt) pair (no VSD: cheap, for diagnostics)."""
        out = np.full((len(T_est), len(T_gt)), np.inf)
        for i, Te in enumerate(T_est):
            for j, Tg in enumerate(T_gt):
                out[i, j] = ad_error(Te[:3, :3], Te[:3, 3], Tg[:3, :3], Tg[:3, 3], self.pts[obj_id],
                               self.sym_flag[obj_id]) / self.diam[obj_id]
        return out

    def errors(self, obj_id: int, T_est: np.ndarray, T_gt: np.ndarray, frame: BopFrame):
        n_e, n_g, n_tau = len(T_est), len(T_gt), len(self.mcfg.vsd_taus)
        ad = np.full((n_e, n_g), np.inf)
        ms = np.full((n_e, n_g), np.inf)
        mp = np.full((n_e, n_g), np.inf)
        vs = np.ones((n_e, n_g, n_tau))
        rot = np.full((n_e, n_g), np.inf)
        trans = np.full((n_e, n_g), np.inf)
        if n_e == 0 or n_g == 0:
            return ad, ms, mp, vs, rot, trans
        cam = frame.camera
        render = renderer_depth(self.renderer(cam), obj_id)
        d = self.diam[obj_id]
        for i, Te in enumerate(T_est):
            for j, Tg in enumerate(T_gt):
                e = pose_errors(Te, Tg, self.pts[obj_id], self.syms[obj_id], d, cam,
                                symmetric=self.sym_flag[obj_id], depth_test=frame.depth,
                                render_depth=render, cfg=self.mcfg)
                ad[i, j] = e.ad / d
                ms[i, j] = e.mssd / d
                mp[i, j] = e.mspd * (MSPD_REFERENCE_WIDTH / cam.width)
                vs[i, j] = e.vsd
                rot[i, j], trans[i, j] = re_te_sym(Te[:3, :3], Te[:3, 3], Tg[:3, :3], Tg[:3, 3],
                                                   self.syms[obj_id])
        return ad, ms, mp, vs, rot, trans


def evaluate_bop(dataset, libraries: dict[int, object], cfg: EvalConfig | None = None,
                 pose_cfg: PoseConfig | None = None, matcher_cfg=None,
                 metrics_cfg: BopMetricsConfig | None = None,
                 on_progress: Callable[[int, int], None] | None = None) -> EvalResult:
    """Run the pose pipeline on a BOP dataset and score it with the BOP-19 metrics.

    Parameters
    ----------
    dataset : BopDataset or path
        Any dataset in the BOP format with depth images and ``models/``.
    libraries : dict obj_id -> TemplateLibrary
        From :func:`load_libraries` (checked against the dataset's models).
    cfg : EvalConfig, optional
    pose_cfg : PoseConfig, optional
        ``refine`` is replaced by ``cfg.icp``; ``max_instances`` by the number of ground-truth
        instances of the object in the frame (at least 1).
    matcher_cfg : MatcherConfig, optional
    metrics_cfg : BopMetricsConfig, optional
        BOP-19 thresholds by default.
    on_progress : callable(done, total), optional
        Called after each frame.

    Returns
    -------
    EvalResult
    """
    t_start = time.perf_counter()
    cfg = validate(cfg or EvalConfig())
    pose_cfg = validate(pose_cfg or PoseConfig())
    mcfg = validate(metrics_cfg or BopMetricsConfig())
    ds = dataset if isinstance(dataset, BopDataset) else BopDataset(dataset)
    if cfg.split not in ds.splits():
        raise InputError("split", f"one of the dataset's splits {ds.splits()}", repr(cfg.split))
    if not libraries:
        raise InputError("libraries", "at least one template library", "none")
    models = {o: _model(ds, o) for o in sorted(libraries)}
    scorer = _Scorer(models, cfg, mcfg)
    plan = _plan(ds, cfg, models)
    records: list[FrameRecord] = []
    for k, (scene_id, im_id, obj_ids) in enumerate(plan):
        frame = ds.load_frame(cfg.split, scene_id, im_id, masks=False)
        if any(o.raw_info is None for o in frame.objects):
            frame = ds.load_frame(cfg.split, scene_id, im_id, masks=True)
        if frame.depth is None:
            raise InputError(f"{ds.root}/{cfg.split}/{scene_id:06d}/depth", "depth images "
                             "(the pose pipeline needs RGB-D)", "no depth image for im_id "
                             f"{im_id}")
        for obj_id in obj_ids:
            records.append(_evaluate_one(frame, obj_id, libraries[obj_id], models[obj_id],
                                         scorer, cfg, pose_cfg, matcher_cfg))
        if on_progress is not None:
            on_progress(k + 1, len(plan))
    names = {o: m.name for o, m in models.items()}
    objects = {o: summarise([r for r in records if r.obj_id == o], mcfg, cfg.min_visib_fract,
                            obj_id=o, name=names[o]) for o in models}
    overall = summarise(records, mcfg, cfg.min_visib_fract, obj_id=None, name="all objects")
    return EvalResult(str(ds.root), cfg.split, cfg, dataclasses.replace(pose_cfg, refine=cfg.icp),
                      objects, overall, records, names, time.perf_counter() - t_start)


def _evaluate_one(frame: BopFrame, obj_id: int, library, model: PartModel, scorer: _Scorer,
                  cfg: EvalConfig, pose_cfg: PoseConfig, matcher_cfg) -> FrameRecord:
    gts = [o for o in frame.objects if o.obj_id == obj_id]
    pc = dataclasses.replace(pose_cfg, refine=cfg.icp, max_instances=max(1, len(gts)))
    t0 = time.perf_counter()
    est = estimate_poses(frame.rgb, frame.depth, frame.camera, library, model, pc, obj_id=obj_id,
                         matcher_config=matcher_cfg, return_rejected=True)
    total = (time.perf_counter() - t0) * 1e3
    times = {"detect": est[0].timings_ms.get("detect", 0.0) if est else total,
             "prepare": 0.0, "icp": 0.0, "verify": 0.0, "total": total}
    for e in est:
        for s in ("prepare", "icp", "verify"):
            times[s] += e.timings_ms.get(s, 0.0)
    acc = [e for e in est if e.accepted]
    rej = [e for e in est if not e.accepted]
    T_est = np.array([e.T_cam_obj for e in acc]).reshape(-1, 4, 4)
    T_gt = np.array([o.T_cam_obj for o in gts]).reshape(-1, 4, 4)
    errors = scorer.errors(obj_id, T_est, T_gt, frame)
    return FrameRecord(frame.scene_id, frame.im_id, obj_id, T_gt,
                       np.array([_visib_fract(o) for o in gts], dtype=np.float64), T_est,
                       np.array([e.score for e in acc], dtype=np.float64), *errors, times,
                       rejected=len(rej),
                       rejected_ad=scorer.ad_only(obj_id, [e.T_cam_obj for e in rej], T_gt),
                       rejected_scores=np.array([e.score for e in rej], dtype=np.float64),
                       rejected_by_score_only=np.array(
                           [e.verification.reason.startswith("score") and ";" not in
                            e.verification.reason for e in rej], dtype=bool))


# ------------------------------------------------------------------------------------------
# Scoring


def _in_bin(visib: np.ndarray, bin_range: tuple[float, float] | None) -> np.ndarray:
    if bin_range is None:
        return np.ones(visib.shape, bool)
    occ = 1.0 - visib
    return (occ >= bin_range[0]) & (occ < bin_range[1])


def _correct_pairs(r: FrameRecord, threshold: float, valid: np.ndarray | None
                   ) -> list[tuple[int, int]]:
    """(estimate, gt) pairs matched under ADD(-S) < threshold (BOP greedy matching)."""
    if r.n_gt == 0 or r.n_est == 0:
        return []
    valid = np.ones(r.n_gt, bool) if valid is None else valid
    matched = match_poses(r.ad, r.scores, threshold, valid, int(valid.sum()))
    return [(int(i), j) for j, i in enumerate(matched) if i >= 0]


def _percentiles(values: list[float]) -> dict[str, float | None]:
    if not values:
        return {"median": None, "p90": None}
    return {"median": float(np.median(values)), "p90": float(np.percentile(values, 90))}


def summarise(records: Sequence[FrameRecord], mcfg: BopMetricsConfig | None = None,
              min_visib_fract: float = 0.1, *, obj_id: int | None = None, name: str = "",
              bin_range: tuple[float, float] | None = None, bins: bool = True) -> ObjectResult:
    """Aggregate frame records: recalls with BOP matching, median errors, detections, times.

    ``bin_range`` restricts the targets to an occlusion range [lo, hi); ``bins`` adds the
    :data:`OCCLUSION_BINS` sub-results.
    """
    mcfg = mcfg or BopMetricsConfig()
    pos = [r for r in records if r.n_gt > 0]
    neg = [r for r in records if r.n_gt == 0]
    groups = {"ad": [], "vsd": [], "mssd": [], "mspd": []}
    rot, trans = [], []
    targets = wrong = 0
    misses = {"rejected_correct": 0, "rejected_correct_score_only": 0, "wrong_accepted": 0,
              "no_correct_pose": 0}
    for r in pos:
        valid = (r.visib_fract >= min_visib_fract) & _in_bin(r.visib_fract, bin_range)
        targets += int(valid.sum())
        for key, err in (("ad", r.ad), ("vsd", r.vsd), ("mssd", r.mssd), ("mspd", r.mspd)):
            groups[key].append(MatchGroup(err, r.scores, valid))
        pairs = _correct_pairs(r, mcfg.add_threshold, valid)
        if bin_range is None:  # estimates matching no target (any visibility) are wrong
            wrong += r.n_est - len(_correct_pairs(r, mcfg.add_threshold, None))
        for i, j in pairs:
            rot.append(float(r.rot[i, j]))
            trans.append(float(r.trans[i, j]))
        hit = {j for _, j in pairs}
        for j in np.flatnonzero(valid):
            if j in hit:
                continue
            ok_rej = r.rejected_ad[:, j] < mcfg.add_threshold if r.rejected_ad.size else []
            if np.any(ok_rej):
                misses["rejected_correct"] += 1
                if r.rejected_by_score_only.size and np.any(r.rejected_by_score_only & ok_rej):
                    misses["rejected_correct_score_only"] += 1
            elif r.n_est:
                misses["wrong_accepted"] += 1
            else:
                misses["no_correct_pose"] += 1

    def ar(key, thresholds):
        rec = recall_matched(groups[key], thresholds) if groups[key] else np.zeros(len(thresholds))
        rec = np.asarray(rec)
        per_threshold = rec.mean(axis=0) if rec.ndim == 2 else rec
        return float(rec.mean()), [round(float(v), 6) for v in per_threshold]

    ar_vsd, rec_vsd = ar("vsd", mcfg.vsd_thresholds)
    ar_mssd, rec_mssd = ar("mssd", mcfg.mssd_thresholds)
    ar_mspd, rec_mspd = ar("mspd", mcfg.mspd_thresholds)
    ad_recall = (float(recall_matched(groups["ad"], [mcfg.add_threshold])[0])
                 if groups["ad"] else 0.0)
    fd = sum(1 for r in neg if r.n_est > 0)
    sel = pos if bin_range is not None else records
    times = {s: _percentiles([r.times_ms[s] for r in sel]) for s in STAGES}
    out = ObjectResult(
        obj_id=obj_id, name=name, targets=targets, frames=len(pos), frames_without=len(neg),
        ad_recall=ad_recall, ar_vsd=ar_vsd, ar_mssd=ar_mssd, ar_mspd=ar_mspd,
        ar=float(np.mean([ar_vsd, ar_mssd, ar_mspd])), recall_vsd=rec_vsd, recall_mssd=rec_mssd,
        recall_mspd=rec_mspd,
        median_rot_rad=float(np.median(rot)) if rot else None,
        median_trans_m=float(np.median(trans)) if trans else None,
        false_detections=fd if bin_range is None else 0,
        false_detection_rate=(fd / len(neg) if neg else None) if bin_range is None else None,
        wrong_detections=wrong, misses=misses, times_ms=times)
    if bins and bin_range is None:
        out.bins = {label: summarise(pos, mcfg, min_visib_fract, obj_id=obj_id, name=name,
                                     bin_range=rng, bins=False)
                    for label, rng in OCCLUSION_BINS.items()}
        for label, b in out.bins.items():  # targets in the bin's range only
            b.frames = int(sum(((r.visib_fract >= min_visib_fract)
                                & _in_bin(r.visib_fract, OCCLUSION_BINS[label])).any() for r in pos))
    return out


def threshold_sweep(records: Sequence[FrameRecord], thresholds: Sequence[float],
                    add_threshold: float = 0.1, min_visib_fract: float = 0.1,
                    bin_range: tuple[float, float] | None = None) -> list[dict]:
    """What another verification score threshold would have given, post hoc.

    At threshold ``t`` an estimate counts as accepted when its score is >= ``t`` and it was
    accepted, or rejected by the score alone (other gates still apply). Per frame and object the
    best-scored such estimates are matched (BOP greedy matching, as many as targets) under
    ADD(-S) < ``add_threshold``; a frame without the object with any such estimate is a false
    detection. Approximate: the pipeline's early exit and alternative refinements depend on the
    threshold, and estimates merged into one instance are not all recorded.

    Returns
    -------
    list of dict
        ``threshold``, ``ad_recall``, ``targets``, ``false_detection_rate``, ``negatives``.
    """
    out = []
    for t in thresholds:
        hits = targets = fd = neg = 0
        for r in records:
            keep_rej = r.rejected_by_score_only & (r.rejected_scores >= t)
            scores = np.concatenate([r.scores[r.scores >= t], r.rejected_scores[keep_rej]])
            if r.n_gt == 0:
                neg += 1
                fd += int(scores.size > 0)
                continue
            valid = (r.visib_fract >= min_visib_fract) & _in_bin(r.visib_fract, bin_range)
            targets += int(valid.sum())
            if not scores.size or not valid.any():
                continue
            errors = np.vstack([r.ad[r.scores >= t], r.rejected_ad[keep_rej]])
            matched = match_poses(errors, scores, add_threshold, valid, int(valid.sum()))
            hits += int(np.count_nonzero((matched >= 0) & valid))
        out.append({"threshold": float(t), "ad_recall": hits / targets if targets else None,
                    "targets": targets, "false_detection_rate": fd / neg if neg else None,
                    "negatives": neg})
    return out


# ------------------------------------------------------------------------------------------
# Pictures


def draw_overlays(result: EvalResult, dataset, path, n: int = 4, scale: float = 0.5) -> Path:
    """PNG of estimated (orange) vs ground-truth (blue) silhouettes and axes on ``n`` frames.

    Frames are picked to show what happened: correct estimates, a wrong accepted pose, a missed
    target and a false detection on a frame without the object (those that occurred).
    """
    import cv2

    from weak_template_ros import viz

    ds = dataset if isinstance(dataset, BopDataset) else BopDataset(dataset)
    thr = BopMetricsConfig().add_threshold
    correct = [r for r in result.records if r.n_gt and _correct_pairs(r, thr, None)]
    wrong = [r for r in result.records if r.n_gt and r.n_est and not _correct_pairs(r, thr, None)]
    missed = [r for r in result.records if r.n_gt and not r.n_est]
    false = [r for r in result.records if not r.n_gt and r.n_est]
    picks: list[FrameRecord] = []
    pools = [_evenly(correct, max(1, n // 2)), wrong[:1], missed[:1], false[:1],
             _evenly(correct, n), _evenly(missed, n)]
    for pool in pools:
        for r in pool:
            if len(picks) < n and r not in picks:
                picks.append(r)
    if not picks:
        raise InputError("result", "at least one evaluated frame to draw", "no records")
    models = {o: _model(ds, o) for o in {r.obj_id for r in picks}}
    tiles = []
    for r in picks:
        frame = ds.load_frame(result.split, r.scene_id, r.im_id, masks=False)
        rend = Renderer(frame.camera)
        rend.add_mesh("m", models[r.obj_id].mesh)
        masks = [rend.cast_object("m", T)[0] > 0 for T in r.T_gt]
        gt_n = len(masks)
        masks += [rend.cast_object("m", T)[0] > 0 for T in r.T_est]
        # palette colour 0 (blue) for ground truth, 1 (orange) for estimates
        img = viz.overlay_masks(frame.rgb, [np.any(masks[:gt_n], axis=0) if gt_n else
                                            np.zeros(frame.rgb.shape[:2], bool),
                                            np.any(masks[gt_n:], axis=0) if r.n_est else
                                            np.zeros(frame.rgb.shape[:2], bool)], alpha=0.3)
        length = 0.5 * models[r.obj_id].diameter
        for T in list(r.T_gt) + list(r.T_est):
            img = viz.draw_axes(img, frame.camera, T, length)
        ok = len(_correct_pairs(r, thr, None))
        if r.n_gt:
            ad = float(np.min(r.ad)) if r.ad.size else math.inf
            text = (f"s{r.scene_id} i{r.im_id} obj{r.obj_id} occl {1 - r.visib_fract.max():.0%}: "
                    + (f"ADD {ad:.3f}d {'ok' if ok else 'WRONG'}" if r.n_est else "missed"))
        else:
            text = f"s{r.scene_id} i{r.im_id} obj{r.obj_id} absent: FALSE detection"
        if scale != 1.0:
            img = cv2.resize(img, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        tiles.append(viz.label(img, text))
    h = max(t.shape[0] for t in tiles)
    w = max(t.shape[1] for t in tiles)
    tiles = [cv2.copyMakeBorder(t, 0, h - t.shape[0], 0, w - t.shape[1], cv2.BORDER_CONSTANT,
                                value=(255, 255, 255)) for t in tiles]
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    viz.save_png(path, viz.tile(tiles, cols=min(2, len(tiles))))
    return path
