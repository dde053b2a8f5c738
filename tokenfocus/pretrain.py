"""Vision-language pre-training of a tiny base: what a real LVLM brings before fine-tuning.

A real checkpoint has seen captions and visual questions before anyone fine-tunes it on
alignment scores. A tiny randomly initialised instance has not, and it measurably cannot learn
to bind a word to what the image shows from alignment scores alone: fine-tuned from random
weights it scores "red circle" and "blue circle" alike on an image of a red circle
(docs/tiny-backbones.md). So ``tokenfocus backbones build`` pre-trains the tiny base on freshly
drawn scenes, never the benchmark's images or labels, with true visual questions and the plain
next-token loss on the answer. The benchmark's own question templates are not used here.

Each attribute is asked two ways, half of the time each: openly ("what color are the circles ?"
-> "red") and as a yes/no check ("are the circles blue ?" -> "no"). Measured: the check alone
stays at chance, while beside its open twin it is learned (the open question first ties image
features to the answer words, and the check then compares them with the question's word).

The story: draw a pool of scenes from the pre-training seed -> each step, pick images and one
question each -> chat text with the answer -> next-token loss on the answer -> AdamW.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass

import torch
from PIL import Image
from tqdm.auto import tqdm

from tokenfocus.backbones import assistant_end, template_parts
from tokenfocus.config import ConfigError, PretrainConfig
from tokenfocus.losses import answer_lm_loss
from tokenfocus.scoring import encode, first_answer_logits
from tokenfocus.synth import COLORS, COUNTS, RELATIONS, SHAPES, Group, Scene, plural, random_scene, render

log = logging.getLogger(__name__)

#: Open questions: their answer is the attribute's value.
OPEN = {
    "color": "what color are the {noun} ?",
    "count": "how many {noun} are there ?",
    "size": "what size are the {noun} ?",
    "shape": "what shape is {color} ?",
    "relation": "where are the {a} ?",
}
#: Yes/no checks: the attribute's true value or another one.
CHECK = {
    "color": "are the {noun} {value} ?",
    "count": "are there {value} {noun} ?",
    "size": "are the {noun} {value} ?",
    "shape": "is there a {value} ?",
    "relation": "are the {a} {value} the {b} ?",
}
ATTRIBUTES = tuple(OPEN)


def _noun(shape: str) -> str:
    """The plural noun a question uses for a group of ``shape``."""
    return plural(shape, 2)


def corpus() -> list[str]:
    """Every word the pre-training questions and answers use, for the tokenizer."""
    words = [*OPEN.values(), *CHECK.values(), " ".join(SHAPES), " ".join(map(_noun, SHAPES))]
    words += [" ".join(COLORS), "small large", " ".join(COUNTS.values()), " ".join(RELATIONS), "yes no"]
    return words


def check_config(cfg: PretrainConfig) -> None:
    """Refuse unknown attributes and relation questions that scenes cannot answer, naming the key."""
    unknown = [a for a in cfg.attributes if a not in ATTRIBUTES]
    if unknown:
        raise ConfigError(f"pretrain.attributes: unknown {unknown}; known: {list(ATTRIBUTES)}")
    if not cfg.attributes:
        raise ConfigError("pretrain.attributes: empty; name at least one of " + str(list(ATTRIBUTES)))
    if not 1 <= cfg.max_groups <= 3:
        raise ConfigError(f"pretrain.max_groups: {cfg.max_groups} is not in 1..3")
    if "relation" in cfg.attributes and cfg.max_groups < 2:
        raise ConfigError("pretrain.attributes: relation needs pretrain.max_groups >= 2")
    if set(cfg.attributes) == {"relation"}:  # a pool always holds one-group scenes too
        raise ConfigError("pretrain.attributes: relation alone leaves one-group scenes without a question")


def _true_and_false(scene: Scene, kind: str, g: Group, rng: random.Random) -> tuple[str, str]:
    """The true value of one attribute of group ``g`` and a false one that no group has."""
    if kind == "color":
        return g.color, rng.choice([c for c in COLORS if all(c != h.color for h in scene.groups)])
    if kind == "count":
        return COUNTS[g.count], rng.choice([w for c, w in COUNTS.items() if c != g.count])
    if kind == "size":
        return g.size, "small" if g.size == "large" else "large"
    if kind == "shape":
        return g.shape, rng.choice([s for s in SHAPES if all(s != h.shape for h in scene.groups)])
    return scene.relation, rng.choice([r for r in RELATIONS if r != scene.relation])


@dataclass(frozen=True)
class Question:
    kind: str  # the attribute asked about
    text: str
    answer: str
    truth: bool | None  # for a check, whether its claim is true; None for an open question


def question(scene: Scene, attributes: list[str], rng: random.Random, *, mode: str | None = None) -> Question:
    """One question that is answered truly for ``scene``: open or check (``mode``, else 1:1)."""
    kinds = [k for k in attributes if k != "relation" or scene.relation]
    kind = rng.choice(kinds)
    g = scene.groups[0] if kind == "relation" else rng.choice(scene.groups)
    fmt = {"noun": _noun(g.shape), "color": g.color, "a": _noun(g.shape)}
    if kind == "relation":
        fmt["b"] = _noun(scene.groups[1].shape)
    true, false = _true_and_false(scene, kind, g, rng)
    mode = mode or ("open" if rng.random() < 0.5 else "check")
    if mode == "open":
        answer = {"shape": g.shape, "relation": f"{true} the {fmt.get('b')}"}.get(kind, true)
        return Question(kind, OPEN[kind].format(**fmt), answer, None)
    truth = rng.random() < 0.5
    return Question(
        kind, CHECK[kind].format(value=true if truth else false, **fmt), "yes" if truth else "no", truth
    )


@dataclass
class Pool:
    """Freshly drawn scenes and their images, from the pre-training seed only."""

    scenes: list[Scene]
    images: list[Image.Image]

    @classmethod
    def draw(cls, n: int, size: int, seed: int, *, max_groups: int = 3) -> Pool:
        """``n`` random scenes of at most ``max_groups`` groups, rendered at ``size`` pixels."""
        rng = random.Random(seed)
        scenes, images = [], []
        for _ in range(n):
            s = random_scene(rng)
            s.groups = s.groups[:max_groups]
            s.relation = s.relation if len(s.groups) >= 2 else None
            # one colour per group keeps "what shape is red ?" and the colour checks unambiguous
            if len({g.color for g in s.groups}) < len(s.groups):
                for g, c in zip(s.groups, rng.sample(list(COLORS), len(s.groups)), strict=True):
                    g.color = c
            scenes.append(s)
            images.append(render(s, size, rng))
        return cls(scenes, images)


def pretrain(model, processor, cfg: PretrainConfig, image_size: int, *, slug: str = "") -> dict:
    """Pre-train ``model`` in place on visual questions about fresh scenes.

    Returns:
        ``steps``, ``first_loss``, ``last_loss`` (mean of the last 50 steps), ``cpu_minutes`` and
        ``check_accuracy`` (yes/no accuracy per attribute on other fresh scenes; 0.5 is chance).
    """
    from transformers import get_cosine_schedule_with_warmup

    check_config(cfg)
    torch.manual_seed(cfg.seed)
    cpu0 = time.process_time()
    pool = Pool.draw(cfg.scenes, image_size, cfg.seed, max_groups=cfg.max_groups)
    parts, end = template_parts(processor), assistant_end(processor)
    processor.tokenizer.padding_side = "left"
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr, weight_decay=0.01)
    sched = get_cosine_schedule_with_warmup(opt, max(1, cfg.steps // 30), cfg.steps)
    rng = random.Random(cfg.seed + 1)
    model.train()
    losses = []
    for _ in tqdm(range(cfg.steps), desc=f"pretrain {slug}", disable=None):
        idx = [rng.randrange(len(pool.scenes)) for _ in range(cfg.batch_size)]
        qs = [question(pool.scenes[i], cfg.attributes, rng) for i in idx]
        texts = [parts.head + q.text + parts.tail for q in qs]
        loss = answer_lm_loss(
            model, processor, texts, [q.answer for q in qs], [pool.images[i] for i in idx], end
        )
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        sched.step()
        opt.zero_grad(set_to_none=True)
        losses.append(float(loss.detach()))
    model.eval()
    out = {
        "steps": cfg.steps,
        "first_loss": losses[0],
        "last_loss": sum(losses[-50:]) / len(losses[-50:]),
        "cpu_minutes": (time.process_time() - cpu0) / 60,
        "check_accuracy": check_accuracy(
            model,
            processor,
            image_size,
            cfg.attributes,
            max_groups=cfg.max_groups,
            n=cfg.check_scenes,
            seed=cfg.seed + 2,
        ),
    }
    log.info(
        "%s: pre-trained %d steps, %.2f CPU-min, checks %s",
        slug,
        cfg.steps,
        out["cpu_minutes"],
        out["check_accuracy"],
    )
    return out


@torch.inference_mode()
def check_accuracy(
    model,
    processor,
    image_size: int,
    attributes: list[str],
    *,
    max_groups: int = 1,
    n: int = 240,
    seed: int = 0,
) -> dict[str, float]:
    """Yes/no accuracy per attribute on fresh scenes (half true, half altered); 0.5 is chance."""
    pool = Pool.draw(n, image_size, seed, max_groups=max_groups)
    rng = random.Random(seed)
    parts, tok = template_parts(processor), processor.tokenizer
    tok.padding_side = "left"
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    qs = [question(s, attributes, rng, mode="check") for s in pool.scenes]
    hits: dict[str, list[bool]] = {}
    for b in range(0, n, 48):
        chunk = qs[b : b + 48]
        batch = encode(processor, [parts.head + q.text + parts.tail for q in chunk], pool.images[b : b + 48])
        logits = first_answer_logits(model, batch)
        for q, said in zip(chunk, (logits[:, yes] > logits[:, no]).tolist(), strict=True):
            hits.setdefault(q.kind, []).append(said == q.truth)
    out = {k: round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}
    out["all"] = round(sum(sum(v) for v in hits.values()) / n, 3)
    return out
