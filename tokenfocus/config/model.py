"""The model blocks of ``params.yaml``: prompt templates, backbones, pre-training, fine-tuning
and scoring."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from tokenfocus.typed import ConfigError

#: Whose matrix products a run uses (``pretrain.gemm``, ``train.gemm``, ``score.gemm``): torch's
#: own (``mkl``), or numpy's OpenBLAS through :func:`tokenfocus.gemm.openblas_gemm`.
GEMMS = ("mkl", "openblas")


def check_gemm(key: str, gemm: str) -> None:
    """Refuse a ``gemm`` (at ``key``: ``train.gemm``) that is not one of :data:`GEMMS`, naming the key."""
    if gemm not in GEMMS:
        raise ConfigError(f"{key} must be one of {list(GEMMS)}, got {gemm!r}")


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
    # modules trained whole beside the adapter (peft's modules_to_save), named by the last part of
    # their path: ["multi_modal_projector"] lets fine-tuning move the projector that LoRA's
    # language-model targets leave frozen (LLaVA-style fine-tuning trains it too)
    modules_to_save: list[str] = field(default_factory=list)
    # their learning rate; 0: the train block's. A pre-trained tower beside an adapter's high rate
    # wants its own, lower one (docs/styles.md: the tower at Gemma's 2e-3 lost its pre-training)
    modules_lr: float = 0.0

    def __post_init__(self):
        if self.modules_lr < 0:
            raise ConfigError(
                f"lora.modules_lr must be >= 0 (0: the train block's lr), got {self.modules_lr}"
            )
        if self.modules_lr and not self.modules_to_save:
            raise ConfigError(
                "lora.modules_lr is set, but lora.modules_to_save names no module to train at it"
            )


# the train block's keys one backbone may not override: where every model is saved, the threads the
# flows share out, and the seed the tiny bases are built from (bagging members count up from it)
PIPELINE_WIDE_TRAIN_KEYS = frozenset({"out", "threads", "seed"})


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
    train: dict[str, Any] = field(default_factory=dict)  # overrides of the train block (any key)
    bagging_seeds: int | None = None  # overrides stack.bagging_seeds: this backbone's models averaged
    # full fine-tuning leaves the vision tower's weights as the base's (LLaVA's recipe); LoRA
    # leaves them anyway (lora.include_vision)
    freeze_tower: bool = False
    # data-parallel ranks (torchrun) for this backbone's fine-tuning and scoring; 1 = one process
    nproc: int = 1

    def __post_init__(self):
        if self.nproc < 1:
            raise ConfigError(f"nproc must be >= 1, got {self.nproc}")
        if self.max_patches < 0:
            raise ConfigError(f"max_patches must be >= 0, got {self.max_patches}")
        known = {f.name for f in fields(TrainConfig)} - PIPELINE_WIDE_TRAIN_KEYS
        for key in self.train:
            if key not in known:
                why = (
                    "is pipeline-wide (set it in the train block)"
                    if key in PIPELINE_WIDE_TRAIN_KEYS
                    else "is no train key"
                )
                raise ConfigError(f"train.{key} {why}; a backbone may override {sorted(known)}")
        if self.bagging_seeds is not None and self.bagging_seeds < 1:
            raise ConfigError(f"bagging_seeds must be >= 1, got {self.bagging_seeds}")


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
    # share of stage 3's element questions asked instead about a part of a fresh scene, the rest
    # hidden, as the scorer reads counts (score.grounding's cuts and cells): "circle (object)", "two
    # circles (counting)", labelled from where each shape was drawn (tokenfocus/pretrain/views.py)
    part_frac: float = 0.0
    # stage 3's element labels (and the element checks'): true only where the group is drawn as
    # the shape named, as synth.bind_shape labels the benchmark (tokenfocus.synth.realised)
    bind_shape: bool = True
    # stage 3's element questions half realised within each category, not over all of them. Bound
    # labels make a substituted shape's count, colour and size false with its object, so over all
    # categories 74% of the object questions come out realised (old labels: 52%), and the Qwen2
    # base learned to say yes to every object (docs/styles.md). The category is drawn as before
    balance_elements: bool = False
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
    # the styles this base's scenes are drawn in (names of styles.catalog), in place of
    # styles.pretrain; empty: styles.pretrain. Never the held-out family (refused)
    styles: list[str] = field(default_factory=list)
    # the styles stage 1 (the tower) alone draws its scenes in, in place of the list above; empty:
    # that list. Lets a drawing the language-model stages do not take reach the tower only
    # (docs/styles.md: patchwork in every stage broke the Gemma base's language model). Never the
    # held-out family (refused)
    tower_styles: list[str] = field(default_factory=list)
    seed: int = 99  # scenes are drawn from this seed alone, never from the benchmark
    threads: int = 1  # torch threads: fixed, so a rerun reproduces the base exactly
    # whose GEMMs: mkl (torch's own: MKL's vendor-neutral SSE2 branch under the pins) or openblas
    # (numpy's OpenBLAS on its pinned Haswell kernels, tokenfocus/gemm.py: as portable, a quarter
    # cheaper a step; measured in docs/pretraining.md)
    gemm: str = "mkl"
    # AdamW fused, as fine-tuning's (train.trainer.adamw): the IEEE square root, the same bits on an
    # Intel and an AMD host; plain AdamW's root follows the CPU's vendor (docs/clean-runs.md)
    fused_adamw: bool = False
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
    # element questions asked per pair and step: the first as ever, the others drawn per row from
    # streams of their own; each extends the pair's image prefix, and the element loss is their mean
    elements_per_pair: int = 1
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
    # a val pass asks the element questions too (logs val element accuracy); val SRCC is the same
    val_elements: bool = False
    log_every: int = 10  # steps between the loss and learning-rate points logged to MLflow
    checkpoint_every: int = 200
    patience: int = 4  # evaluations without val SRCC gain before stopping
    select: str = "val"  # the model: "val" the weights of the best val SRCC, "last" of the last step
    # with select "last": the model is the mean of the weights over the steps from this fraction of
    # training on (tokenfocus/train/average.py); 1.0: the last step's weights alone
    average_from: float = 1.0
    threads: int = 2
    # whose GEMMs fine-tuning runs on, as pretrain.gemm: mkl (torch's own) or openblas (numpy's, a
    # float32 backbone on the CPU; tokenfocus/gemm.py). Another choice, other bits
    gemm: str = "mkl"
    out: str = "models/trained"

    def __post_init__(self):
        check_gemm("train.gemm", self.gemm)
        if self.elements_per_pair < 1:
            raise ConfigError(f"train.elements_per_pair must be >= 1, got {self.elements_per_pair}")
        if self.select not in ("val", "last"):
            raise ConfigError(f"train.select must be val or last, got {self.select!r}")
        if not 0.0 <= self.average_from <= 1.0:
            raise ConfigError(f"train.average_from must be in [0, 1], got {self.average_from}")
        if self.average_from < 1.0 and self.select != "last":
            raise ConfigError("train.average_from averages up to the last step: it needs train.select: last")
