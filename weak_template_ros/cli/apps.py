"""The typer applications every command module attaches to (one place, no import cycles)."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="weak-template",
    help=(
        "Weak-template vision: digital-twin data, LINEMOD templates, pose estimation, sub-pixel "
        "mark alignment, training and evaluation. Units: metres and radians in JSON output; "
        "BOP files keep millimetres."
    ),
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
generate_app = typer.Typer(help="Generate digital-twin data: parts, scenes (BOP format), marks.",
                           no_args_is_help=True)
templates_app = typer.Typer(help="Build and inspect LINEMOD template libraries.", no_args_is_help=True)
train_app = typer.Typer(help="Train the learned detector / refiner on twin data.", no_args_is_help=True)

app.add_typer(generate_app, name="generate")
app.add_typer(templates_app, name="templates")
app.add_typer(train_app, name="train")
