"""Closed-loop stage alignment: measure the mark, move the stage, repeat.

The controller knows only the NOMINAL calibration (px -> stage m) and a nominal backlash; the
stage twin (:mod:`weak_template_ros.twin.stage`) has the true ones. When the measured offset is
small, several frames are averaged before deciding (a frame costs milliseconds, a move costs a
settling time), which is what brings the final residual under the noise of a single frame.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from weak_template_ros.align.aligner import AlignerConfig, PreparedTemplate, align
from weak_template_ros.align.calibration import Calibration
from weak_template_ros.config import param, validate


@dataclass
class LoopConfig:
    """Controller of the measure -> move loop."""

    max_moves: int = param(6, "moves at most", lo=0, hi=100)
    done_px: float = param(0.035, "stop when the measured offset is below this", lo=0.0, hi=100.0, unit="px")
    done_theta: float = param(2e-4, "... and the measured rotation below this", lo=0.0, hi=1.0, unit="rad")
    fine_below_px: float = param(1.0, "average fine_frames frames when the offset is below this",
                                 lo=0.0, hi=1e4, unit="px")
    fine_frames: int = param(4, "frames averaged near the target", lo=1, hi=100)
    backlash_xy: float = param(0.2e-6, "nominal x/y backlash compensated on direction reversal",
                               lo=0.0, hi=1e-3, unit="m")
    backlash_theta: float = param(20e-6, "nominal rotation backlash compensated on reversal", lo=0.0,
                                  hi=0.1, unit="rad")
    mark_offset_x: float = param(0.0, "nominal mark position from the rotation axis, x", lo=-1.0, hi=1.0,
                                 unit="m")
    mark_offset_y: float = param(0.0, "nominal mark position from the rotation axis, y", lo=-1.0, hi=1.0,
                                 unit="m")

    def __post_init__(self):
        validate(self)


@dataclass
class LoopResult:
    """History of one closed-loop run (index 0 = before the first move)."""

    measured_px: list[float] = field(default_factory=list)  # measured |offset| per measurement
    true_px: list[float] = field(default_factory=list)  # true |offset| at that time
    true_theta: list[float] = field(default_factory=list)  # true |rotation| (rad)
    frames: list[int] = field(default_factory=list)  # frames averaged per measurement
    moves: int = 0  # moves made before the loop declared done (or gave up)
    done: bool = False  # the loop's own verdict
    found: bool = True  # every measurement found the mark

    def moves_to(self, target_px: float) -> int | None:
        """First number of moves after which the TRUE residual was <= target (None: never)."""
        for i, r in enumerate(self.true_px):
            if r <= target_px:
                return i
        return None


def run_closed_loop(stage, template: PreparedTemplate, calibration: Calibration, config: LoopConfig,
                    rng: np.random.Generator, aligner: AlignerConfig | None = None) -> LoopResult:
    """Align ``stage`` (a :class:`~weak_template_ros.twin.stage.StageTwin`) to its target.

    Parameters
    ----------
    stage : StageTwin
    template : PreparedTemplate of the mark's golden template
    calibration : the controller's NOMINAL calibration
    config : LoopConfig
    rng : np.random.Generator for camera noise and settling
    aligner : AlignerConfig (default: the template's)
    """
    out = LoopResult()
    last_dir = np.zeros(3)
    o = np.array([config.mark_offset_x, config.mark_offset_y])
    n_frames = 1
    while True:
        meas = []
        for _ in range(n_frames):
            r = align(stage.image(rng), template, aligner, calibration=calibration)
            if not r.found:
                out.found = False
            meas.append((r.dx, r.dy, r.dtheta, r.dx_m, r.dy_m, r.dtheta_stage))
        m = np.mean(np.asarray(meas, float), axis=0)
        truth = stage.mark_pose_px()
        out.measured_px.append(float(math.hypot(m[0], m[1])))
        out.true_px.append(float(math.hypot(truth.tx, truth.ty)))
        out.true_theta.append(abs(truth.theta))
        out.frames.append(n_frames)
        if not out.found:
            return out
        if out.measured_px[-1] <= config.done_px and abs(m[2]) <= config.done_theta:
            out.done = True
            return out
        if out.moves >= config.max_moves:
            return out
        # Move so the mark returns to the target; rotating about the axis also carries the mark.
        dth = -m[5]
        cs, sn = math.cos(dth), math.sin(dth)
        carry = np.array([cs * o[0] - sn * o[1], sn * o[0] + cs * o[1]]) - o
        cmd = np.array([-m[3] - carry[0], -m[4] - carry[1], dth])
        direction = np.sign(cmd)
        reverse = (direction != 0) & (last_dir != 0) & (direction != last_dir)
        comp = np.array([config.backlash_xy, config.backlash_xy, config.backlash_theta])
        cmd = cmd + np.where(reverse, direction * comp, 0.0)
        last_dir = np.where(direction != 0, direction, last_dir)
        stage.move(cmd, rng)
        out.moves += 1
        # After a move from far away the residual is ~calibration error x distance: decide on the
        # next measurement's frame count from the predicted residual (2 % of the last offset).
        n_frames = config.fine_frames if 0.02 * out.measured_px[-1] <= config.fine_below_px else 1
