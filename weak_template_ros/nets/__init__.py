"""Learned mark detection and alignment in PyTorch, trained only on the digital twin (issue 7).

- :class:`LearnedDetector`: template-conditioned detector (shared pooling-free CNN, RoIAlign-like
  template crop, channel-wise cross-correlation, centre / scale / angle heads).
- :class:`LearnedRefiner`: differentiable Gauss–Newton on learned features through a
  spatial-transformer warp, iterated coarse to fine; transform + covariance.
- :class:`MarkAligner` / :class:`MarkPipelineConfig`: ``method: classical | learned | hybrid``
  with the classical aligner's inputs and :class:`~weak_template_ros.align.AlignmentResult`.
- :mod:`.train`: ``weak-template train detector|refiner --config ...``; :mod:`.data`: twin
  samples, evaluation regimes, held-out sets; :mod:`.weights`: weight files + model cards.

Shipped weights and their model cards: ``weak_template_ros/nets/weights/``.
"""

from weak_template_ros.nets.infer import Detection, LearnedDetector, LearnedRefiner
from weak_template_ros.nets.pipeline import METHODS, MarkAligner, MarkPipelineConfig, align_mark

__all__ = ["METHODS", "Detection", "LearnedDetector", "LearnedRefiner", "MarkAligner", "MarkPipelineConfig",
           "align_mark"]
