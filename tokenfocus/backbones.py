"""Backbone registry: tiny offline builds and the one loading path for every LVLM.

Loading goes only through ``AutoProcessor`` and ``AutoModelForImageTextToText``: a tiny
local instance and a real hub checkpoint differ only by ``source``. Per-family differences
of the tiny builds live in ``tiny_families.yaml``, not in code branches.
"""

from __future__ import annotations

import copy
import json
import logging
import re
import threading
from collections.abc import Iterable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tokenfocus.config import BackboneConfig, PretrainConfig, PromptConfig

log = logging.getLogger(__name__)
# transformers resolves its classes lazily, and that is not thread-safe: concurrent Prefect
# tasks in one process serialise model construction and loading through this lock.
_LOAD_LOCK = threading.RLock()

#: Written into every model folder this project saves, so a folder describes itself.
META_FILE = "tokenfocus.json"
SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<end_of_utterance>"]
#: A minimal chat template; ``IMAGE`` is replaced by the family's image placeholder.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' }}"
    "{% if m['content'] is string %}{{ ' ' + m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}IMAGE{% else %}{{ ' ' + c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


class BackboneError(RuntimeError):
    """A backbone that cannot be built, loaded or used; the message names it."""


def families() -> dict[str, dict[str, Any]]:
    """The tiny-build recipes, keyed by family name."""
    text = resources.files("tokenfocus").joinpath("tiny_families.yaml").read_text(encoding="utf-8")
    return {k: v for k, v in yaml.safe_load(text).items() if not k.startswith("_")}


def _fill(obj: Any, values: dict[str, int]) -> Any:
    """Substitute ``"{name}"`` placeholders (whole-string only) with integers."""
    if isinstance(obj, dict):
        return {k: _fill(v, values) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_fill(v, values) for v in obj]
    if isinstance(obj, str) and re.fullmatch(r"\{\w+\}", obj):
        return values[obj[1:-1]]
    return obj


def _merge(base: dict, over: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def train_tokenizer(
    corpus: Iterable[str], prompts: PromptConfig, extra_special: list[str], named: dict[str, str]
):
    """A word-level tokenizer trained locally: every digit, yes/no and special token is one token."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
    tok.normalizer = normalizers.Lowercase()
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
    )
    template_text = " ".join(str(v) for v in vars(prompts).values() if isinstance(v, str))
    must = " ".join([*prompts.score_tokens, prompts.yes_token, prompts.no_token, template_text])
    trainer = trainers.WordLevelTrainer(special_tokens=SPECIAL + extra_special, min_frequency=1)
    tok.train_from_iterator([must, *corpus], trainer)
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        pad_token="<pad>",
        unk_token="<unk>",
        bos_token="<bos>",
        eos_token="<eos>",
        extra_special_tokens=named or {},
    )
    fast.add_special_tokens({"additional_special_tokens": extra_special})
    return fast


def build_tiny(
    slug: str,
    cfg: BackboneConfig,
    prompts: PromptConfig,
    corpus: list[str],
    out: str | Path,
    *,
    seed: int = 0,
    pretrain: PretrainConfig | None = None,
) -> Path:
    """Build, save and return the folder of a tiny backbone, pre-trained if asked.

    Args:
        slug: registry key, used in messages and metadata.
        cfg: the backbone's params; ``family`` picks the recipe and ``tiny`` overrides sizes.
        prompts: the templates, so every template word is in the vocabulary.
        corpus: texts (prompts, element keys) to train the tokenizer on.
        out: destination folder; written in full before it replaces any old one.
        seed: initialisation seed.
        pretrain: vision-language pre-training on fresh scenes (see :mod:`tokenfocus.pretrain`);
            None or 0 steps leaves the weights random.
    """
    from tokenfocus.pretrain import corpus as pretrain_corpus
    from tokenfocus.pretrain import pretrain as run_pretrain

    with _LOAD_LOCK:
        model, processor, meta = _init_tiny(slug, cfg, prompts, [*corpus, *pretrain_corpus()], seed=seed)
    if pretrain is not None and pretrain.steps > 0:
        # Outside the lock: concurrent builds may pre-train side by side.
        meta["pretrain"] = run_pretrain(model, processor, pretrain, cfg.image_size, slug=slug)
    out = Path(out)
    tmp = out.with_name(out.name + ".tmp")
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    model.save_pretrained(tmp)
    processor.save_pretrained(tmp)
    (tmp / META_FILE).write_text(json.dumps(meta, indent=1))
    replace_dir(tmp, out)
    log.info("built tiny %s (%s, %d params) at %s", slug, cfg.family, meta["params"], out)
    return out


def _init_tiny(
    slug: str, cfg: BackboneConfig, prompts: PromptConfig, corpus: list[str], *, seed: int
) -> tuple[Any, Any, dict]:
    """A randomly initialised model of the family's recipe, its processor and its metadata."""
    import torch
    import transformers
    from transformers import AutoConfig, AutoModelForImageTextToText

    recipes = families()
    if cfg.family not in recipes:
        raise BackboneError(f"{slug}: unknown tiny family {cfg.family!r}; known: {sorted(recipes)}")
    r = _merge(recipes[cfg.family], cfg.tiny)
    patch = int(r.get("patch", 8))
    values = {
        "image_size": cfg.image_size,
        "patch": patch,
        "image_tokens": (cfg.image_size // patch) ** 2 // r["image_tokens_divisor"],
    }
    r = _fill(r, values)
    tok = train_tokenizer(corpus, prompts, r["special_tokens"], r["named_tokens"])
    image_processor = getattr(transformers, r["image_processor"])(**r["image_processor_kwargs"])
    processor = getattr(transformers, r["processor"])(
        image_processor,
        tok,
        chat_template=CHAT_TEMPLATE.replace("IMAGE", r["image_placeholder"]),
        **r["processor_kwargs"],
    )
    config_kwargs = copy.deepcopy(r["config"])
    config_kwargs["text_config"]["vocab_size"] = len(tok)
    config_kwargs.update({k: tok.convert_tokens_to_ids(t) for k, t in r["token_id_keys"].items()})
    config = AutoConfig.for_model(r["model_type"], pad_token_id=tok.pad_token_id, **config_kwargs)
    torch.manual_seed(seed)
    model = AutoModelForImageTextToText.from_config(config)
    meta = {
        "slug": slug,
        "family": cfg.family,
        "kind": "base",
        "image_tokens": values["image_tokens"],
        "params": sum(p.numel() for p in model.parameters()),
    }
    return model, processor, meta


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


def _looks_local(source: str) -> bool:
    """A path that cannot be a hub id (``namespace/name``): absolute, relative, or deeper."""
    return source.startswith(("/", ".", "~")) or source.count("/") > 1 or "\\" in source


def load_model_and_processor(source: str | Path, cfg: BackboneConfig, *, slug: str = ""):
    """Load a processor and model through the Auto classes (plus a LoRA adapter if the folder has one).

    Args:
        source: a local folder (base or trained) or a hub id.
        cfg: the backbone's params (dtype, trust_remote_code).
        slug: for messages.

    Returns:
        ``(model, processor)``, the model in eval mode.
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
    try:
        with _LOAD_LOCK:
            processor = AutoProcessor.from_pretrained(str(source), trust_remote_code=cfg.trust_remote_code)
            model = AutoModelForImageTextToText.from_pretrained(
                str(base_source), dtype=_dtype(cfg.dtype), trust_remote_code=cfg.trust_remote_code
            )
    except OSError as exc:
        raise BackboneError(f"{slug or source}: cannot load {base_source}: {exc}") from None
    if not hasattr(processor, "tokenizer"):
        raise BackboneError(
            f"{slug or source}: AutoProcessor returned only a tokenizer; the family needs "
            "an image processor (see README, 'real checkpoints')"
        )
    if adapter.exists():
        from peft import PeftModel

        with _LOAD_LOCK:
            model = PeftModel.from_pretrained(model, str(path))
    model.eval()
    return model, processor


@dataclass
class TemplateParts:
    """The chat template split around the user's question: ``head + question + tail``."""

    head: str
    tail: str


def template_parts(processor) -> TemplateParts:
    """Render the processor's chat template once around a sentinel and split it there."""
    sentinel = "QQQSENTINELQQQ"
    messages = [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": sentinel}]}]
    text = processor.apply_chat_template(messages, add_generation_prompt=True, tokenize=False)
    if text.count(sentinel) != 1:
        raise BackboneError("the chat template does not render the question exactly once")
    head, tail = text.split(sentinel)
    return TemplateParts(head=head, tail=tail)


def assistant_end(processor) -> str:
    """What the chat template writes after an assistant answer (its end-of-turn marker)."""
    sentinel = "QQANSWERQQ"
    msgs = [
        {"role": "user", "content": [{"type": "text", "text": "q"}]},
        {"role": "assistant", "content": [{"type": "text", "text": sentinel}]},
    ]
    return processor.apply_chat_template(msgs, tokenize=False).split(sentinel, 1)[1]


def corpus_from(data_root: str | Path) -> list[str]:
    """Texts to train tiny tokenizers on: every prompt and element key of the dataset."""
    from tokenfocus.evalmuse import read_json_list

    texts: list[str] = []
    for name in ("train_list.json", "test.json"):
        path = Path(data_root) / name
        if path.exists():
            for r in read_json_list(path):
                texts.append(str(r.get("prompt", "")))
                texts.extend(r.get("element_score") or {})
    return texts


def build(slug: str, params, *, out: str | Path | None = None) -> Path | None:
    """Build one tiny backbone from its params entry; a real checkpoint (no family) needs nothing."""
    bb = params.backbone(slug)
    if not bb.family:
        log.info("%s: source %s is used as is (no tiny family)", slug, bb.source)
        return None
    corpus = corpus_from(params.validate.data)
    return build_tiny(
        slug,
        bb,
        params.prompts_for(slug),
        corpus,
        out or bb.source,
        seed=params.train.seed,
        pretrain=params.pretrain_for(slug),
    )
