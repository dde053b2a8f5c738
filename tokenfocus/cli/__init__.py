"""The ``tokenfocus`` command line: one subcommand per lifecycle verb.

Heavy imports (torch, transformers, mlflow, GX) happen inside each command, so ``--help``
stays fast and a verb only pays for what it uses.
"""

from __future__ import annotations

import json
import logging
import sys
import warnings
from pathlib import Path

import typer

from tokenfocus.cli import pipeline, registry
from tokenfocus.cli.backbones import backbones_app
from tokenfocus.cli.common import PARAMS, fail
from tokenfocus.cli.common import params_or_fail as _params
from tokenfocus.config import ConfigError
from tokenfocus.env import apply_env

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
app.add_typer(backbones_app, name="backbones")
data_app = typer.Typer(no_args_is_help=True, help="Bring in and version datasets.")
app.add_typer(data_app, name="data")


@app.callback()
def _main(verbose: bool = typer.Option(False, "--verbose", "-v")) -> None:
    apply_env()
    logging.basicConfig(
        level=logging.DEBUG if verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    for noisy in ("httpx", "alembic", "great_expectations", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # peft reads transformers' deprecated alias on every adapter it wraps or loads: a FutureWarning
    # in each train and score stage that no user can act on
    warnings.filterwarnings(
        "ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning
    )


@app.command()
def synth(
    params: str = PARAMS, out: str = typer.Option(None, help="output folder (default synth.out)")
) -> None:
    """Generate the SynthMuse benchmark (deterministic from synth.seed)."""
    import time

    from tokenfocus.synth import ceiling, generate

    loaded = _params(params)
    cfg = loaded.synth
    t0 = time.perf_counter()
    counts = generate(cfg, out, styles=loaded.styles)
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


@data_app.command("import")
def data_import(
    source: Path = typer.Argument(
        ..., help="the downloaded release: train_list.json, test.json, images.zip.part-*"
    ),
    out: str = typer.Option(None, "--out", help="dataset folder (default validate.data)"),
    sha256: str = typer.Option(None, "--sha256", help="the joined archive's expected SHA-256"),
    no_dvc: bool = typer.Option(False, "--no-dvc", help="do not `dvc add` the result"),
    params: str = PARAMS,
) -> None:
    """Import the EvalMuse-40K release: join and check the archive, unpack, validate, version."""
    from tokenfocus.ingest import IngestError, import_release

    cfg = _params(params).validate
    try:
        summary = import_release(source, out or cfg.data, cfg, sha256=sha256, version=not no_dvc)
    except (IngestError, OSError) as exc:
        fail(str(exc))
    typer.echo(json.dumps(summary, indent=1))


@app.command("env")
def show_env(
    packages: bool = typer.Option(False, "--packages", help="also every installed package's version"),
) -> None:
    """Print the environment every command runs under: offline switches, pinned CPU kernels, and
    the host (its CPU and, with --packages, what is installed): what to attach to a bug report."""
    import os

    from tokenfocus.env import CPU_KERNEL_ENV, NATIVE_SWITCH, OFFLINE_ENV
    from tokenfocus.host import host_record

    keys = [*OFFLINE_ENV, *CPU_KERNEL_ENV, NATIVE_SWITCH]
    seen = {k: os.environ.get(k) for k in keys}
    # What numpy's BLAS really runs (its core type is read once, when it loads).
    import numpy  # noqa: F401
    from threadpoolctl import threadpool_info

    seen["blas"] = sorted({f"{i['internal_api']}:{i.get('architecture')}" for i in threadpool_info()})
    seen["host"] = host_record(packages=packages)
    typer.echo(json.dumps(seen, indent=1))


@app.command()
def golden(
    params: str = PARAMS,
    steps: int = typer.Option(
        0, "--steps", help="also run this many real fine-tuning steps and hash the weights after each"
    ),
    backbone: str = typer.Option(
        None, "--backbone", "-b", help="the backbone of --steps (default: the golden one)"
    ),
    against: Path = typer.Option(
        None,
        "--against",
        help="a recorded trajectory (docs/trajectories/): say the first step that parts from it",
    ),
    gemm: str = typer.Option(
        None, "--gemm", help="the pass's products: mkl or openblas (default: train.gemm)"
    ),
) -> None:
    """Hash one fixed forward and backward pass of a base: equal hashes, equal bits (tokenfocus.golden).
    With --steps, the first steps of a fine-tuning too, and with --against the first of them that
    parts from a recorded host's: where two hosts' runs part."""
    from tokenfocus import golden as g

    p = _params(params)
    slug = backbone or g.GOLDEN_SLUG
    if slug not in p.backbones:
        fail(f"unknown backbone {slug!r}: params.yaml names {', '.join(p.backbones)}")
    try:
        record = g.load_trajectory(against, steps) if against is not None else None
        out: dict = g.golden_pass(params, gemm=gemm)
        out |= g.golden_trajectory(params, slug=slug, steps=steps) if steps else {}
    except ValueError as exc:
        fail(str(exc))
    if record is not None:
        out["first_parting_step"] = g.first_parting_step(out["weights"], record)
    print(json.dumps(out, indent=1))


def _ranks(p, backbone: str) -> None:
    """``backbones.<slug>.nproc`` > 1: this command again as torchrun ranks (DVC and flows as is)."""
    from tokenfocus.distributed import launch_if_needed

    if (rc := launch_if_needed(p.backbone(backbone).nproc if backbone in p.backbones else 1)) is not None:
        raise typer.Exit(rc)


def _report(summary: dict, result: Path | None) -> None:
    """Print a stage's result (and write it to ``result``): rank 0 only, under torchrun."""
    from tokenfocus.distributed import world

    if world().main:
        _ = result.write_text(json.dumps(summary, indent=1)) if result else None
        typer.echo(json.dumps(summary, indent=1))


@app.command()
def train(
    params: str = PARAMS,
    backbone: str = typer.Option(..., "--backbone", "-b"),
    loss: str = typer.Option(None, help="focus | lm (default train.loss)"),
    track: bool = typer.Option(True, help="log to MLflow"),
    parent_run: str = typer.Option(None, hidden=True, help="MLflow parent run id (the flows)"),
    result: Path = typer.Option(None, hidden=True, help="write the summary here (rank 0)"),
) -> None:
    """Fine-tune one backbone; resumes from its last checkpoint. With ``backbones.<slug>.nproc``
    > 1, as that many data-parallel torchrun ranks."""
    from tokenfocus.stages import train_stage

    p = _params(params)
    _ranks(p, backbone)
    if loss:
        p.train.loss = loss
    try:
        summary = train_stage(backbone, p, track=track, pid=parent_run)
    except (ConfigError, FileNotFoundError, ValueError) as exc:
        fail(str(exc))
    _report(summary, result)


@app.command()
def score(
    params: str = PARAMS,
    backbone: str = typer.Option(..., "--backbone", "-b"),
    split: str = typer.Option("all", help="val | test | ntire | heldout_style | check_<family> | all"),
    track: bool = typer.Option(True, help="log to MLflow"),
    parent_run: str = typer.Option(None, hidden=True, help="MLflow parent run id (the flows)"),
    result: Path = typer.Option(None, hidden=True, help="write the metrics here (rank 0)"),
) -> None:
    """Score splits with a trained backbone: prediction tables, NTIRE output.json, metrics. With
    ``backbones.<slug>.nproc`` > 1, as that many torchrun ranks, each scoring a shard."""
    from tokenfocus.predictions import scored_splits
    from tokenfocus.stages import score_stage

    p = _params(params)
    _ranks(p, backbone)
    known = scored_splits(p)
    splits = known if split == "all" else (split,)
    if any(s not in known for s in splits):
        fail(f"unknown split {split!r}; choose from {known} or all")
    try:
        metrics = score_stage(backbone, p, splits=splits, track=track, pid=parent_run)
    except (ConfigError, FileNotFoundError) as exc:
        fail(str(exc))
    _report(metrics, result)


@app.command("score-one")
def score_one(
    image: Path = typer.Option(..., help="image file"),
    prompt: str = typer.Option(...),
    elements: list[str] = typer.Option(None, "--elements", "-e", help="element, repeatable"),
    backbone: str = typer.Option(None, "--backbone", "-b", help="slug, folder or hub id"),
    params: str = PARAMS,
) -> None:
    """Score one image against a prompt: score, 5-way distribution, element P(yes)."""
    from tokenfocus.backbones import BackboneError
    from tokenfocus.images import ImageError
    from tokenfocus.scoring import Scorer

    slug = (
        backbone
        if backbone and Path(backbone).exists()
        else backbone or next(iter(_params(params).backbones))
    )
    try:
        result = Scorer.load(slug, params=params)([image], [prompt], [elements or []])[0]
    except (ImageError, BackboneError, ValueError) as exc:
        fail(str(exc))
    typer.echo(f"score {result.score:.3f}  entropy {result.entropy:.3f}")
    typer.echo("distribution " + "  ".join(f"{i + 1}:{q:.3f}" for i, q in enumerate(result.distribution)))
    for k, v in result.elements.items():
        typer.echo(f"  P(yes) {v:.3f}  {k}")


# the pipeline's and the ensemble's verbs (cli/pipeline.py, cli/registry.py), top-level subcommands
for _verb in (
    pipeline.repro,
    pipeline.report,
    registry.stack,
    registry.register,
    registry.promote,
    registry.predict,
    registry.serve,
):
    app.command()(_verb)


def run() -> None:  # pragma: no cover - console entry
    try:
        app()
    except KeyboardInterrupt:
        sys.exit(130)


if __name__ == "__main__":  # pragma: no cover
    run()
