"""Alignment preprocessing: flat-field, background subtraction, shading removal, normalisation."""

from __future__ import annotations

import numpy as np
import pytest

from weak_template_ros.align.preprocess import (
    RollingBackground,
    as_gray_float,
    flat_field,
    gradient_magnitude,
    local_normalize,
    remove_shading,
    shade_correct,
    subtract_background,
)
from weak_template_ros.errors import InputError

H, W = 96, 128


def _shading():
    y, x = np.mgrid[0:H, 0:W]
    return (0.6 + 0.3 * x / W) * (1 - 0.2 * ((x - 60) ** 2 + (y - 40) ** 2) / (W * W))


def _mark():
    m = np.zeros((H, W))
    m[40:56, 30:100] = 0.05
    return m


def test_flat_field_recovers_reflectance_exactly():
    dark = np.full((H, W), 0.02)
    flat = _shading() + dark
    img = _shading() * (1 + _mark()) + dark
    out = flat_field(img, flat, dark)
    np.testing.assert_allclose(out / out[0, 0], 1 + _mark(), rtol=1e-5)
    with pytest.raises(InputError, match="flat"):
        flat_field(img, flat[:10])


def test_remove_shading_follows_light_not_mark():
    img = _shading() * (1 + _mark())
    out = remove_shading(img, order=3)
    np.testing.assert_allclose(out, 1 + _mark(), atol=5e-3)
    with pytest.raises(InputError, match="order"):
        remove_shading(img, order=5)


def test_background_subtraction_and_rolling_reference():
    bg = _shading()
    rolling = RollingBackground(alpha=0.5)
    rng = np.random.default_rng(0)
    for _ in range(20):
        ref = rolling.update(bg + 0.001 * rng.standard_normal((H, W)))
    assert np.abs(ref - bg).max() < 0.003
    out = subtract_background(bg + _mark(), ref)
    assert np.abs(out - _mark()).max() < 0.003
    with pytest.raises(InputError, match="alpha"):
        RollingBackground(alpha=0.0)


def test_shade_correct_local_normalize_and_edges():
    img = _shading() * (1 + _mark())
    sc = shade_correct(img, sigma=30.0)
    bg = (slice(5, 30), slice(5, W - 5))  # above the mark
    spread = float(np.ptp(img[bg]) / img[bg].mean())
    assert float(np.ptp(sc[bg]) / sc[bg].mean()) < spread / 2  # most of the light gradient is gone
    ln = local_normalize(img, sigma=8.0, bilateral=2.0)
    assert np.isfinite(ln).all() and abs(float(ln.mean())) < 0.2
    g = gradient_magnitude(img)
    assert g[40, 60] > 5 * g[20, 60]  # the mark's edge stands out of the smooth light


def test_input_checks():
    assert as_gray_float(np.zeros((10, 10, 3), np.uint8)).shape == (10, 10)
    assert as_gray_float(np.zeros((10, 10), np.uint16)).dtype == np.float32
    with pytest.raises(InputError, match="dtype"):
        as_gray_float(np.zeros((10, 10), np.complex64))
    with pytest.raises(InputError, match="8x8"):
        as_gray_float(np.zeros((4, 10), np.float32))
    with pytest.raises(InputError, match="sigma"):
        shade_correct(np.ones((10, 10), np.float32), 0.0)
