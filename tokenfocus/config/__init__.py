"""Typed configuration, one dataclass per pipeline stage, loaded from ``params.yaml``.

Each stage reads only its own block, so DVC can list exactly the params a stage depends on.
Nothing here touches the file system or the environment at import time. The blocks live in
:mod:`.data`, :mod:`.model` and :mod:`.ops`; this module puts them together (:class:`Params`).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenfocus.config.data import SplitConfig, StylesConfig, SynthConfig, ValidateConfig
from tokenfocus.config.model import (
    BackboneConfig,
    LoraConfig,
    PretrainConfig,
    PromptConfig,
    TrainConfig,
)
from tokenfocus.config.ops import FlowConfig, ServeConfig, StackConfig, TrackingConfig
from tokenfocus.config.scoring import GroundingConfig, ScoreConfig
from tokenfocus.typed import ConfigError, build

DEFAULT_PARAMS = Path("params.yaml")

__all__ = [
    "BackboneConfig",
    "ConfigError",
    "DEFAULT_PARAMS",
    "FlowConfig",
    "GroundingConfig",
    "LoraConfig",
    "Params",
    "PretrainConfig",
    "PromptConfig",
    "ScoreConfig",
    "ServeConfig",
    "SplitConfig",
    "StackConfig",
    "StylesConfig",
    "SynthConfig",
    "TrackingConfig",
    "TrainConfig",
    "ValidateConfig",
    "load_params",
    "to_dict",
]


@dataclass
class Params:
    synth: SynthConfig = field(default_factory=SynthConfig)
    styles: StylesConfig = field(default_factory=StylesConfig)
    validate: ValidateConfig = field(default_factory=ValidateConfig)
    split: SplitConfig = field(default_factory=SplitConfig)
    prompts: PromptConfig = field(default_factory=PromptConfig)
    backbones: dict[str, BackboneConfig] = field(default_factory=dict)
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    score: ScoreConfig = field(default_factory=ScoreConfig)
    stack: StackConfig = field(default_factory=StackConfig)
    tracking: TrackingConfig = field(default_factory=TrackingConfig)
    serve: ServeConfig = field(default_factory=ServeConfig)
    flows: FlowConfig = field(default_factory=FlowConfig)

    def backbone(self, slug: str) -> BackboneConfig:
        """Return one backbone's config, or raise a clear error naming the known slugs."""
        if slug not in self.backbones:
            raise ConfigError(f"unknown backbone {slug!r}; params.yaml has {sorted(self.backbones)}")
        return self.backbones[slug]

    def prompts_for(self, slug: str) -> PromptConfig:
        """Global templates with the backbone's overrides applied."""
        return build(
            PromptConfig, {**dataclasses.asdict(self.prompts), **self.backbone(slug).prompts}, "prompts"
        )

    def pretrain_for(self, slug: str) -> PretrainConfig:
        """The pretrain block with the backbone's overrides applied (type-checked)."""
        merged = {**dataclasses.asdict(self.pretrain), **self.backbone(slug).pretrain}
        return build(PretrainConfig, merged, f"backbones.{slug}.pretrain")

    def train_for(self, slug: str) -> TrainConfig:
        """The train block with the backbone's overrides applied (its ``train`` block, then its
        ``lr`` and ``steps``; type-checked)."""
        bb = self.backbone(slug)
        for key in ("lr", "steps"):
            if getattr(bb, key) is not None and key in bb.train:
                raise ConfigError(f"backbones.{slug}: {key} is set twice, as {key} and as train.{key}")
        merged = {**dataclasses.asdict(self.train), **bb.train}
        cfg = build(TrainConfig, merged, f"backbones.{slug}.train")
        if bb.lr is not None:
            cfg.lr = bb.lr
        if bb.steps is not None:
            cfg.steps = bb.steps
        return cfg

    def bagging_for(self, slug: str) -> int:
        """How many seeds of the backbone are trained and averaged (1: no bagging)."""
        n = self.backbone(slug).bagging_seeds
        return max(1, self.stack.bagging_seeds if n is None else n)


def load_params(path: str | Path = DEFAULT_PARAMS) -> Params:
    """Load and type-check ``params.yaml``.

    Args:
        path: the params file.

    Returns:
        The typed parameters; blocks missing from the file take their defaults.

    Raises:
        ConfigError: on a missing file, unknown keys or wrong types, naming the key.
    """
    path = Path(path)
    if not path.exists():
        raise ConfigError(f"params file not found: {path}")
    # YAML 1.2, as DVC writes it (`dvc exp run -S` rewrites params.yaml): `yes` stays a string.
    from ruamel.yaml import YAML

    raw = YAML(typ="safe", pure=True).load(path.read_text(encoding="utf-8")) or {}
    return build(Params, raw, path.name)


def to_dict(obj: Any) -> dict[str, Any]:
    """A plain dict of a config dataclass (for logging)."""
    return dataclasses.asdict(obj)
