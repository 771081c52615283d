"""Helpers shared by CLI commands: progress bars, JSON output, turning InputError into exit 2."""

from __future__ import annotations

import contextlib
import json
import sys

import numpy as np
from rich.console import Console
from rich.markup import escape
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

from weak_template_ros.errors import InputError

console = Console(stderr=True)


def progress() -> Progress:
    """A rich progress bar on stderr (stdout stays clean for --json output)."""
    return Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(), console=console)


def _json_default(o):
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, np.generic):
        return o.item()
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def print_json(data) -> None:
    """Write ``data`` as JSON to stdout (NumPy arrays and scalars converted)."""
    sys.stdout.write(json.dumps(data, indent=2, default=_json_default) + "\n")


@contextlib.contextmanager
def user_errors():
    """Show InputError / FileNotFoundError as one red line and exit with status 2."""
    try:
        yield
    except (InputError, FileNotFoundError) as exc:
        # One unwrapped line (paths stay copyable at any terminal width), the message verbatim
        # (no rich markup or highlighting inside it: "['mono8', ...]" is text, not a style tag).
        console.print("[red]error:[/red]", escape(str(exc)), soft_wrap=True, highlight=False)
        raise SystemExit(2) from None
