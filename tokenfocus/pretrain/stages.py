"""The curriculum's training stages: the tower as a classifier (stage 1), then questions about
fresh scenes with the tower frozen (stage 2, pairs; stage 3, elements in the scoring wording)."""

from __future__ import annotations

import logging
import random
import time

import torch
import torch.nn.functional as F
from PIL import Image
from tqdm.auto import tqdm

from tokenfocus.backbones import assistant_end, template_parts, train_mode
from tokenfocus.config import PretrainConfig, PromptConfig
from tokenfocus.losses import answer_lm_loss
from tokenfocus.pretrain.curriculum import (
    VALUE_WORDS,
    Pool,
    element_question,
    presence,
    question,
    tower_targets,
)
from tokenfocus.pretrain.parts import (
    PresenceHead,
    cosine_schedule,
    optimizer_step,
    part,
    pixel_values,
    readout,
    stage_report,
    tower_heads,
)
from tokenfocus.pretrain.targets import DIRECTIONS, token_counts, token_relations
from tokenfocus.pretrain.views import part_question
from tokenfocus.render import COUNTS, Scene, Style

log = logging.getLogger(__name__)


def _adamw(params: list, cfg: PretrainConfig) -> torch.optim.AdamW:
    """The stages' AdamW: fused (the same bits on every vendor's CPU) with ``cfg.fused_adamw``."""
    if cfg.fused_adamw:
        from tokenfocus.train.trainer import adamw

        groups = params if params and isinstance(params[0], dict) else [{"params": params}]
        return adamw(groups, lr=cfg.lr, weight_decay=0.01)
    return torch.optim.AdamW(params, lr=cfg.lr, weight_decay=0.01)


def tower_stage(
    model,
    processor,
    family: str,
    cfg: PretrainConfig,
    image_size: int,
    *,
    slug: str,
    styles: tuple[Style, ...] | None = None,
) -> tuple[dict, torch.nn.ModuleDict]:
    """Stage 1: the vision tower as a classifier of what its scenes hold (``tower_groups``).

    Returns its report and its heads (stages 2-3 keep them as an auxiliary loss when
    ``tower_head_weight`` > 0)."""
    tower = part(model, family, "tower")
    cpu0 = time.process_time()

    def feats(images):
        return tower(pixel_values=pixel_values(processor, images)).last_hidden_state

    with torch.no_grad():
        blank = feats([Image.new("RGB", (image_size, image_size))])
    width = readout(blank, cfg.tower_readout).shape[-1]
    heads = tower_heads(width, cfg.tower_groups)
    # per-position heads, one linear layer all positions share (docs/styles.md): the count of the
    # group drawn there, and where that group stands against the others
    token_weights = {"token_count": cfg.token_count_weight, "token_relation": cfg.token_relation_weight}
    for name, weight in token_weights.items():
        if weight > 0:
            heads[name] = torch.nn.Linear(readout(blank, "tokens").shape[-1], TOKEN_OUTPUTS[name])
    params = [*tower.parameters(), *heads.parameters()]
    opt = _adamw(params, cfg)
    sched = cosine_schedule(opt, cfg.tower_steps)
    tower.train()
    losses, hits = [], {k: [] for k in heads}
    for step in tqdm(range(cfg.tower_steps), desc=f"pretrain {slug} tower", disable=None):
        pool = Pool.draw(
            cfg.batch_size,
            image_size,
            cfg.seed * 1_000_003 + step,
            max_groups=cfg.tower_groups,
            styles=styles,
            count_weights=tuple(cfg.count_weights),
        )
        hidden = feats(pool.images)
        loss = _head_loss(heads, readout(hidden, cfg.tower_readout), pool.scenes, cfg.tower_groups, hits)
        for name, weight in token_weights.items():
            if weight > 0:
                loss = loss + weight * _token_loss(name, heads[name], hidden, pool.scenes, hits)
        losses.append(optimizer_step(opt, sched, params, loss))
    model.eval()
    # the heads' exact-match accuracy on the last 50 training batches (fresh scenes each step)
    return stage_report(losses, cpu0) | {"head_accuracy": _last50(hits)}, heads


#: How many outputs each per-position head has: counts 0 (none drawn there) to 4; four directions.
TOKEN_OUTPUTS = {"token_count": len(COUNTS) + 1, "token_relation": len(DIRECTIONS)}


def _token_loss(
    name: str, head: torch.nn.Module, hidden: torch.Tensor, scenes: list[Scene], hits
) -> torch.Tensor:
    """A per-position head's loss on the tower's map ``hidden``: cross-entropy on the count of the
    group drawn at each position, or one yes/no per direction; appends its exact-match rate."""
    tokens = readout(hidden, "tokens")
    h, w = hidden.shape[-2:] if hidden.dim() == 4 else (1, tokens.shape[1])
    logits = head(tokens)
    if name == "token_count":
        y = token_counts(scenes, h, w)
        hits[name].append(float((logits.argmax(-1) == y).float().mean()))
        return F.cross_entropy(logits.flatten(0, 1), y.flatten())
    y = token_relations(scenes, h, w)
    hits[name].append(float(((logits > 0) == (y > 0.5)).all(-1).float().mean()))
    return F.binary_cross_entropy_with_logits(logits, y)


def _last50(hits: dict[str, list[float]]) -> dict[str, float]:
    return {k: round(sum(v[-50:]) / len(v[-50:]), 3) for k, v in hits.items()}


def _head_loss(
    heads: torch.nn.ModuleDict, f: torch.Tensor, scenes: list[Scene], groups: int, hits
) -> torch.Tensor:
    """The tower heads' cross-entropy on ``f`` (pooled, or per position: see :func:`readout`);
    appends their exact-match rates to ``hits``."""
    loss = 0.0
    for k, y in tower_targets(scenes, groups).items():  # (the per-position heads: _token_loss)
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
    styles: tuple[Style, ...] | None = None,
    boxes: list | None = None,
) -> tuple[list[str], list[str], list[Image.Image], list[Scene]]:
    """One batch: (chat texts, answers, images, drawn scenes), fresh scenes every step.

    Open questions, element questions (``cfg.part_frac`` of them about one of ``boxes`` of a
    scene), then checked images asked twice (true and false value); attributes go round-robin, so
    every batch holds each about equally.
    """
    b = cfg.batch_size
    n_open, n_elem = round(b * open_frac), round(b * element_frac)
    n_part = round(n_elem * cfg.part_frac) if boxes else 0
    n_pairs = max(0, (b - n_open - n_elem) // 2)
    pool = Pool.draw(
        n_open + n_pairs,
        image_size,
        step_seed,
        max_groups=cfg.max_groups,
        styles=styles,
        count_weights=tuple(cfg.count_weights),
    )
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
    asked = {"styles": styles, "bind_shape": cfg.bind_shape, "balance": cfg.balance_elements}
    for _ in range(n_elem - n_part):
        e = element_question(rng, parts, prompts, image_size, **asked)
        add(e.text, e.answer, e.image, e.scene)
    for _ in range(n_part):  # no scene: the losses on what the whole scene holds skip the row
        e = part_question(rng, parts, prompts, image_size, boxes, styles=styles)
        add(e.text, e.answer, e.image, None)
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
    styles: tuple[Style, ...] | None = None,
    boxes: list | None = None,
    attempt: int = 0,
) -> dict:
    """Stages 2 and 3: next-token loss on the answers, plus the auxiliary presence loss, and with
    ``tower_head_weight`` > 0 stage 1's ``heads`` on the tower's map (tower trainable).

    ``attempt`` > 0 (a guarded stage run again) draws other scenes and questions."""
    tower, projector = part(model, family, "tower"), part(model, family, "projector")
    keep_heads = cfg.tower_head_weight > 0 and heads is not None
    if cfg.freeze_tower and not keep_heads:
        for p in tower.parameters():
            p.requires_grad_(False)
    parts, end = template_parts(processor), assistant_end(processor)
    tok = processor.tokenizer
    value_ids = torch.tensor([tok.convert_tokens_to_ids(w) for w in VALUE_WORDS])
    aux = PresenceHead(len(VALUE_WORDS))
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
    opt = _adamw(groups, cfg)
    sched = cosine_schedule(opt, steps)
    rng = random.Random(cfg.seed * 31 + steps + 7919 * attempt)
    cpu0 = time.process_time()
    losses, aux_losses, hits = [], [], {}
    train_mode(model)  # a frozen tower keeps its BatchNorm statistics
    try:
        for step in tqdm(range(steps), desc=f"pretrain {slug} {name}", disable=None):
            seed = cfg.seed * 1_000_003 + 500_000 * (name == "elements") + 100_000 * attempt + step
            texts, answers, images, scenes = _rows(
                rng, seed, cfg, parts, prompts, image_size, element_frac, open_frac, styles, boxes
            )
            loss = answer_lm_loss(model, processor, texts, answers, images, end)
            # rows about a part of a scene (no scene) are left out of the losses on the whole scene
            whole = [i for i, s in enumerate(scenes) if s is not None]
            rows = slice(None) if len(whole) == len(scenes) else whole
            scenes = [s for s in scenes if s is not None]
            if cfg.aux_weight > 0:
                tokens = captured["tokens"]
                tokens = tokens.reshape(len(texts), -1, tokens.shape[-1])[rows]
                logits = aux(tokens, model.get_input_embeddings()(value_ids))
                aux_loss = F.binary_cross_entropy_with_logits(logits, presence(scenes))
                aux_losses.append(float(aux_loss.detach()))
                loss = loss + cfg.aux_weight * aux_loss
            if keep_heads:
                head_loss = _head_loss(
                    heads, readout(captured["map"][rows], cfg.tower_readout), scenes, cfg.tower_groups, hits
                )
                loss = loss + cfg.tower_head_weight * head_loss
            losses.append(optimizer_step(opt, sched, params, loss))
    finally:
        for h in hooks:
            h.remove()
        for p in tower.parameters():
            p.requires_grad_(True)
        model.eval()
    out = stage_report(losses, cpu0)
    if aux_losses:
        out["last_aux_loss"] = round(sum(aux_losses[-50:]) / len(aux_losses[-50:]), 4)
    if hits:
        out["head_accuracy"] = _last50(hits)
    return out
