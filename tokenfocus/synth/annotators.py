"""SynthMuse's simulated generators and annotators: what a generator draws for a prompt, which
elements that realises, and the per-annotator labels and scores EvalMuse stores."""

from __future__ import annotations

import copy
import random

from tokenfocus.config import SynthConfig
from tokenfocus.render import COLORS, COUNTS, RELATIONS, SHAPES, SIZES, Group, Scene
from tokenfocus.synth.wording import elements_of

#: How much each element category weighs in the annotators' score model (objects weigh most).
WEIGHTS = {"object": 2.0, "counting": 1.0, "color": 1.0, "attribute": 1.0, "spatial": 1.0}
EXTRA_PENALTY = 0.1  # latent alignment lost per unmentioned extra object group

#: Simulated generators: folder name -> probability of each error per prompt.
GENERATORS: dict[str, dict[str, float]] = {
    "FaithfulDiff-v2": {
        "missing": 0.03,
        "color": 0.05,
        "shape": 0.03,
        "count": 0.08,
        "size": 0.05,
        "relation": 0.05,
        "extra": 0.03,
    },
    "ChromaGAN-XL": {
        "missing": 0.05,
        "color": 0.45,
        "shape": 0.05,
        "count": 0.15,
        "size": 0.1,
        "relation": 0.1,
        "extra": 0.1,
    },
    "CountLess-1.5": {
        "missing": 0.1,
        "color": 0.1,
        "shape": 0.1,
        "count": 0.6,
        "size": 0.1,
        "relation": 0.15,
        "extra": 0.05,
    },
    "ShapeShift-Turbo": {
        "missing": 0.1,
        "color": 0.1,
        "shape": 0.45,
        "count": 0.2,
        "size": 0.3,
        "relation": 0.1,
        "extra": 0.15,
    },
    "LayoutDrift-3": {
        "missing": 0.35,
        "color": 0.15,
        "shape": 0.1,
        "count": 0.2,
        "size": 0.15,
        "relation": 0.5,
        "extra": 0.35,
    },
}
ANNOTATOR_BIAS = [0.0, 0.2, -0.2, 0.1, -0.1]


def realised(prompt: Scene, drawn: Scene, *, bind_shape: bool = True) -> list[bool]:
    """Which of the prompt's elements the drawn scene realises.

    With ``bind_shape``, an element about a group holds only where the group is drawn as the shape
    the prompt names: "two squares (counting)" and "red squares (color)" are false when two red
    circles stand in the squares' place, as the question asked of it ("Does the image show two
    squares?") reads, and as an annotator judges an element of an object the image does not hold;
    a relation needs both its groups drawn as named. Without it (``synth.bind_shape: false``, the
    labels before), such an element follows its group's count, colour or size alone, whatever
    shape the group was drawn as (docs/styles.md, "Elements bound to their shape").
    """
    flags = []
    for _, _, kind, i in elements_of(prompt):
        if i in drawn.missing:
            flags.append(False)
            continue
        want, got = prompt.groups[i], drawn.groups[i]
        if kind == "relation":
            ok = 1 not in drawn.missing and drawn.relation == prompt.relation
            named = range(2)  # a relation is about groups 0 and 1
        else:
            ok = getattr(want, kind) == getattr(got, kind)
            named = (i,)
        if bind_shape:
            ok = ok and all(drawn.groups[j].shape == prompt.groups[j].shape for j in named)
        flags.append(ok)
    return flags


def corrupt(scene: Scene, profile: dict[str, float], rng: random.Random) -> Scene:
    """Apply one generator's errors to the prompt's scene: what it actually draws."""
    out = copy.deepcopy(scene)
    n = len(out.groups)
    for g in out.groups:
        if rng.random() < profile["color"] / n:
            g.color = rng.choice([c for c in COLORS if c != g.color])
        if rng.random() < profile["shape"] / n:
            g.shape = rng.choice([s for s in SHAPES if s != g.shape])
        if rng.random() < profile["count"] / n:
            g.count = rng.choice([c for c in COUNTS if c != g.count])
        if rng.random() < profile["size"] / n:
            g.size = "small" if g.size == "large" else "large"
    if out.relation and rng.random() < profile["relation"]:
        out.relation = RELATIONS[out.relation]
    if rng.random() < profile["missing"]:
        out.missing.add(rng.randrange(n))
    if rng.random() < profile["extra"]:
        used = {g.shape for g in out.groups}
        out.extras.append(
            Group(
                rng.choice([s for s in SHAPES if s not in used]),
                rng.choice(list(COLORS)),
                rng.choice(list(SIZES)),
                rng.randint(1, 2),
            )
        )
    return out


def latent_alignment(prompt: Scene, drawn: Scene, *, bind_shape: bool = True) -> float:
    """The noise-free alignment: weighted share of realised elements (:func:`realised`), less a
    penalty for extras."""
    els = elements_of(prompt)
    ok = realised(prompt, drawn, bind_shape=bind_shape)
    w = [WEIGHTS[cat] for _, cat, _, _ in els]
    frac = sum(wi for wi, o in zip(w, ok, strict=True) if o) / sum(w)
    return max(0.0, frac - EXTRA_PENALTY * len(drawn.extras))


def annotate(prompt: Scene, drawn: Scene, cfg: SynthConfig, rng: random.Random) -> dict:
    """Per-annotator labels, as raw EvalMuse stores them."""
    ok = realised(prompt, drawn, bind_shape=cfg.bind_shape)
    latent = latent_alignment(prompt, drawn, bind_shape=cfg.bind_shape)
    totals, element_lists = [], [[] for _ in ok]
    for a in range(cfg.n_annotators):
        bias = ANNOTATOR_BIAS[a % len(ANNOTATOR_BIAS)]
        totals.append(int(min(5, max(1, round(1 + 4 * latent + bias + rng.gauss(0, cfg.score_noise))))))
        for j, o in enumerate(ok):
            flip = rng.random() < cfg.label_flip
            element_lists[j].append(int(o != flip))
    keys = [k for k, _, _, _ in elements_of(prompt)]
    return {
        "total_score": totals,
        "element_score": dict(zip(keys, element_lists, strict=True)),
        "latent": round(latent, 6),
    }
