"""Vision-language pre-training of a tiny base: what a real LVLM brings before fine-tuning.

A real checkpoint has seen captions and visual questions before anyone fine-tunes it on
alignment scores. A tiny randomly initialised instance has not, and measurably cannot learn to
bind words to pixels from 2,800 noisy alignment scores (docs/tiny-backbones.md). So the
``pretrain@<slug>`` stage turns the random base of ``build@<slug>`` into a pre-trained one, on
freshly drawn scenes from its own seed. It never reads the benchmark's images, labels, latent
alignment, element weights or annotator model: it teaches what is in an image, never a score.

The curriculum (measured in shared/reference/pretraining-study, run "D"):

1. **Tower.** The vision tower alone learns, through throw-away linear heads, what its scenes
   hold: per shape its count (0 = absent), colour and size on 1-3 group scenes
   (``tower_groups``; 1 = the shape, colour, count and size of a one-group scene), the analogue
   of a vision encoder that arrives pre-trained. Through the language model alone, the tower
   learns shapes far too slowly.
2. **Pairs.** With the tower frozen (a trainable one forgets colour while it learns shape),
   open questions ("what color are the stars ?") and yes/no checks on 1-3 group scenes, each
   checked image asked with its true and a false value in the same batch, attributes
   round-robin within a batch. An auxiliary loss ties each attribute word's input embedding to
   the projected image tokens (max cosine similarity as a presence logit): it is what moves
   shape and colour off chance with a frozen tower.
3. **Elements.** The same mix with half of the rows asked as element questions in the scoring
   wording (``prompts.element_context`` + ``prompts.element``, the same templates the scorer
   uses), about fresh scenes drawn with errors: what pre-training teaches is what scoring asks.

Per-attribute check accuracy and per-category element accuracy on other fresh scenes go into
the base's ``tokenfocus.json``.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from tokenfocus.backbones import (
    META_FILE,
    assistant_end,
    load_model_and_processor,
    save_model,
    template_parts,
    train_mode,
)
from tokenfocus.config import BackboneConfig, ConfigError, PretrainConfig, PromptConfig
from tokenfocus.env import torch_threads
from tokenfocus.losses import answer_lm_loss
from tokenfocus.prompts import element_text
from tokenfocus.scoring import encode, first_answer_logits
from tokenfocus.synth import (
    COLORS,
    COUNTS,
    RELATIONS,
    SHAPES,
    SIZES,
    Group,
    Scene,
    corrupt,
    elements_of,
    make_prompt,
    plural,
    random_scene,
    realised,
    render,
)
from tokenfocus.tiny import families, init_dir

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
#: The words the auxiliary presence loss ties to image tokens: every value of the four attributes.
VALUE_WORDS = [*SHAPES, *COLORS, *COUNTS.values(), *SIZES]
#: Errors drawn into element-question scenes: pre-training's own profile, not a benchmark generator's.
ERRORS = {
    "missing": 0.15,
    "color": 0.4,
    "shape": 0.4,
    "count": 0.4,
    "size": 0.4,
    "relation": 0.4,
    "extra": 0.15,
}


def _noun(shape: str) -> str:
    """The plural noun a question uses for a group of ``shape``."""
    return plural(shape, 2)


def corpus() -> list[str]:
    """Every word the pre-training questions and answers use, for the tokenizer."""
    words = [*OPEN.values(), *CHECK.values(), " ".join(SHAPES), " ".join(map(_noun, SHAPES))]
    words += [" ".join(COLORS), "small large", " ".join(COUNTS.values()), " ".join(RELATIONS), "yes no"]
    return words


def check_config(cfg: PretrainConfig) -> None:
    """Refuse settings the curriculum cannot run, naming the key."""
    unknown = [a for a in cfg.attributes if a not in ATTRIBUTES]
    if unknown:
        raise ConfigError(f"pretrain.attributes: unknown {unknown}; known: {list(ATTRIBUTES)}")
    if not cfg.attributes:
        raise ConfigError("pretrain.attributes: empty; name at least one of " + str(list(ATTRIBUTES)))
    for name in ("max_groups", "tower_groups"):
        if not 1 <= getattr(cfg, name) <= 3:
            raise ConfigError(f"pretrain.{name}: {getattr(cfg, name)} is not in 1..3")
    if cfg.count_false not in ("any", "adjacent"):
        raise ConfigError(f"pretrain.count_false: {cfg.count_false!r} is not any or adjacent")
    if cfg.tower_readout not in ("pooled", "tokens"):
        raise ConfigError(f"pretrain.tower_readout: {cfg.tower_readout!r} is not pooled or tokens")
    if cfg.tower_head_weight < 0 or cfg.tower_lr_scale < 0:
        raise ConfigError("pretrain.tower_head_weight / tower_lr_scale: negative")
    if cfg.tower_head_weight > 0 and cfg.tower_groups < 2:
        raise ConfigError(
            "pretrain.tower_head_weight: the heads of a one-group tower stage "
            "(tower_groups 1) cannot be kept on multi-group scenes; set tower_groups >= 2"
        )
    if "relation" in cfg.attributes and cfg.max_groups < 2:
        raise ConfigError("pretrain.attributes: relation needs pretrain.max_groups >= 2")
    if set(cfg.attributes) == {"relation"}:  # a pool always holds one-group scenes too
        raise ConfigError("pretrain.attributes: relation alone leaves one-group scenes without a question")
    for name in ("open_frac", "element_frac"):
        if not 0.0 <= getattr(cfg, name) <= 1.0:
            raise ConfigError(f"pretrain.{name}: {getattr(cfg, name)} is not in 0..1")
    if cfg.open_frac + cfg.element_frac > 1.0:
        raise ConfigError("pretrain.open_frac + pretrain.element_frac: more than 1 leaves no room")
    for name in ("steps", "tower_steps", "element_steps", "batch_size", "threads", "check_scenes"):
        if getattr(cfg, name) < 0 or (name in ("batch_size", "threads") and getattr(cfg, name) < 1):
            raise ConfigError(f"pretrain.{name}: {getattr(cfg, name)} is out of range")


def _true_and_false(
    scene: Scene, kind: str, g: Group, rng: random.Random, *, count_false: str = "any"
) -> tuple[str, str]:
    """The true value of one attribute of group ``g`` and a false one that no group has.

    ``count_false``: a false count is any other count, or (``adjacent``) one more or one less.
    """
    if kind == "color":
        return g.color, rng.choice([c for c in COLORS if all(c != h.color for h in scene.groups)])
    if kind == "count":
        near = 1 if count_false == "adjacent" else len(COUNTS)
        return COUNTS[g.count], rng.choice([w for c, w in COUNTS.items() if 0 < abs(c - g.count) <= near])
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


def question(
    scene: Scene,
    attributes: list[str],
    rng: random.Random,
    *,
    mode: str | None = None,
    kind: str | None = None,
    truth: bool | None = None,
    count_false: str = "any",
) -> Question:
    """One question answered truly for ``scene``: open or check (``mode``, else 1:1).

    ``kind`` and ``truth`` fix the attribute and, for a check, whether its claim is true;
    ``count_false`` which false counts a count check may claim (see :func:`_true_and_false`).
    """
    kinds = [k for k in attributes if k != "relation" or scene.relation]
    kind = kind if kind in kinds else rng.choice(kinds)
    g = scene.groups[0] if kind == "relation" else rng.choice(scene.groups)
    fmt = {"noun": _noun(g.shape), "color": g.color, "a": _noun(g.shape)}
    if kind == "relation":
        fmt["b"] = _noun(scene.groups[1].shape)
    true, false = _true_and_false(scene, kind, g, rng, count_false=count_false)
    mode = mode or ("open" if rng.random() < 0.5 else "check")
    if mode == "open":
        answer = {"shape": g.shape, "relation": f"{true} the {fmt.get('b')}"}.get(kind, true)
        return Question(kind, OPEN[kind].format(**fmt), answer, None)
    truth = rng.random() < 0.5 if truth is None else truth
    return Question(
        kind, CHECK[kind].format(value=true if truth else false, **fmt), "yes" if truth else "no", truth
    )


def _fresh_scene(rng: random.Random, max_groups: int) -> Scene:
    """A random scene of at most ``max_groups`` groups, one colour per group (so "what shape is
    red ?" and the colour checks stay unambiguous)."""
    s = random_scene(rng)
    s.groups = s.groups[:max_groups]
    s.relation = s.relation if len(s.groups) >= 2 else None
    if len({g.color for g in s.groups}) < len(s.groups):
        for g, c in zip(s.groups, rng.sample(list(COLORS), len(s.groups)), strict=True):
            g.color = c
    return s


@dataclass
class Pool:
    """Freshly drawn scenes and their images, from the pre-training seed only."""

    scenes: list[Scene]
    images: list[Image.Image]

    @classmethod
    def draw(cls, n: int, size: int, seed: int, *, max_groups: int = 3) -> Pool:
        """``n`` random scenes of at most ``max_groups`` groups, rendered at ``size`` pixels."""
        rng = random.Random(seed)
        scenes = [_fresh_scene(rng, max_groups) for _ in range(n)]
        return cls(scenes, [render(s, size, rng) for s in scenes])


@dataclass(frozen=True)
class ElementQuestion:
    category: str  # object | counting | color | attribute | spatial
    text: str  # the full chat text, in the scoring wording
    answer: str  # yes | no: whether the drawn scene realises the element
    image: Image.Image
    scene: Scene  # what was drawn


def element_question(
    rng: random.Random, parts, prompts: PromptConfig, size: int, *, want: bool | None = None
) -> ElementQuestion:
    """A fresh prompt scene, drawn with errors, and one of its elements asked in the scoring
    wording; realised (yes) or not (no) as ``want`` says, else 1:1."""
    want = rng.random() < 0.5 if want is None else want
    while True:
        scene = random_scene(rng)
        drawn = corrupt(scene, ERRORS, rng)
        pick = [e for e, ok in zip(elements_of(scene), realised(scene, drawn), strict=True) if ok == want]
        if pick:
            break
    key, category, *_ = rng.choice(pick)
    prompt = make_prompt(scene, rng, rng.random() < 0.5)
    text = element_text(parts, prompts, prompt, key)
    return ElementQuestion(category, text, "yes" if want else "no", render(drawn, size, rng), drawn)


# -- the model's parts the curriculum touches ---------------------------------------------------
def _part(model, family: str, name: str) -> torch.nn.Module:
    """The family's vision tower or projector (names are data: tiny_families.yaml ``modules``)."""
    modules = families()[family].get("modules", {})
    if name not in modules:
        raise ConfigError(f"tiny family {family!r} names no {name} module (tiny_families.yaml: modules)")
    return getattr(model.model, modules[name])


def _pool(hidden: torch.Tensor) -> torch.Tensor:
    """Mean and max of a tower's output over its spatial positions: (B, C, H, W) or (B, T, D)."""
    dims = (2, 3) if hidden.dim() == 4 else (1,)
    return torch.cat([hidden.mean(dims), hidden.amax(dims)], -1)


def _readout(hidden: torch.Tensor, mode: str) -> torch.Tensor:
    """What stage 1's heads read: the pooled map (B, 2C), or every position of it (B, T, C), so
    that each image token must carry the whole scene (the language model's softmax attention
    averages over tokens and cannot sum them into a count)."""
    if mode == "pooled":
        return _pool(hidden)
    return hidden.flatten(2).transpose(1, 2) if hidden.dim() == 4 else hidden


def _pixel_values(processor, images: list[Image.Image]) -> torch.Tensor:
    px = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    return px.flatten(0, 1) if px.dim() == 5 else px  # families that nest images per sample


def _presence(scenes: list[Scene]) -> torch.Tensor:
    """(B, values) targets: which attribute values some group of each drawn scene has."""
    y = torch.zeros(len(scenes), len(VALUE_WORDS))
    for r, sc in enumerate(scenes):
        for i, g in enumerate(sc.groups):
            if i in sc.missing:
                continue
            for w in (g.shape, g.color, COUNTS[g.count], g.size):
                y[r, VALUE_WORDS.index(w)] = 1.0
        for g in sc.extras:
            for w in (g.shape, g.color, COUNTS[g.count], g.size):
                y[r, VALUE_WORDS.index(w)] = 1.0
    return y


class _Aux(torch.nn.Module):
    """Presence logits of every attribute value: max over image tokens of the cosine similarity
    between a projected image token and the value word's input embedding, scaled and shifted."""

    def __init__(self, n_values: int):
        super().__init__()
        self.scale = torch.nn.Parameter(torch.tensor(10.0))
        self.bias = torch.nn.Parameter(torch.zeros(n_values))

    def forward(self, image_tokens: torch.Tensor, word_embeddings: torch.Tensor) -> torch.Tensor:
        sim = torch.einsum(
            "btd,vd->btv", F.normalize(image_tokens, dim=-1), F.normalize(word_embeddings, dim=-1)
        )
        return self.scale * sim.amax(1) + self.bias


def _cosine(opt, steps: int):
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(opt, max(1, steps // 30), steps)


def _step(opt, sched, params, loss: torch.Tensor) -> float:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def _stage_report(losses: list[float], cpu0: float) -> dict:
    return {
        "steps": len(losses),
        "first_loss": round(losses[0], 4),
        "last_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
    }


def _tower_targets(scenes: list[Scene], groups: int) -> dict[str, torch.Tensor]:
    """Stage 1's labels. One-group scenes: the group's shape, colour, count and size. Scenes of up
    to ``groups`` > 1 groups: per shape (one column each), its count (0 = absent), its colour and
    its size (0 = absent), so the pooled map must keep which shape has which attributes."""
    if groups == 1:
        first = [s.groups[0] for s in scenes]
        return {
            "shape": torch.tensor([SHAPES.index(g.shape) for g in first]),
            "color": torch.tensor([list(COLORS).index(g.color) for g in first]),
            "count": torch.tensor([g.count - 1 for g in first]),
            "size": torch.tensor([list(SIZES).index(g.size) for g in first]),
        }
    y = {k: torch.zeros(len(scenes), len(SHAPES), dtype=torch.long) for k in ("count", "color", "size")}
    for r, sc in enumerate(scenes):
        # what was drawn: an element question's scene may miss a group or hold an extra one
        for g in [g for i, g in enumerate(sc.groups) if i not in sc.missing] + sc.extras:
            c = SHAPES.index(g.shape)
            y["count"][r, c] = g.count
            y["color"][r, c] = 1 + list(COLORS).index(g.color)
            y["size"][r, c] = 1 + list(SIZES).index(g.size)
    return y


def _tower_heads(width: int, groups: int) -> torch.nn.ModuleDict:
    """Throw-away linear heads over the pooled map, one output block per shape when ``groups`` > 1."""
    if groups == 1:
        sizes = {"shape": len(SHAPES), "color": len(COLORS), "count": len(COUNTS), "size": len(SIZES)}
    else:
        n = len(SHAPES)
        sizes = {"count": n * (len(COUNTS) + 1), "color": n * (len(COLORS) + 1), "size": n * (len(SIZES) + 1)}
    return torch.nn.ModuleDict({k: torch.nn.Linear(width, m) for k, m in sizes.items()})


def tower_stage(
    model, processor, family: str, cfg: PretrainConfig, image_size: int, *, slug: str
) -> tuple[dict, torch.nn.ModuleDict]:
    """Stage 1: the vision tower as a classifier of what its scenes hold (``tower_groups``).

    Returns its report and its heads (stages 2-3 keep them as an auxiliary loss when
    ``tower_head_weight`` > 0)."""
    tower = _part(model, family, "tower")
    cpu0 = time.process_time()

    def feats(images):
        return _readout(
            tower(pixel_values=_pixel_values(processor, images)).last_hidden_state, cfg.tower_readout
        )

    with torch.no_grad():
        width = feats([Image.new("RGB", (image_size, image_size))]).shape[-1]
    heads = _tower_heads(width, cfg.tower_groups)
    params = [*tower.parameters(), *heads.parameters()]
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)
    sched = _cosine(opt, cfg.tower_steps)
    tower.train()
    losses, hits = [], {k: [] for k in heads}
    for step in tqdm(range(cfg.tower_steps), desc=f"pretrain {slug} tower", disable=None):
        pool = Pool.draw(cfg.batch_size, image_size, cfg.seed * 1_000_003 + step, max_groups=cfg.tower_groups)
        loss = _head_loss(heads, feats(pool.images), pool.scenes, cfg.tower_groups, hits)
        losses.append(_step(opt, sched, params, loss))
    model.eval()
    # the heads' exact-match accuracy on the last 50 training batches (fresh scenes each step)
    return _stage_report(losses, cpu0) | {"head_accuracy": _last50(hits)}, heads


def _last50(hits: dict[str, list[float]]) -> dict[str, float]:
    return {k: round(sum(v[-50:]) / len(v[-50:]), 3) for k, v in hits.items()}


def _head_loss(
    heads: torch.nn.ModuleDict, f: torch.Tensor, scenes: list[Scene], groups: int, hits
) -> torch.Tensor:
    """The tower heads' cross-entropy on ``f`` (pooled, or per position: see :func:`_readout`);
    appends their exact-match rates to ``hits``."""
    loss = 0.0
    for k, y in _tower_targets(scenes, groups).items():
        if f.dim() == 3:  # per token: every position is asked about the whole scene
            y = y.unsqueeze(1).expand(-1, f.shape[1], *y.shape[1:])
        logits = heads[k](f).reshape(*y.shape, -1)
        loss = loss + F.cross_entropy(logits.flatten(0, -2), y.flatten())
        right = logits.argmax(-1) == y
        hits.setdefault(k, []).append(float((right.all(-1) if right.dim() > 1 else right).float().mean()))
    return loss


def _rows(
    rng: random.Random,
    step_seed: int,
    cfg: PretrainConfig,
    parts,
    prompts: PromptConfig,
    image_size: int,
    element_frac: float,
    open_frac: float,
) -> tuple[list[str], list[str], list[Image.Image], list[Scene]]:
    """One batch: (chat texts, answers, images, drawn scenes), fresh scenes every step.

    Open questions, element questions, then checked images asked twice (true and false value);
    attributes go round-robin, so every batch holds each about equally.
    """
    b = cfg.batch_size
    n_open, n_elem = round(b * open_frac), round(b * element_frac)
    n_pairs = max(0, (b - n_open - n_elem) // 2)
    pool = Pool.draw(n_open + n_pairs, image_size, step_seed, max_groups=cfg.max_groups)
    attrs = cfg.attributes
    texts, answers, images, scenes = [], [], [], []

    def add(text, answer, image, scene):
        texts.append(text)
        answers.append(answer)
        images.append(image)
        scenes.append(scene)

    turn = step_seed % len(attrs)
    for j in range(n_open):
        s = pool.scenes[j]
        q = question(s, attrs, rng, mode="open", kind=attrs[(turn + j) % len(attrs)])
        add(parts.head + q.text + parts.tail, q.answer, pool.images[j], s)
    for _ in range(n_elem):
        e = element_question(rng, parts, prompts, image_size)
        add(e.text, e.answer, e.image, e.scene)
    for j in range(n_pairs):
        s, im = pool.scenes[n_open + j], pool.images[n_open + j]
        kind = attrs[(turn + n_open + j) % len(attrs)]
        state = rng.getstate()  # the same group and false value for both questions of the pair
        for truth in (True, False):
            rng.setstate(state)
            q = question(s, attrs, rng, mode="check", kind=kind, truth=truth, count_false=cfg.count_false)
            add(parts.head + q.text + parts.tail, q.answer, im, s)
    return texts, answers, images, scenes


def question_stage(
    model,
    processor,
    family: str,
    cfg: PretrainConfig,
    prompts: PromptConfig,
    image_size: int,
    *,
    steps: int,
    element_frac: float,
    open_frac: float,
    name: str,
    slug: str,
    heads: torch.nn.ModuleDict | None = None,
) -> dict:
    """Stages 2 and 3: next-token loss on the answers, plus the auxiliary presence loss, and with
    ``tower_head_weight`` > 0 stage 1's ``heads`` on the tower's map (tower trainable)."""
    tower, projector = _part(model, family, "tower"), _part(model, family, "projector")
    keep_heads = cfg.tower_head_weight > 0 and heads is not None
    if cfg.freeze_tower and not keep_heads:
        for p in tower.parameters():
            p.requires_grad_(False)
    parts, end = template_parts(processor), assistant_end(processor)
    tok = processor.tokenizer
    value_ids = torch.tensor([tok.convert_tokens_to_ids(w) for w in VALUE_WORDS])
    aux = _Aux(len(VALUE_WORDS))
    captured: dict[str, torch.Tensor] = {}
    hooks = [projector.register_forward_hook(lambda m, i, o: captured.__setitem__("tokens", o))]
    if keep_heads:
        hooks.append(
            tower.register_forward_hook(lambda m, i, o: captured.__setitem__("map", o.last_hidden_state))
        )
    own = {id(p) for p in tower.parameters()}
    rest = [p for p in model.parameters() if p.requires_grad and id(p) not in own]
    rest += list(aux.parameters()) + (list(heads.parameters()) if keep_heads else [])
    mine = [p for p in tower.parameters() if p.requires_grad]
    params = rest + mine
    # the tower, when it trains on, at its own (lower) rate: at the full rate it forgets colour
    groups = [{"params": rest}] + ([{"params": mine, "lr": cfg.lr * cfg.tower_lr_scale}] if mine else [])
    opt = torch.optim.AdamW(groups, lr=cfg.lr, weight_decay=0.01)
    sched = _cosine(opt, steps)
    rng = random.Random(cfg.seed * 31 + steps)
    cpu0 = time.process_time()
    losses, aux_losses, hits = [], [], {}
    train_mode(model)  # a frozen tower keeps its BatchNorm statistics
    try:
        for step in tqdm(range(steps), desc=f"pretrain {slug} {name}", disable=None):
            seed = cfg.seed * 1_000_003 + 500_000 * (name == "elements") + step
            texts, answers, images, scenes = _rows(
                rng, seed, cfg, parts, prompts, image_size, element_frac, open_frac
            )
            loss = answer_lm_loss(model, processor, texts, answers, images, end)
            if cfg.aux_weight > 0:
                tokens = captured["tokens"]
                tokens = tokens.reshape(len(texts), -1, tokens.shape[-1])
                logits = aux(tokens, model.get_input_embeddings()(value_ids))
                aux_loss = F.binary_cross_entropy_with_logits(logits, _presence(scenes))
                aux_losses.append(float(aux_loss.detach()))
                loss = loss + cfg.aux_weight * aux_loss
            if keep_heads:
                head_loss = _head_loss(
                    heads, _readout(captured["map"], cfg.tower_readout), scenes, cfg.tower_groups, hits
                )
                loss = loss + cfg.tower_head_weight * head_loss
            losses.append(_step(opt, sched, params, loss))
    finally:
        for h in hooks:
            h.remove()
        for p in tower.parameters():
            p.requires_grad_(True)
        model.eval()
    out = _stage_report(losses, cpu0)
    if aux_losses:
        out["last_aux_loss"] = round(sum(aux_losses[-50:]) / len(aux_losses[-50:]), 4)
    if hits:
        out["head_accuracy"] = _last50(hits)
    return out


def pretrain(
    model,
    processor,
    cfg: PretrainConfig,
    image_size: int,
    *,
    family: str,
    prompts: PromptConfig | None = None,
    slug: str = "",
) -> dict:
    """Run the curriculum on ``model`` in place.

    Args:
        model: a tiny base of a family whose tower and projector ``tiny_families.yaml`` names.
        processor: its processor.
        cfg: the curriculum (see :class:`~tokenfocus.config.PretrainConfig`).
        image_size: the side the scenes are rendered at.
        family: the tiny family, to find the tower and projector.
        prompts: the scoring templates stage 3 asks elements in.
        slug: for messages.

    Returns:
        Per stage ``steps``/``first_loss``/``last_loss``/``cpu_minutes``, the total
        ``cpu_minutes``, ``check_accuracy`` per attribute and ``element_accuracy`` per category,
        both on other fresh scenes (0.5 is chance).
    """
    check_config(cfg)
    prompts = prompts or PromptConfig()
    torch_threads(cfg.threads)
    torch.manual_seed(cfg.seed)
    processor.tokenizer.padding_side = "left"
    cpu0 = time.process_time()
    stages, heads = {}, None
    if cfg.tower_steps:
        stages["tower"], heads = tower_stage(model, processor, family, cfg, image_size, slug=slug)
    common = {"family": family, "cfg": cfg, "prompts": prompts, "image_size": image_size, "slug": slug}
    common["heads"] = heads  # kept as a loss in stages 2-3 when tower_head_weight > 0
    if cfg.steps:
        stages["pairs"] = question_stage(
            model,
            processor,
            **common,
            steps=cfg.steps,
            element_frac=0.0,
            open_frac=cfg.open_frac,
            name="pairs",
        )
    if cfg.element_steps:
        stages["elements"] = question_stage(
            model,
            processor,
            **common,
            steps=cfg.element_steps,
            element_frac=cfg.element_frac,
            # the rest of the batch keeps the pairs stage's open : check ratio
            open_frac=(1 - cfg.element_frac) * cfg.open_frac,
            name="elements",
        )
    out = {
        "stages": stages,
        "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
        "check_accuracy": check_accuracy(
            model,
            processor,
            image_size,
            cfg.attributes,
            max_groups=cfg.max_groups,
            n=cfg.check_scenes,
            seed=cfg.seed + 2,
        ),
        "element_accuracy": element_accuracy(
            model, processor, prompts, image_size, n=cfg.check_scenes, seed=cfg.seed + 3
        ),
    }
    log.info(
        "%s: pre-trained, %.2f CPU-min, checks %s, elements %s",
        slug,
        out["cpu_minutes"],
        out["check_accuracy"],
        out["element_accuracy"],
    )
    return out


def _yes_margins(model, processor, texts: list[str], images: list[Image.Image]) -> list[float]:
    tok = processor.tokenizer
    tok.padding_side = "left"
    yes, no = tok.convert_tokens_to_ids("yes"), tok.convert_tokens_to_ids("no")
    out: list[float] = []
    for b in range(0, len(texts), 48):
        logits = first_answer_logits(model, encode(processor, texts[b : b + 48], images[b : b + 48]))
        out += (logits[:, yes] - logits[:, no]).tolist()
    return out


def _rate(hits: dict[str, list[bool]]) -> dict[str, float]:
    out = {k: round(sum(v) / len(v), 3) for k, v in sorted(hits.items())}
    out["all"] = round(sum(sum(v) for v in hits.values()) / sum(len(v) for v in hits.values()), 3)
    return out


@torch.inference_mode()
def check_accuracy(
    model,
    processor,
    image_size: int,
    attributes: list[str],
    *,
    max_groups: int = 3,
    n: int = 240,
    seed: int = 0,
) -> dict[str, float]:
    """Yes/no accuracy per attribute on ``n`` fresh scenes per attribute, half of the claims true
    and half false (so 0.5 is chance), plus ``all``."""
    parts = template_parts(processor)
    hits: dict[str, list[bool]] = {}
    for a, kind in enumerate(dict.fromkeys(attributes)):
        pool = Pool.draw(n, image_size, seed * 101 + a, max_groups=max_groups)
        rng = random.Random(seed + a)
        usable = [i for i, s in enumerate(pool.scenes) if kind != "relation" or s.relation]
        qs = [
            question(pool.scenes[i], [kind], rng, mode="check", truth=j % 2 == 0)
            for j, i in enumerate(usable)
        ]
        margins = _yes_margins(
            model, processor, [parts.head + q.text + parts.tail for q in qs], [pool.images[i] for i in usable]
        )
        hits[kind] = [(m > 0) == q.truth for m, q in zip(margins, qs, strict=True)]
    return _rate(hits)


@torch.inference_mode()
def element_accuracy(
    model, processor, prompts: PromptConfig, image_size: int, *, n: int = 240, seed: int = 0
) -> dict[str, float]:
    """Accuracy of element P(yes) > 0.5 per category, asked in the scoring wording about ``n``
    fresh scenes drawn with errors, half of the elements realised (0.5 is chance)."""
    parts, rng = template_parts(processor), random.Random(seed)
    qs = [element_question(rng, parts, prompts, image_size, want=i % 2 == 0) for i in range(n)]
    margins = _yes_margins(model, processor, [q.text for q in qs], [q.image for q in qs])
    hits: dict[str, list[bool]] = {}
    for m, q in zip(margins, qs, strict=True):
        hits.setdefault(q.category, []).append((m > 0) == (q.answer == "yes"))
    return _rate(hits)


def pretrain_base(
    slug: str, params, *, init: str | Path | None = None, out: str | Path | None = None
) -> Path | None:
    """The ``pretrain@<slug>`` stage: load the random base, run the curriculum, save the base.

    Args:
        slug: the backbone; a real checkpoint (no ``family``) arrives pre-trained and is skipped.
        params: the project params.
        init: the random base (default ``<pretrain init folder>/<slug>``, from ``build@<slug>``).
        out: where the pre-trained base goes (default the backbone's ``source``); written in
            full before it replaces an old one.

    Returns:
        The base's folder, or None for a real checkpoint.
    """
    bb: BackboneConfig = params.backbone(slug)
    if not bb.family:
        log.info("%s: %s arrives pre-trained (no tiny family)", slug, bb.source)
        return None
    init = Path(init or init_dir(slug, params))
    out = Path(out or bb.source)
    cfg = params.pretrain_for(slug)
    check_config(cfg)
    model, processor = load_model_and_processor(init, dataclasses.replace(bb, source=str(init)), slug=slug)
    meta = json.loads((init / META_FILE).read_text())
    if cfg.steps or cfg.tower_steps or cfg.element_steps:
        meta["pretrain"] = pretrain(
            model,
            processor,
            cfg,
            bb.image_size,
            family=bb.family,
            prompts=params.prompts_for(slug),
            slug=slug,
        )
    meta["kind"] = "base"
    return save_model(model, processor, meta, out)
