"""Tunables of pose refinement and verification (metres, pixels, degrees), one dataclass per stage.

``PoseConfig`` nests the three stages; YAML (``config/pose.yaml``) and ROS parameters use the
same names (``icp.voxel_sizes``, ``verify.score_threshold``, ...).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from weak_template_ros.config import param
from weak_template_ros.errors import InputError


def _positive_tuple(values, name: str, cast=float, hi: float = math.inf) -> tuple:
    try:
        out = tuple(cast(v) for v in values)
    except (TypeError, ValueError) as exc:
        raise InputError(name, f"a list of {cast.__name__} values", repr(values)) from exc
    if not out or any(not (0 < v <= hi) or not math.isfinite(v) for v in out):
        raise InputError(name, f"a non-empty list of values in (0, {hi}]", list(out))
    return out


@dataclass
class ScenePointsConfig:
    """Which observed depth pixels the refinement sees around a hypothesis."""

    roi_margin_px: int = param(8, "pixels added around the projected bounding sphere of the "
                               "model at the hypothesis", lo=0, hi=500, unit="px")
    crop_margin: float = param(0.03, "scene points farther than model radius + this from the "
                               "hypothesis centre are dropped (largest expected position error)",
                               lo=0.0, hi=1.0, unit="m")
    edge_jump: float = param(0.01, "depth pixels next to a depth jump larger than this are "
                             "dropped (0: keep them); mixed pixels at silhouettes", lo=0.0, hi=10.0,
                             unit="m")
    edge_erosion_px: int = param(1, "half-size of the window that looks for such jumps",
                                 lo=0, hi=10, unit="px")
    normal_step_px: int = param(2, "half baseline of the finite differences that give observed "
                                "normals", lo=1, hi=10, unit="px")
    normal_smoothing_px: int = param(2, "half-size of the box filter applied to depth before the "
                                     "normals (0: none)", lo=0, hi=10, unit="px")
    min_points: int = param(50, "fewer valid scene points: the hypothesis is dropped", lo=3,
                            hi=1_000_000)


@dataclass
class IcpConfig:
    """Multi-scale ICP of visible model points onto scene points (Open3D legacy generalized ICP)."""

    model_points: int = param(6000, "points sampled on the model surface (cached per model)",
                              lo=100, hi=1_000_000)
    voxel_sizes: tuple[float, ...] = param((0.006, 0.0035, 0.0025), "voxel size of each level, "
                                           "coarse to fine", unit="m")
    max_distances: tuple[float, ...] = param((0.03, 0.012, 0.004), "maximum correspondence "
                                             "distance of each level", unit="m")
    iterations: tuple[int, ...] = param((20, 15, 10), "ICP iterations of each level")
    method: str = param("generalized", "'generalized' (plane-to-plane, Segal et al. 2009) or "
                        "'point_to_plane'; chosen by measurement, see docs/benchmarks/pose_icp.md",
                        choices=("generalized", "point_to_plane"))
    robust_kernel: str = param("tukey", "robust loss on the residuals: 'tukey', 'huber' or 'none'",
                               choices=("tukey", "huber", "none"))
    kernel_scale: float = param(0.1, "robust kernel width along the surface normal, as a fraction "
                                "of the level's maximum correspondence distance", lo=1e-3, hi=100.0)
    gicp_epsilon: float = param(1e-3, "generalized ICP: covariance of a surface point in its normal "
                                "direction relative to the tangent directions", lo=1e-6, hi=1.0)
    visibility_tolerance: float = param(0.002, "a model point is visible at the hypothesis when "
                                        "it lies at most this behind the rendered depth", lo=0.0,
                                        hi=1.0, unit="m")
    relative_tolerance: float = param(1e-6, "ICP stops when fitness and RMSE change less",
                                      lo=0.0, hi=1.0)
    max_step_factor: float = param(1.5, "a level whose result moves the object farther than this "
                                   "times its correspondence distance is discarded (divergence)",
                                   lo=0.1, hi=100.0)
    min_correspondences: int = param(20, "fewer correspondences at the last level: refinement "
                                     "failed", lo=3, hi=1_000_000)

    def __post_init__(self):
        self.voxel_sizes = _positive_tuple(self.voxel_sizes, "icp.voxel_sizes", hi=1.0)
        self.max_distances = _positive_tuple(self.max_distances, "icp.max_distances", hi=10.0)
        self.iterations = _positive_tuple(self.iterations, "icp.iterations", cast=int, hi=10_000)
        n = len(self.voxel_sizes)
        if len(self.max_distances) != n or len(self.iterations) != n:
            raise InputError("icp.max_distances/iterations", f"{n} values (one per voxel size)",
                             f"{len(self.max_distances)} and {len(self.iterations)}")


@dataclass
class VerifyConfig:
    """Render-and-compare verification: what counts as agreement and when a pose is accepted."""

    depth_tolerance: float = param(0.006, "|observed - rendered depth| below this is a depth "
                                   "inlier; beyond it in front: occlusion, behind: free-space "
                                   "violation", lo=1e-5, hi=1.0, unit="m")
    free_space_weight: float = param(4.0, "a free-space violation (the model would hide what the "
                                     "camera sees) counts this many times against the inliers",
                                     lo=0.0, hi=100.0)
    normal_tolerance_deg: float = param(30.0, "rendered and observed normals agree within this",
                                        lo=1.0, hi=90.0, unit="deg")
    min_normal_pixels: int = param(30, "fewer inliers with an observed normal: the normal cue is "
                                   "left out of the score (thin walls seen edge-on)", lo=1,
                                   hi=10_000_000)
    edge_tolerance_px: float = param(3.0, "a rendered silhouette pixel agrees when an observed "
                                     "edge is this close", lo=0.5, hi=50.0, unit="px")
    edge_depth_jump: float = param(0.008, "observed depth discontinuities larger than this are "
                                   "edges", lo=1e-4, hi=10.0, unit="m")
    canny_low: float = param(20.0, "Canny low threshold on the grey image (0: no image edges, "
                             "depth discontinuities only)", lo=0.0, hi=1000.0)
    canny_high: float = param(50.0, "Canny high threshold", lo=0.0, hi=1000.0)
    weight_depth: float = param(0.5, "exponent weight of the depth agreement in the score",
                                lo=0.0, hi=10.0)
    weight_normals: float = param(0.25, "exponent weight of the normal agreement", lo=0.0, hi=10.0)
    weight_edges: float = param(0.25, "exponent weight of the silhouette agreement", lo=0.0,
                                hi=10.0)
    min_visible_fraction: float = param(0.2, "rendered pixels not hidden by something in front, "
                                        "minimum fraction", lo=0.0, hi=1.0)
    min_inlier_pixels: int = param(100, "minimum number of depth inliers", lo=1, hi=10_000_000)
    score_threshold: float = param(0.95, "score below this: no detection (with 20 hypotheses and ICP "
                                   "alternatives per frame, 0.9 let 4-16 % of frames without the "
                                   "part through)", lo=0.0, hi=1.0)

    def __post_init__(self):
        if self.weight_depth + self.weight_normals + self.weight_edges <= 0:
            raise InputError("verify.weight_*", "at least one positive weight", 0.0)


#: Names of PoseConfig.alternatives (what each changes is in pose.estimator).
ALTERNATIVES = ("point_to_plane", "keep_edges")


@dataclass
class PoseConfig:
    """Everything ``refine_and_verify`` / ``estimate_poses`` take."""

    scene: ScenePointsConfig = field(default_factory=ScenePointsConfig)
    icp: IcpConfig = field(default_factory=IcpConfig)
    verify: VerifyConfig = field(default_factory=VerifyConfig)
    max_hypotheses: int = param(10, "coarse hypotheses refined per frame, best coarse score "
                                "first", lo=1, hi=1000)
    early_exit_score: float = param(0.97, "stop refining further hypotheses once max_instances "
                                    "estimates scored at least this (1: refine them all)", lo=0.0,
                                    hi=1.0)
    max_instances: int = param(1, "estimates returned per frame (distinct instances), best first",
                               lo=1, hi=1000)
    same_instance_distance: float = param(0.25, "estimates closer than this fraction of the model "
                                          "diameter are one instance (the best is kept)",
                                          lo=0.0, hi=10.0)
    refine: bool = param(True, "run ICP (False: verify the coarse poses as they are)")
    coarse_level_min_score: float = param(0.5, "after the first ICP level a hypothesis is "
                                          "verified; below this score it is not refined further "
                                          "(0: always all levels)", lo=0.0, hi=1.0)
    duplicate_rotation_deg: float = param(10.0, "a hypothesis within this rotation and "
                                          "duplicate_distance of a better one is skipped (0: keep "
                                          "all)", lo=0.0, hi=180.0, unit="deg")
    duplicate_distance: float = param(0.1, "translation part of that test, fraction of the model "
                                      "diameter", lo=0.0, hi=10.0)
    alternatives: tuple[str, ...] = param(
        ("point_to_plane", "keep_edges"), "other refinements tried from the coarse poses of the "
        "best estimates when none scored early_exit_score; the best verification score wins: "
        "'point_to_plane' (ICP variant that slides less along extrusions), 'keep_edges' (scene "
        "points next to depth jumps kept: thin parts)")
    alternative_candidates: int = param(2, "best estimates (distinct coarse poses) that get the "
                                        "alternatives (0: none)", lo=0, hi=1000)
    alternative_min_score: float = param(0.5, "estimates scoring less get no alternatives",
                                         lo=0.0, hi=1.0)
    linemod_detections: int = param(20, "estimate_poses asks the LINEMOD matcher for this many "
                                    "hypotheses (0: the matcher config's max_detections)", lo=0,
                                    hi=1000)
    linemod_score_threshold: float = param(0.3, "and accepts hypotheses down to this LINEMOD "
                                           "score (0: the matcher config's)", lo=0.0, hi=1.0)
    linemod_refine_candidates: int = param(96, "and keeps this many candidates between its "
                                           "pyramid levels (0: the matcher config's "
                                           "refine_candidates)", lo=0, hi=100000)
    linemod_fine_candidates: int = param(48, "and refines this many at full resolution (0: the "
                                         "matcher config's fine_candidates)", lo=0, hi=100000)
    linemod_nms_iou: float = param(0.95, "and lets boxes overlap this much (several views of one "
                                   "place: the right one is often not the best scored; 0: the "
                                   "matcher config's)", lo=0.0, hi=1.0)
    min_projected_size_px: float = param(4.0, "a model that projects smaller at a hypothesis is "
                                         "taken as a unit mismatch", lo=0.0, hi=1e6, unit="px")
    max_model_diameter: float = param(5.0, "a larger model diameter is taken as a unit mismatch "
                                      "(mm read as m)", lo=1e-4, hi=1e4, unit="m")

    def __post_init__(self):
        self.alternatives = tuple(str(a) for a in self.alternatives)
        bad = [a for a in self.alternatives if a not in ALTERNATIVES]
        if bad:
            raise InputError("alternatives", f"names from {list(ALTERNATIVES)}", bad)
