"""CLI commands for the digital twin: `generate parts|scenes`, `show`, `demo`."""

from __future__ import annotations

from pathlib import Path

import typer
from rich.table import Table

from weak_template_ros.cli.apps import app, generate_app
from weak_template_ros.cli.common import console, progress, user_errors
from weak_template_ros.config import from_mapping, load_yaml, to_dict

FAMILIES_HELP = "part families (repeat the option), or 'all'"


def _models(families: list[str], seed: int, per_family: int, model_paths: list[Path], units: str):
    from weak_template_ros.models import load_mesh
    from weak_template_ros.twin.scenes import make_part_set

    if model_paths:
        return {i + 1: load_mesh(p, units=units) for i, p in enumerate(model_paths)}
    return make_part_set(families, seed=seed, per_family=per_family)


@generate_app.command("parts")
def generate_parts(
    out: Path = typer.Option(..., help="dataset folder; models go to OUT/models (BOP layout, mm)"),
    family: list[str] = typer.Option(["all"], "--family", "-f", help=FAMILIES_HELP),
    per_family: int = typer.Option(1, min=1, help="parts per family, each from its own seed"),
    seed: int = typer.Option(0, help="random seed: same seed, same parts"),
):
    """Write procedural texture-less parts as BOP models (PLY in mm + models_info.json)."""
    from weak_template_ros.twin.bop import BopWriter

    with user_errors():
        models = _models(family, seed, per_family, [], "auto")
        with BopWriter(out) as writer:
            writer.write_models(models)
    table = Table("obj_id", "part", "triangles", "diameter [mm]", "symmetries", title=f"{out}/models")
    for obj_id, m in models.items():
        sym = f"{len(m.symmetries_discrete)} discrete, {len(m.symmetries_continuous)} continuous"
        table.add_row(str(obj_id), m.name, str(len(m.mesh.faces)), f"{m.diameter * 1000:.1f}", sym)
    console.print(table)


@generate_app.command("scenes")
def generate_scenes(
    out: Path = typer.Option(..., help="BOP dataset folder to write"),
    scenes: int = typer.Option(2, min=1, help="number of scenes (table arrangements)"),
    frames: int = typer.Option(5, min=1, help="camera views per scene"),
    family: list[str] = typer.Option(["all"], "--family", "-f", help=FAMILIES_HELP),
    model: list[Path] = typer.Option([], "--model", "-m", help="use these mesh files instead of families"),
    units: str = typer.Option("auto", help="units of --model files: auto, m or mm"),
    parts: int = typer.Option(3, min=1, help="parts per scene"),
    distractors: int = typer.Option(3, min=0, help="distractor shapes per scene"),
    occlusion_min: float = typer.Option(0.0, help="target occlusion of the first part, min [0-0.95]"),
    occlusion_max: float = typer.Option(0.0, help="target occlusion of the first part, max [0-0.95]"),
    contrast: float = typer.Option(0.8, help="part albedo = table albedo * (1 + contrast)"),
    noise: bool = typer.Option(True, help="apply the sensor model (--no-noise: exact images)"),
    config: Path | None = typer.Option(None, help="SceneSpec YAML; command-line options override it"),
    split: str = typer.Option("test", help="BOP split folder"),
    backend: str = typer.Option("embedded", help="renderer: embedded (Open3D ray casting) or "
                                "blenderproc (Cycles, photoreal; needs `make sim-setup`)"),
    samples: int = typer.Option(16, min=1, help="blenderproc: Cycles samples per pixel"),
    materials: str = typer.Option("twin", help="blenderproc: twin (grey, as embedded) or pbr "
                                  "(seeded metal/plastic presets)"),
    physics: bool = typer.Option(False, help="blenderproc: drop the parts with physics onto the table "
                                 "(ground truth = settled poses)"),
    seed: int = typer.Option(0, help="random seed: same seed, same bytes"),
):
    """Render digital-twin scenes (parts on a table, distractors, occlusion) as a BOP dataset."""
    from weak_template_ros.twin.scenes import SceneSpec, generate_dataset

    with user_errors():
        if backend not in ("embedded", "blenderproc"):
            from weak_template_ros.errors import InputError

            raise InputError("--backend", "'embedded' or 'blenderproc'", backend)
        if physics and backend != "blenderproc":
            from weak_template_ros.errors import InputError

            raise InputError("--physics", "--backend blenderproc (the embedded renderer has no physics)",
                             f"--backend {backend}")
        base = to_dict(load_yaml(SceneSpec, config)) if config else {}
        base.update(frames_per_scene=frames, parts_per_scene=parts, distractors=distractors,
                    occlusion_min=occlusion_min, occlusion_max=occlusion_max, contrast=contrast,
                    noise=noise)
        spec = from_mapping(SceneSpec, base, source="scene options")
        models = _models(family, seed, 1, model, units)
        if backend == "blenderproc":
            from weak_template_ros.twin import blenderproc as bp

            cfg = from_mapping(bp.BlenderProcConfig, {"samples": samples, "materials": materials,
                                                      "physics": physics}, source="blenderproc options")
            env = bp.BlenderProcEnv.locate()
            with progress() as bar:
                task = bar.add_task("rendering scenes (BlenderProc)", total=scenes * frames)
                try:
                    bp.generate_dataset_blenderproc(out, models, spec, n_scenes=scenes, seed=seed,
                                                    split=split, cfg=cfg, env=env,
                                                    on_frame=lambda f: bar.advance(task))
                except bp.BlenderProcError as e:
                    console.print(f"[red]error:[/red] {e}")
                    raise SystemExit(1) from None
        else:
            with progress() as bar:
                task = bar.add_task("rendering scenes", total=scenes * frames)
                generate_dataset(out, models, spec, n_scenes=scenes, seed=seed, split=split,
                                 on_frame=lambda f: bar.advance(task))
    console.print(f"wrote {scenes * frames} frames to [bold]{out}[/bold] ({split})")


@app.command("show")
def show(
    dataset: Path = typer.Argument(..., help="BOP dataset folder (ours or any following the BOP format)"),
    split: str | None = typer.Option(None, help="split to show (default: the first one found)"),
    frames: int = typer.Option(4, min=1, help="number of frames in the overview"),
    out: Path | None = typer.Option(None, help="PNG to write (default: DATASET/overview.png)"),
):
    """Write an overview PNG of a BOP dataset: image with GT axes, depth colour map, visible masks."""
    from weak_template_ros.twin.overview import dataset_overview

    with user_errors():
        out = out or dataset / "overview.png"
        stats = dataset_overview(dataset, out, split=split, n_frames=frames)
    table = Table("split", "scenes", "frames", "objects", "mean visib_fract", title=str(dataset))
    table.add_row(stats["split"], str(stats["scenes"]), str(stats["frames"]), str(stats["objects"]),
                  f"{stats['mean_visib_fract']:.3f}")
    console.print(table)
    console.print(f"overview: [bold]{out}[/bold]")


@app.command("demo")
def demo(out: Path = typer.Option(Path("out/demo"), help="folder for the demo's data and pictures"),
         seed: int = typer.Option(0, help="random seed")):
    """Render a digital-twin scene set, run the pipelines, print metrics and write pictures."""
    from weak_template_ros.demo import run_demo

    with user_errors():
        run_demo(out, seed=seed)

