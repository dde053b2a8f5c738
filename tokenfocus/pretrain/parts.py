"""The model's parts the curriculum touches (tower, projector) and the small pieces around them:
readouts of the tower's map, throw-away heads, and the optimiser step every stage shares."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F
from PIL import Image

from tokenfocus.config import ConfigError
from tokenfocus.render import COLORS, COUNTS, SHAPES, SIZES
from tokenfocus.tiny import families


def part(model, family: str, name: str) -> torch.nn.Module:
    """The family's vision tower or projector (names are data: tiny_families.yaml ``modules``)."""
    modules = families()[family].get("modules", {})
    if name not in modules:
        raise ConfigError(f"tiny family {family!r} names no {name} module (tiny_families.yaml: modules)")
    return getattr(model.model, modules[name])


def pool_map(hidden: torch.Tensor) -> torch.Tensor:
    """Mean and max of a tower's output over its spatial positions: (B, C, H, W) or (B, T, D)."""
    dims = (2, 3) if hidden.dim() == 4 else (1,)
    return torch.cat([hidden.mean(dims), hidden.amax(dims)], -1)


def readout(hidden: torch.Tensor, mode: str) -> torch.Tensor:
    """What stage 1's heads read: the pooled map (B, 2C), or every position of it (B, T, C), so
    that each image token must carry the whole scene (the language model's softmax attention
    averages over tokens and cannot sum them into a count)."""
    if mode == "pooled":
        return pool_map(hidden)
    return hidden.flatten(2).transpose(1, 2) if hidden.dim() == 4 else hidden


def pixel_values(processor, images: list[Image.Image]) -> torch.Tensor:
    px = processor.image_processor(images, return_tensors="pt")["pixel_values"]
    return px.flatten(0, 1) if px.dim() == 5 else px  # families that nest images per sample


class PresenceHead(torch.nn.Module):
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


def tower_heads(width: int, groups: int) -> torch.nn.ModuleDict:
    """Throw-away linear heads over the pooled map, one output block per shape when ``groups`` > 1."""
    if groups == 1:
        sizes = {"shape": len(SHAPES), "color": len(COLORS), "count": len(COUNTS), "size": len(SIZES)}
    else:
        n = len(SHAPES)
        sizes = {"count": n * (len(COUNTS) + 1), "color": n * (len(COLORS) + 1), "size": n * (len(SIZES) + 1)}
    return torch.nn.ModuleDict({k: torch.nn.Linear(width, m) for k, m in sizes.items()})


def cosine_schedule(opt, steps: int):
    from transformers import get_cosine_schedule_with_warmup

    return get_cosine_schedule_with_warmup(opt, max(1, steps // 30), steps)


def optimizer_step(opt, sched, params, loss: torch.Tensor) -> float:
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, 1.0)
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=True)
    return float(loss.detach())


def stage_report(losses: list[float], cpu0: float) -> dict:
    return {
        "steps": len(losses),
        "first_loss": round(losses[0], 4),
        "last_loss": round(sum(losses[-50:]) / len(losses[-50:]), 4),
        "cpu_minutes": round((time.process_time() - cpu0) / 60, 2),
    }
