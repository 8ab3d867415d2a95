"""The ``racer-online`` command. Errors are one readable line and a non-zero exit."""

from __future__ import annotations

import sys

import typer

# The command modules register their commands on import.
from racer_online.apps.cli import (  # noqa: F401
    backtest,
    dlq,
    monitoring,
    offline,
    offsets,
    records,
    route,
    stream,
    training,
)
from racer_online.apps.cli.common import app, note, reflow_help
from racer_online.errors import RacerError

__all__ = ["app", "main"]

reflow_help(app)


def main() -> None:
    try:
        code = app(standalone_mode=False)  # commands return None; an abort (Ctrl-C) 130
        if isinstance(code, int) and code:
            note("racer-online: aborted")
            sys.exit(code)
    except typer.Abort:
        note("racer-online: aborted")
        sys.exit(130)
    except typer.Exit as exc:
        sys.exit(exc.exit_code)
    except typer.TyperException as exc:  # usage errors, from typer's own click
        message = exc.format_message() if hasattr(exc, "format_message") else str(exc)
        if message.strip():  # empty when typer already printed the help
            note(f"racer-online: error: {' '.join(message.split())}")
        sys.exit(getattr(exc, "exit_code", 2))
    except RacerError as exc:
        note(f"racer-online: error: {exc}")
        sys.exit(1)
