"""BlenderProc detector samples and a data source that mixes them into the twin's training stream.

A *pool* is a folder of pre-rendered detector samples: files ``job_NNNNN.npz`` in the held-out
set format of :mod:`.data` (:func:`~.data.save_heldout` with kind ``"detector"``), one file per
BlenderProc run. :func:`render_detector_job` renders one such run with ``sim/mark_scene.py``: one
mark (the detector's geometry: extent, scale, rotation and placement as
:class:`~.data.DetectorSampling` draws them) on a polished wafer under coaxial light or on a glossy
PCB under a ring light, a few frames with the mark moved and turned by the stage, some frames with
the mark out of view (mark-free images) and some scored against the template of another kind of
mark (distractors), then the twin's sensor noise at one SNR.

:class:`MixedDetectorSource` is a drop-in for :func:`~.data.detector_training_batch` (the
``batches`` hook of :func:`.train.train`): a share of every batch drawn from a pool, the rest from
the twin's on-the-fly stream, every choice a pure function of ``(seed, step)``.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path

import numpy as np

from weak_template_ros.align.similarity import Similarity
from weak_template_ros.config import validate
from weak_template_ros.errors import InputError
from weak_template_ros.nets import data as D
from weak_template_ros.twin.marks import Degradations, MarkSpec, make_scene

#: Looks rendered in turn by job index: (surface, light).
LOOKS = (("wafer", "coaxial"), ("pcb", "ring"))
#: Sensor SNRs drawn per job (step between mark and background over the noise sigma there).
SNRS = (1.0, 2.0, 5.0, 20.0)
#: Cycles samples per pixel drawn per job (low: Cycles' own sampling noise stays in).
SAMPLES = (1, 2, 4)
POOL_PATTERN = "job_*.npz"
POOL_STREAM = 3  # seed-sequence stream of the pool draws (data.py uses 0-2)


def _scaled(spec: MarkSpec, scale: float, polarity: int = 1) -> MarkSpec:
    """The mark as the camera sees it at ``scale`` (the geometry is linear in size and width)."""
    return dataclasses.replace(spec, size=spec.size * scale, line_width=spec.line_width * scale,
                               polarity=polarity)


def render_detector_job(seed: int, stream: int, index: int, s: D.DetectorSampling, kinds,
                        work_dir: str | Path, fixed_mark: tuple[float, float] | None = None,
                        env=None) -> list[tuple]:
    """The detector samples of BlenderProc run ``index``: ``s.group`` images of one mark.

    Parameters
    ----------
    seed, stream, index : int
        Every draw comes from ``np.random.default_rng([seed, stream, index])``.
    s : DetectorSampling
        Geometry (image and template side, mark extent, scale and rotation ranges, mark-free and
        distractor shares, images per run).
    kinds : sequence of str
        Mark families drawn.
    work_dir : path
        BlenderProc's scratch folder (overwritten).
    fixed_mark : (size, line_width) or None
        Mark extent and line width (px) of the held-out geometry; None: :func:`~.data.random_mark`.

    Returns
    -------
    list of tuples in the detector sample layout of :mod:`.data` (template, image, box, present,
    centre, log_scale, angle, info), images quantised to 16 bits.
    """
    from weak_template_ros.twin import blenderproc as B

    validate(s)
    rng = np.random.default_rng([seed, stream, index])
    surface, light = LOOKS[index % len(LOOKS)]
    samples = int(SAMPLES[int(rng.integers(len(SAMPLES)))])
    snr = float(SNRS[int(rng.integers(len(SNRS)))])
    if fixed_mark is None:
        spec = D.random_mark(rng, kinds, (s.mark_min, s.mark_max))
    else:
        spec = MarkSpec(str(kinds[int(rng.integers(len(kinds)))]), float(fixed_mark[0]), float(fixed_mark[1]))
    scale = float(math.exp(rng.uniform(math.log(s.scale_min), math.log(s.scale_max))))
    n = s.image_size
    cfg = B.MarkRenderConfig(surface=surface, light=light, samples=samples)
    poses, roles, templates = [], [], []
    for g in range(s.group):
        angle = float(rng.uniform(-s.max_angle, s.max_angle))
        tx, ty = D.placement(rng, spec.size, scale, angle, n)
        # The first image always shows the mark: its levels set the exposure and polarity.
        u = float(rng.uniform(s.empty_fraction if g == 0 else 0.0, 1.0))
        role = ("empty" if u < s.empty_fraction else
                "distractor" if u < s.empty_fraction + s.distractor_fraction else "present")
        if role == "empty":  # the stage moves the mark out of view (bare surface fills the field)
            tx, ty = 1.2 * n, 0.0
        tspec = spec
        if role == "distractor":
            others = [k for k in kinds if k != spec.kind] or list(kinds)
            tspec = (D.random_mark(rng, others, (s.mark_min, s.mark_max)) if fixed_mark is None else
                     MarkSpec(str(others[int(rng.integers(len(others)))]), spec.size, spec.line_width))
        poses.append(Similarity(tx, ty, angle, 1.0))
        roles.append(role)
        templates.append(tspec)
    shown = _scaled(spec, scale)
    work = Path(work_dir)
    job = B.build_mark_job(shown, (n, n), poses, cfg, work, seed=int(rng.integers(2**31 - 1)))
    job["render"]["threads"] = 1  # one core (the build's 0 means all of them)
    raw = B.run_job(job, work, env, script="mark_scene.py", timeout_s=cfg.timeout_s)
    gray = [np.asarray(r, np.float64) @ B.LUMINANCE for r in raw.radiance]
    exposure = cfg.exposure_level / max(float(np.percentile(gray[0], 99.5)), 1e-12)
    gray = [g * exposure for g in gray]
    bg, level = B.mark_levels(gray[0], shown, poses[0])
    polarity = 1 if level >= bg else -1
    step = max(abs(level - bg), 1e-6)
    background = float(np.clip(bg, 1e-3, 1.0))
    # The twin's noise model at SNR = step / sigma (as write_mark_dataset_blenderproc adds it).
    d = Degradations(background=background, contrast=1.0, snr=snr * background / step,
                     shot_fraction=0.5, defocus_sigma=cfg.template_blur)
    noise = make_scene(_scaled(spec, scale, polarity), (n, n), d, rng=0)
    out = []
    c0 = (n - 1) / 2.0
    for img, pose, role, tspec in zip(gray, poses, roles, templates, strict=True):
        img = img + noise.noise_sigma(img) * rng.standard_normal(img.shape)
        T = D.template_of(dataclasses.replace(tspec, polarity=polarity), (s.template_size, s.template_size),
                          cfg.template_blur)
        present = role == "present"
        centre = (c0 + pose.tx, c0 + pose.ty) if present else (math.nan, math.nan)
        out.append((D.quantise(T), D.quantise(img.astype(np.float32)), D.mark_box(T), present, centre,
                    math.log(scale), pose.theta,
                    {"kind": tspec.kind, "shown": "" if role == "empty" else spec.kind, "role": role,
                     "source": "blenderproc", "surface": surface, "light": light, "samples": samples,
                     "snr": snr, "contrast": step / max(bg, 1e-12), "polarity": polarity,
                     "job": index, "render_wall_s": round(raw.wall_s, 3)}))
    return out


def job_path(pool_dir: str | Path, index: int) -> Path:
    return Path(pool_dir) / f"job_{index:05d}.npz"


def render_pool(pool_dir: str | Path, jobs: range, seed: int, stream: int, s: D.DetectorSampling, kinds,
                fixed_mark: tuple[float, float] | None = None, env=None, on_job=None) -> list[Path]:
    """Render the runs ``jobs`` into ``pool_dir`` (runs already there are kept: a cache)."""
    pool_dir = Path(pool_dir)
    pool_dir.mkdir(parents=True, exist_ok=True)
    paths = []
    for j in jobs:
        p = job_path(pool_dir, j)
        if not p.is_file():
            samples = render_detector_job(seed, stream, j, s, kinds, pool_dir / ".work", fixed_mark, env)
            D.save_heldout(p, "detector", seed, samples)
        paths.append(p)
        if on_job:
            on_job(j, p)
    return paths


def load_pool(pool_dir: str | Path) -> list[tuple]:
    """All detector samples of a pool folder (files ``job_*.npz`` in name order).

    Raises
    ------
    InputError
        The folder is missing, holds no pool file, or a file is not a detector sample set.
    """
    pool_dir = Path(pool_dir)
    if not pool_dir.is_dir():
        raise InputError(str(pool_dir), "an existing pool folder of BlenderProc detector samples",
                         "no such folder")
    files = sorted(pool_dir.glob(POOL_PATTERN))
    if not files:
        raise InputError(str(pool_dir), f"a pool folder with at least one {POOL_PATTERN} file",
                         "a folder without pool files")
    samples: list[tuple] = []
    for f in files:
        header, part = D.load_heldout(f)
        if header["kind"] != "detector":
            raise InputError(str(f), "detector samples", f"{header['kind']} samples")
        samples += part
    return samples


class MixedDetectorSource:
    """Detector training batches mixing pool samples into the twin's stream.

    Called as :func:`~.data.detector_training_batch` (``(seed, step, batch, twin, sampling)``):
    ``round(fraction * batch)`` samples of each batch are pool samples drawn without replacement by
    ``np.random.default_rng([seed, POOL_STREAM, step])``, the rest are the first samples of the
    twin's batch of that step (fraction 0 gives the twin's batches exactly). Pool images must have
    the sampling's image and template sides.
    """

    def __init__(self, pool: str | Path | list, fraction: float):
        if not (isinstance(fraction, (int, float)) and 0.0 <= fraction <= 1.0):
            raise InputError("fraction", "a share in [0, 1]", fraction)
        self.where = str(pool) if not isinstance(pool, list) else "samples in memory"
        self.pool = load_pool(pool) if not isinstance(pool, list) else pool
        if not self.pool:
            raise InputError("pool", "at least one sample", "an empty list")
        self.fraction = float(fraction)

    def __repr__(self) -> str:
        return (f"MixedDetectorSource({len(self.pool)} BlenderProc samples from {self.where}, "
                f"{100 * self.fraction:g} % of each batch; the rest twin)")

    def pool_count(self, batch: int) -> int:
        """Pool samples per batch of ``batch`` samples."""
        return min(int(round(self.fraction * batch)), batch)

    def __call__(self, seed: int, step: int, batch: int, twin: D.TwinConfig, s: D.DetectorSampling
                 ) -> D.DetectorBatch:
        k = self.pool_count(batch)
        samples: list[tuple] = []
        if k < batch:
            tb = D.detector_training_batch(seed, step, batch - k, twin, s)
            samples += [(tb.template[i], tb.image[i], tb.box[i], bool(tb.present[i]), tb.centre[i],
                         float(tb.log_scale[i]), float(tb.angle[i]), tb.info[i]) for i in range(batch - k)]
        if k:
            rng = np.random.default_rng([seed, POOL_STREAM, step])
            idx = rng.choice(len(self.pool), size=k, replace=k > len(self.pool))
            for i in idx:
                x = self.pool[int(i)]
                if x[1].shape != (s.image_size, s.image_size) or x[0].shape != (s.template_size,) * 2:
                    raise InputError(self.where, f"{s.image_size} px images and {s.template_size} px "
                                     "templates (the training sampling)",
                                     f"{x[1].shape} images, {x[0].shape} templates")
                samples.append(x)
        out = D.stack_detector(samples)
        out.jitter = np.random.default_rng([seed, D.TRAIN_STREAM, step, 10_000]).uniform(-1, 1, (batch, 2))
        return out


__all__ = ["LOOKS", "SNRS", "MixedDetectorSource", "job_path", "load_pool", "render_detector_job",
           "render_pool"]
