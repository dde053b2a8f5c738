"""The scoring stage's settings: batching, threads, and the elements read from other views."""

from __future__ import annotations

from dataclasses import dataclass, field

from tokenfocus.config.model import check_gemm
from tokenfocus.typed import ConfigError


@dataclass
class GroundingConfig:
    """Spatial elements read from where their objects stand (:mod:`tokenfocus.scoring.grounding`)."""

    enabled: bool = True
    # relation phrase -> the half of the image its first object stands in ("cat left of dog": left)
    relations: dict[str, str] = field(
        default_factory=lambda: {
            "left of": "left",
            "to the left of": "left",
            "on the left of": "left",
            "right of": "right",
            "to the right of": "right",
            "on the right of": "right",
            "above": "top",
            "over": "top",
            "below": "bottom",
            "under": "bottom",
            "beneath": "bottom",
            "underneath": "bottom",
        }
    )
    categories: list[str] = field(default_factory=lambda: ["spatial"])  # element categories grounded
    # categories whose keys name objects: where a spatial key is only its relation ("left of
    # (spatial)", EvalMuse's short form), its objects are the nearest of these around it in the prompt
    object_categories: list[str] = field(
        default_factory=lambda: ["object", "animal", "human", "animal/human", "food"]
    )
    # of the logistic on the two objects' difference in where they stand. Measured on val with the
    # fine-tuned backbones (Qwen2 / Gemma spatial AUC): 2: 0.958 / 0.938, 3: 0.961 / 0.948,
    # 6: 0.965 / 0.958, 10 and 20 as 6; accuracy the same at every one
    steepness: float = 6.0
    # where the image is cut, as fractions of its side from the relation's side: each cut asks every
    # object on both parts, and where it stands is the mean over the cuts. Measured on val
    # (docs/styles.md), spatial accuracy: the middle alone 0.85-0.87; thirds and the middle
    # 0.910 / 0.918 (Qwen2 / Gemma fine-tuned); the thirds alone the same, 0.912 / 0.918, with
    # four views of a pair instead of six
    cuts: list[float] = field(default_factory=lambda: [0.333, 0.667])
    # categories read as counts from parts of the image (count_views) as well as asked
    # (tokenfocus.scoring.counting); [] asks them alone. Measured on val (docs/styles.md), counting
    # accuracy Qwen2 / Gemma fine-tuned: asked 0.789 / 0.799, with the parts 0.859 / 0.857
    count_categories: list[str] = field(default_factory=lambda: ["counting"])
    count_max: int = 4  # a part is asked one .. count_max of an object
    # how the parts add up to a count (tokenfocus.scoring.counting), its reading the mean over them:
    # "bands", each axis cut at every cut (the thirds: three bands across, three down); "cells", the
    # image in count_grid x count_grid cells; "cuts", each cut's two parts, across and down. Measured
    # on val (docs/styles.md), counting accuracy Qwen2 / Gemma fine-tuned: cuts 0.856 / 0.855, bands
    # and cells 0.862 / 0.856; a bundle saved before this setting reads its counts from the cuts
    count_views: list[str] = field(default_factory=lambda: ["bands", "cells"])
    count_grid: int = 2  # cells a side of the "cells" view
    # categories also asked on the image mirrored left to right (left and right swapped in the prompt
    # and key), P(yes) the mean of both answers (tokenfocus.scoring.mirror); before the views above,
    # which then read both answers of the objects and counts. Never a category that may ask for text
    # (a mirror writes it backwards); [] asks each element once. Measured (docs/styles.md) over three
    # training seeds: the stack's NTIRE up on average on test and in every family no model saw
    mirror_categories: list[str] = field(default_factory=lambda: ["object", "color", "attribute", "counting"])
    # categories whose elements are about one object ("red squares", "two squares"): P(yes) at most
    # that object element's (tokenfocus.scoring.binding); [] leaves them as read. Measured offline
    # (docs/styles.md, "Elements held to their object"): attribute, colour and counting accuracy rise
    # for both backbones on val, test and the held-out family
    bind_categories: list[str] = field(default_factory=lambda: ["counting", "color", "attribute"])
    # categories whose short keys ("large (attribute)", EvalMuse's spans) are asked with the object
    # the prompt mentions next, within name_gap words ("large squares"), a relation of `categories`
    # between its two objects (tokenfocus.scoring.binding); [] asks the span alone. Measured
    # (docs/styles.md, "Short keys asked with their object")
    name_categories: list[str] = field(default_factory=lambda: ["counting", "color", "attribute", "spatial"])
    name_gap: int = 3
    numbers: dict[str, int] = field(
        default_factory=lambda: {
            w: i + 1
            for i, w in enumerate(
                ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
            )
        }
    )

    def __post_init__(self):
        bad = {k: v for k, v in self.relations.items() if v not in ("left", "right", "top", "bottom")}
        if bad:
            raise ConfigError(f"score.grounding.relations: sides must be left/right/top/bottom, got {bad}")
        if not self.cuts or not all(0 < c < 1 for c in self.cuts):
            raise ConfigError(
                f"score.grounding.cuts must be fractions strictly between 0 and 1, got {self.cuts}"
            )
        if self.steepness <= 0:
            raise ConfigError(f"score.grounding.steepness must be > 0, got {self.steepness}")
        if not isinstance(self.count_max, int) or self.count_max < 1:
            raise ConfigError(f"score.grounding.count_max must be an integer >= 1, got {self.count_max!r}")
        if not self.count_views or not set(self.count_views) <= {"bands", "cells", "cuts"}:
            raise ConfigError(
                f"score.grounding.count_views must name some of bands, cells, cuts, got {self.count_views!r}"
            )
        if not isinstance(self.count_grid, int) or self.count_grid < 2:
            raise ConfigError(f"score.grounding.count_grid must be an integer >= 2, got {self.count_grid!r}")
        for name in ("mirror_categories", "bind_categories", "name_categories"):
            value = getattr(self, name)
            if not isinstance(value, list) or not all(isinstance(c, str) and c for c in value):
                raise ConfigError(f"score.grounding.{name} must be a list of category names, got {value!r}")
        for name in ("bind_categories", "name_categories"):
            bound_objects = set(getattr(self, name)) & set(self.object_categories)
            if bound_objects:
                raise ConfigError(
                    f"score.grounding.{name}: {sorted(bound_objects)} are object_categories, "
                    "the objects the others are about"
                )
        if not isinstance(self.name_gap, int) or self.name_gap < 0:
            raise ConfigError(f"score.grounding.name_gap must be an integer >= 0, got {self.name_gap!r}")
        bad = {k: v for k, v in self.numbers.items() if not isinstance(v, int) or v < 1}
        if bad:
            raise ConfigError(
                f"score.grounding.numbers: each word's number must be an integer >= 1, got {bad}"
            )


@dataclass
class ScoreConfig:
    batch_size: int = 32
    threads: int = 2
    out: str = "work/scores"
    prefix_reuse: bool = True
    # pairs scored, and appended to <split>.partial.jsonl, at a time: memory stays bounded and a
    # killed run resumes after the last whole chunk
    chunk: int = 256
    # MiB that one chunk of element questions may hold in copies of its pairs' key/value cache (each
    # question row copies its pair's prefix: ~38 MiB a row for a 7B model at 700 prefix tokens)
    kv_budget_mib: int = 1024
    # padded tokens (rows x longest row, image + text) a batch may hold, beside batch_size: large
    # dynamic-resolution images make smaller batches; 0 = batch_size alone
    batch_tokens: int = 0
    grounding: GroundingConfig = field(default_factory=GroundingConfig)
    # a convolutional tower's BatchNorm statistics re-estimated on each scored split's own images
    # before it is scored (tokenfocus/scoring/adapt.py); a LayerNorm tower is left as it is
    adapt_norm: bool = False
    adapt_images: int = 4096  # at most this many of a split's images, evenly spaced, estimate them
    # whose GEMMs scoring runs on, as train.gemm (tokenfocus/gemm.py); the served model keeps torch's
    gemm: str = "mkl"

    def __post_init__(self):
        check_gemm("score.gemm", self.gemm)
        if self.adapt_images < 1:
            raise ConfigError(f"score.adapt_images must be >= 1, got {self.adapt_images}")
