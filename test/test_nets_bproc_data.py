"""The mixing data source of the detector (weak_template_ros.nets.bproc_data), on a tiny pool of
twin-rendered samples written in the pool's file format (no BlenderProc needed)."""

import dataclasses

import numpy as np
import pytest

from weak_template_ros.errors import InputError
from weak_template_ros.nets import data as D
from weak_template_ros.nets.bproc_data import MixedDetectorSource, job_path, load_pool

# Small images keep the twin rendering fast; the source only needs matching shapes.
SAMPLING = D.DetectorSampling(image_size=96, template_size=48, mark_min=28.0, mark_max=32.0, group=3)
TWIN = D.TwinConfig()


@pytest.fixture(scope="module")
def pool_dir(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pool")
    for j in range(2):
        samples = D.detector_group(np.random.default_rng([5, 9, j]), TWIN, SAMPLING)
        samples = [(*s[:7], {**s[7], "source": "pool", "job": j}) for s in samples]
        D.save_heldout(job_path(folder, j), "detector", 5, samples)
    return folder


def _from_pool(batch) -> int:
    return sum(1 for i in batch.info if i.get("source") == "pool")


def test_load_pool_reads_every_file(pool_dir):
    samples = load_pool(pool_dir)
    assert len(samples) == 2 * SAMPLING.group
    assert {s[7]["job"] for s in samples} == {0, 1}


@pytest.mark.parametrize("fraction, batch, expected", [(0.5, 8, 4), (0.25, 8, 2), (1.0, 5, 5), (0.0, 4, 0)])
def test_share_of_pool_samples_per_batch(pool_dir, fraction, batch, expected):
    src = MixedDetectorSource(pool_dir, fraction)
    b = src(0, 3, batch, TWIN, SAMPLING)
    assert len(b.image) == batch and b.jitter.shape == (batch, 2)
    assert _from_pool(b) == expected == src.pool_count(batch)


def test_fraction_zero_is_the_twin_stream(pool_dir):
    b = MixedDetectorSource(pool_dir, 0.0)(1, 2, 4, TWIN, SAMPLING)
    t = D.detector_training_batch(1, 2, 4, TWIN, SAMPLING)
    for name in ("template", "image", "box", "present", "log_scale", "angle", "jitter"):
        np.testing.assert_array_equal(getattr(b, name), getattr(t, name))
    np.testing.assert_array_equal(np.isnan(b.centre), np.isnan(t.centre))


def test_same_seed_same_batch_other_step_other_draw(pool_dir):
    src = MixedDetectorSource(pool_dir, 0.5)
    a, b = src(4, 7, 6, TWIN, SAMPLING), src(4, 7, 6, TWIN, SAMPLING)
    for name in ("template", "image", "box", "present", "log_scale", "angle", "jitter"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    assert a.info == b.info
    c = src(4, 8, 6, TWIN, SAMPLING)
    assert not np.array_equal(a.image, c.image)


def test_missing_or_empty_pool_is_a_clear_error(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        MixedDetectorSource(tmp_path / "nowhere", 0.5)
    with pytest.raises(InputError, match="job_"):
        load_pool(tmp_path)
    with pytest.raises(InputError, match="fraction"):
        MixedDetectorSource([("x",)], 1.5)


def test_pool_of_other_image_size_is_refused(pool_dir):
    src = MixedDetectorSource(pool_dir, 1.0)
    with pytest.raises(InputError, match="128 px images"):
        src(0, 0, 2, TWIN, dataclasses.replace(SAMPLING, image_size=128))


def test_fine_tuning_hooks_start_from_the_weights_and_use_the_source(pool_dir, tmp_path):
    """train(..., batches=, init_weights=): one tiny step from the shipped detector on mixed batches
    stays at the shipped weights (lr 1e-7) and the card records both hooks."""
    import torch

    from weak_template_ros.config import to_dict
    from weak_template_ros.nets.train import load_config, train
    from weak_template_ros.nets.weights import load_model, shipped

    cfg = load_config("detector", None, {"steps": 1, "batch": 2, "lr": 1e-7, "workers": 0, "heldout_n": 1,
                                         "heldout_subset": 1, "sampling": to_dict(SAMPLING)})
    src = MixedDetectorSource(pool_dir, 0.5)
    card = train("detector", cfg, tmp_path / "ft", resume=False, batches=src,
                 init_weights=shipped("detector"))
    assert card["training"]["batches"] == repr(src)
    assert card["training"]["init_weights"] == str(shipped("detector"))
    tuned, _ = load_model(tmp_path / "ft" / "detector.pt", "detector")
    ref, _ = load_model(None, "detector")
    for (name, a), b in zip(tuned.state_dict().items(), ref.state_dict().values(), strict=True):
        # Adam moves each weight by at most ~lr per step: 1e-7, far below 1e-5.
        assert torch.allclose(a.float(), b.float(), atol=1e-5), name


def test_init_weights_of_another_architecture_are_refused(tmp_path):
    from weak_template_ros.nets.train import load_config, train
    from weak_template_ros.nets.weights import shipped

    cfg = load_config("detector", None, {"steps": 1, "batch": 2, "workers": 0, "arch": {"channels": 16}})
    with pytest.raises(InputError, match="architecture"):
        train("detector", cfg, tmp_path / "x", resume=False, init_weights=shipped("detector"))
