"""The one loading path for every LVLM, and the model-folder helpers around it.

Loading goes only through ``AutoProcessor`` and ``AutoModelForImageTextToText``: a tiny
local instance (built by :mod:`tokenfocus.tiny`) and a real hub checkpoint differ only by
``source``.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from tokenfocus.config import BackboneConfig

log = logging.getLogger(__name__)
# transformers resolves its classes lazily, and that is not thread-safe: concurrent Prefect
# tasks in one process serialise model construction and loading through this lock.
_LOAD_LOCK = threading.RLock()

#: Written into every model folder this project saves, so a folder describes itself.
META_FILE = "tokenfocus.json"


class BackboneError(RuntimeError):
    """A backbone that cannot be built, loaded or used; the message names it."""


def write_meta(folder: str | Path, meta: dict) -> Path:
    """A model folder's ``tokenfocus.json``, replaced whole (through a temporary file and a rename),
    in the one format every saved model has."""
    path = Path(folder) / META_FILE
    tmp = path.with_name(f".{META_FILE}.tmp")
    tmp.write_text(json.dumps(meta, indent=1))
    tmp.replace(path)
    return path


def save_model(model, processor, meta: dict, out: str | Path) -> Path:
    """Save weights, processor and metadata to ``out``, written in full before it replaces any
    old folder, so a crash never leaves half a model."""
    import shutil

    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        shutil.rmtree(tmp)
    # shards of at most 1 MB: the shipped bases live as blobs in the git-tracked DVC remote, and
    # the project keeps every tracked file under 2 MiB (a real checkpoint shards on its own anyway)
    model.save_pretrained(tmp, max_shard_size="1MB")
    processor.save_pretrained(tmp)
    write_meta(tmp, meta)
    replace_dir(tmp, out)
    return out


def train_mode(model) -> None:
    """Training mode for what is trained: frozen BatchNorm layers (a frozen convolutional tower,
    or every base layer under LoRA) stay in eval mode. In training mode they would keep updating
    their running statistics, which are buffers: a LoRA adapter does not save them, so the saved
    model would not score as the trainer measured it."""
    import torch

    model.train()
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and not any(
            p.requires_grad for p in m.parameters()
        ):
            m.eval()


#: where the Auto classes keep the vision encoder (LLaVA and FastVLM, Qwen2-VL, Idefics3, others),
#: and a projector some keep inside it (Qwen2-VL's ``merger``)
TOWER_NAMES, PROJECTOR_INSIDE = ("vision_tower", "visual", "vision_model", "vision_encoder"), ("merger",)


def vision_tower(model):
    """The vision encoder module (under a PEFT wrapper too), or None where the model keeps none
    under any of :data:`TOWER_NAMES`."""
    inner = model.get_base_model() if hasattr(model, "get_base_model") else model
    inner = getattr(inner, "model", inner)
    return next((t for t in (getattr(inner, n, None) for n in TOWER_NAMES) if hasattr(t, "parameters")), None)


def tower_parameters(model) -> list:
    """The vision encoder's parameters (under a PEFT wrapper too), less a projector kept inside it.

    Raises:
        ValueError: the model keeps no module under any of :data:`TOWER_NAMES`.
    """
    tower = vision_tower(model)
    if tower is None:
        raise ValueError(
            f"{type(model).__name__}: no vision tower under {TOWER_NAMES}; set freeze_tower: false"
        )
    skip = {id(q) for n in PROJECTOR_INSIDE if hasattr(tower, n) for q in getattr(tower, n).parameters()}
    return [q for q in tower.parameters() if id(q) not in skip]


def replace_dir(tmp: Path, out: Path) -> None:
    """Swap a fully written folder into place, so a crash never leaves half a model."""
    import shutil

    old = out.with_name(out.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    if old.exists():
        shutil.rmtree(old)


def _dtype(name: str):
    import torch

    try:
        return getattr(torch, name)
    except AttributeError:
        raise BackboneError(f"unknown dtype {name!r}") from None


def training_precision(cfg: BackboneConfig) -> tuple[BackboneConfig, Callable[[], Any]]:
    """How a backbone trains in its ``dtype``: the config to load it with, and a function that
    opens the forward pass's autocast context (a no-op unless mixed precision).

    Why: full fine-tuning of bf16 weights rounds every small update away (bf16 keeps 8 bits of
    mantissa; an update under 1/256 of a weight is lost). So full fine-tuning in bfloat16 is mixed
    precision: the weights (the optimizer's master copy) load in float32 and the forward runs under
    bf16 autocast. LoRA keeps the base in its dtype: only the adapter (float32, as peft makes it)
    is updated. float16 would also need loss scaling, which this project does not do.
    """
    import contextlib

    import torch

    if cfg.tuning != "full" or cfg.dtype == "float32":
        return cfg, contextlib.nullcontext
    if cfg.dtype != "bfloat16":
        raise BackboneError(
            f"full fine-tuning in {cfg.dtype} is not supported (it needs loss scaling): "
            "use dtype bfloat16 (mixed precision) or float32, or tuning lora"
        )
    device = resolve_device(cfg.device)
    return replace(cfg, dtype="float32"), lambda: torch.autocast(device.type, dtype=torch.bfloat16)


def resolve_device(name: str):
    """The torch device a backbone runs on: ``auto`` is CUDA when there is one, else the CPU."""
    import torch

    if name in ("", "auto"):
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise BackboneError(f"unknown device {name!r}: use auto, cpu, cuda, cuda:N or mps") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BackboneError(f"device {name!r} asked for, but torch sees no CUDA device here")
    return device


def _looks_local(source: str) -> bool:
    """A path that cannot be a hub id (``namespace/name``): absolute, relative, or deeper."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def load_model_and_processor(
    source: str | Path, cfg: BackboneConfig, *, slug: str = "", merge_lora: bool = True
):
    """Load a processor and model through the Auto classes (plus a LoRA adapter if the folder has one).

    Args:
        source: a local folder (base or trained) or a hub id.
        cfg: the backbone's params (dtype, device, attn_implementation, max_pixels, max_patches,
            trust_remote_code).
        slug: for messages.
        merge_lora: merge a LoRA adapter into the base weights (for scoring); False keeps the
            ``PeftModel``.

    Returns:
        ``(model, processor)``, the model in eval mode on its device.
    """
    from transformers import AutoModelForImageTextToText, AutoProcessor

    if cfg.trust_remote_code:
        log.warning("%s: trust_remote_code=True: code from %s will run", slug, source)
    path = Path(source)
    adapter = path / "adapter_config.json"
    base_source = source
    if adapter.exists():
        meta = json.loads((path / META_FILE).read_text())
        base_source = meta["base"]
        # A bundled base is stored relative to the adapter folder (the bundle can move);
        # a base in the project is relative to the working directory; else it is a hub id.
        if (path / base_source).exists():
            base_source = str((path / base_source).resolve())
    for where in {str(source), str(base_source)}:
        if _looks_local(where) and not Path(where).exists():
            raise BackboneError(
                f"{slug or source}: no folder {where}; build the tiny bases with "
                "`tokenfocus backbones build` (or `make run`), or set `source` to a hub id"
            )
    from tokenfocus import processors

    try:
        with _LOAD_LOCK:
            processors.register()  # saved image-only processors (Qwen2-VL, InternVL, ...) load by name
            processor_cls = processors.processor_class(source) or AutoProcessor
            # image-token caps, beside the checkpoint's own processor settings
            extra = {k: v for k, v in (("max_pixels", cfg.max_pixels), ("max_patches", cfg.max_patches)) if v}
            processor = processor_cls.from_pretrained(
                str(source), trust_remote_code=cfg.trust_remote_code, **extra
            )
            device = resolve_device(cfg.device)
            model_kwargs = {"attn_implementation": cfg.attn_implementation} if cfg.attn_implementation else {}
            if device.type != "cpu":  # straight onto the accelerator, never a full copy in RAM first
                model_kwargs["device_map"] = {"": str(device)}
            model = AutoModelForImageTextToText.from_pretrained(
                str(base_source),
                dtype=_dtype(cfg.dtype),
                trust_remote_code=cfg.trust_remote_code,
                **model_kwargs,
            )
    except OSError as exc:
        raise BackboneError(f"{slug or source}: cannot load {base_source}: {exc}") from None
    if not hasattr(processor, "tokenizer"):
        raise BackboneError(
            f"{slug or source}: AutoProcessor returned only a tokenizer; the family needs "
            "an image processor (see README, 'real checkpoints')"
        )
    if model.dtype != _dtype("float32"):
        _cast_pixels(model)
    if adapter.exists():
        from peft import PeftModel

        with _LOAD_LOCK:
            model = PeftModel.from_pretrained(model, str(path))
        # Merged for scoring: one matmul per layer instead of base + adapter (the same outputs
        # within float rounding; tests/code/test_train.py).
        if merge_lora:
            model = model.merge_and_unload()
    model.eval()
    return model, processor


def _cast_pixels(model) -> None:
    """Feed ``pixel_values`` in the model's dtype. Processors return float32; ViT towers cast it
    themselves, but a convolutional tower (FastVLM's ResNet) fails on a bf16 model without this."""

    def hook(module, args, kwargs):
        px = kwargs.get("pixel_values")
        if px is not None and px.is_floating_point() and px.dtype != module.dtype:
            kwargs["pixel_values"] = px.to(module.dtype)
        return args, kwargs

    model.register_forward_pre_hook(hook, with_kwargs=True)


@dataclass
class TemplateParts:
    """The chat template split around the user's question: ``head + question + tail``."""

    head: str
    tail: str
    image_in_head: bool = True  # False where the template writes the image after the question


def template_parts(processor) -> TemplateParts:
    """Render the processor's chat template once around a sentinel and split it there."""
    sentinel = "QQQSENTINELQQQ"

    def render(content: list[dict]) -> str:
        messages = [{"role": "user", "content": content}]
        return processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)

    text = render([{"type": "image"}, {"type": "text", "text": sentinel}])
    if text.count(sentinel) != 1:
        raise BackboneError("the chat template does not render the question exactly once")
    head, tail = text.split(sentinel)
    # a template may place the image after the question; then no image prefix can be shared
    plain_head = render([{"type": "text", "text": sentinel}]).split(sentinel)[0]
    return TemplateParts(head=head, tail=tail, image_in_head=head != plain_head)


def assistant_end(processor) -> str:
    """What the chat template writes after an assistant answer (its end-of-turn marker)."""
    sentinel = "QQANSWERQQ"
    msgs = [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": sentinel}]},
    ]
    return processor.apply_chat_template(msgs, tokenize=False).split(sentinel, 1)[1]
