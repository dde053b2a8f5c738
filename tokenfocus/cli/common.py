"""What every subcommand shares: the params option and clear failures (never a traceback)."""

from __future__ import annotations

import typer

from tokenfocus.config import ConfigError, load_params

PARAMS = typer.Option("params.yaml", "--params", help="params file")


def fail(message: str, code: int = 1) -> None:
    """Print a clear error (never a traceback) and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def params_or_fail(path: str):
    """Load params, or fail naming the bad key."""
    try:
        return load_params(path)
    except ConfigError as exc:
        fail(str(exc))
