"""How much memory a backbone needs, from its config alone (``tokenfocus backbones plan``).

The model is built on PyTorch's ``meta`` device, so every parameter is counted exactly by the real
transformers class, and no weight is read or allocated. The training estimate is the usual sum:
weights + gradients + AdamW state of what is trained + activations of one micro-batch. Activations
follow Korthikanti et al. (2022): per layer about ``s*b*h*34`` bytes in 16-bit (plus ``5*a*s*s*b`` with
eager attention), and with gradient checkpointing only each layer's 16-bit input is kept (``2*s*b*h``)
plus one layer recomputed. It is an estimate, not a measurement: allocator overhead, CUDA context
(~0.5-1 GiB) and the vision tower's own activations come on top.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from tokenfocus.config import BackboneConfig, ScoreConfig, TrainConfig

GIB = 2**30
#: Question + prompt + element list + chat template, in tokens, beside the image tokens.
TEXT_TOKENS = 160


@dataclass
class MemoryPlan:
    """Counts and byte estimates for one backbone (see the module docstring for the formulas)."""

    model_class: str
    params_total: int
    params_language: int
    params_vision: int
    trainable: int
    dtype: str
    seq_len: int
    rows_per_step: int
    weights_gib: float
    grads_gib: float
    optimizer_gib: float
    activations_gib: float
    train_gib: float
    score_gib: float
    nproc: int = 1  # data-parallel ranks: each holds the whole model and 1/nproc of the batch
    allreduce_gib: float = 0.0  # the flat gradient bucket each rank all-reduces (distributed.py)
    score_kv_gib: float = 0.0  # the scoring batch's caches: the image prefix, the overall and context rows
    score_copies_gib: float = (
        0.0  # one chunk of element rows, each a copy of its pair's cache (+ a layer's growth)
    )

    def table(self, name: str) -> str:
        """A markdown table of the plan."""
        rows = [
            ("model class", self.model_class),
            (
                "parameters (language / vision+projector)",
                f"{self.params_total / 1e9:.3f} B "
                f"({self.params_language / 1e9:.3f} / {self.params_vision / 1e9:.3f})",
            ),
            ("trained parameters", f"{self.trainable / 1e6:.1f} M"),
            ("dtype", self.dtype),
            (
                "sequence (image + text tokens) x rows per micro-batch",
                f"{self.seq_len} x {self.rows_per_step}",
            ),
            ("weights", f"{self.weights_gib:.2f} GiB"),
            ("gradients", f"{self.grads_gib:.2f} GiB"),
            ("AdamW state", f"{self.optimizer_gib:.2f} GiB"),
            ("activations", f"{self.activations_gib:.2f} GiB"),
            ("data-parallel ranks (per-rank figures)", f"{self.nproc}"),
            ("gradient all-reduce bucket", f"{self.allreduce_gib:.2f} GiB"),
            ("**training, total**", f"**{self.train_gib:.1f} GiB**"),
            (
                "scoring: KV caches of a batch (image prefix, overall, context)",
                f"{self.score_kv_gib:.2f} GiB",
            ),
            ("scoring: KV copies of one chunk of element questions", f"{self.score_copies_gib:.2f} GiB"),
            ("**scoring (weights + KV + one layer)**", f"**{self.score_gib:.1f} GiB**"),
        ]
        return f"| {name} | |\n|---|---|\n" + "".join(f"| {k} | {v} |\n" for k, v in rows)


def load_config(source: str, config_path: str | None = None):
    """The model's config from a file, a local folder or the hub (cache): never its weights.

    Raises:
        FileNotFoundError: when no config can be found, naming where it looked.
    """
    from transformers import AutoConfig

    if config_path:
        path = Path(config_path)
        if not path.exists():
            raise FileNotFoundError(f"no config file {config_path}")
        folder = path if path.is_dir() else path.parent
        if path.is_file() and path.name != "config.json":
            raw = json.loads(path.read_text())
            return AutoConfig.for_model(raw.pop("model_type"), **raw)
        return AutoConfig.from_pretrained(str(folder))
    try:
        return AutoConfig.from_pretrained(source)
    except OSError as exc:
        raise FileNotFoundError(
            f"no config for {source!r} here (not a folder, not in the hub cache, and the hub is "
            f"unreachable); pass --config path/to/config.json: {str(exc).splitlines()[0]}"
        ) from None


def _dtype_bytes(name: str) -> int:
    import torch

    return torch.empty(0, dtype=getattr(torch, name)).element_size()


def plan(
    config,
    bb: BackboneConfig,
    train: TrainConfig,
    *,
    seq_len: int | None = None,
    nproc: int = 1,
    score: ScoreConfig | None = None,
) -> MemoryPlan:
    """Count parameters on the meta device and estimate training and scoring memory.

    Args:
        config: the model's transformers config.
        bb: the backbone's params (dtype, tuning, lora, gradient_checkpointing, max_pixels,
            attn_implementation).
        train: the training params (batch_size: the trainer scores overall + element rows, so
            two rows per example).
        seq_len: tokens per row; default: the image tokens the config implies + TEXT_TOKENS.
        nproc: data-parallel ranks (``backbones.<slug>.nproc``): the figures are per rank, each
            with the whole model and ``batch_size / nproc`` examples, plus its all-reduce bucket.
        score: the scoring params (batch_size, kv_budget_mib); default :class:`ScoreConfig`.
    """
    import torch
    from transformers import AutoModelForImageTextToText

    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    decoder = model.get_decoder()
    lm_prefix = next(n for n, m in model.named_modules() if m is decoder) + "."
    total = sum(p.numel() for p in model.parameters())
    language = sum(p.numel() for n, p in model.named_parameters() if n.startswith(lm_prefix))
    head = model.get_output_embeddings()
    if head is not None and head.weight is not decoder.get_input_embeddings().weight:
        language += head.weight.numel()
    vision = total - language
    wbytes = _dtype_bytes(bb.dtype)
    if bb.tuning == "lora":
        from tokenfocus.lora import saved_modules, target_modules

        # the adapter's two low-rank factors on each target Linear, and a trainable copy of each
        # weight of a module trained whole beside it
        trainable = sum(
            bb.lora.r * (m.in_features + m.out_features)
            for m in target_modules(model, bb.lora).values()
            if isinstance(m, torch.nn.Linear)
        )
        trainable += sum(p.numel() for m in saved_modules(model, bb.lora).values() for p in m.parameters())
        tbytes = 4  # peft keeps adapter weights in float32 on a 16-bit base
    else:
        trainable, tbytes = total, wbytes
    text = config.get_text_config()
    h, layers = text.hidden_size, text.num_hidden_layers
    heads = text.num_attention_heads
    kv_heads = getattr(text, "num_key_value_heads", None) or heads
    head_dim = getattr(text, "head_dim", None) or h // heads
    seq = seq_len or _image_tokens(config, bb) + TEXT_TOKENS
    # the overall question and one element question per example, of this rank's shard
    rows = 2 * -(-train.batch_size // max(1, nproc))
    act16 = 2 if wbytes <= 2 else 4  # the formula's 16-bit bytes, doubled in float32
    eager = bb.attn_implementation == "eager"
    per_layer = seq * rows * h * 17 * act16 + (5 * heads * seq * seq * rows * act16 // 2 if eager else 0)
    if bb.gradient_checkpointing:
        activations = layers * seq * rows * h * act16 + per_layer
    else:
        activations = layers * per_layer
    weights = total * wbytes + (trainable * tbytes if bb.tuning == "lora" else 0)
    grads = trainable * tbytes
    optimizer = 2 * trainable * tbytes
    allreduce = min(trainable, 25_000_000) * tbytes if nproc > 1 else 0  # distributed.average_gradients
    train_bytes = weights + grads + optimizer + activations + allreduce
    score_bytes, kv, copies = score_memory(
        score or ScoreConfig(),
        seq,
        2 * layers * kv_heads * head_dim * wbytes,
        h,
        act16,
        total * wbytes,
        layers=layers,
        group=heads // kv_heads,
    )
    return MemoryPlan(
        model_class=type(model).__name__,
        params_total=total,
        params_language=language,
        params_vision=vision,
        trainable=trainable,
        dtype=bb.dtype,
        seq_len=seq,
        rows_per_step=rows,
        weights_gib=weights / GIB,
        grads_gib=grads / GIB,
        optimizer_gib=optimizer / GIB,
        activations_gib=activations / GIB,
        train_gib=train_bytes / GIB,
        score_gib=score_bytes / GIB,
        score_kv_gib=kv / GIB,
        score_copies_gib=copies / GIB,
        nproc=nproc,
        allreduce_gib=allreduce / GIB,
    )


def score_memory(
    score: ScoreConfig,
    seq: int,
    kv_per_token: int,
    hidden: int,
    act_bytes: int,
    weight_bytes: int,
    *,
    layers: int = 1,
    group: int = 1,
) -> tuple[int, int, int]:
    """Scoring bytes (total, KV caches, KV copies) of one batch on the shared-prefix path.

    A batch of B pairs keeps the image prefix's cache and two extended copies of it (the overall
    question's rows and the element questions' shared words), each at most ``seq`` tokens a row.
    Every element question row then copies its pair's cache: ``Scorer.element_chunk`` runs as many
    as ``score.kv_budget_mib`` holds, and at most 4 B. While a layer runs, its copy grows (a new
    tensor beside the old) and grouped-query attention expands its keys and values ``group`` times
    (``num_attention_heads / num_key_value_heads``): one layer's copy times (1 + group) on top.
    Then one layer's inference working set.
    """
    b = score.batch_size
    row = seq * kv_per_token
    kv = 3 * b * row
    rows = max(1, min(4 * b, int(score.kv_budget_mib * 2**20 // max(1, row))))
    copies = rows * row * (1 + (1 + group) / max(1, layers))
    working = seq * b * hidden * act_bytes
    return int(weight_bytes + kv + copies + working), kv, int(copies)


#: Tiles per image of InternVL's processor (``crop_to_patches``, ``max_patches``) by default.
INTERNVL_TILES = 12


def _image_tokens(config, bb: BackboneConfig) -> int:
    """Image tokens per image the config implies (Qwen2-VL family: from ``max_pixels``; InternVL:
    each tile, up to ``max_patches`` of them, plus a thumbnail)."""
    for key in ("image_seq_length", "mm_tokens_per_image", "image_seq_len"):
        if getattr(config, key, None):
            per_tile = int(getattr(config, key))
            if getattr(config, "model_type", "") == "internvl":
                return per_tile * ((bb.max_patches or INTERNVL_TILES) + 1)
            return per_tile
    vc = getattr(config, "vision_config", None)
    patch = getattr(vc, "patch_size", None)
    merge = getattr(vc, "spatial_merge_size", None)
    if patch and merge:
        pixels = bb.max_pixels or 1280 * 28 * 28  # the Qwen2-VL processors' default cap
        return pixels // (patch * merge) ** 2
    return 256
