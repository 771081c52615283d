"""LINE-2D / LINE-MOD coarse detection of texture-less parts from CAD templates.

Three lines from a mesh to detections::

    lib = build_templates(load_mesh("part.ply"), CameraIntrinsics.from_fov(640, 480, 60))
    hyps = Matcher(lib).match(rgb, depth)        # ranked Hypothesis list, coarse T_cam_obj
    lib.save("part.wtl")                         # TemplateLibrary.load("part.wtl") later

:mod:`.features` holds the image modalities (PyTorch, CPU or GPU), :mod:`.templates` the
template library and its file format, :mod:`.matcher` the search.
"""

from weak_template_ros.linemod.matcher import (
                                               Hypothesis,
                                               Matcher,
                                               MatcherConfig,
                                               coarse_pose,
                                               match_templates,
                                               nms,
)
from weak_template_ros.linemod.templates import (
                                               TemplateConfig,
                                               TemplateLibrary,
                                               build_templates,
                                               sample_viewpoints,
                                               template_poses,
)

__all__ = [
    "Hypothesis",
    "Matcher",
    "MatcherConfig",
    "TemplateConfig",
    "TemplateLibrary",
    "build_templates",
    "coarse_pose",
    "match_templates",
    "nms",
    "sample_viewpoints",
    "template_poses",
]
