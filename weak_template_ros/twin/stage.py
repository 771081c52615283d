"""Stage twin: an x, y, theta stage carrying a mark under a fixed camera.

The stage has per-axis backlash (a play operator: the carriage follows the motor only once the
motor has taken up the play), settling noise after every move, and a true camera-to-stage
calibration that differs from the nominal one a controller believes. The camera image is the mark
twin rendered at the stage's true pose.

Frames: stage coordinates in metres and radians (x, y, theta positive from x towards y). The
target pose is the origin: there the mark sits at the image centre, unrotated. The true
calibration maps image px to stage metres (:class:`~weak_template_ros.align.calibration.Calibration`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from weak_template_ros.align.calibration import Calibration
from weak_template_ros.align.similarity import Similarity
from weak_template_ros.config import param, validate
from weak_template_ros.errors import InputError
from weak_template_ros.twin.marks import Degradations, MarkScene, MarkSpec, make_scene


@dataclass
class StageConfig:
    """Mechanics of the stage twin."""

    backlash_xy: float = param(0.2e-6, "play of the x and y axes", lo=0.0, hi=1e-3, unit="m")
    backlash_theta: float = param(20e-6, "play of the rotation axis", lo=0.0, hi=0.1, unit="rad")
    settle_sigma_xy: float = param(5e-9, "random position error after each move, per axis", lo=0.0,
                                   hi=1e-3, unit="m")
    settle_sigma_theta: float = param(1e-6, "random angle error after each move", lo=0.0, hi=0.1,
                                      unit="rad")
    mark_offset_x: float = param(0.0, "mark position from the rotation axis, x", lo=-1.0, hi=1.0, unit="m")
    mark_offset_y: float = param(0.0, "mark position from the rotation axis, y", lo=-1.0, hi=1.0, unit="m")

    def __post_init__(self):
        validate(self)


@dataclass
class StageTwin:
    """Stage + camera + mark. Use :meth:`image` to take a frame and :meth:`move` to command a
    relative move (motor units = stage metres / radians as the controller believes them).

    Parameters
    ----------
    config : StageConfig
    calibration : Calibration
        The TRUE camera-to-stage calibration (image px -> stage m).
    scene : MarkScene
        The mark and its optics / noise; the mark is drawn at the stage's true pose.
    pose : (3,) array
        True carriage pose (x m, y m, theta rad) relative to the target.
    """

    config: StageConfig
    calibration: Calibration
    scene: MarkScene
    pose: np.ndarray = field(default_factory=lambda: np.zeros(3))
    motor: np.ndarray = field(default_factory=lambda: np.zeros(3))

    def __post_init__(self):
        self.pose = np.asarray(self.pose, np.float64).copy()
        self.motor = self.pose.copy()  # start with the play centred
        if self.pose.shape != (3,):
            raise InputError("pose", "(x, y, theta)", self.pose.shape)

    def mark_pose_px(self) -> Similarity:
        """Where the mark truly is in the image (offset from the centre, px; rad CCW on screen)."""
        c = self.config
        x, y, th = self.pose
        # The mark rides on the rotation stage: rotating moves it around the axis.
        cs, sn = math.cos(th), math.sin(th)
        ox, oy = c.mark_offset_x, c.mark_offset_y
        sx = x + cs * ox - sn * oy - ox
        sy = y + sn * ox + cs * oy - oy
        px = np.linalg.solve(self.calibration.matrix(), [sx, sy])
        theta_img = th if self.calibration.flip_y else -th
        return Similarity(float(px[0]), float(px[1]), float(theta_img), 1.0)

    def residual_px(self) -> float:
        """True translation residual of the mark in the image (px)."""
        p = self.mark_pose_px()
        return math.hypot(p.tx, p.ty)

    def image(self, rng: np.random.Generator) -> np.ndarray:
        """A camera frame (float32) of the mark at the stage's true pose."""
        return self.scene.sample(self.mark_pose_px(), rng)[0]

    def move(self, delta: np.ndarray, rng: np.random.Generator) -> None:
        """Command a relative move (dx m, dy m, dtheta rad); backlash, then settling noise."""
        delta = np.asarray(delta, np.float64)
        if delta.shape != (3,) or not np.all(np.isfinite(delta)):
            raise InputError("delta", "a finite (dx, dy, dtheta) move", delta)
        c = self.config
        play = np.array([c.backlash_xy, c.backlash_xy, c.backlash_theta])
        self.motor = self.motor + delta
        # Play operator: the carriage stays put until the motor is more than half the play away.
        self.pose = np.clip(self.pose, self.motor - play / 2, self.motor + play / 2)
        noise = np.array([c.settle_sigma_xy, c.settle_sigma_xy, c.settle_sigma_theta])
        self.pose = self.pose + noise * rng.standard_normal(3)


def make_stage(spec: MarkSpec, degradations: Degradations, calibration: Calibration,
               config: StageConfig | None = None, start: np.ndarray | None = None,
               shape: tuple[int, int] = (256, 256), rng: np.random.Generator | int | None = 0
               ) -> StageTwin:
    """A stage twin with its mark scene (nuisances drawn from ``rng``) at pose ``start``."""
    rng = np.random.default_rng(rng)
    cfg = config or StageConfig()
    scene = make_scene(spec, shape, degradations, rng)
    stage = StageTwin(cfg, calibration, scene, np.zeros(3) if start is None else np.asarray(start, float))
    # The motor starts anywhere within the play.
    play = np.array([cfg.backlash_xy, cfg.backlash_xy, cfg.backlash_theta])
    stage.motor = stage.pose + rng.uniform(-0.5, 0.5, 3) * play
    return stage
