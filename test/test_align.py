"""Mark aligner: sign conventions, accuracy against the Cramér–Rao bound, covariance, found /
not found, bad input, calibration, and the classical baselines' conventions."""

from __future__ import annotations

import math
from pathlib import Path

import cv2
import numpy as np
import pytest

from weak_template_ros.align import AlignerConfig, Calibration, align, prepare_template
from weak_template_ros.align import baselines as bl
from weak_template_ros.align.coarse import quadratic_peak
from weak_template_ros.align.crb import mark_crb
from weak_template_ros.align.interp import cubic_sample, prepare_spline
from weak_template_ros.align.similarity import Similarity, rotation_matrix, similarity_from_linear
from weak_template_ros.config import load_yaml
from weak_template_ros.errors import InputError
from weak_template_ros.twin.marks import Degradations, MarkSpec, golden_template, make_scene

SHAPE = (192, 192)
CROSS = MarkSpec("cross", 96.0, 10.0)


def _template(spec=CROSS, contrast=0.3):
    return golden_template(spec, SHAPE, Degradations(contrast=contrast)).astype(np.float32)


def test_sign_convention_explicit_shift_and_rotation():
    """Template shifted by +3 px in x -> dx = +3; rotated CCW on screen -> dtheta > 0."""
    T = _template()
    shifted = np.roll(T, 3, axis=1)  # content moves right by 3 px (the border is flat background)
    r = align(shifted, T)
    assert r.found
    assert r.dx == pytest.approx(3.0, abs=2e-3) and r.dy == pytest.approx(0.0, abs=2e-3)
    down = np.roll(T, -2, axis=0)  # content moves up by 2 px
    assert align(down, T).dy == pytest.approx(-2.0, abs=2e-3)
    # cv2.getRotationMatrix2D with a positive angle turns content counter-clockwise on screen.
    c = ((SHAPE[1] - 1) / 2, (SHAPE[0] - 1) / 2)
    M = cv2.getRotationMatrix2D(c, 4.0, 1.0)
    rot = cv2.warpAffine(T, M, SHAPE[::-1], flags=cv2.INTER_CUBIC, borderMode=cv2.BORDER_REPLICATE)
    r = align(rot, T)
    assert math.degrees(r.dtheta) == pytest.approx(4.0, abs=0.02)
    # The twin uses the same convention: its pose is what the aligner reports.
    d = Degradations()
    img = make_scene(CROSS, SHAPE, d).render_clean(Similarity(3.0, -1.5, math.radians(2.0)))
    r = align(img, T)
    assert (r.dx, r.dy, math.degrees(r.dtheta)) == pytest.approx((3.0, -1.5, 2.0), abs=2e-3)


@pytest.mark.parametrize("kind", ["cross", "box_in_box", "l_corner"])
def test_known_pose_recovered_within_4_crb(kind):
    spec = MarkSpec(kind, 96.0, 10.0)
    d = Degradations(contrast=0.3, snr=4.0, gradient=0.1, vignetting=0.1, defocus_sigma=1.0)
    T = golden_template(spec, SHAPE, d).astype(np.float32)
    prep = prepare_template(T, AlignerConfig(motion="euclidean"))
    for seed in range(4):
        rng = np.random.default_rng([7, seed])
        pose = Similarity(rng.uniform(-8, 8), rng.uniform(-8, 8), math.radians(rng.uniform(-5, 5)))
        scene = make_scene(spec, SHAPE, d, rng)
        img, _ = scene.sample(pose, rng)
        r = align(img, prep)
        C = mark_crb(scene, pose)
        assert r.found, r.reason
        assert abs(r.dx - pose.tx) <= 4 * math.sqrt(C[0, 0])
        assert abs(r.dy - pose.ty) <= 4 * math.sqrt(C[1, 1])
        assert abs(r.dtheta - pose.theta) <= 4 * math.sqrt(C[2, 2])
        # The reported covariance is the bound's size (Hessian x residual variance).
        assert r.covariance[0, 0] == pytest.approx(C[0, 0], rel=0.5)
        assert r.covariance[2, 2] == pytest.approx(C[2, 2], rel=0.5)


def test_noise_free_error_is_far_below_a_hundredth_pixel():
    d = Degradations(contrast=0.1, gradient=0.1, vignetting=0.1)
    T = golden_template(CROSS, SHAPE, d).astype(np.float32)
    scene = make_scene(CROSS, SHAPE, d, rng=3)
    for tx, ty, th in ((0.25, 0.5, 0.0), (-3.4, 2.71, 0.01), (7.9, -6.3, -0.08)):
        r = align(scene.render_clean(Similarity(tx, ty, th)), T)
        assert math.hypot(r.dx - tx, r.dy - ty) < 2e-3
        assert abs(r.dtheta - th) < 2e-5


def test_similarity_and_affine_motion_recover_scale():
    T = _template()
    img = make_scene(CROSS, SHAPE, Degradations()).render_clean(Similarity(1.5, 0.5, 0.03, 1.02))
    r = align(img, T, AlignerConfig(motion="similarity"))
    assert r.scale == pytest.approx(1.02, abs=2e-4)
    r = align(img, T, AlignerConfig(motion="affine"))
    assert (r.dx, r.dy, r.dtheta, r.scale) == pytest.approx((1.5, 0.5, 0.03, 1.02), abs=2e-3)
    r = align(img, T, AlignerConfig(motion="translation"))
    assert r.dtheta == 0.0 and r.scale == 1.0 and r.covariance[2, 2] == 0.0


def test_absent_mark_is_not_found():
    d = Degradations(contrast=0.05, snr=2.0, gradient=0.1, vignetting=0.1)
    prep = prepare_template(golden_template(CROSS, SHAPE, d).astype(np.float32))
    for seed in range(4):
        rng = np.random.default_rng(seed)
        scene = make_scene(CROSS, SHAPE, d, rng)
        scene.geometry = scene.geometry.buffer(-100)  # empty: no mark, same light and noise
        img, _ = scene.sample(Similarity(), rng)
        r = align(img, prep)
        assert not r.found and "score" in r.reason
    # A different mark is not this mark either.
    ring = make_scene(MarkSpec("ring", 96, 10), SHAPE, d, rng=1)
    assert not align(ring.sample(Similarity(), np.random.default_rng(1))[0], prep).found


@pytest.mark.parametrize(("image", "template", "name"), [
    (np.zeros((64, 64), np.float32) + 0.5, None, "image"),  # constant image
    (np.full((64, 64), np.nan, np.float32), None, "image"),  # NaN pixels
    (np.zeros((64, 64), np.int64), None, "image"),  # wrong dtype
    (np.zeros((64, 64), bool), None, "image"),
    (np.zeros(64, np.float32), None, "image"),  # wrong shape
    ([[1.0, 2.0]], None, "image"),  # not an array
    (None, np.zeros((300, 64), np.float32), "template"),  # template larger than image
    (None, np.zeros((32, 32), np.float32), "template"),  # constant template
])
def test_bad_input_raises_input_error_naming_it(image, template, name):
    T = golden_template(MarkSpec("cross", 40, 6), (64, 64), Degradations()).astype(np.float32)
    img = make_scene(MarkSpec("cross", 40, 6), (64, 64), Degradations(snr=5)).sample(
        Similarity(), np.random.default_rng(0))[0]
    with pytest.raises(InputError) as exc:
        align(img if image is None else image, T if template is None else template)
    assert exc.value.name == name
    assert str(exc.value).startswith(f"{name}: expected")


def test_nan_pixel_in_otherwise_good_image_is_rejected():
    T = _template()
    img = T.copy()
    img[10, 10] = np.nan
    with pytest.raises(InputError, match="image: expected finite"):
        align(img, T)


def test_calibration_to_stage_metres():
    cal = Calibration(pixel_size=2e-6, rotation=math.pi / 2, scale=1.0, flip_y=False)
    x, y, cov = cal.to_stage(1.0, 0.0, np.diag([1.0, 4.0]))
    assert (x, y) == pytest.approx((0.0, 2e-6))
    np.testing.assert_allclose(cov, np.diag([16e-12, 4e-12]), atol=1e-24)
    flip = Calibration(pixel_size=1e-6)  # default: camera looking down at a z-up stage
    assert flip.to_stage(0.0, 1.0)[1] == pytest.approx(-1e-6)
    assert flip.angle_to_stage(0.1) == 0.1 and cal.angle_to_stage(0.1) == -0.1
    T = _template()
    r = align(np.roll(T, 3, axis=1), T, calibration=Calibration(pixel_size=5e-6, flip_y=False))
    assert r.dx_m == pytest.approx(15e-6, abs=1e-8)


def test_prepared_template_is_reused_and_config_mismatch_is_an_error():
    T = _template()
    prep = prepare_template(T, AlignerConfig(motion="euclidean"))
    img = np.roll(T, 2, axis=0)
    assert align(img, prep).dy == pytest.approx(2.0, abs=2e-3)
    with pytest.raises(InputError, match="template"):
        align(img, prep, AlignerConfig(motion="similarity"))


def test_expected_position_and_small_template():
    T = _template()
    crop = T[40:160, 30:170]  # 120 x 140 px, its centre at (99.5, 99.5) in T
    img = np.roll(T, (1, -2), axis=(0, 1))
    r = align(img, crop, expected=(99.5, 99.5), config=AlignerConfig(motion="translation"))
    # The crop's centre is 4 px left/above the mark centre (95.5); the mark moved by (-2, +1).
    assert (r.dx, r.dy) == pytest.approx((-2.0, 1.0), abs=2e-3)


def test_config_yaml_is_the_defaults():
    path = Path(__file__).resolve().parents[1] / "config" / "aligner.yaml"
    assert load_yaml(AlignerConfig, path) == AlignerConfig()


@pytest.mark.parametrize("name", list(bl.BASELINES))
def test_baselines_follow_our_sign_convention(name):
    T = _template()
    img = make_scene(CROSS, SHAPE, Degradations()).render_clean(Similarity(3.3, -1.7, 0.0)).astype(np.float32)
    r = bl.BASELINES[name](img, T)
    assert (r.dx, r.dy) == pytest.approx((3.3, -1.7), abs=0.15)


def test_quadratic_peak_and_spline_interpolation():
    y, x = np.mgrid[0:5, 0:5].astype(float)
    z = -((x - 2.3) ** 2) - 2 * (y - 1.8) ** 2 + 0.5 * (x - 2.3) * (y - 1.8)
    assert quadratic_peak(z, 2, 2) == pytest.approx((2.3, 1.8), abs=1e-9)
    rng = np.random.default_rng(0)
    img = cv2.GaussianBlur(rng.standard_normal((30, 40)), (0, 0), 2.0)
    c = prepare_spline(img)
    yy, xx = np.mgrid[0:30, 0:40].astype(float)
    v, _, _ = cubic_sample(c, xx.ravel(), yy.ravel())
    np.testing.assert_allclose(v, img.ravel(), atol=1e-12)  # interpolating
    px, py = rng.uniform(2, 37, 50), rng.uniform(2, 27, 50)
    v0, gx, gy = cubic_sample(c, px, py)
    h = 1e-6
    np.testing.assert_allclose((cubic_sample(c, px + h, py)[0] - v0) / h, gx, atol=1e-5)
    np.testing.assert_allclose((cubic_sample(c, px, py + h)[0] - v0) / h, gy, atol=1e-5)


def test_similarity_helpers():
    s = Similarity(1.0, 2.0, 0.3, 1.5)
    np.testing.assert_allclose(s.compose(s.inverse()).matrix(), np.hstack([np.eye(2), np.zeros((2, 1))]),
                               atol=1e-12)
    assert similarity_from_linear(1.5 * rotation_matrix(0.3)) == pytest.approx((0.3, 1.5))
    M = cv2.getRotationMatrix2D((0, 0), math.degrees(0.3), 1.5)
    np.testing.assert_allclose(M[:, :2], s.linear(), atol=1e-12)


def test_contrast_ratio_is_light_independent_and_gates_found():
    d = Degradations(contrast=0.3, gradient=0.2, vignetting=0.2)
    T = golden_template(CROSS, SHAPE, Degradations(contrast=0.3)).astype(np.float32)
    img = make_scene(CROSS, SHAPE, d, rng=2).render_clean(Similarity(1.0, 2.0))
    r = align(img, T)
    assert r.found and r.contrast_ratio == pytest.approx(1.0, abs=0.02)
    faint = make_scene(CROSS, SHAPE, Degradations(contrast=0.03), rng=2).render_clean(Similarity(1.0, 2.0))
    r = align(faint, T)
    assert r.contrast_ratio == pytest.approx(0.1, abs=0.01)
    assert not r.found and "contrast" in r.reason
    assert align(faint, T, AlignerConfig(min_contrast_ratio=0.05)).found


def test_16_bit_image_and_template_measure_as_their_floats():
    """Raw 16-bit levels for both inputs (a mono16 camera and a 16-bit PNG template) once biased
    the fit by ~0.04 px through float32 conditioning; the aligner is gain-invariant, so the
    result must be that of the [0, 1] floats up to the 16-bit quantisation (~1e-5 of full scale:
    far below 1e-3 px at this contrast)."""
    from weak_template_ros.twin.marks import to_uint16

    spec = MarkSpec("frame_in_frame", 128.0, 12.0)
    d = Degradations(contrast=0.3, snr=10.0, defocus_sigma=1.0, gradient=0.1, vignetting=0.1)
    T = golden_template(spec, (256, 256), d)
    rng = np.random.default_rng(4)
    truth = Similarity(4.3, -7.1, math.radians(3.0))
    img, _ = make_scene(spec, (256, 256), d, rng).sample(truth, rng)
    img_q, T_q = to_uint16(img), to_uint16(T)
    ref = align(img_q.astype(np.float32) / 65535, T_q.astype(np.float32) / 65535)
    raw = align(img_q, T_q)
    assert ref.found and raw.found
    assert (raw.dx, raw.dy) == pytest.approx((ref.dx, ref.dy), abs=1e-3)
    assert raw.dtheta == pytest.approx(ref.dtheta, abs=1e-5)
    assert raw.contrast_ratio == pytest.approx(ref.contrast_ratio, rel=1e-3)
