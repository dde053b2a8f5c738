"""``tokenfocus backbones``: build, pre-train, plan the memory of, and list the backbones."""

from __future__ import annotations

import json

import typer

from tokenfocus.cli.common import PARAMS, fail
from tokenfocus.cli.common import params_or_fail as _params
from tokenfocus.config import ConfigError

backbones_app = typer.Typer(no_args_is_help=True, help="Build and inspect backbones.")


@backbones_app.command("build")
def backbones_build(
    params: str = PARAMS, backbone: list[str] = typer.Option(None, "--backbone", "-b")
) -> None:
    """Build randomly initialised tiny backbones (all of params.yaml's, or those named)."""
    from tokenfocus.backbones import BackboneError
    from tokenfocus.stages import build_stage

    p = _params(params)
    for slug in backbone or list(p.backbones):
        try:
            path = build_stage(slug, p)
        except (BackboneError, ConfigError) as exc:
            fail(str(exc))
        typer.echo(f"{slug}: {path or 'real checkpoint, nothing to build'}")


@backbones_app.command("pretrain")
def backbones_pretrain(
    params: str = PARAMS,
    backbone: list[str] = typer.Option(None, "--backbone", "-b"),
    track: bool = typer.Option(True, help="log to MLflow"),
) -> None:
    """Pre-train built tiny bases on fresh scenes (all of params.yaml's, or those named)."""
    from tokenfocus.backbones import BackboneError
    from tokenfocus.stages import pretrain_stage

    p = _params(params)
    for slug in backbone or list(p.backbones):
        try:
            path = pretrain_stage(slug, p, track=track)
        except (BackboneError, ConfigError) as exc:
            fail(str(exc))
        typer.echo(f"{slug}: {path or 'real checkpoint, arrives pre-trained'}")


@backbones_app.command("plan")
def backbones_plan(
    params: str = PARAMS,
    backbone: list[str] = typer.Option(None, "--backbone", "-b"),
    config: str = typer.Option(None, help="a config.json to read instead of the backbone's source"),
    seq_len: int = typer.Option(None, help="tokens per row (default: the config's image tokens + text)"),
    nproc: int = typer.Option(None, help="data-parallel ranks (default: backbones.<slug>.nproc)"),
    as_json: bool = typer.Option(False, "--json"),
) -> None:
    """Memory estimate from each backbone's config alone (never its weights): training and scoring."""
    from dataclasses import asdict

    from tokenfocus.plan import load_config, plan

    p = _params(params)
    out = {}
    for slug in backbone or list(p.backbones):
        try:
            bb = p.backbone(slug)
            cfg = load_config(bb.source, config)
        except (ConfigError, FileNotFoundError, ValueError) as exc:
            fail(str(exc))
        result = plan(cfg, bb, p.train_for(slug), seq_len=seq_len, nproc=nproc or bb.nproc, score=p.score)
        out[slug] = asdict(result)
        if not as_json:
            typer.echo(result.table(f"{slug} ({bb.source}, {bb.tuning})"))
    if as_json:
        typer.echo(json.dumps(out, indent=1))


@backbones_app.command("list")
def backbones_list(params: str = PARAMS) -> None:
    """List the registry: slug, source, family, tuning."""
    for slug, bb in _params(params).backbones.items():
        typer.echo(f"{slug:24s} {bb.source:40s} {bb.family or '-':10s} {bb.tuning}")
