"""CLI commands for 2-D mark alignment: `generate marks`, `align`."""

from __future__ import annotations

import math
from pathlib import Path

import typer

from weak_template_ros.cli.apps import app, generate_app
from weak_template_ros.cli.common import console, print_json, progress, user_errors
from weak_template_ros.image_io import read_image


@generate_app.command("marks")
def generate_marks(
    out: Path = typer.Option(..., help="folder for template.png, NNNNNN.png and ground_truth.json"),
    n: int = typer.Option(10, min=1, help="number of images"),
    mark: str = typer.Option("cross", help="cross, l_corner, box_in_box, frame_in_frame, chevrons, "
                                           "grating or ring"),
    size: float = typer.Option(128.0, help="mark size [px]"),
    line_width: float = typer.Option(12.0, help="line width [px]"),
    polarity: int = typer.Option(1, help="+1 bright mark, -1 dark mark"),
    count: int = typer.Option(4, help="chevrons / grating lines"),
    width: int = typer.Option(256, min=16, help="image width [px]"),
    height: int = typer.Option(256, min=16, help="image height [px]"),
    snr: float = typer.Option(5.0, help="contrast amplitude / noise sigma (0: no noise)"),
    contrast: float = typer.Option(0.3, help="mark contrast relative to the background"),
    blur: float = typer.Option(1.0, help="defocus Gaussian sigma [px]"),
    gradient: float = typer.Option(0.1, help="illumination change across the image"),
    vignetting: float = typer.Option(0.1, help="relative light loss in the corners"),
    glare: int = typer.Option(0, help="specular glare spots"),
    particles: int = typer.Option(0, help="particles on the wafer"),
    texture: float = typer.Option(0.0, help="wafer texture relative std"),
    line_width_bias: float = typer.Option(0.0, help="process line-width bias [px]"),
    max_shift: float = typer.Option(10.0, help="offsets uniform in +-this [px]"),
    max_angle: float = typer.Option(0.0873, help="rotations uniform in +-this [rad]"),
    seed: int = typer.Option(0, help="random seed: same seed, same bytes"),
    backend: str = typer.Option("embedded", help="embedded (the exact mark twin) or blenderproc "
                                "(Cycles: --surface under --light, same poses; needs `make sim-setup`)"),
    surface: str = typer.Option("wafer", help="blenderproc: wafer (polished silicon) or pcb"),
    light: str = typer.Option("coaxial", help="blenderproc: coaxial or ring"),
    samples: int = typer.Option(16, min=1, help="blenderproc: Cycles samples per pixel"),
):
    """Render degraded alignment-mark images (16-bit PNG) with JSON ground truth."""
    from weak_template_ros.twin.marks import Degradations, MarkSpec, write_mark_dataset

    with user_errors():
        spec = MarkSpec(kind=mark, size=size, line_width=line_width, polarity=polarity, count=count)
        if backend != "embedded":
            from weak_template_ros.twin.blenderproc import blenderproc_marks_cli

            # The blenderproc images take their light, blur and polarity from the render.
            truth = blenderproc_marks_cli(out, n, spec, (height, width), seed, max_shift, max_angle,
                                          backend=backend, surface=surface, light=light,
                                          samples=samples, snr=snr)
            console.print(f"wrote {len(truth['images'])} images + template.png + ground_truth.json "
                          f"to {out}")
            return
        d = Degradations(contrast=contrast, snr=snr, defocus_sigma=blur, gradient=gradient,
                         vignetting=vignetting, glare_spots=glare, particles=particles, texture=texture,
                         line_width_bias=line_width_bias)
        with progress() as bar:
            task = bar.add_task("marks", total=1)
            truth = write_mark_dataset(out, n, spec, d, (height, width), seed, max_shift, max_angle)
            bar.update(task, advance=1)
    console.print(f"wrote {len(truth['images'])} images + template.png + ground_truth.json to {out}")


@app.command("align")
def align_cmd(
    template: Path = typer.Option(..., help="golden template image"),
    image: Path = typer.Option(..., help="image (region of interest) to measure"),
    calibration: Path | None = typer.Option(None, help="calibration YAML: pixel_size [m/px], rotation "
                                                        "[rad], scale, flip_y"),
    config: Path | None = typer.Option(None, help="AlignerConfig YAML (config/aligner.yaml)"),
    motion: str | None = typer.Option(None, help="override: translation, euclidean, similarity, affine"),
    method: str = typer.Option("classical", help="classical (coarse search + robust Gauss-Newton), "
                               "learned (learned detector + refiner, shipped weights) or hybrid "
                               "(learned coarse, classical fine); docs/benchmarks/nets.md compares them"),
    expected_x: float | None = typer.Option(None, help="expected x of the template centre [px] "
                                                       "(default: image centre)"),
    expected_y: float | None = typer.Option(None, help="expected y of the template centre [px]"),
    json_out: bool = typer.Option(False, "--json", help="print the full result as JSON"),
):
    """Measure the offset of a mark against its golden template: dx, dy (px and m), dtheta (rad),
    scale, score, covariance, found. Offset = where the mark is minus where the template says."""
    import dataclasses

    from weak_template_ros.align import AlignerConfig, align, load_calibration
    from weak_template_ros.config import load_yaml

    with user_errors():
        cfg = load_yaml(AlignerConfig, config) if config else AlignerConfig()
        if motion is not None:
            cfg = dataclasses.replace(cfg, motion=motion)
        cal = load_calibration(calibration) if calibration else None
        img = read_image(image, "--image")
        tpl = read_image(template, "--template")
        expected = None
        if expected_x is not None or expected_y is not None:
            expected = (expected_x if expected_x is not None else (img.shape[1] - 1) / 2,
                        expected_y if expected_y is not None else (img.shape[0] - 1) / 2)
        if method == "classical":
            r = align(img, tpl, cfg, expected=expected, calibration=cal)
        else:  # torch is imported only for the learned stages
            from weak_template_ros.nets.pipeline import MarkAligner, MarkPipelineConfig

            r = MarkAligner(MarkPipelineConfig(method=method, aligner=cfg)).align(img, tpl, expected, cal)
    if json_out:
        print_json(r.to_dict())
        return
    if not r.found:
        console.print(f"[yellow]not found[/yellow]: {r.reason} (score {r.score:.3f})")
        raise SystemExit(1)
    sd = [math.sqrt(max(v, 0.0)) for v in r.covariance.diagonal()]
    console.print(f"dx = {r.dx:+.4f} ± {sd[0]:.4f} px, dy = {r.dy:+.4f} ± {sd[1]:.4f} px, "
                  f"dθ = {math.degrees(r.dtheta):+.4f}° ± {math.degrees(sd[2]):.4f}°, "
                  f"scale = {r.scale:.5f}, score = {r.score:.3f}")
    if r.dx_m is not None:
        console.print(f"stage: dx = {r.dx_m * 1e6:+.4f} µm, dy = {r.dy_m * 1e6:+.4f} µm, "
                      f"dθ = {r.dtheta_stage:+.6f} rad")
