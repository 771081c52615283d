"""6D pose refinement and verification: scene points, Open3D ICP, render-and-compare, symmetries.

Three lines::

    from weak_template_ros.pose import refine_and_verify
    estimates = refine_and_verify([T_coarse], rgb, depth, camera, part)
    T = estimates[0].T_cam_obj if estimates else None
"""

from weak_template_ros.pose.config import IcpConfig, PoseConfig, ScenePointsConfig, VerifyConfig
from weak_template_ros.pose.estimator import (
    PoseEstimate,
    PoseEstimator,
    check_frame,
    estimate_poses,
    hypothesis_matcher_config,
    refine_and_verify,
)
from weak_template_ros.pose.icp import IcpResult, refine_icp
from weak_template_ros.pose.symmetry import canonical_pose, symmetric_equivalents
from weak_template_ros.pose.verify import Verification, verify_pose

__all__ = [
    "IcpConfig",
    "IcpResult",
    "PoseConfig",
    "PoseEstimate",
    "PoseEstimator",
    "ScenePointsConfig",
    "Verification",
    "VerifyConfig",
    "canonical_pose",
    "check_frame",
    "estimate_poses",
    "hypothesis_matcher_config",
    "refine_and_verify",
    "refine_icp",
    "symmetric_equivalents",
    "verify_pose",
]
