"""Typed configuration, one dataclass per pipeline stage, loaded from ``params.yaml``.

Each stage reads only its own block, so DVC can list exactly the params a stage depends on.
Nothing here touches the file system or the environment at import time.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tokenfocus.typed import ConfigError, build

DEFAULT_PARAMS = Path("params.yaml")


@dataclass
class SynthConfig:
    seed: int = 1234
    out: str = "data"
    n_prompts: int = 800  # x images_per_prompt = the ~4000 labelled pairs the brief asks for
    n_test_prompts: int = 80  # the unlabelled NTIRE-style test.json (+ eval.json with labels)
    images_per_prompt: int = 5  # one image per simulated generator, like EvalMuse
    image_size: int = 64  # big enough for 4 large shapes, small enough for 2 CPU cores
    n_annotators: int = 3
    label_flip: float = 0.05  # per-annotator element label noise
    score_noise: float = 0.45  # sd of each annotator's total-score noise, in score points
    real_fraction: float = 0.5  # share of prompts in the varied "real" register
    short_keys: float = 0.0  # share of prompts keyed with EvalMuse's short spans ("red (color)")
    styled_copies: int = 0  # per labelled pair, redrawings in pre-training's styles (styled/<k>/)


@dataclass
class StylesConfig:
    """Drawing styles as data (built into :class:`tokenfocus.render.StyleBook`, which checks them).

    ``catalog`` maps a style's name to its drawing choices (see :class:`tokenfocus.render.Style`
    for the keys); ``synth`` names the styles SynthMuse draws its benchmark in, ``pretrain`` the
    ones pre-training randomises over, and no style of ``heldout_family`` may be in either.
    """

    heldout_family: str = ""  # never seen by any model; the pipeline reports it beside test
    synth: list[str] = field(default_factory=lambda: ["classic"])
    pretrain: list[str] = field(default_factory=lambda: ["classic"])
    catalog: dict[str, dict] = field(default_factory=dict)

    def book(self):
        """The checked :class:`tokenfocus.render.StyleBook` of this block."""
        from tokenfocus.render import StyleBook

        return StyleBook.from_config(self)


@dataclass
class ValidateConfig:
    data: str = "data"
    report: str = "eval/validation.json"
    min_side: int = 8
    max_side: int = 4096
    max_pixels: int = 4096 * 4096  # also Pillow's decompression-bomb limit
    max_examples: int = 5  # offending rows shown per failed expectation


@dataclass
class SplitConfig:
    seed: int = 7
    val_frac: float = 0.15
    test_frac: float = 0.15
    folds: int = 5
    out: str = "work/splits.json"


@dataclass
class PromptConfig:
    overall: str = "Does the image match the prompt: {prompt} ? Rate from 1 to 5 ."
    structural: str = " Elements : {elements} ."
    element_context: str = "Prompt : {prompt} ."
    element: str = "Does the image show {element} ? Answer yes or no ."
    use_structure: bool = True  # the paper's structural prompting: carry the element list
    score_tokens: list[str] = field(default_factory=lambda: ["1", "2", "3", "4", "5"])
    yes_token: str = "yes"
    no_token: str = "no"


@dataclass
class LoraConfig:
    r: int = 8
    alpha: int = 16
    dropout: float = 0.0
    target_modules: list[str] = field(default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj"])
    include_vision: bool = False  # the vision tower stays frozen unless asked


@dataclass
class BackboneConfig:
    source: str  # a local directory or a hub id
    family: str = ""  # tiny recipe used by `backbones build`; empty for real checkpoints
    tuning: str = "full"  # full | lora
    lora: LoraConfig = field(default_factory=LoraConfig)
    image_size: int = 64
    dtype: str = "float32"
    device: str = "auto"  # auto (CUDA when present, else CPU) | cpu | cuda | cuda:N | mps
    attn_implementation: str = ""  # "" = the model's default; eager | sdpa | flash_attention_2
    gradient_checkpointing: bool = False  # recompute activations in training: less memory, more time
    max_pixels: int = 0  # dynamic-resolution processors (Qwen2-VL): image area cap; 0 = processor's
    # tiling processors (InternVL's crop_to_patches): tiles per image at most, a thumbnail on top;
    # 0 = the processor's (12 for InternVL: up to 13 x 256 = 3,328 image tokens an image)
    max_patches: int = 0
    trust_remote_code: bool = False
    prompts: dict[str, Any] = field(default_factory=dict)  # overrides of the global templates
    tiny: dict[str, Any] = field(default_factory=dict)  # size overrides for the tiny build
    pretrain: dict[str, Any] = field(default_factory=dict)  # overrides of the pretrain block
    lr: float | None = None  # overrides train.lr
    steps: int | None = None  # overrides train.steps
    # data-parallel ranks (torchrun) for this backbone's fine-tuning and scoring; 1 = one process
    nproc: int = 1

    def __post_init__(self):
        if self.nproc < 1:
            raise ConfigError(f"backbones: nproc must be >= 1, got {self.nproc}")
        if self.max_patches < 0:
            raise ConfigError(f"backbones: max_patches must be >= 0, got {self.max_patches}")


@dataclass
class PretrainConfig:
    """Vision-language pre-training of the tiny bases (real checkpoints arrive pre-trained).

    A curriculum of three stages on freshly drawn scenes, never the benchmark's (measured in
    shared/reference/pretraining-study and docs/tiny-backbones.md):

    1. ``tower_steps``: the vision tower alone as an attribute classifier (thrown-away heads), as
       a real LVLM's vision encoder arrives pre-trained.
    2. ``steps``: open questions and balanced yes/no checks (each image asked with a true and a
       false value) about ``attributes`` on 1..``max_groups`` group scenes, with the tower frozen
       and an auxiliary loss tying the image tokens to the words of the attribute values.
    3. ``element_steps``: the same mix, with ``element_frac`` of the rows asked as element
       questions in the scoring wording (params ``prompts``), so pre-training teaches what
       scoring asks.
    """

    steps: int = 6000  # stage 2; 0 builds a randomly initialised base (all stages skipped)
    tower_steps: int = 1500  # stage 1
    # stage 1's scenes: 1 = one group, heads classify its shape/colour/count/size; 2-3 = up to that
    # many groups, heads classify per shape its count (0 = absent), colour and size
    tower_groups: int = 1
    element_steps: int = 2000  # stage 3
    attributes: list[str] = field(default_factory=lambda: ["shape", "color", "count", "size"])
    max_groups: int = 3  # groups of shapes per pre-training scene (1..3)
    batch_size: int = 32
    lr: float = 1e-3
    open_frac: float = 0.5  # share of open questions in stages 2 and 3 (the rest: checks, elements)
    element_frac: float = 0.5  # share of element questions in stage 3
    aux_weight: float = 1.0  # image-token / word-embedding presence loss (0 turns it off)
    freeze_tower: bool = True  # after stage 1; measured: a trainable tower forgets colour
    # > 0: stages 2-3 keep stage 1's heads as an auxiliary loss of this weight, the tower training
    # on at lr x tower_lr_scale (needs tower_groups >= 2)
    tower_head_weight: float = 0.0
    tower_readout: str = "pooled"  # what stage 1's heads read: pooled (mean+max of the map) | tokens
    tower_lr_scale: float = 1.0  # the tower's learning rate in stages 2-3, when it trains
    # > 0: stage 1 also asks every position of the tower's map, through one linear head all positions
    # share, the count of the group drawn in the region that holds it (0: none), with this weight
    token_count_weight: float = 0.0
    # > 0: stage 1 also asks every position, through one shared linear head, whether the group drawn
    # in its region is left of / right of / above / below another group (0: none), with this weight
    token_relation_weight: float = 0.0
    # the odds of counts 1..4 in stages 1-2's fresh scenes; empty: the renderer's (0.4/0.3/0.2/0.1)
    count_weights: list[float] = field(default_factory=list)
    # the false count a training count check claims: any other count, or adjacent (n +- 1 only;
    # the bases reject claims 2-3 off but accept most 1 off). The checks measured stay `any`
    count_false: str = "any"
    # > 0: a guard after stages 2 and 3. A stage whose easiest measure on other fresh scenes (the
    # shape and colour checks after pairs, object elements after elements) ends below this floor
    # broke (measured: 4 of 10 runs with the token heads, docs/styles.md); it is run again from
    # its starting weights with other scenes, up to ``stage_retries`` times, the best attempt kept
    stage_floor: float = 0.0
    stage_retries: int = 1
    seed: int = 99  # scenes are drawn from this seed alone, never from the benchmark
    threads: int = 1  # torch threads: fixed, so a rerun reproduces the base exactly
    check_scenes: int = 240  # other fresh scenes on which the checks are measured
    init_root: str = "models/init"  # build@<slug> writes the random base to <init_root>/<slug>


@dataclass
class TrainConfig:
    loss: str = "focus"  # focus | lm
    steps: int = 1200
    batch_size: int = 16
    grad_accum: int = 1
    lr: float = 2e-3
    weight_decay: float = 0.01
    warmup_frac: float = 0.05
    seed: int = 0
    ce_weight: float = 1.0
    mse_weight: float = 0.1  # params.yaml: 1 (measured); alone, early, it collapses onto the mean
    mse_warmup_frac: float = 0.2  # CE alone first, then the regression term joins
    element_weight: float = 0.5
    element_balance: float = 0.5  # share of element questions drawn from absent elements, when any
    augment_lighting: float = 0.0  # random lighting (brightness/contrast +- this, iMatch's); 0 = off
    image_cache: int = 4096  # decoded training images kept at a time (least recently used out)
    # share of training images swapped for a redrawing of their scene in another style (SynthMuse's
    # styled/<k>/, synth.styled_copies): the same labels, pixels of the styles pre-training drew
    augment_styles: float = 0.0
    # share of present counting/spatial elements asked as a counterfactual (batches.ask_elements)
    counterfactual: float = 0.0
    # share of training pairs keyed in EvalMuse's short form (batches.short_keyed): both key forms read alike
    short_keys: float = 0.0
    short_keys_overall: bool = True  # the overall question's element list in that form too
    prefix_reuse: bool = True  # one image prefill per pair for its overall and element rows
    soft_target: bool = True  # two-hot target around the mean human score
    eval_every: int = 200
    log_every: int = 10  # steps between the loss and learning-rate points logged to MLflow
    checkpoint_every: int = 200
    patience: int = 4  # evaluations without val SRCC gain before stopping
    threads: int = 2
    out: str = "models/trained"


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


@dataclass
class StackConfig:
    method: str = "ridge"  # ridge | blend | mean: what the registered ensemble uses
    fit_on: str = "val"  # val (held-out split); predictions of training data are never used
    alphas: list[float] = field(default_factory=lambda: [0.01, 0.1, 1.0, 10.0, 100.0])
    features: list[str] = field(default_factory=lambda: ["score"])  # + entropy, element_mean
    element_method: str = "mean"  # mean | logistic
    bagging_seeds: int = 1  # per-backbone models averaged (seeds); 1 = no bagging
    out: str = "models/ensemble"


@dataclass
class TrackingConfig:
    experiment: str = "tokenfocus"
    tracking_uri: str = "sqlite:///mlflow.db"  # MLFLOW_TRACKING_URI wins when set
    model_name: str = "tokenfocus-ensemble"
    promote_bootstrap: int = 500
    promote_seed: int = 0
    promote_rule: str = (
        "ci_low"  # ci_low: the CI's lower bound must clear min_delta | diff: the point estimate
    )
    promote_min_delta: float = 0.0
    #: the ensemble's test metrics a model must reach to be registered at all ({} = no floor)
    quality_floor: dict[str, float] = field(default_factory=dict)
    promote_force: bool = False  # promote over a champion that cannot be loaded, or trained on today's test

    def __post_init__(self):
        if self.promote_rule not in ("ci_low", "diff"):
            raise ConfigError(f"tracking.promote_rule: {self.promote_rule!r} is not ci_low or diff")
        known = {"final", "srcc", "plcc", "krcc", "element_acc"}
        if set(self.quality_floor) - known:
            raise ConfigError(
                f"tracking.quality_floor: unknown metric(s) {sorted(set(self.quality_floor) - known)}; known: {sorted(known)}"
            )
        if self.promote_bootstrap < 1:
            raise ConfigError(f"tracking.promote_bootstrap: {self.promote_bootstrap} is below 1")


@dataclass
class ServeConfig:
    host: str = "127.0.0.1"
    port: int = 5001
    allowed_root: str = "data"
    max_image_bytes: int = 10_000_000
    max_pixels: int = 4096 * 4096
    workers: int = 1  # uvicorn worker processes, each with its own copy of the ensemble
    threads: int = 0  # torch threads per worker; 0 = the machine's cores / workers
    max_batch: int = 16  # concurrent requests scored together in one batch (1 = no batching)

    def __post_init__(self):
        for name, least in (("workers", 1), ("threads", 0), ("max_batch", 1)):
            if getattr(self, name) < least:
                raise ConfigError(f"serve.{name} must be >= {least}, got {getattr(self, name)}")


@dataclass
class FlowConfig:
    runner: str = "threads"  # threads | dask | dask-address
    dask_workers: int = 2
    dask_address: str = ""
    cron: str = "0 3 * * *"
    retries: int = 2
    retry_delay_s: int = 5


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
        """The train block with the backbone's lr/steps overrides applied."""
        cfg = dataclasses.replace(self.train)
        bb = self.backbone(slug)
        if bb.lr is not None:
            cfg.lr = bb.lr
        if bb.steps is not None:
            cfg.steps = bb.steps
        return cfg


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
