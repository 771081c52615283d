"""Twin data for the nets: the training distribution, the named evaluation regimes, seeded
samples for the refiner and the detector, and the held-out evaluation sets on disk.

Everything comes from the mark twin (:mod:`weak_template_ros.twin.marks`): exact analytic
rendering, Gaussian + shot noise at a given SNR, defocus, illumination gradient and vignetting,
line-width bias, wafer texture, glare and particles. Nothing is downloaded, and every sample is
a pure function of its seed: sample ``i`` of a set uses ``np.random.default_rng([seed, stream,
i])`` and does not depend on how many samples are drawn.

Poses are ``(tx, ty, theta, log_scale)``: where the mark's reference point IS minus where the
template says it should be (px, x right, y down), the rotation (rad, counter-clockwise on
screen) and the log of mark size / template size (:mod:`weak_template_ros.align.similarity`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import math
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from shapely.geometry import Polygon

from weak_template_ros.align.similarity import Similarity
from weak_template_ros.config import param, validate
from weak_template_ros.errors import InputError
from weak_template_ros.twin.marks import Degradations, MarkSpec, golden_template, make_scene, to_uint16

#: Mark families the nets train on (the ring is left out: its rotation is unobservable).
TRAIN_KINDS = ("cross", "l_corner", "box_in_box", "frame_in_frame", "chevrons", "grating")
#: Mark families of the evaluation (the alignment bench's four).
EVAL_KINDS = ("cross", "l_corner", "box_in_box", "chevrons")
HELDOUT_FORMAT = "weak_template_ros.nets.heldout"
HELDOUT_VERSION = 1

# Streams of the seed sequence [seed, stream, index]: training and held-out never share one.
TRAIN_STREAM = 0
HELDOUT_STREAM = 1
VALID_STREAM = 2  # validation during training (training distribution, never trained on)


@dataclass
class TwinConfig:
    """The training distribution of twin degradations (drawn per sample)."""

    snr_min: float = param(0.7, "lowest SNR (log-uniform)", lo=0.01, hi=1e4)
    snr_max: float = param(40.0, "highest SNR", lo=0.01, hi=1e4)
    low_contrast_fraction: float = param(0.5, "share of samples with low contrast", lo=0.0, hi=1.0)
    contrast_low_min: float = param(0.015, "low contrast range, lower end", lo=0.001, hi=1.0)
    contrast_low_max: float = param(0.05, "low contrast range, upper end", lo=0.001, hi=1.0)
    contrast_min: float = param(0.1, "normal contrast range, lower end", lo=0.001, hi=1.0)
    contrast_max: float = param(0.5, "normal contrast range, upper end", lo=0.001, hi=1.0)
    gradient_fraction: float = param(0.6, "share of samples with an illumination gradient", lo=0.0, hi=1.0)
    gradient_max: float = param(0.8, "largest illumination change across the image", lo=0.0, hi=1.0)
    vignetting_max: float = param(0.25, "largest corner light loss", lo=0.0, hi=0.9)
    bias_fraction: float = param(0.6, "share of samples with a line-width bias", lo=0.0, hi=1.0)
    bias_max: float = param(1.5, "largest |line-width bias|", lo=0.0, hi=10.0, unit="px")
    blur_min: float = param(0.7, "defocus sigma range, lower end", lo=0.0, hi=10.0, unit="px")
    blur_max: float = param(1.6, "defocus sigma range, upper end", lo=0.0, hi=10.0, unit="px")
    template_blur_jitter: float = param(0.15, "template blur = image blur x (1 +- this)", lo=0.0, hi=0.9)
    texture_fraction: float = param(0.1, "share of samples with wafer texture (0.2-1 %)", lo=0.0, hi=1.0)
    glare_fraction: float = param(0.05, "share of samples with 1-2 glare spots", lo=0.0, hi=1.0)
    particle_fraction: float = param(0.05, "share of samples with 5-20 particles", lo=0.0, hi=1.0)

    def __post_init__(self):
        validate(self)


@dataclass(frozen=True)
class Regime:
    """One named evaluation condition of issue 7.

    ``gradient`` 0 is no illumination change; ``strong`` adds a 60 % gradient across the image
    and 20 % vignetting. ``bias`` is the magnitude of the line-width bias, its sign random.
    """

    snr: float
    contrast: float
    gradient: str = "none"
    bias: float = 0.0
    extra: tuple = ()  # further Degradations fields as (name, value) pairs (robustness sets)

    @property
    def name(self) -> str:
        b = f"±{self.bias:g} px" if self.bias else "0"
        more = "".join(f" / {k} {v:g}" for k, v in self.extra)
        return (f"SNR {self.snr:g} / contrast {100 * self.contrast:g} % / gradient {self.gradient} / "
                f"bias {b}{more}")

    @property
    def key(self) -> str:
        more = "".join(f"_{k}{v:g}" for k, v in self.extra)
        return f"snr{self.snr:g}_c{100 * self.contrast:g}_{self.gradient}_b{self.bias:g}{more}"

    def degradations(self, rng: np.random.Generator, blur: float = 1.0) -> Degradations:
        strong = self.gradient == "strong"
        sign = 1.0 if rng.uniform() < 0.5 else -1.0
        return Degradations(contrast=self.contrast, snr=self.snr, shot_fraction=0.5, defocus_sigma=blur,
                            gradient=0.6 if strong else 0.0, vignetting=0.2 if strong else 0.0,
                            line_width_bias=sign * self.bias, **dict(self.extra))


#: The issue's evaluation grid: SNR {1, 2, 5} x contrast {30 %, 3 %} x gradient {none, strong} x
#: line-width bias {0, ±1 px}.
REGIMES = tuple(Regime(s, c, g, b) for s in (1.0, 2.0, 5.0) for c in (0.3, 0.03) for g in ("none", "strong")
                for b in (0.0, 1.0))


def pose_array(p: Similarity) -> np.ndarray:
    """(4,) float64 ``(tx, ty, theta, log_scale)`` of a Similarity."""
    return np.array([p.tx, p.ty, p.theta, math.log(p.scale)])


def pose_similarity(p) -> Similarity:
    """The Similarity of a ``(tx, ty, theta, log_scale)`` vector."""
    p = np.asarray(p, np.float64)
    return Similarity(float(p[0]), float(p[1]), float(p[2]), float(math.exp(p[3])))


def mark_box(template: np.ndarray, threshold: float = 0.5) -> tuple[float, float, float]:
    """Centre (x, y) and extent (px) of the mark in a template: the box of the pixels differing from
    the border median by more than ``threshold`` of the largest difference.

    The half-contrast box measures the design size through the blur (the aligner's own crop uses
    a 2 % threshold to keep the blur tails, which is the opposite purpose).
    """
    t = np.asarray(template, np.float64)
    border = np.concatenate([t[0], t[-1], t[1:-1, 0], t[1:-1, -1]])
    d = np.abs(t - np.median(border))
    m = d > threshold * max(float(d.max()), 1e-30)
    if not m.any():
        raise InputError("template", "a template with a mark", "a constant image")
    ys, xs = np.nonzero(m)
    x0, x1, y0, y1 = xs.min() - 0.5, xs.max() + 0.5, ys.min() - 0.5, ys.max() + 0.5
    return 0.5 * (x0 + x1), 0.5 * (y0 + y1), float(max(x1 - x0, y1 - y0))


# ---------------------------------------------------------------------------------------------
# Random marks and degradations


def random_mark(rng: np.random.Generator, kinds, size: tuple[float, float],
                width_fraction: tuple[float, float] = (0.07, 0.14)) -> MarkSpec:
    """A random mark of one of ``kinds`` with its extent uniform in ``size`` (px)."""
    kind = str(kinds[int(rng.integers(len(kinds)))])
    s = float(rng.uniform(*size))
    lw = float(s * rng.uniform(*width_fraction))
    count = 4
    if kind == "chevrons":
        count = int(rng.integers(3, 6))
    elif kind == "grating":
        count = int(rng.integers(4, 8))
        lw = min(lw, 0.6 * s / count)
    return MarkSpec(kind, s, max(lw, 1.0), int(rng.choice([1, -1])), count)


def random_degradations(rng: np.random.Generator, twin: TwinConfig) -> Degradations:
    """One draw of the training distribution."""
    t = twin
    snr = float(math.exp(rng.uniform(math.log(t.snr_min), math.log(t.snr_max))))
    if rng.uniform() < t.low_contrast_fraction:
        contrast = float(rng.uniform(t.contrast_low_min, t.contrast_low_max))
    else:
        contrast = float(rng.uniform(t.contrast_min, t.contrast_max))
    gradient = float(rng.uniform(0, t.gradient_max)) if rng.uniform() < t.gradient_fraction else 0.0
    vignetting = float(rng.uniform(0, t.vignetting_max)) if gradient > 0 else 0.0
    bias = float(rng.uniform(-t.bias_max, t.bias_max)) if rng.uniform() < t.bias_fraction else 0.0
    extra = {}
    if rng.uniform() < t.texture_fraction:
        extra.update(texture=float(rng.uniform(0.002, 0.01)))
    if rng.uniform() < t.glare_fraction:
        extra.update(glare_spots=int(rng.integers(1, 3)), glare_amplitude=float(rng.uniform(0.2, 1.0)))
    if rng.uniform() < t.particle_fraction:
        extra.update(particles=int(rng.integers(5, 21)), particle_radius=float(rng.uniform(2, 5)))
    return Degradations(contrast=contrast, snr=snr, shot_fraction=float(rng.uniform(0, 1)),
                        defocus_sigma=float(rng.uniform(t.blur_min, t.blur_max)), gradient=gradient,
                        vignetting=vignetting, line_width_bias=bias, **extra)


def template_of(spec: MarkSpec, shape: tuple[int, int], blur: float) -> np.ndarray:
    """The golden design template (float32): centred mark, uniform light, no noise, no bias.
    Gain and offset do not matter to the nets (their inputs are normalised)."""
    return golden_template(spec, shape, Degradations(defocus_sigma=blur)).astype(np.float32)


def quantise(image: np.ndarray) -> np.ndarray:
    """The image as stored on disk: 16 bits, full scale 1.0 (float32 again). Held-out samples are
    quantised when drawn, so a set read back from disk equals one drawn again."""
    return (to_uint16(image).astype(np.float32) / np.float32(65535.0))


def render(spec: MarkSpec, shape: tuple[int, int], d: Degradations, pose: Similarity,
           rng: np.random.Generator, present: bool = True) -> np.ndarray:
    """A noisy twin image (float32) of the mark at ``pose``; without the mark if not ``present``
    (same light, noise and nuisances)."""
    scene = make_scene(spec, shape, d, rng)
    if not present:
        scene = dataclasses.replace(scene, geometry=Polygon())
    img, _ = scene.sample(pose, rng)
    return img


# ---------------------------------------------------------------------------------------------
# Refiner samples


@dataclass
class RefinerBatch:
    """Stacked refiner samples (NumPy; the trainer turns them into tensors)."""

    template: np.ndarray  # (B, h, w) float32
    image: np.ndarray  # (B, H, W) float32
    origin: np.ndarray  # (B, 2) template reference point, px
    expected: np.ndarray  # (B, 2) image point of the reference at zero offset, px
    truth: np.ndarray  # (B, 4) poses
    start: np.ndarray  # (B, 4) perturbed starting poses
    info: list  # per-sample dicts (kind, snr, contrast, ...)


@dataclass
class RefinerSampling:
    """Geometry of refiner samples (training defaults; the held-out set uses the bench's)."""

    image_size: int = param(192, "image side", lo=32, hi=2048, unit="px")
    template_size: int = param(160, "template side (the mark centred)", lo=16, hi=2048, unit="px")
    mark_min: float = param(96.0, "mark extent range, lower end", lo=8.0, hi=2048.0, unit="px")
    mark_max: float = param(136.0, "mark extent range, upper end", lo=8.0, hi=2048.0, unit="px")
    max_shift: float = param(6.0, "true offsets uniform in +-this", lo=0.0, hi=500.0, unit="px")
    max_angle: float = param(0.1, "true rotations uniform in +-this", lo=0.0, hi=math.pi, unit="rad")
    max_log_scale: float = param(0.03, "true log scale uniform in +-this", lo=0.0, hi=1.0)
    start_shift: float = param(5.0, "start error: translation uniform in a disc of this radius",
                               lo=0.0, hi=100.0, unit="px")
    start_angle: float = param(0.05, "start error: rotation uniform in +-this", lo=0.0, hi=1.0, unit="rad")
    start_log_scale: float = param(0.03, "start error: log scale uniform in +-this", lo=0.0, hi=1.0)
    group: int = param(4, "images drawn per mark and template (rendering the template is shared)",
                       lo=1, hi=64)

    def __post_init__(self):
        validate(self)


def perturb(truth: np.ndarray, rng: np.random.Generator, shift: float, angle: float, log_scale: float
            ) -> np.ndarray:
    """A start pose: the truth with a translation error uniform in a disc, rotation and log-scale
    errors uniform in +-range."""
    r = shift * math.sqrt(rng.uniform())
    a = rng.uniform(0, 2 * math.pi)
    return truth + np.array([r * math.cos(a), r * math.sin(a), rng.uniform(-angle, angle),
                             rng.uniform(-log_scale, log_scale)])


def refiner_group(rng: np.random.Generator, twin: TwinConfig, s: RefinerSampling, kinds=TRAIN_KINDS
                  ) -> list[tuple]:
    """``s.group`` training samples sharing one random mark and its template."""
    spec = random_mark(rng, kinds, (s.mark_min, s.mark_max))
    blur = float(rng.uniform(twin.blur_min, twin.blur_max))
    tshape = (s.template_size, s.template_size)
    tblur = blur * (1.0 + float(rng.uniform(-twin.template_blur_jitter, twin.template_blur_jitter)))
    T = template_of(spec, tshape, tblur)
    out = []
    for _ in range(s.group):
        d = dataclasses.replace(random_degradations(rng, twin), defocus_sigma=blur)
        truth = np.array([rng.uniform(-s.max_shift, s.max_shift), rng.uniform(-s.max_shift, s.max_shift),
                          rng.uniform(-s.max_angle, s.max_angle),
                          rng.uniform(-s.max_log_scale, s.max_log_scale)])
        img = render(spec, (s.image_size, s.image_size), d, pose_similarity(truth), rng)
        start = perturb(truth, rng, s.start_shift, s.start_angle, s.start_log_scale)
        out.append((T, img, truth, start, {"kind": spec.kind, "snr": d.snr, "contrast": d.contrast,
                                           "gradient": d.gradient, "bias": d.line_width_bias}))
    return out


def stack_refiner(samples: list[tuple]) -> RefinerBatch:
    """Stack (template, image, truth, start, info) tuples of equal shapes."""
    T = np.stack([s[0] for s in samples]).astype(np.float32)
    img = np.stack([s[1] for s in samples]).astype(np.float32)
    h, w = T.shape[1:]
    H, W = img.shape[1:]
    B = len(samples)
    return RefinerBatch(T, img, np.tile([(w - 1) / 2.0, (h - 1) / 2.0], (B, 1)),
                        np.tile([(W - 1) / 2.0, (H - 1) / 2.0], (B, 1)),
                        np.stack([s[2] for s in samples]), np.stack([s[3] for s in samples]),
                        [s[4] for s in samples])


def refiner_training_batch(seed: int, step: int, batch: int, twin: TwinConfig, s: RefinerSampling
                           ) -> RefinerBatch:
    """The training batch of ``step`` (a pure function of ``seed`` and ``step``)."""
    samples = []
    g = 0
    while len(samples) < batch:
        rng = np.random.default_rng([seed, TRAIN_STREAM, step, g])
        samples += refiner_group(rng, twin, s)
        g += 1
    return stack_refiner(samples[:batch])


#: Held-out refiner geometry: the alignment bench's (128 px marks, 12 px lines, 256x256 ROI,
#: the golden template as large as the image, shifts in +-10 px, rotations in +-5 deg).
HELDOUT_REFINER = {"image_size": 256, "mark_size": 128.0, "line_width": 12.0, "max_shift": 10.0,
                   "max_angle": math.radians(5.0), "start_shift": 4.0, "start_angle": math.radians(2.0)}


def heldout_refiner_sample(seed: int, index: int, regimes=REGIMES, kinds=EVAL_KINDS) -> tuple:
    """Sample ``index`` of the refiner's held-out set: regimes and kinds in turn, the bench's
    geometry, a start perturbed by up to 4 px and 2 deg (what the coarse stage leaves)."""
    g = HELDOUT_REFINER
    rng = np.random.default_rng([seed, HELDOUT_STREAM, index])
    regime = regimes[index % len(regimes)]
    kind = kinds[(index // len(regimes)) % len(kinds)]
    spec = MarkSpec(kind, g["mark_size"], g["line_width"])
    shape = (g["image_size"], g["image_size"])
    d = regime.degradations(rng)
    m, a = g["max_shift"], g["max_angle"]
    truth = np.array([rng.uniform(-m, m), rng.uniform(-m, m), rng.uniform(-a, a), 0.0])
    img = render(spec, shape, d, pose_similarity(truth), rng)
    start = perturb(truth, rng, g["start_shift"], g["start_angle"], 0.0)
    # The golden template at the regime's nominal contrast (as the alignment bench makes it): the
    # classical aligner checks the mark's contrast against the template's.
    T = golden_template(spec, shape, d).astype(np.float32)
    return quantise(T), quantise(img), truth, start, {"kind": kind, "regime": regime.key, "snr": regime.snr,
                                  "contrast": regime.contrast, "gradient": regime.gradient,
                                  "bias": d.line_width_bias}


# ---------------------------------------------------------------------------------------------
# Detector samples


@dataclass
class DetectorSampling:
    """Geometry of detector samples, at the detector's canonical scale (mark extent ~64 px)."""

    image_size: int = param(192, "image side", lo=32, hi=2048, unit="px")
    template_size: int = param(96, "template side (the mark centred)", lo=16, hi=2048, unit="px")
    mark_min: float = param(56.0, "mark extent range, lower end", lo=8.0, hi=2048.0, unit="px")
    mark_max: float = param(72.0, "mark extent range, upper end", lo=8.0, hi=2048.0, unit="px")
    scale_min: float = param(0.8, "scene scale of the mark vs its template, lower end", lo=0.1, hi=10.0)
    scale_max: float = param(1.25, "scene scale, upper end", lo=0.1, hi=10.0)
    max_angle: float = param(0.524, "scene rotation uniform in +-this", lo=0.0, hi=math.pi, unit="rad")
    empty_fraction: float = param(0.15, "share of images without any mark", lo=0.0, hi=1.0)
    distractor_fraction: float = param(0.15, "share of images showing another kind of mark only",
                                       lo=0.0, hi=1.0)
    group: int = param(4, "images drawn per mark and template", lo=1, hi=64)

    def __post_init__(self):
        validate(self)


@dataclass
class DetectorBatch:
    template: np.ndarray  # (B, h, w) float32, canonical scale
    image: np.ndarray  # (B, H, W) float32, canonical scale
    box: np.ndarray  # (B, 3) mark centre x, y and extent in the template (mark_box)
    present: np.ndarray  # (B,) bool
    centre: np.ndarray  # (B, 2) true mark centre in the image, px (nan when absent)
    log_scale: np.ndarray  # (B,)
    angle: np.ndarray  # (B,)
    info: list
    jitter: np.ndarray | None = None  # (B, 2) uniform in [-1, 1]: detection-error simulation


def placement(rng: np.random.Generator, size: float, scale: float, angle: float, image_size: int,
              margin: float = 4.0) -> tuple[float, float]:
    """A random offset from the image centre that keeps the rotated, scaled mark inside."""
    half = 0.5 * size * scale * (abs(math.cos(angle)) + abs(math.sin(angle)))
    room = max(image_size / 2.0 - half - margin, 0.0)
    return float(rng.uniform(-room, room)), float(rng.uniform(-room, room))


def detector_group(rng: np.random.Generator, twin: TwinConfig, s: DetectorSampling, kinds=TRAIN_KINDS
                   ) -> list[tuple]:
    """``s.group`` samples sharing one mark and its template (some without the mark)."""
    spec = random_mark(rng, kinds, (s.mark_min, s.mark_max))
    blur = float(rng.uniform(twin.blur_min, twin.blur_max))
    T = template_of(spec, (s.template_size, s.template_size), blur)
    box = mark_box(T)
    n = s.image_size
    out = []
    for _ in range(s.group):
        d = dataclasses.replace(random_degradations(rng, twin), defocus_sigma=blur)
        scale = float(math.exp(rng.uniform(math.log(s.scale_min), math.log(s.scale_max))))
        angle = float(rng.uniform(-s.max_angle, s.max_angle))
        tx, ty = placement(rng, spec.size, scale, angle, n)
        u = rng.uniform()
        present = u >= s.empty_fraction + s.distractor_fraction
        shown = spec
        if s.empty_fraction <= u < s.empty_fraction + s.distractor_fraction:
            others = [k for k in kinds if k != spec.kind] or list(kinds)
            shown = random_mark(rng, others, (s.mark_min, s.mark_max))
            tx, ty = placement(rng, shown.size, scale, angle, n)
        img = render(shown, (n, n), d, Similarity(tx, ty, angle, scale), rng,
                     present=u >= s.empty_fraction)
        c = ((n - 1) / 2.0 + tx, (n - 1) / 2.0 + ty) if present else (math.nan, math.nan)
        out.append((T, img, box, present, c, math.log(scale), angle,
                    {"kind": spec.kind, "shown": shown.kind if u >= s.empty_fraction else "",
                     "snr": d.snr, "contrast": d.contrast, "gradient": d.gradient,
                     "bias": d.line_width_bias}))
    return out


def stack_detector(samples: list[tuple]) -> DetectorBatch:
    return DetectorBatch(np.stack([x[0] for x in samples]).astype(np.float32),
                         np.stack([x[1] for x in samples]).astype(np.float32),
                         np.array([x[2] for x in samples], np.float64), np.array([x[3] for x in samples]),
                         np.array([x[4] for x in samples], np.float64), np.array([x[5] for x in samples]),
                         np.array([x[6] for x in samples]), [x[7] for x in samples])


def detector_training_batch(seed: int, step: int, batch: int, twin: TwinConfig, s: DetectorSampling
                            ) -> DetectorBatch:
    samples = []
    g = 0
    while len(samples) < batch:
        rng = np.random.default_rng([seed, TRAIN_STREAM, step, g])
        samples += detector_group(rng, twin, s)
        g += 1
    out = stack_detector(samples[:batch])
    out.jitter = np.random.default_rng([seed, TRAIN_STREAM, step, 10_000]).uniform(-1, 1, (batch, 2))
    return out


#: Held-out detector geometry: 256x256 images, 64 px marks (canonical scale), scale 0.8-1.25,
#: rotation +-30 deg, 25 % of the images without the template's mark (half empty, half showing
#: another kind of mark).
HELDOUT_DETECTOR = DetectorSampling(image_size=256, template_size=96, mark_min=64.0, mark_max=64.0,
                                    empty_fraction=0.125, distractor_fraction=0.125, group=1)


def heldout_detector_sample(seed: int, index: int, regimes=REGIMES, kinds=EVAL_KINDS) -> tuple:
    """Sample ``index`` of the detector's held-out set (regimes and kinds in turn, 64 px marks with
    6 px lines)."""
    rng = np.random.default_rng([seed, HELDOUT_STREAM, index])
    regime = regimes[index % len(regimes)]
    kind = kinds[(index // len(regimes)) % len(kinds)]
    return _heldout_detector(rng, kind, kinds, regime)


def _heldout_detector(rng, kind, kinds, regime) -> tuple:
    s = HELDOUT_DETECTOR
    spec = MarkSpec(kind, 64.0, 6.0)
    n = s.image_size
    d = regime.degradations(rng)
    T = golden_template(spec, (s.template_size, s.template_size), d).astype(np.float32)
    box = mark_box(T)
    scale = float(math.exp(rng.uniform(math.log(s.scale_min), math.log(s.scale_max))))
    angle = float(rng.uniform(-s.max_angle, s.max_angle))
    tx, ty = placement(rng, spec.size, scale, angle, n)
    u = rng.uniform()
    present = u >= s.empty_fraction + s.distractor_fraction
    shown = spec
    if s.empty_fraction <= u < s.empty_fraction + s.distractor_fraction:
        shown = MarkSpec(str(rng.choice([k for k in kinds if k != kind])), 64.0, 6.0)
    img = render(shown, (n, n), d, Similarity(tx, ty, angle, scale), rng, present=u >= s.empty_fraction)
    c = ((n - 1) / 2.0 + tx, (n - 1) / 2.0 + ty) if present else (math.nan, math.nan)
    return (quantise(T), quantise(img), box, present, c, math.log(scale), angle,
            {"kind": kind, "shown": shown.kind if u >= s.empty_fraction else "", "regime": regime.key,
             "snr": regime.snr, "contrast": regime.contrast, "gradient": regime.gradient,
             "bias": d.line_width_bias})


# ---------------------------------------------------------------------------------------------
# Held-out sets on disk


def heldout_samples(kind: str, seed: int, n: int, start: int = 0) -> list[tuple]:
    """Samples ``start .. start + n - 1`` of the held-out set of ``kind`` ("refiner" / "detector")."""
    if kind == "refiner":
        return [heldout_refiner_sample(seed, i) for i in range(start, start + n)]
    if kind == "detector":
        return [heldout_detector_sample(seed, i) for i in range(start, start + n)]
    raise InputError("kind", "'refiner' or 'detector'", repr(kind))


def _digest(arrays: dict[str, np.ndarray]) -> str:
    h = hashlib.sha256()
    for k in sorted(arrays):
        a = np.ascontiguousarray(arrays[k])
        h.update(k.encode() + repr((a.dtype.str, a.shape)).encode() + a.tobytes())
    return h.hexdigest()


def save_heldout(path: str | Path, kind: str, seed: int, samples: list[tuple]) -> str:
    """Write a held-out set (images as 16-bit, full scale 1.0 = 65535, like the twin's PNGs);
    returns the sha256 of its arrays (recorded in the model card)."""
    arrays = {"template": np.stack([to_uint16(s[0]) for s in samples]),
              "image": np.stack([to_uint16(s[1]) for s in samples])}
    if kind == "refiner":
        arrays.update(truth=np.stack([s[2] for s in samples]), start=np.stack([s[3] for s in samples]))
        info = [s[4] for s in samples]
    else:
        arrays.update(box=np.array([s[2] for s in samples], np.float64),
                      present=np.array([s[3] for s in samples]),
                      centre=np.array([s[4] for s in samples], np.float64),
                      log_scale=np.array([s[5] for s in samples]), angle=np.array([s[6] for s in samples]))
        info = [s[7] for s in samples]
    digest = _digest(arrays)
    header = {"format": HELDOUT_FORMAT, "version": HELDOUT_VERSION, "kind": kind, "seed": seed,
              "n": len(samples), "sha256": digest, "info": info}
    buf = io.BytesIO()
    np.savez_compressed(buf, header=np.frombuffer(json.dumps(header).encode(), np.uint8), **arrays)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(buf.getvalue())
    return digest


def load_heldout(path: str | Path) -> tuple[dict, list[tuple]]:
    """Read a held-out set written by :func:`save_heldout`: (header, samples as tuples)."""
    where = str(path)
    try:
        with np.load(Path(path), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        header = json.loads(arrays.pop("header").tobytes().decode())
    except FileNotFoundError as exc:
        raise InputError(where, "an existing held-out set (.npz)", "no such file") from exc
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, UnicodeDecodeError) as exc:
        raise InputError(where, "a held-out set (.npz with a JSON header)", f"{type(exc).__name__}: {exc}"
                         ) from exc
    if header.get("format") != HELDOUT_FORMAT or header.get("version") != HELDOUT_VERSION:
        raise InputError(where, f"{HELDOUT_FORMAT} version {HELDOUT_VERSION}",
                         f"{header.get('format')} version {header.get('version')}")
    if _digest(arrays) != header["sha256"]:
        raise InputError(where, "arrays matching the sha256 in the header", "damaged or edited data")
    T = arrays["template"].astype(np.float32) / np.float32(65535.0)
    img = arrays["image"].astype(np.float32) / np.float32(65535.0)
    if header["kind"] == "refiner":
        samples = [(T[i], img[i], arrays["truth"][i], arrays["start"][i], header["info"][i])
                   for i in range(len(img))]
    else:
        samples = [(T[i], img[i], arrays["box"][i], bool(arrays["present"][i]), arrays["centre"][i],
                    float(arrays["log_scale"][i]), float(arrays["angle"][i]), header["info"][i])
                   for i in range(len(img))]
    return header, samples
