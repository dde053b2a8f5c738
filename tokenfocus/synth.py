"""SynthMuse: a procedural fine-grained alignment benchmark in the raw EvalMuse layout.

A prompt describes 1-3 groups of shapes (count, size, colour, shape) and, with two or more
groups, a spatial relation between the first two. Five simulated text-to-image generators
render each prompt with their own error profiles, and simulated annotators rate each image
as EvalMuse's did: per-element 0/1 labels and a 1..5 total score, one value per annotator.
Everything follows from one seed, so a re-run is byte-identical.
"""

from __future__ import annotations

import copy
import json
import random
from pathlib import Path

from tokenfocus.config import StylesConfig, SynthConfig
from tokenfocus.evalmuse import parse_element_key, write_json_atomic
from tokenfocus.plots import contact_sheet
from tokenfocus.render import (
    COLORS,
    COUNTS,
    RELATIONS,
    SHAPES,
    SIZES,
    Group,
    Scene,
    Style,
    pick_style,
    random_scene,
    render,
)

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


def plural(shape: str, count: int) -> str:
    """The noun for ``count`` shapes: ``circle``, ``circles``, ``crosses``."""
    return shape if count == 1 else shape + "es" if shape.endswith("s") else shape + "s"


def _phrase(g: Group, rng: random.Random, real: bool) -> str:
    size = g.size
    if real and rng.random() < 0.5:
        size = {
            "small": rng.choice(["small", "tiny", "little"]),
            "large": rng.choice(["large", "big", "huge"]),
        }[g.size]
    count = COUNTS[g.count]
    if real and g.count == 1 and rng.random() < 0.5:
        count = "a"
    return f"{count} {size} {g.color} {plural(g.shape, g.count)}"


def make_prompt(scene: Scene, rng: random.Random, real: bool) -> str:
    """Render a scene's prompt in the templated (synthetic) or varied (real) register."""
    parts = [_phrase(g, rng, real) for g in scene.groups]
    if not real:
        text = parts[0]
        if scene.relation:
            text += f" {scene.relation} {parts[1]}"
        if len(parts) == 3:
            text += f" and {parts[2]}"
        return text
    rel = scene.relation
    if rel and rng.random() < 0.5:
        rel = {
            "left of": "to the left of",
            "right of": "to the right of",
            "above": "placed above",
            "below": "underneath",
        }[rel]
    body = parts[0] + (f" {rel} {parts[1]}" if rel else "")
    if len(parts) == 3:
        body += rng.choice([f", plus {parts[2]}", f" together with {parts[2]}", f" and {parts[2]}"])
    opener = rng.choice(
        ["a picture of ", "an image showing ", "there are ", "a drawing with ", "", "a scene where we see "]
    )
    return opener + body + rng.choice(["", " on a plain background", ", simple flat style"])


def elements_of(scene: Scene) -> list[tuple[str, str, str, int]]:
    """(key, category, kind, group index) for every element of the prompt."""
    out = []
    for i, g in enumerate(scene.groups):
        noun = plural(g.shape, g.count)
        out.append((f"{g.shape} ({'object'})", "object", "shape", i))
        out.append((f"{COUNTS[g.count]} {noun} (counting)", "counting", "count", i))
        out.append((f"{g.color} {noun} (color)", "color", "color", i))
        out.append((f"{g.size} {noun} (attribute)", "attribute", "size", i))
    if scene.relation:
        a, b = scene.groups[0], scene.groups[1]
        out.append((f"{a.shape} {scene.relation} {b.shape} (spatial)", "spatial", "relation", 0))
    return out


def shorten(keys: list[str]) -> list[str]:
    """EvalMuse's short form of SynthMuse's compositional keys, a span of the prompt and its
    category: ``red circles (color)`` -> ``red (color)``, ``two circles (counting)`` -> ``two
    (counting)``, ``circle left of star (spatial)`` -> ``left of (spatial)``; object keys are one
    noun already. A span two elements share keeps its compositional key, so keys stay unique."""
    nouns = {w for s in SHAPES for w in (s, plural(s, 2))}
    spans = []
    for key in keys:
        el = parse_element_key(key)
        words = el.text.split()
        if el.category in ("counting", "color", "attribute", "spatial") and nouns & set(words):
            spans.append(f"{' '.join(w for w in words if w not in nouns)} ({el.category})")
        else:
            spans.append(key)
    clash = {s for s in spans if spans.count(s) > 1}
    return [key if s in clash else s for key, s in zip(keys, spans, strict=True)]


def short_keys(scene: Scene) -> list[str]:
    """:func:`shorten` of a scene's element keys."""
    return shorten([k for k, *_ in elements_of(scene)])


def realised(prompt: Scene, drawn: Scene) -> list[bool]:
    """Which of the prompt's elements the drawn scene realises."""
    flags = []
    for _, _, kind, i in elements_of(prompt):
        if i in drawn.missing:
            flags.append(False)
            continue
        want, got = prompt.groups[i], drawn.groups[i]
        if kind == "relation":
            flags.append(1 not in drawn.missing and drawn.relation == prompt.relation)
        else:
            flags.append(getattr(want, kind) == getattr(got, kind))
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


def latent_alignment(prompt: Scene, drawn: Scene) -> float:
    """The noise-free alignment: weighted share of realised elements, less a penalty for extras."""
    els = elements_of(prompt)
    ok = realised(prompt, drawn)
    w = [WEIGHTS[cat] for _, cat, _, _ in els]
    frac = sum(wi for wi, o in zip(w, ok, strict=True) if o) / sum(w)
    return max(0.0, frac - EXTRA_PENALTY * len(drawn.extras))


def annotate(prompt: Scene, drawn: Scene, cfg: SynthConfig, rng: random.Random) -> dict:
    """Per-annotator labels, as raw EvalMuse stores them."""
    ok = realised(prompt, drawn)
    latent = latent_alignment(prompt, drawn)
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


def generate(
    cfg: SynthConfig, out: str | Path | None = None, *, styles: StylesConfig | None = None
) -> dict[str, int]:
    """Write SynthMuse to ``out`` (default ``cfg.out``): raw EvalMuse files plus images.

    Files: ``train_list.json`` (labelled), ``test.json`` (no labels), ``eval.json`` (the test
    pairs' averaged labels, as the challenge's ground truth), ``prompt_t2i.json``,
    ``images/<generator>/<nnnnn>.png``, ``latent.json`` (noise-free alignment; training never
    reads it), ``styles.json`` (which style drew each image; the EvalMuse loader ignores it) and
    ``contact_sheet.png``. With a held-out style family (``styles.heldout_family``), every
    labelled pair's drawn scene again in that family, under ``heldout_style/`` (see
    :func:`draw_again`), and with ``synth.styled_copies`` that many redrawings in the styles
    pre-training draws, under ``styled/<k>/``.

    Returns:
        Counts of what was written.
    """
    out = Path(out or cfg.out)
    book = (styles or StylesConfig()).book()
    drawing = book.styles("synth")
    rng = random.Random(cfg.seed)
    gens = list(GENERATORS)[: cfg.images_per_prompt] if cfg.images_per_prompt <= len(GENERATORS) else None
    if gens is None:
        raise ValueError(
            f"images_per_prompt={cfg.images_per_prompt} exceeds the {len(GENERATORS)} generators"
        )
    train, test, evals, prompts, latent, drawn_in, scenes = [], [], [], [], {}, {}, {}
    counter = 0
    for p in range(cfg.n_prompts + cfg.n_test_prompts):
        scene = random_scene(rng)
        real = rng.random() < cfg.real_fraction
        pid = f"sm{p:05d}"
        text = make_prompt(scene, rng, real)
        keys = [k for k, _, _, _ in elements_of(scene)]
        # a share of prompts keyed as EvalMuse keys them, from a stream of its own (so nothing
        # else in the data moves with the share)
        short = random.Random(f"{cfg.seed}:short:{p}").random() < cfg.short_keys
        rename = dict(zip(keys, short_keys(scene), strict=True)) if short else {}
        keys = [rename.get(k, k) for k in keys]
        prompts.append(
            {"prompt_id": pid, "prompt": text, "elements": keys, "type": "real" if real else "synthetic"}
        )
        for gen in gens:
            drawn = corrupt(scene, GENERATORS[gen], rng)
            img_path = f"{gen}/{counter:05d}.png"
            counter += 1
            dest = out / "images" / img_path
            dest.parent.mkdir(parents=True, exist_ok=True)
            style = pick_style(drawing, rng)
            drawn_in[img_path] = style.name if style else "classic"
            render(drawn, cfg.image_size, rng, style).save(dest, format="PNG", optimize=False)
            if p < cfg.n_prompts:
                scenes[img_path] = drawn
            ann = annotate(scene, drawn, cfg, rng)
            ann["element_score"] = {rename.get(k, k): v for k, v in ann["element_score"].items()}
            latent[img_path] = ann["latent"]
            rec = {
                "prompt_id": pid,
                "prompt": text,
                "img_path": img_path,
                "type": "real" if real else "synthetic",
            }
            n = cfg.n_annotators
            labelled = {
                **rec,
                "total_score": ann["total_score"],
                "element_score": ann["element_score"],
                "promt_meaningless": [0] * n,
                "split_confidence": [0] * n,
                "attribute_confidence": [1] * n,
            }
            if p < cfg.n_prompts:
                train.append(labelled)
            else:
                test.append({**rec, "element_score": dict.fromkeys(keys, None)})
                evals.append(
                    {
                        **rec,
                        "total_score": sum(ann["total_score"]) / n,
                        "element_score": {k: sum(v) / n for k, v in ann["element_score"].items()},
                    }
                )
    write_json_atomic(out / "train_list.json", train)
    write_json_atomic(out / "test.json", test)
    write_json_atomic(out / "eval.json", evals)
    write_json_atomic(out / "prompt_t2i.json", prompts)
    write_json_atomic(out / "latent.json", latent)
    write_json_atomic(out / "styles.json", drawn_in)
    contact_sheet(out, train[:24]).save(out / "contact_sheet.png", format="PNG")
    counts = {"train": len(train), "test": len(test), "images": counter, "prompts": len(prompts)}
    if book.heldout:
        counts["heldout_style"] = draw_again(scenes, book.heldout, cfg, out / HELDOUT_DIR, "heldout_style")
    # the styles pre-training learns from, less the benchmark's own drawing
    styled = tuple(dict.fromkeys(s for s in book.styles("pretrain") if s.name not in book.synth))
    if cfg.styled_copies and not styled:
        raise ValueError("synth.styled_copies: styles.pretrain names no style beside styles.synth to draw in")
    for k in range(cfg.styled_copies):
        counts[f"styled_{k}"] = draw_again(scenes, styled, cfg, out / STYLED_DIR / str(k), f"styled:{k}")
    return counts


#: Where :func:`generate` writes the labelled pairs redrawn in the held-out style family, and
#: the redrawings fine-tuning may swap in (``styled/<k>/``, one folder per copy).
HELDOUT_DIR, STYLED_DIR = "heldout_style", "styled"


def draw_again(
    scenes: dict[str, Scene], styles: tuple[Style, ...], cfg: SynthConfig, out: Path, stream: str
) -> int:
    """Draw each labelled pair's scene again, each in one of ``styles``, under the same relative
    path in ``out/images``: the same prompts, elements and labels, other pixels. The held-out
    family's copy is pixels no model learned from; a styled copy is what fine-tuning may learn
    from (``train.augment_styles``). ``out/styles.json`` says which style drew each image.

    A random stream of its own (``stream``), so the benchmark's own images do not change.
    """
    rng = random.Random(f"{cfg.seed}:{stream}")
    drawn_in = {}
    for img_path, drawn in scenes.items():
        style = rng.choice(styles)
        dest = out / "images" / img_path
        dest.parent.mkdir(parents=True, exist_ok=True)
        render(drawn, cfg.image_size, rng, style).save(dest, format="PNG", optimize=False)
        drawn_in[img_path] = style.name
    write_json_atomic(out / "styles.json", drawn_in)
    return len(drawn_in)


def ceiling(root: str | Path, img_paths: list[str] | None = None) -> float:
    """SRCC between latent alignment and annotators' mean score: the benchmark's ceiling."""
    from scipy.stats import spearmanr

    root = Path(root)
    latent = json.loads((root / "latent.json").read_text())
    raws = json.loads((root / "train_list.json").read_text())
    means = {r["img_path"]: sum(r["total_score"]) / len(r["total_score"]) for r in raws}
    evals = json.loads((root / "eval.json").read_text())
    means.update({r["img_path"]: r["total_score"] for r in evals})
    keys = img_paths if img_paths is not None else list(means)
    return float(spearmanr([latent[k] for k in keys], [means[k] for k in keys]).statistic)
