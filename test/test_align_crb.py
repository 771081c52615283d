"""Cramér–Rao bound: closed forms (blurred straight edge, Gaussian blob), SNR scaling, and
unobservable directions."""

from __future__ import annotations

import math

import numpy as np
import pytest
from shapely.geometry import box

from weak_template_ros.align.crb import blob_fisher, crb, edge_fisher, fisher_information, mark_crb
from weak_template_ros.align.similarity import Similarity
from weak_template_ros.twin.marks import Degradations, MarkSpec, make_scene


@pytest.mark.parametrize("blur", [0.8, 1.0, 2.0])
def test_fisher_of_a_blurred_pixel_integrated_edge_matches_closed_form(blur):
    """Information on the position of one straight edge rendered by the twin (exact coverage,
    blur before pixel integration) equals A² L / σ² ∫(box ⊛ G)²."""
    d = Degradations(background=0.5, contrast=0.2, snr=3.0, shot_fraction=0.0, defocus_sigma=blur)
    scene = make_scene(MarkSpec("cross", 40, 6), (64, 48), d)
    scene.geometry = box(-3.3, -500, 1000, 500)  # one vertical edge crossing the whole image
    rows = slice(8, -8)  # stay clear of the image's top and bottom (blur border)

    def render(p):
        return scene.render_clean(Similarity(p[0], 0.0))[rows]

    sigma = d.noise_sigma0()
    J = fisher_information(render, [0.0], sigma, [0.01])
    expected = edge_fisher(0.5 * 0.2, blur, 64 - 16, sigma)
    assert J[0, 0] == pytest.approx(expected, rel=0.01)


def test_fisher_of_a_gaussian_blob_matches_closed_form():
    y, x = np.mgrid[0:64, 0:64].astype(float)
    A, s, sigma = 2.0, 3.0, 0.5

    def render(p):
        return A * np.exp(-((x - 31.7 - p[0]) ** 2 + (y - 30.2 - p[1]) ** 2) / (2 * s * s))

    J = fisher_information(render, [0.0, 0.0], sigma, [1e-3, 1e-3])
    assert J[0, 0] == pytest.approx(blob_fisher(A, sigma), rel=1e-4)
    assert J[1, 1] == pytest.approx(blob_fisher(A, sigma), rel=1e-4)
    assert abs(J[0, 1]) < 1e-6 * J[0, 0]
    C = crb(J)
    assert C[0, 0] == pytest.approx(1 / blob_fisher(A, sigma), rel=1e-4)


def test_mark_crb_scales_with_snr_and_flags_unobservable_rotation():
    spec = MarkSpec("cross", 64, 8)
    lo = make_scene(spec, (96, 96), Degradations(snr=2.0, shot_fraction=0.0))
    hi = make_scene(spec, (96, 96), Degradations(snr=4.0, shot_fraction=0.0))
    pose = Similarity(0.3, -0.2, 0.01)
    np.testing.assert_allclose(mark_crb(lo, pose) / mark_crb(hi, pose), 4.0, rtol=1e-6)
    # A ring's rotation is unobservable (only its 1024-gon facets carry any): a bound of tens of
    # radians, translation still bounded.
    ring = make_scene(MarkSpec("ring", 64, 8), (96, 96), Degradations(snr=5.0))
    C = mark_crb(ring, Similarity())
    assert math.sqrt(C[2, 2]) > 10.0 and 0 < C[0, 0] < 0.01
    # An exactly singular information matrix gives an infinite bound on the blind direction.
    Cs = crb(np.array([[4.0, 0.0], [0.0, 0.0]]))
    assert Cs[0, 0] == pytest.approx(0.25) and math.isinf(Cs[1, 1])
