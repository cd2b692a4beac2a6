"""The ``trustp2p`` command."""

from __future__ import annotations

__all__ = ["cli", "main"]

import click

from . import commands, tools  # noqa: F401 - they register their commands
from .base import cli


def main(argv: list[str] | None = None) -> int:
    """Run the command line; return the exit code."""
    try:
        result = cli.main(args=argv, prog_name="trustp2p", standalone_mode=False)
    except KeyboardInterrupt:  # between click's handler and ours
        return 130
    except click.exceptions.Abort:
        return 130  # Ctrl-C (or end of input at a prompt): quietly, as shells expect
    except click.ClickException as exc:
        exc.show()
        return exc.exit_code
    if isinstance(result, int):
        return result
    return 0
