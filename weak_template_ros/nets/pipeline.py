"""Mark alignment with a choice of method, same inputs and outputs as the classical aligner.

``method`` (one configuration field, same name in YAML, ROS parameters and CLI):

- ``classical``: :func:`weak_template_ros.align.align` as it is (coarse bank + robust
  Gauss–Newton with an illumination model).
- ``learned``: the learned detector finds the mark (centre, scale, angle), the learned refiner
  measures it (translation, rotation, scale, covariance).
- ``hybrid``: the learned estimate replaces the classical coarse search: the classical aligner
  runs with its search window cut to ``hybrid_max_shift`` px around it (its fine stage is the
  maximum-likelihood fit under Gaussian noise). If the classical stage does not confirm the mark,
  the learned estimate is returned with the reason.

Three lines::

    from weak_template_ros.nets import MarkAligner, MarkPipelineConfig
    aligner = MarkAligner(MarkPipelineConfig(method="hybrid"))
    result = aligner.align(image, template)      # an AlignmentResult
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass, field

import numpy as np

from weak_template_ros.align.aligner import AlignerConfig, AlignmentResult, align, prepare_template
from weak_template_ros.align.calibration import Calibration
from weak_template_ros.align.preprocess import as_gray_float
from weak_template_ros.align.similarity import Similarity
from weak_template_ros.config import param, validate
from weak_template_ros.errors import InputError, describe_array
from weak_template_ros.nets.infer import LearnedDetector, LearnedRefiner
from weak_template_ros.nets.models import MOTIONS, SolverConfig

METHODS = ("classical", "learned", "hybrid")


@dataclass
class MarkPipelineConfig:
    """Method choice and the tunables of the learned stages (config/nets_align.yaml)."""

    method: str = param("classical", "classical, learned (detector + refiner) or hybrid (learned "
                        "coarse, classical fine)", choices=METHODS)
    aligner: AlignerConfig = field(default_factory=AlignerConfig, metadata={
        "description": "the classical aligner (classical and hybrid; its motion, max_shift and "
                       "min_score also apply to learned)", "lo": None, "hi": None, "choices": None,
        "unit": ""})
    detector_weights: str = param("", "detector weight file ('': the shipped weights)")
    refiner_weights: str = param("", "refiner weight file ('': the shipped weights)")
    use_detector: bool = param(True, "learned / hybrid: start from the detector (False: from the "
                               "expected position)")
    min_detection_score: float = param(0.1, "the detector's best peak must score at least this (a "
                                       "pre-filter: the refiner's score decides)", lo=0.0, hi=1.0)
    learned_min_score: float = param(0.15, "learned: found only if the refiner's feature-space fit "
                                     "score is at least this (mark-free images score ~0.03, SNR 1 "
                                     "marks ~0.3)", lo=0.0, hi=1.0)
    hybrid_max_shift: float = param(3.0, "hybrid: classical search window around the learned "
                                    "estimate (+-)", lo=0.5, hi=1000.0, unit="px")
    refiner_levels: int = param(3, "refiner pyramid levels", lo=1, hi=5)
    refiner_iterations: tuple = param((3, 3, 3), "refiner Gauss-Newton iterations per level, coarsest "
                                      "first")
    threads: int = param(1, "torch CPU threads of the learned stages", lo=1, hi=256)

    def __post_init__(self):
        self.refiner_iterations = tuple(int(n) for n in self.refiner_iterations)
        validate(self)
        if self.method != "classical" and self.aligner.motion not in MOTIONS:
            raise InputError("aligner.motion", f"one of {list(MOTIONS)} for the {self.method} method",
                             repr(self.aligner.motion))
        self.solver()  # checks the iteration schedule

    def solver(self) -> SolverConfig:
        return SolverConfig(levels=self.refiner_levels, iterations=self.refiner_iterations)


def _key(a: np.ndarray) -> tuple:
    return (a.shape, str(a.dtype), hashlib.sha1(np.ascontiguousarray(a).tobytes()).hexdigest())


class MarkAligner:
    """Mark alignment by the configured method; caches the models and the prepared template."""

    def __init__(self, config: MarkPipelineConfig | None = None):
        cfg = config or MarkPipelineConfig()
        if not isinstance(cfg, MarkPipelineConfig):
            raise InputError("config", "a MarkPipelineConfig", type(cfg).__name__)
        self.config = validate(cfg)
        self.detector = self.refiner = None
        if cfg.method != "classical":
            self.detector = LearnedDetector(cfg.detector_weights or None, threads=cfg.threads) \
                if cfg.use_detector else None
            self.refiner = LearnedRefiner(cfg.refiner_weights or None, cfg.solver(), cfg.aligner.motion,
                                          threads=cfg.threads)
        self._key = None
        self._prepared: dict = {}

    def _prepare(self, template: np.ndarray) -> dict:
        key = _key(template)
        if key != self._key:
            cfg = self.config
            prep: dict = {}
            if cfg.method in ("classical", "hybrid"):
                c = cfg.aligner if cfg.method == "classical" else dataclasses.replace(
                    cfg.aligner, max_shift=cfg.hybrid_max_shift)
                prep["classical"] = prepare_template(template, c)
            if self.refiner is not None:
                prep["refiner"] = self.refiner.prepare(template)
            if self.detector is not None:
                prep["detector"] = self.detector.prepare(template)
            self._key, self._prepared = key, prep
        return self._prepared

    def align(self, image: np.ndarray, template: np.ndarray, expected: tuple[float, float] | None = None,
              calibration: Calibration | None = None) -> AlignmentResult:
        """Offset of the mark in ``image`` against ``template`` (see :func:`weak_template_ros.align.align`
        for the conventions, the inputs and the result)."""
        img = as_gray_float(image, "image")
        tpl = as_gray_float(template, "template")
        if tpl.shape[0] > img.shape[0] or tpl.shape[1] > img.shape[1]:
            raise InputError("template", f"at most the image size {img.shape[1]}x{img.shape[0]} px",
                             describe_array(template))
        cfg = self.config
        prep = self._prepare(tpl)
        if cfg.method == "classical":
            return align(img, prep["classical"], expected=expected, calibration=calibration)
        H, W = img.shape
        if expected is None:
            expected = ((W - 1) / 2.0, (H - 1) / 2.0)
        origin = ((tpl.shape[1] - 1) / 2.0, (tpl.shape[0] - 1) / 2.0)
        start, det_score = Similarity(), math.nan
        if self.detector is not None:
            dp = prep["detector"]
            known = 1.0 if cfg.aligner.motion != "similarity" else None  # fixed magnification
            dets = self.detector.detect(img, dp, max_detections=1, scale=known)
            if not dets or dets[0].score < cfg.min_detection_score:
                best = f"{dets[0].score:.3f}" if dets else "none"
                return AlignmentResult(False, reason=f"learned detector: no mark (best score {best} < "
                                                     f"min_detection_score {cfg.min_detection_score})")
            det = dets[0]
            det_score = det.score
            start = det.start(dp.box[:2], origin, expected)
            motion = cfg.aligner.motion
            start = Similarity(start.tx, start.ty, start.theta if motion != "translation" else 0.0,
                               start.scale if motion == "similarity" else 1.0)
        learned = self.refiner.refine(img, prep["refiner"], start=start, expected=expected)
        learned.coarse_score = det_score
        reasons = []
        if learned.score < cfg.learned_min_score:
            reasons.append(f"learned score {learned.score:.3f} < learned_min_score {cfg.learned_min_score}")
        if max(abs(learned.dx), abs(learned.dy)) > cfg.aligner.max_shift + 1.0:
            reasons.append(f"offset beyond max_shift {cfg.aligner.max_shift} px")
        if not learned.found or reasons:
            learned.found = False
            learned.reason = "; ".join([learned.reason, *reasons]).strip("; ")
        if cfg.method == "hybrid" and learned.found:
            centre = (expected[0] + learned.dx, expected[1] + learned.dy)
            fine = align(img, prep["classical"], expected=centre)
            if fine.found:
                fine.dx += learned.dx
                fine.dy += learned.dy
                fine.coarse_score = det_score
                learned = fine
            else:
                learned.reason = f"classical fine stage: {fine.reason}; learned estimate kept"
        if calibration is not None and learned.found:
            learned.dx_m, learned.dy_m, learned.covariance_m = calibration.to_stage(
                learned.dx, learned.dy, learned.covariance[:2, :2])
            learned.dtheta_stage = calibration.angle_to_stage(learned.dtheta)
        return learned


def align_mark(image: np.ndarray, template: np.ndarray, config: MarkPipelineConfig | None = None,
               expected: tuple[float, float] | None = None, calibration: Calibration | None = None
               ) -> AlignmentResult:
    """One-shot :meth:`MarkAligner.align` (loads the models every call: keep a MarkAligner for
    streams)."""
    return MarkAligner(config).align(image, template, expected, calibration)
