"""Mark twin: exact coverage, sub-pixel exactness, degradations, SNR definition, seeding, files."""

from __future__ import annotations

import json
import math

import cv2
import numpy as np
import pytest
import shapely
from shapely.geometry import Point, box

from weak_template_ros.align.similarity import Similarity
from weak_template_ros.errors import InputError
from weak_template_ros.twin.marks import (
    MARK_KINDS,
    Degradations,
    MarkSpec,
    coverage,
    golden_template,
    make_scene,
    mark_geometry,
    pillbox_kernel,
    place,
    write_mark_dataset,
)


def _centroid(img: np.ndarray) -> tuple[float, float]:
    y, x = np.mgrid[0:img.shape[0], 0:img.shape[1]]
    return float((img * x).sum() / img.sum()), float((img * y).sum() / img.sum())


@pytest.mark.parametrize("kind", MARK_KINDS)
def test_coverage_equals_exact_polygon_pixel_intersection(kind):
    spec = MarkSpec(kind=kind, size=20, line_width=2 if kind == "grating" else 3)
    g = place(mark_geometry(spec), Similarity(0.37, -0.71, 0.4, 1.1), (12.2, 11.7))
    H, W = 24, 26
    cov = coverage(g, (H, W))
    x0, y0 = (a.ravel() - 0.5 for a in np.meshgrid(np.arange(W), np.arange(H)))
    ref = shapely.area(shapely.intersection(shapely.box(x0, y0, x0 + 1, y0 + 1), g)).reshape(H, W)
    np.testing.assert_allclose(cov, ref, atol=1e-11)


def test_coverage_sums_to_area_and_handles_outside_geometry():
    g = place(mark_geometry(MarkSpec("chevrons", 40, 5)), Similarity(0.2, 0.3, 0.1), (31.5, 31.5))
    assert coverage(g, (64, 64)).sum() == pytest.approx(g.area, abs=1e-9)
    assert coverage(box(100, 100, 110, 110), (32, 32)).sum() == 0.0
    # A polygon larger than the image covers every pixel fully.
    np.testing.assert_allclose(coverage(box(-5, -5, 50, 50), (8, 9)), 1.0, atol=1e-12)


def test_rendered_square_centroid_is_exact_at_subpixel_positions():
    """Centroid of a rendered square == its true position to 0.001 px (requirement)."""
    rng = np.random.default_rng(3)
    square = box(-10, -10, 10, 10)  # integer side: the pixel-sampled centroid is exact
    for _ in range(10):
        tx, ty = rng.uniform(-6, 6, 2)
        cov = coverage(place(square, Similarity(tx, ty), (31.5, 31.5)), (64, 64))
        cx, cy = _centroid(cov)
        assert abs(cx - 31.5 - tx) < 1e-3 and abs(cy - 31.5 - ty) < 1e-3
        # Rotated, and blurred on the supersampled grid as the twin's optics do.
        theta = rng.uniform(-math.pi, math.pi)
        d = Degradations(background=0.5, contrast=1.0, defocus_sigma=1.0)
        scene = make_scene(MarkSpec("cross", 20, 4), (64, 64), d, rng=0)
        scene.geometry = square
        img = scene.render_clean(Similarity(tx, ty, theta)) - 0.5
        cx, cy = _centroid(img)
        assert abs(cx - 31.5 - tx) < 1e-3 and abs(cy - 31.5 - ty) < 1e-3


def test_blur_happens_before_pixel_integration():
    """A sub-pixel shift of the twin equals the supersampled reference to 1e-3 of the contrast
    (blurring pixel values instead would be off by ~2 %)."""
    spec = MarkSpec("cross", 40, 6)
    d4 = Degradations(contrast=1.0, defocus_sigma=1.0, supersample=4)
    d16 = Degradations(contrast=1.0, defocus_sigma=1.0, supersample=16)
    pose = Similarity(0.3, -0.2, 0.05)
    a = make_scene(spec, (64, 64), d4).render_clean(pose)
    b = make_scene(spec, (64, 64), d16).render_clean(pose)
    assert np.abs(a - b).max() < 1e-3 * 0.5


def test_snr_definition_holds_on_the_background():
    d = Degradations(background=0.5, contrast=0.03, snr=2.0, shot_fraction=0.5, defocus_sigma=1.0)
    scene = make_scene(MarkSpec("cross", 40, 6), (128, 128), d, rng=1)
    img, clean = scene.sample(Similarity(), np.random.default_rng(2))
    noise = (img - clean)[:30, :30]  # background corner
    assert noise.std() == pytest.approx(0.5 * 0.03 / 2.0, rel=0.05)
    # Shot noise: brighter pixels are noisier.
    sig = scene.noise_sigma(np.array([0.5, 1.0]))
    assert sig[1] ** 2 - sig[0] ** 2 == pytest.approx(0.5 * (0.5 * 0.03 / 2) ** 2, rel=1e-9)


def test_same_seed_same_bytes_and_seed_matters():
    d = Degradations(snr=3.0, gradient=0.2, vignetting=0.1, glare_spots=2, particles=5, texture=0.01)
    spec = MarkSpec("box_in_box", 48, 6)
    a = make_scene(spec, (80, 80), d, rng=5).sample(Similarity(1.2, 0.3, 0.1), np.random.default_rng(9))[0]
    b = make_scene(spec, (80, 80), d, rng=5).sample(Similarity(1.2, 0.3, 0.1), np.random.default_rng(9))[0]
    c = make_scene(spec, (80, 80), d, rng=6).sample(Similarity(1.2, 0.3, 0.1), np.random.default_rng(9))[0]
    assert a.tobytes() == b.tobytes()
    assert not np.array_equal(a, c)


def test_each_degradation_acts():
    spec = MarkSpec("cross", 48, 8)
    base = make_scene(spec, (96, 96), Degradations(), rng=0).render_clean(Similarity())
    glare = make_scene(spec, (96, 96), Degradations(glare_spots=3, glare_amplitude=2.0), rng=0)
    assert glare.render_clean(Similarity()).max() > base.max() + 0.3
    grad = make_scene(spec, (96, 96), Degradations(gradient=0.4), rng=0).render_clean(Similarity())
    corners = [grad[2, 2], grad[2, -3], grad[-3, 2], grad[-3, -3]]
    assert max(corners) - min(corners) > 0.1
    vig = make_scene(spec, (96, 96), Degradations(vignetting=0.3), rng=0).render_clean(Similarity())
    # 30 % loss at the corners, the vignetting centre drawn within +-20 % of the ROI centre.
    assert min(vig[2, 2], vig[2, -3], vig[-3, 2], vig[-3, -3]) < 0.5 * 0.85
    parts = make_scene(spec, (96, 96), Degradations(particles=30, particle_radius=4), rng=0)
    assert parts.render_clean(Similarity()).min() < 0.5 * 0.6
    tex = make_scene(spec, (96, 96), Degradations(texture=0.02, defocus_sigma=0), rng=0)
    assert tex.render_clean(Similarity())[:20, :20].std() > 0.002
    # Line-width bias: a 1 px wider cross adds perimeter * 0.5 px of mark area (sharp render).
    sharp = Degradations(contrast=1.0, defocus_sigma=0.0)
    wide = Degradations(contrast=1.0, defocus_sigma=0.0, line_width_bias=1.0)
    a0 = make_scene(spec, (96, 96), sharp).render_clean(Similarity()).sum()
    a1 = make_scene(spec, (96, 96), wide).render_clean(Similarity()).sum()
    g = mark_geometry(spec)
    assert (a1 - a0) / 0.5 == pytest.approx(g.buffer(0.5, join_style="mitre").area - g.area, rel=1e-9)


def test_contrast_down_to_two_percent_and_polarity():
    d = Degradations(background=0.5, contrast=0.02, defocus_sigma=1.0)
    dark = golden_template(MarkSpec("cross", 40, 6, polarity=-1), (64, 64), d)
    bright = golden_template(MarkSpec("cross", 40, 6, polarity=1), (64, 64), d)
    assert dark.min() == pytest.approx(0.5 * 0.98, abs=1e-6)
    assert bright.max() == pytest.approx(0.5 * 1.02, abs=1e-6)


def test_pillbox_kernel_is_normalised_disc():
    k = pillbox_kernel(3.0)
    assert k.sum() == pytest.approx(1.0)
    assert k.shape == (7, 7) and k[3, 3] == k.max()
    assert Point(0, 0).buffer(3.0, quad_segs=64).area == pytest.approx(1.0 / k[3, 3], rel=1e-9)


def test_bad_specs_raise_input_error():
    with pytest.raises(InputError, match="kind"):
        MarkSpec(kind="star")
    with pytest.raises(InputError, match="line_width"):
        MarkSpec(kind="cross", size=20, line_width=8)
    with pytest.raises(InputError, match="line_width"):
        MarkSpec(kind="grating", size=40, line_width=10, count=4)
    with pytest.raises(InputError, match="snr"):
        Degradations(snr=-1)
    with pytest.raises(InputError, match="shape"):
        make_scene(MarkSpec(), (4, 4))


def test_write_mark_dataset(tmp_path):
    spec = MarkSpec("l_corner", 40, 6)
    d = Degradations(snr=5.0)
    truth = write_mark_dataset(tmp_path / "a", 3, spec, d, (64, 64), seed=4, max_shift=3.0)
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == [
        "000000.png", "000001.png", "000002.png", "ground_truth.json", "template.png"]
    on_disk = json.loads((tmp_path / "a" / "ground_truth.json").read_text())
    assert on_disk["images"] == truth["images"] and on_disk["mark"]["kind"] == "l_corner"
    img = cv2.imread(str(tmp_path / "a" / "000001.png"), cv2.IMREAD_UNCHANGED)
    assert img.dtype == np.uint16 and img.shape == (64, 64)
    assert all(abs(r["dx"]) <= 3.0 for r in truth["images"])
    # Image i depends on (seed, i) only, not on n.
    write_mark_dataset(tmp_path / "b", 2, spec, d, (64, 64), seed=4, max_shift=3.0)
    assert (tmp_path / "a" / "000001.png").read_bytes() == (tmp_path / "b" / "000001.png").read_bytes()
    with pytest.raises(InputError, match="n"):
        write_mark_dataset(tmp_path / "c", 0, spec, d)
