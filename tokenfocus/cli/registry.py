"""The ensemble's verbs: fit the stack, then register, promote, predict with and serve the model in
MLflow's registry. Plain functions, registered as top-level subcommands by ``tokenfocus.cli``."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from tokenfocus.cli.common import PARAMS, fail
from tokenfocus.cli.common import params_or_fail as _params


def stack(params: str = PARAMS) -> None:
    """Fit bagging/blending/ridge stacking on val predictions; compare on test."""
    from tokenfocus.ensemble_stages import stack_stage
    from tokenfocus.stack import LeakError

    try:
        summary = stack_stage(_params(params))
    except (LeakError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(summary, indent=1))


def _tracking_guard(fn):
    from tokenfocus.tracking import TrackingError

    try:
        return fn()
    except TrackingError as exc:
        fail(str(exc))


def register(params: str = PARAMS) -> None:
    """Log the ensemble as a pyfunc model, register it as challenger, promote if better."""
    from tokenfocus.ensemble_stages import register_stage

    try:
        out = _tracking_guard(lambda: register_stage(_params(params)))
    except FileNotFoundError as exc:
        fail(f"{exc} (run `tokenfocus stack` first)")
    except (ValueError, RuntimeError) as exc:  # BackboneError included
        fail(str(exc))
    typer.echo(json.dumps(out, indent=1, default=str))


def promote(
    params: str = PARAMS,
    force: bool = typer.Option(
        None,
        "--force/--no-force",
        help="promote over a champion that cannot be loaded or scored (default: tracking.promote_force)",
    ),
) -> None:
    """Compare challenger and champion on the test split; move champion only if better beyond noise."""
    from tokenfocus.promote import promote as do_promote

    try:
        out = _tracking_guard(lambda: do_promote(_params(params), force=force))
    except (ValueError, RuntimeError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(out, indent=1, default=str))


def predict(
    input: Path = typer.Option(..., "--input", help="NTIRE test.json"),
    images: Path = typer.Option(..., "--images", help="images root"),
    output: Path = typer.Option(Path("output.json"), "--output"),
    model: str = typer.Option(None, help="model URI (default models:/<name>@champion)"),
    params: str = PARAMS,
) -> None:
    """Score a whole NTIRE test.json with the champion and write output.json."""
    from tokenfocus.predict import predict_file

    p = _params(params)
    try:
        summary = _tracking_guard(lambda: predict_file(p, input, images, output, model_uri=model))
    except (ValueError, OSError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(summary, indent=1))


def serve(
    params: str = PARAMS,
    port: int = typer.Option(None),
    host: str = typer.Option(None),
    model: str = typer.Option(None, help="model URI (default models:/<name>@champion)"),
) -> None:
    """Serve the champion with `mlflow models serve` on 127.0.0.1."""
    import os

    from tokenfocus.serving.server import serve_command

    cmd, env = serve_command(_params(params), model_uri=model, host=host, port=port)
    typer.echo(" ".join(cmd))
    os.execvpe(cmd[0], cmd, env)
