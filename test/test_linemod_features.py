"""LINEMOD image modalities against hand-computed small arrays and analytic fields."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from weak_template_ros.errors import InputError
from weak_template_ros.linemod import features as fe


def _field(angles_deg, magnitude=5.0):
    a = np.radians(np.asarray(angles_deg, dtype=np.float64))
    gx = torch.tensor(magnitude * np.cos(a), dtype=torch.float32)
    gy = torch.tensor(magnitude * np.sin(a), dtype=torch.float32)
    return gx, gy, torch.hypot(gx, gy)


def test_orientation_bins_fold_polarity_and_vote_at_borders():
    # Bins are floor(angle mod 180 / 22.5): 10 -> 0, 190 -> 0, -170 -> 0, 100 -> 4, 77.5 -> 3.
    for angle, b in ((10, 0), (190, 0), (-170, 0), (100, 4), (77.5, 3), (170, 7), (-10, 7)):
        q = fe.quantize_orientations(*_field(np.full((3, 3), angle)), threshold=1.0)
        assert int(q[1, 1]) == 1 << b, angle
    # A uniform 5x5 field: every interior/edge pixel sees >= 6 agreeing votes, a corner only 4
    # (outside the image does not vote), so corners get no orientation.
    q = fe.quantize_orientations(*_field(np.full((5, 5), 10.0)), threshold=1.0).numpy()
    expected = np.ones((5, 5), np.uint8)
    expected[[0, 0, -1, -1], [0, -1, 0, -1]] = 0
    np.testing.assert_array_equal(q, expected)


def test_orientation_majority_vote_and_threshold():
    b3, b5 = 77.5, 122.5  # bins 3 and 5
    five_three = np.array([[b3, b3, b5], [b3, b3, b5], [b5, b3, b5]])  # 5 x bin 3, 4 x bin 5
    four_four = np.array([[b3, b3, b5], [b3, 10.0, b5], [b5, b3, b5]])  # 4, 4 and 1: no majority
    q = fe.quantize_orientations(*_field(five_three), threshold=1.0)
    assert int(q[1, 1]) == 1 << 3
    five_five = np.array([[b5, b3, b5], [b3, b5, b5], [b5, b3, b3]])  # 4 x bin 3, 5 x bin 5
    q = fe.quantize_orientations(*_field(five_five), threshold=1.0)
    assert int(q[1, 1]) == 1 << 5
    q = fe.quantize_orientations(*_field(four_four), threshold=1.0)
    assert int(q[1, 1]) == 0
    # Same votes, magnitude below the threshold: nothing.
    q = fe.quantize_orientations(*_field(five_three, magnitude=0.5), threshold=1.0)
    assert int(q[1, 1]) == 0
    # Weak neighbours still vote (as in OpenCV): only the centre is strong.
    gx, gy, mag = _field(five_three)
    mag = mag * torch.tensor([[0, 0, 0], [0, 1.0, 0], [0, 0, 0]])
    q = fe.quantize_orientations(gx, gy, mag, threshold=1.0).numpy()
    np.testing.assert_array_equal(q, [[0, 0, 0], [0, 8, 0], [0, 0, 0]])
    with pytest.raises(InputError, match="vote_min"):
        fe.quantize_orientations(gx, gy, mag, threshold=1.0, vote_min=4)


def test_spread_is_the_or_over_a_t_by_t_window():
    bits = torch.zeros((6, 6), dtype=torch.uint8)
    bits[2, 3] = 1 << 2
    # T = 3: offsets -1..1, the bit shows in rows 1..3, columns 2..4.
    expected = np.zeros((6, 6), np.uint8)
    expected[1:4, 2:5] = 4
    np.testing.assert_array_equal(fe.spread(bits, 3).numpy(), expected)
    # T = 4: spread[p] = OR bits[p + k], k in -2..1, so the bit shows at p in [q - 1, q + 2].
    expected = np.zeros((6, 6), np.uint8)
    expected[1:5, 2:6] = 4
    np.testing.assert_array_equal(fe.spread(bits, 4).numpy(), expected)
    # Two orientations overlap: OR of both bits. T = 2: offsets -1..0.
    bits = torch.zeros((4, 4), dtype=torch.uint8)
    bits[0, 0], bits[1, 1] = 1, 16
    expected = np.array([[1, 1, 0, 0], [1, 17, 16, 0], [0, 16, 16, 0], [0, 0, 0, 0]], np.uint8)
    np.testing.assert_array_equal(fe.spread(bits, 2).numpy(), expected)
    np.testing.assert_array_equal(fe.spread(bits, 1).numpy(), bits.numpy())


def test_response_maps_take_the_best_bit_through_the_table():
    lut = fe.orientation_similarity_lut((1.0, 0.9, 0.0, 0.0, 0.0))
    bits = torch.tensor([[0b00001001, 0], [1 << 7, 0b11111111]], dtype=torch.uint8)  # {0,3}, {}, {7}, all
    r = fe.response_maps(bits, lut).numpy()
    assert r.shape == (8, 2, 2)
    # Template bin o against {0, 3}: 1 for o in {0, 3}, 0.9 for neighbours {1, 2, 4, 7}, else 0.
    np.testing.assert_allclose(r[:, 0, 0], [1, 0.9, 0.9, 1, 0.9, 0, 0, 0.9])
    np.testing.assert_array_equal(r[:, 0, 1], np.zeros(8))
    # Bin 7 neighbours bin 0 (orientation is modulo 180 degrees).
    np.testing.assert_allclose(r[:, 1, 0], [0.9, 0, 0, 0, 0, 0, 0.9, 1])
    np.testing.assert_array_equal(r[:, 1, 1], np.ones(8))
    # Normals: 8 azimuth bins over 360 degrees, bin 4 is opposite bin 0.
    nl = fe.normal_similarity_lut((1.0, 0.7, 0.0, 0.0, 0.0))
    r = fe.response_maps(torch.tensor([[1]], dtype=torch.uint8), nl).numpy()[:, 0, 0]
    np.testing.assert_allclose(r, [1, 0.7, 0, 0, 0, 0, 0, 0.7])


def test_gradient_of_a_ramp_and_strongest_channel():
    x = np.arange(24, dtype=np.float32)
    ramp = np.broadcast_to(3.0 * x[None, :], (24, 24))
    gx, gy, mag = fe.color_gradients(torch.tensor(ramp)[None], blur_order=4)
    inner = (slice(6, -6), slice(6, -6))
    np.testing.assert_allclose(gx[inner].numpy(), 3.0, atol=1e-4)
    np.testing.assert_allclose(gy[inner].numpy(), 0.0, atol=1e-4)
    # Two channels: the one with the larger gradient (here -5 per row) wins at every pixel.
    img = torch.stack([torch.tensor(ramp), torch.tensor(-5.0 * np.ascontiguousarray(ramp.T) / 3.0)])
    gx, gy, mag = fe.color_gradients(img, blur_order=2)
    np.testing.assert_allclose(gx[inner].numpy(), 0.0, atol=1e-4)
    np.testing.assert_allclose(gy[inner].numpy(), -5.0, atol=1e-4)
    np.testing.assert_allclose(mag[inner].numpy(), 5.0, atol=1e-4)


def test_noise_estimate_ignores_shading():
    rng = np.random.default_rng(0)
    H, W = 240, 320
    shading = 100 + 0.3 * np.arange(W)[None, :] + 0.2 * np.arange(H)[:, None]
    img = shading + rng.normal(0, 4.0, (H, W))
    est = fe.estimate_noise_sigma(torch.tensor(img, dtype=torch.float32)[None])
    assert abs(est - 4.0) < 0.4


def test_normals_of_a_tilted_plane_and_their_bins():
    fx = fy = 300.0
    cx, cy = 40.0, 30.0
    u = (np.arange(80) - cx) / fx
    depth = np.broadcast_to(0.5 / (1 - 0.2 * u)[None, :], (60, 80)).astype(np.float32)  # Z = 0.5 + 0.2 X
    n = fe.depth_normals(torch.tensor(depth), fx, fy, cx, cy, step=2).numpy()
    expected = np.array([0.2, 0.0, -1.0]) / math.hypot(0.2, 1.0)  # facing the camera
    np.testing.assert_allclose(n[:, 5:-5, 5:-5].reshape(3, -1).T, np.broadcast_to(expected, (50 * 70, 3)),
                               atol=1e-3)
    assert np.all(n[:, 0, :] == 0) and np.all(n[:, :, -1] == 0)  # no baseline at the border
    # Azimuth bins of 45 degrees; normals facing the camera head-on have no azimuth.
    t = math.sin(math.radians(30))
    normals = torch.tensor([[t, 0, -0.87], [0, t, -0.87], [-t, 0, -0.87], [0, 0, -1.0]]).T[:, None, :]
    q = fe.quantize_normals(normals, min_tilt_deg=10.0).numpy()[0]
    np.testing.assert_array_equal(q, [1 << 0, 1 << 2, 1 << 4, 0])


def test_input_conversion_errors():
    with pytest.raises(InputError, match="rgb: expected an \\(H, W\\) or \\(H, W, 3\\) image"):
        fe.as_image_tensor(np.zeros((4, 4, 4), np.uint8), "rgb")
    with pytest.raises(InputError, match="uint8, uint16 or float"):
        fe.as_image_tensor(np.zeros((4, 4, 3), np.int32), "rgb")
    np.testing.assert_allclose(fe.as_image_tensor(np.full((2, 2), 65535, np.uint16)).numpy(), 255.0)
    with pytest.raises(InputError, match="depth: expected the image size 5x4"):
        fe.as_depth_tensor(np.zeros((4, 6), np.float32), (4, 5))
    with pytest.raises(InputError, match="float depth"):
        fe.as_depth_tensor(np.zeros((4, 5), np.uint16), (4, 5))
    d = fe.as_depth_tensor(np.array([[np.nan, -1, 0, 0.5]], np.float32), (1, 4)).numpy()
    np.testing.assert_array_equal(d, [[0, 0, 0, 0.5]])
