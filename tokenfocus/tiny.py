"""Tiny offline backbones: randomly initialised instances of real transformers architectures.

Per-family differences live in ``tiny_families.yaml`` as data, never as code branches. A tiny
base is saved like any checkpoint and loaded by :func:`tokenfocus.backbones.load_model_and_processor`
through the Auto classes, by its path: a real checkpoint differs only by its id. This module is
what ``build@<slug>`` depends on, apart from the loading code, so editing how models load or
train never invalidates the shipped bases.
"""

from __future__ import annotations

import copy
import logging
import re
from collections.abc import Iterable
from importlib import resources
from pathlib import Path
from typing import Any

import yaml

from tokenfocus.backbones import _LOAD_LOCK, BackboneError, save_model
from tokenfocus.config import BackboneConfig, PromptConfig
from tokenfocus.processors import stock_or_image_only

log = logging.getLogger(__name__)

SPECIAL = ["<pad>", "<unk>", "<bos>", "<eos>", "<|user|>", "<|assistant|>", "<end_of_utterance>"]
#: A minimal chat template; ``IMAGE`` is replaced by the family's image placeholder.
CHAT_TEMPLATE = (
    "{% for m in messages %}{{ '<|' + m['role'] + '|>' }}"
    "{% if m['content'] is string %}{{ ' ' + m['content'] }}{% else %}{% for c in m['content'] %}"
    "{% if c['type'] == 'image' %}IMAGE{% else %}{{ ' ' + c['text'] }}{% endif %}{% endfor %}{% endif %}"
    "<end_of_utterance>{% endfor %}{% if add_generation_prompt %}<|assistant|>{% endif %}"
)


def _recipes() -> dict[str, Any]:
    text = resources.files("tokenfocus").joinpath("tiny_families.yaml").read_text(encoding="utf-8")
    return yaml.safe_load(text)


def families() -> dict[str, dict[str, Any]]:
    """The tiny-build recipes, keyed by family name."""
    return {k: v for k, v in _recipes().items() if not k.startswith("_")}


def chat_templates() -> dict[str, tuple[str, list[str]]]:
    """Chat templates by name: (template, its markers as special tokens); ``minimal`` is the
    default bases' own, the others are real checkpoints' (``tiny_families.yaml``)."""
    real = _recipes()["_chat_templates"]
    return {"minimal": (CHAT_TEMPLATE, []), **{k: (v["template"], v["special"]) for k, v in real.items()}}


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


TOKENIZER_KINDS = ("word", "byte_bpe", "metaspace")


def train_tokenizer(
    corpus: Iterable[str],
    prompts: PromptConfig,
    extra_special: list[str],
    named: dict[str, str],
    *,
    kind: str = "word",
    vocab_size: int = 3000,
):
    """A tokenizer trained locally, of one of the kinds real checkpoints use.

    - ``word`` (the default bases): word level, every digit, yes/no and special token one token.
    - ``byte_bpe`` (Qwen2, Llama 3): byte-level BPE; "yes" and " yes" are different tokens.
    - ``metaspace`` (Llama 2, Gemma; SentencePiece style): BPE over words marked with "▁"; a
      word at the start of a text gets a "▁" it does not get after a newline.

    Every answer word is in the training text in each surface form and context the templates put
    it in, so it is one token there, as it is in a real checkpoint's vocabulary.
    """
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind not in TOKENIZER_KINDS:
        raise BackboneError(f"unknown tiny tokenizer kind {kind!r}; known: {list(TOKENIZER_KINDS)}")
    template_text = " ".join(str(v) for v in vars(prompts).values() if isinstance(v, str))
    must = " ".join([*prompts.score_tokens, prompts.yes_token, prompts.no_token, template_text])
    specials = SPECIAL + extra_special
    if kind == "word":
        tok = Tokenizer(models.WordLevel(unk_token="<unk>"))
        tok.normalizer = normalizers.Lowercase()
        tok.pre_tokenizer = pre_tokenizers.Sequence(
            [pre_tokenizers.Whitespace(), pre_tokenizers.Digits(individual_digits=True)]
        )
        trainer = trainers.WordLevelTrainer(special_tokens=specials, min_frequency=1)
        tok.train_from_iterator([must, *corpus], trainer)
    else:
        words = [*prompts.score_tokens, prompts.yes_token, prompts.no_token]
        forms = [f for w in words for f in (w, w.capitalize())]
        # the answers as they follow a generation prompt: after a newline, after a space
        answers = [f"\n{f}\n {f} {f}." for f in forms] * 50
        if kind == "byte_bpe":
            tok = Tokenizer(models.BPE())
            tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
            tok.decoder = decoders.ByteLevel()
            alphabet = pre_tokenizers.ByteLevel.alphabet()
        else:
            tok = Tokenizer(models.BPE(unk_token="<unk>"))
            # a newline is a piece of its own, as SentencePiece's byte fallback makes it
            tok.pre_tokenizer = pre_tokenizers.Sequence(
                [
                    pre_tokenizers.Split(Regex("\n"), behavior="isolated"),
                    pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first"),
                ]
            )
            tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
            alphabet = []
        trainer = trainers.BpeTrainer(
            vocab_size=vocab_size, special_tokens=specials, initial_alphabet=alphabet, min_frequency=1
        )
        tok.train_from_iterator([must, *answers, *corpus], trainer)
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
) -> Path:
    """Build, save and return the folder of a randomly initialised tiny backbone.

    Pre-training is a stage of its own (:mod:`tokenfocus.pretrain`), so a changed curriculum
    never rebuilds the tokenizer and a changed vocabulary never goes unnoticed by pre-training.

    Args:
        slug: registry key, used in messages and metadata.
        cfg: the backbone's params; ``family`` picks the recipe and ``tiny`` overrides sizes.
        prompts: the templates, so every template word is in the vocabulary.
        corpus: texts (prompts, element keys, pre-training words) to train the tokenizer on.
        out: destination folder; written in full before it replaces any old one.
        seed: initialisation seed.
    """
    with _LOAD_LOCK:
        model, processor, meta = _init_tiny(slug, cfg, prompts, corpus, seed=seed)
    save_model(model, processor, meta, out)
    log.info("built tiny %s (%s, %d params) at %s", slug, cfg.family, meta["params"], out)
    return Path(out)


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
        "pixels": cfg.image_size**2,
        "patch": patch,
        "image_tokens": (cfg.image_size // patch) ** 2 // r["image_tokens_divisor"],
    }
    r = _fill(r, values)
    # the word-level tokenizer and minimal template unless the entry asks for a real-checkpoint kind
    templates = chat_templates()
    if r.get("chat_template", "minimal") not in templates:
        raise BackboneError(
            f"{slug}: unknown tiny chat template {r['chat_template']!r}; known: {sorted(templates)}"
        )
    template, markers = templates[r.get("chat_template", "minimal")]
    tok = train_tokenizer(
        corpus,
        prompts,
        r["special_tokens"] + markers,
        r["named_tokens"],
        kind=r.get("tokenizer", "word"),
    )
    image_processor = getattr(transformers, r["image_processor"])(**r["image_processor_kwargs"])
    processor = stock_or_image_only(r["processor"])(
        image_processor,
        tok,
        chat_template=template.replace("IMAGE", r["image_placeholder"]),
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


def build(
    slug: str, params, *, extra_corpus: Iterable[str] = (), out: str | Path | None = None
) -> Path | None:
    """Build one tiny random base from its params entry into ``init_dir``; a real checkpoint
    (no family) needs nothing.

    Args:
        slug: the backbone.
        params: the project params.
        extra_corpus: more texts for the tokenizer (the pre-training questions' words).
        out: the folder (default :func:`init_dir`).
    """
    bb = params.backbone(slug)
    if not bb.family:
        log.info("%s: source %s is used as is (no tiny family)", slug, bb.source)
        return None
    corpus = [*corpus_from(params.validate.data), *extra_corpus]
    return build_tiny(
        slug, bb, params.prompts_for(slug), corpus, out or init_dir(slug, params), seed=params.train.seed
    )


def init_dir(slug: str, params) -> Path:
    """Where ``build@<slug>`` writes the random base that ``pretrain@<slug>`` starts from."""
    return Path(params.pretrain_for(slug).init_root) / slug
