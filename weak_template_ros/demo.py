"""`make demo`: the first-contact tour. Each step renders, runs a pipeline, prints its metrics and
writes pictures into the output folder; the steps run in order and share the twin dataset."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from rich.table import Table

from weak_template_ros.cli.common import console


@dataclass
class DemoContext:
    """What the steps share: output folder, seed, results for the final table."""

    out: Path
    seed: int
    dataset: Path | None = None
    metrics: list[tuple[str, str, str]] = field(default_factory=list)  # (step, metric, value)

    def report(self, step: str, metric: str, value: str) -> None:
        self.metrics.append((step, metric, value))


def step_twin(ctx: DemoContext) -> None:
    """Render a small BOP scene set of the five part families and its overview picture."""
    from weak_template_ros.cli.common import progress
    from weak_template_ros.twin.overview import dataset_overview
    from weak_template_ros.twin.scenes import SceneSpec, generate_dataset, make_part_set

    models = make_part_set(["all"], seed=ctx.seed)
    spec = SceneSpec(frames_per_scene=3, parts_per_scene=3, distractors=2, occlusion_max=0.3)
    ctx.dataset = ctx.out / "twin_bop"
    n_scenes = 2
    t0 = time.perf_counter()
    with progress() as bar:
        task = bar.add_task("twin: rendering BOP scenes", total=n_scenes * spec.frames_per_scene)
        generate_dataset(ctx.dataset, models, spec, n_scenes=n_scenes, seed=ctx.seed,
                         on_frame=lambda f: bar.advance(task))
    dt = time.perf_counter() - t0
    stats = dataset_overview(ctx.dataset, ctx.out / "twin_overview.png", n_frames=4)
    ctx.report("twin", "frames rendered + written (BOP)", f"{stats['frames']} in {dt:.1f} s")
    ctx.report("twin", "annotated objects / mean visib_fract",
               f"{stats['objects']} / {stats['mean_visib_fract']:.2f}")
    ctx.report("twin", "overview picture", str(ctx.out / "twin_overview.png"))
    ctx.report("twin", "geometry check: max |depth - model surface|", f"{_geometry_check(ctx):.3f} mm")


def _geometry_check(ctx: DemoContext) -> float:
    """Noise-free render of one part: largest distance of back-projected depth to the mesh (mm)."""
    from weak_template_ros.camera import CameraIntrinsics, backproject
    from weak_template_ros.geometry import invert_pose, make_pose, random_rotation, transform_points
    from weak_template_ros.models import make_part
    from weak_template_ros.twin.renderer import render_object

    part = make_part("flange", seed=ctx.seed)
    cam = CameraIntrinsics.from_fov(640, 480, 60)
    T = make_pose(random_rotation(np.random.default_rng(ctx.seed)), [0.0, 0.0, 0.5])
    out = render_object(part.mesh, cam, T)
    pts = transform_points(invert_pose(T), backproject(out.depth, cam, mask=out.instance == 0))
    _, dist, _ = part.mesh.nearest.on_surface(pts[:: max(1, len(pts) // 3000)])
    return float(dist.max() * 1000)


def step_alignment_ros(ctx: DemoContext) -> None:
    """Closed-loop mark alignment through real ROS 2 nodes: twin_stage (SNR 5, true calibration
    1 % and 0.5 deg off the nominal one) -> aligner -> alignment_controller -> stage moves."""
    import cv2

    from weak_template_ros import viz
    from weak_template_ros.ros.alignment_controller import run_twin_loop
    from weak_template_ros.ros.conversions import image_to_rgb

    report = run_twin_loop(ctx.out / "alignment_template.png", stage={"seed": ctx.seed})
    table = Table("moves", "measured |offset| px", "true |offset| px", "true |dθ| deg",
                  title="closed loop through twin_stage, aligner, alignment_controller")
    for k, (true_px, true_th) in enumerate(zip(report.true_px, report.true_theta, strict=True)):
        measured = f"{report.measured_px[k]:.4f}" if k < len(report.measured_px) else ""
        table.add_row(str(k), measured, f"{true_px:.4f}", f"{np.degrees(true_th):.4f}")
    console.print(table)
    pictures = [viz.label(cv2.resize(image_to_rgb(m), None, fx=2, fy=2, interpolation=cv2.INTER_NEAREST),
                          title)
                for m, title in ((report.first_debug, "start"), (report.last_debug, "after the loop"))
                if m is not None]
    viz.save_png(ctx.out / "alignment_ros_loop.png", viz.tile(pictures, cols=len(pictures)))
    step = "alignment (ROS)"
    ctx.report(step, "controller verdict / moves",
               f"{report.verdict} / {report.moves} ({report.seconds:.1f} s)")
    ctx.report(step, "moves to true residual <= 0.05 px", str(report.moves_to(0.05)))
    ctx.report(step, "final true residual", f"{report.true_px[-1]:.4f} px, "
                                            f"{np.degrees(report.true_theta[-1]):.4f} deg")
    ctx.report(step, "overlay picture", str(ctx.out / "alignment_ros_loop.png"))


def step_pose_ros(ctx: DemoContext) -> None:
    """6D pose through real ROS 2 nodes: twin_camera (a hex nut turning and sliding among
    distractors, 640x480, 5 Hz) -> pose_estimator (LINEMOD + ICP + verification)."""
    from weak_template_ros import viz
    from weak_template_ros.ros.conversions import image_to_rgb
    from weak_template_ros.ros.pose_estimator import run_twin_pose

    report = run_twin_pose(ctx.out / "pose_ros", frames=10)
    table = Table("frame", "rotation error deg", "translation error mm", "ADD-S / d", "latency ms",
                  "compute ms", title="twin_camera -> pose_estimator (errors symmetry-aware)")
    for k in range(len(report.rot_deg)):
        table.add_row(str(k), f"{report.rot_deg[k]:.2f}", f"{report.trans_mm[k]:.2f}",
                      f"{report.adds_d[k]:.3f}", f"{report.latency_ms[k]:.0f}", f"{report.compute_ms[k]:.0f}")
    console.print(table)
    picture = ctx.out / "pose_ros_overlay.png"
    if report.overlay is not None:
        viz.save_png(picture, image_to_rgb(report.overlay))
    step = "pose (ROS)"
    n = len(report.rot_deg)
    ctx.report(step, "frames with the part found", f"{report.found} / {n} ({report.templates} templates)")
    ctx.report(step, "median error vs ground truth", f"{np.nanmedian(report.rot_deg):.2f} deg, "
                                                     f"{np.nanmedian(report.trans_mm):.2f} mm")
    ctx.report(step, "frames within ADD-S < 0.1 d", f"{int(np.sum(np.asarray(report.adds_d) < 0.1))} / {n}")
    latency, compute = np.nanmedian(report.latency_ms), np.nanmedian(report.compute_ms)
    ctx.report(step, "latency camera stamp -> pose (median)", f"{latency:.0f} ms (compute {compute:.0f} ms)")
    ctx.report(step, "overlay picture", str(picture))


def step_learned_alignment(ctx: DemoContext) -> None:
    """Learned vs classical mark alignment where classical struggles: 3 % contrast under a strong
    illumination gradient (held-out twin images, the shipped weights)."""
    import math

    from weak_template_ros import viz
    from weak_template_ros.align import AlignerConfig
    from weak_template_ros.nets import MarkAligner, MarkPipelineConfig
    from weak_template_ros.nets import data as D
    from weak_template_ros.ros.aligner import LoadedTemplate, alignment_overlay, template_outline

    regime = D.Regime(snr=5.0, contrast=0.03, gradient="strong")
    euclid = AlignerConfig(motion="euclidean")
    methods = {m: MarkAligner(MarkPipelineConfig(method=m, aligner=euclid)) for m in ("classical", "learned")}
    n = 8
    errors: dict[str, list[float]] = {m: [] for m in methods}
    shown: list | None = None  # the first image the methods disagree on (else the first)
    t0 = time.perf_counter()
    for i in range(n):
        T, img, truth, _, _ = D.heldout_refiner_sample(ctx.seed + 100, i, regimes=(regime,))
        results = {m: aligner.align(img, T) for m, aligner in methods.items()}
        for m, r in results.items():
            if r.found:
                errors[m].append(math.hypot(r.dx - truth[0], r.dy - truth[1]))
        if shown is None or (not shown[3] and len({r.found for r in results.values()}) > 1):
            shown = [T, img, results, len({r.found for r in results.values()}) > 1]
    T, img, results, _ = shown
    centre = ((T.shape[1] - 1) / 2.0, (T.shape[0] - 1) / 2.0)
    tpl = LoadedTemplate("golden", T, None, template_outline(T))
    pictures = [viz.label(alignment_overlay(img, tpl, r, centre),
                          f"{m}: " + ("found" if r.found else "not found"))
                for m, r in results.items()]
    dt = time.perf_counter() - t0
    viz.save_png(ctx.out / "learned_alignment.png", viz.tile(pictures, cols=len(pictures)))
    step = "learned alignment"
    for m, e in errors.items():
        rms = f", RMS {math.sqrt(np.mean(np.square(e))):.3f} px" if e else ""
        ctx.report(step, f"{m}: marks measured (3 % contrast, strong gradient, SNR 5)",
                   f"{len(e)} / {n}{rms}")
    ctx.report(step, "time (both methods, all images)", f"{dt:.1f} s")
    ctx.report(step, "overlay picture", str(ctx.out / "learned_alignment.png"))


# Later stages append their steps here (alignment loop, LINEMOD + ICP, ROS graph...).
STEPS: list[tuple[str, Callable[[DemoContext], None]]] = [("digital twin", step_twin)]
STEPS.append(("closed-loop alignment through ROS nodes", step_alignment_ros))
STEPS.append(("pose estimation through ROS nodes", step_pose_ros))
STEPS.append(("learned vs classical mark alignment", step_learned_alignment))


def run_demo(out: str | Path, seed: int = 0) -> DemoContext:
    """Run every demo step, print the metrics table, return the context."""
    ctx = DemoContext(out=Path(out), seed=seed)
    ctx.out.mkdir(parents=True, exist_ok=True)
    for name, step in STEPS:
        console.rule(f"[bold]{name}")
        step(ctx)
    table = Table("step", "metric", "value", title="weak_template_ros demo")
    for row in ctx.metrics:
        table.add_row(*row)
    console.print(table)
    return ctx
