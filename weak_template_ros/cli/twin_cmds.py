"""CLI commands for the digital twin: `generate parts|scenes`, `show`, `demo`."""
