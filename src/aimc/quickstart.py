"""Command-line commands of this package (registered by aimc.cli)."""

from __future__ import annotations


def register(cli) -> None:
    """Add this package's commands to ``cli`` (an ``aimc.cli.CommandLine``)."""
