"""CLI commands of the learned nets: `train detector`, `train refiner`."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import typer

from weak_template_ros.cli.apps import train_app
from weak_template_ros.cli.common import console, print_json, progress, user_errors


def _run(kind: str, config: Path | None, out: Path, resume: bool, steps: int | None, seed: int | None,
         export: Path | None, json_out: bool) -> None:
    from weak_template_ros.nets.train import load_config, train

    with user_errors():
        overrides = {k: v for k, v in (("steps", steps), ("seed", seed)) if v is not None}
        cfg = load_config(kind, config, overrides)
        with progress() as bar:
            task = bar.add_task(f"train {kind}", total=cfg.steps)

            def on_step(step: int, total: int, stats: dict) -> None:
                shown = " ".join(f"{k} {v:.3g}" for k, v in list(stats.items())[:3])
                bar.update(task, completed=step, description=f"train {kind} [{shown}]")

            def on_phase(name: str) -> None:
                if name != "train":
                    bar.update(task, description=f"{kind}: {name}")

            card = train(kind, cfg, out, resume=resume, on_step=on_step, on_phase=on_phase)
        if export is not None:
            export.mkdir(parents=True, exist_ok=True)
            for name in (f"{kind}.pt", f"{kind}.md"):
                shutil.copy2(out / name, export / name)
    metrics = card["heldout"]["metrics"]
    if json_out:
        print_json(card)
        return
    console.print(f"wrote {out / (kind + '.pt')} and its model card {out / (kind + '.md')}"
                  + (f"; copied to {export}" if export else ""))
    console.print(f"held-out ({card['heldout']['n']} samples): " + json.dumps(
        {k: round(v, 4) if isinstance(v, float) else v for k, v in metrics.items()}))
    console.print(f"training wall time {card['training']['wall_s']:.0f} s")


_CONFIG_HELP = "training config YAML (config/nets_{}.yaml); defaults without it"
_OUT_HELP = "run folder: checkpoint.pt, heldout.npz, {0}.pt, {0}.md, history.json"
_EXPORT_HELP = "also copy {0}.pt and {0}.md here (weak_template_ros/nets/weights to ship them)"


@train_app.command("detector")
def train_detector(
    config: Path | None = typer.Option(None, help=_CONFIG_HELP.format("detector")),
    out: Path = typer.Option(Path("out/nets/detector"), help=_OUT_HELP.format("detector")),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from out/checkpoint.pt"),
    steps: int | None = typer.Option(None, min=1, help="override the config's steps"),
    seed: int | None = typer.Option(None, min=0, help="override the config's seed"),
    export: Path | None = typer.Option(None, help=_EXPORT_HELP.format("detector")),
    json_out: bool = typer.Option(False, "--json", help="print the model card as JSON"),
):
    """Train the template-conditioned mark detector on twin data; weights + model card."""
    _run("detector", config, out, resume, steps, seed, export, json_out)


@train_app.command("refiner")
def train_refiner(
    config: Path | None = typer.Option(None, help=_CONFIG_HELP.format("refiner")),
    out: Path = typer.Option(Path("out/nets/refiner"), help=_OUT_HELP.format("refiner")),
    resume: bool = typer.Option(True, "--resume/--no-resume", help="continue from out/checkpoint.pt"),
    steps: int | None = typer.Option(None, min=1, help="override the config's steps"),
    seed: int | None = typer.Option(None, min=0, help="override the config's seed"),
    export: Path | None = typer.Option(None, help=_EXPORT_HELP.format("refiner")),
    json_out: bool = typer.Option(False, "--json", help="print the model card as JSON"),
):
    """Train the differentiable refiner (Gauss–Newton on learned features); weights + model card."""
    _run("refiner", config, out, resume, steps, seed, export, json_out)
