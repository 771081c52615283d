"""Sub-pixel 2-D alignment of weak marks against a golden template (issue 4).

``align(image, template, AlignerConfig())`` returns an :class:`AlignmentResult` with dx, dy (px),
dtheta (rad, counter-clockwise on screen), scale, a score, the covariance and ``found``; add a
:class:`Calibration` for stage metres. Conventions: :mod:`.similarity`. The Cramér–Rao bound of a
twin mark: :mod:`.crb`. Classical baselines for comparison: :mod:`.baselines`.
"""

from weak_template_ros.align.aligner import (
                                             AlignerConfig,
                                             AlignmentResult,
                                             PreparedTemplate,
                                             align,
                                             prepare_template,
)
from weak_template_ros.align.calibration import Calibration, load_calibration
from weak_template_ros.align.similarity import Similarity

__all__ = ["AlignerConfig", "AlignmentResult", "Calibration", "PreparedTemplate", "Similarity", "align",
           "load_calibration", "prepare_template"]
