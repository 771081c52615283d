"""CLI commands for 2-D mark alignment: `generate marks`, `align`."""
