"""Stage twin (backlash, calibration, rotation about the axis) and the closed measure-move loop."""

from __future__ import annotations

import math

import numpy as np
import pytest

from weak_template_ros.align import AlignerConfig, Calibration, prepare_template
from weak_template_ros.align.closed_loop import LoopConfig, run_closed_loop
from weak_template_ros.errors import InputError
from weak_template_ros.twin.marks import Degradations, MarkSpec, golden_template, make_scene
from weak_template_ros.twin.stage import StageConfig, StageTwin, make_stage

SPEC = MarkSpec("cross", 128, 12)


def _stage(config: StageConfig, calibration: Calibration | None = None, pose=(0.0, 0.0, 0.0)) -> StageTwin:
    scene = make_scene(SPEC, (256, 256), Degradations(snr=5.0))
    return StageTwin(config, calibration or Calibration(pixel_size=1e-6), scene, np.array(pose))


def test_backlash_is_a_play_operator():
    b = 0.3e-6
    st = _stage(StageConfig(backlash_xy=b, settle_sigma_xy=0.0, settle_sigma_theta=0.0))
    rng = np.random.default_rng(0)
    st.move(np.array([1e-6, 0.0, 0.0]), rng)
    assert st.pose[0] == pytest.approx(1e-6 - b / 2)
    st.move(np.array([-1e-6, 0.0, 0.0]), rng)  # reversal: the first b of the move is lost
    assert st.pose[0] == pytest.approx(b / 2)
    st.move(np.array([-1e-6, 0.0, 0.0]), rng)  # same direction: full move
    assert st.pose[0] == pytest.approx(b / 2 - 1e-6)
    with pytest.raises(InputError, match="delta"):
        st.move(np.array([np.nan, 0, 0]), rng)


def test_true_calibration_maps_stage_pose_to_image_offset():
    cal = Calibration(pixel_size=2e-6, rotation=0.0, scale=1.0, flip_y=True)
    st = _stage(StageConfig(), cal, pose=(4e-6, 2e-6, 0.01))
    p = st.mark_pose_px()
    assert (p.tx, p.ty, p.theta) == pytest.approx((2.0, -1.0, 0.01))
    assert st.residual_px() == pytest.approx(math.sqrt(5.0))
    # A mark off the rotation axis is carried around it by a rotation.
    off = _stage(StageConfig(mark_offset_x=1e-3), cal, pose=(0.0, 0.0, 1e-3))
    q = off.mark_pose_px()
    assert q.ty == pytest.approx(-1e-3 * 1e-3 / 2e-6, rel=1e-3)  # 1 µm up in stage y = -0.5 px


def test_closed_loop_converges_within_three_moves_with_calibration_error():
    """SNR 5, 1 % scale and 0.5° rotation calibration error, backlash and settling noise."""
    d = Degradations(contrast=0.3, snr=5.0, gradient=0.1, vignetting=0.1)
    prep = prepare_template(golden_template(SPEC, (256, 256), d), AlignerConfig(motion="euclidean"))
    nominal = Calibration(pixel_size=1e-6)
    true = Calibration(pixel_size=1e-6, scale=1.01, rotation=math.radians(0.5))
    stage_cfg = StageConfig(backlash_xy=0.25e-6)  # controller compensates a nominal 0.2 µm
    for seed in range(3):
        rng = np.random.default_rng(seed)
        start = np.array([rng.uniform(-25e-6, 25e-6), rng.uniform(-25e-6, 25e-6), math.radians(1.5)])
        st = make_stage(SPEC, d, true, stage_cfg, start=start, rng=rng)
        res = run_closed_loop(st, prep, nominal, LoopConfig(), rng)
        assert res.found
        assert res.true_px[0] > 5.0
        assert res.moves_to(0.05) is not None and res.moves_to(0.05) <= 3
        assert res.true_theta[res.moves_to(0.05)] < math.radians(0.02)
