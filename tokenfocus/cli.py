"""The ``tokenfocus`` command line: one subcommand per lifecycle verb.

Heavy imports (torch, transformers, mlflow, GX) happen inside each command, so ``--help``
stays fast and a verb only pays for what it uses.
"""

from __future__ import annotations

import logging
import sys

import typer

from tokenfocus.config import ConfigError, load_params
from tokenfocus.env import apply_offline_env

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
backbones_app = typer.Typer(no_args_is_help=True, help="Build and inspect backbones.")
app.add_typer(backbones_app, name="backbones")
PARAMS = typer.Option("params.yaml", "--params", help="params file")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    apply_offline_env()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "alembic", "great_expectations", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def fail(message: str, code: int = 1) -> None:
    """Print a clear error (never a traceback) and exit."""
    typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
    raise typer.Exit(code)


def _params(path: str):
    try:
        return load_params(path)
    except ConfigError as exc:
        fail(str(exc))


@app.command()
def synth(
    params: str = PARAMS, out: str = typer.Option(None, help="output folder (default synth.out)")
) -> None:
    """Generate the SynthMuse benchmark (deterministic from synth.seed)."""
    import time

    from tokenfocus.synth import ceiling, generate

    cfg = _params(params).synth
    t0 = time.perf_counter()
    counts = generate(cfg, out)
    dest = out or cfg.out
    typer.echo(
        f"SynthMuse written to {dest}/ in {time.perf_counter() - t0:.1f}s: {counts}; "
        f"label-noise ceiling SRCC {ceiling(dest):.3f}; look at {dest}/contact_sheet.png"
    )


@app.command()
def validate(
    params: str = PARAMS,
    data: str = typer.Option(None, help="dataset root (default validate.data)"),
    report: str = typer.Option(None, help="JSON report path"),
) -> None:
    """Validate a dataset root with Great Expectations; exit 1 on any failure."""
    from tokenfocus.validate import main

    cfg = _params(params).validate
    rep = main(cfg, data, report)
    typer.echo(rep.summary())
    typer.echo(f"report: {report or cfg.report}")
    if not rep.success:
        raise typer.Exit(1)


@app.command()
def split(params: str = PARAMS, data: str = typer.Option(None, help="dataset root")) -> None:
    """Write grouped train/val/test splits and stacking folds."""
    from tokenfocus.evalmuse import EvalMuseError
    from tokenfocus.split import main

    p = _params(params)
    try:
        counts = main(p.split, data or p.validate.data)
    except EvalMuseError as exc:
        fail(str(exc))
    typer.echo(f"splits written to {p.split.out}: {counts}")


def run() -> None:  # pragma: no cover - console entry
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    run()
