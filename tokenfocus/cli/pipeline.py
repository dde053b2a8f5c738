"""The pipeline's verbs: reproduce it with DVC, and report its results. Plain functions,
registered as top-level subcommands by ``tokenfocus.cli``."""

from __future__ import annotations

import typer

from tokenfocus.cli.common import PARAMS
from tokenfocus.cli.common import params_or_fail as _params


def repro(
    jobs: int = typer.Option(
        0,
        min=0,
        help="backbones' train and score stages at a time (0: as many as the cores hold at the params' threads)",
    ),
) -> None:
    """Reproduce the pipeline with `dvc repro`, the backbones' stages side by side; each stage's
    time in eval/pipeline_timing.json."""
    from tokenfocus.repro import reproduce

    # params.yaml, the file dvc.yaml's stages read: its backbones and threads
    raise typer.Exit(reproduce(_params("params.yaml"), jobs=jobs or None))


def report(params: str = PARAMS, print_only: bool = typer.Option(False, "--print")) -> None:
    """Write docs/results.md from eval/ and print the results table."""
    from tokenfocus.report import main

    typer.echo(main(_params(params), write=not print_only))
