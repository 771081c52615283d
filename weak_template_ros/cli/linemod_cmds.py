"""CLI commands for LINEMOD: `templates build`, `detect`."""
