"""SynthMuse: a procedural fine-grained alignment benchmark in the raw EvalMuse layout.

A prompt describes 1-3 groups of shapes (count, size, colour, shape) and, with two or more
groups, a spatial relation between the first two. Five simulated text-to-image generators
render each prompt with their own error profiles, and simulated annotators rate each image
as EvalMuse's did: per-element 0/1 labels and a 1..5 total score, one value per annotator.
Everything follows from one seed, so a re-run is byte-identical.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import random
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from tokenfocus.config import StylesConfig, SynthConfig
from tokenfocus.evalmuse import write_json_atomic
from tokenfocus.plots import contact_sheet
from tokenfocus.render import Scene, Style, pick_style, random_scene, render
from tokenfocus.synth.annotators import (
    ANNOTATOR_BIAS,
    EXTRA_PENALTY,
    GENERATORS,
    WEIGHTS,
    annotate,
    corrupt,
    latent_alignment,
    realised,
)
from tokenfocus.synth.wording import elements_of, make_prompt, plural, short_keys, shorten

__all__ = [
    "ANNOTATOR_BIAS",
    "CHECK_DIR",
    "EXTRA_PENALTY",
    "GENERATORS",
    "HELDOUT_DIR",
    "STYLED_DIR",
    "WEIGHTS",
    "annotate",
    "ceiling",
    "corrupt",
    "draw_again",
    "elements_of",
    "generate",
    "latent_alignment",
    "make_prompt",
    "plural",
    "realised",
    "short_keys",
    "shorten",
]


def generate(
    cfg: SynthConfig,
    out: str | Path | None = None,
    *,
    styles: StylesConfig | None = None,
    on_drawn: Callable[[str, Scene, Scene], None] | None = None,
) -> dict[str, int]:
    """Write SynthMuse to ``out`` (default ``cfg.out``): raw EvalMuse files plus images.

    Files: ``train_list.json`` (labelled), ``test.json`` (no labels), ``eval.json`` (the test
    pairs' averaged labels, as the challenge's ground truth), ``prompt_t2i.json``,
    ``images/<generator>/<nnnnn>.png``, ``latent.json`` (noise-free alignment; training never
    reads it), ``styles.json`` (which style drew each image; the EvalMuse loader ignores it) and
    ``contact_sheet.png``. ``on_drawn(img_path, prompt_scene, drawn_scene)``, where given, sees each
    image's scene as the prompt asks it and as it was drawn (what its labels were read from), for
    analyses that need more than the labels (``scripts/count_errors.py``). With a held-out style
    family (``styles.heldout_family``), every labelled pair's drawn scene again in that family,
    under ``heldout_style/`` (see :func:`draw_again`), likewise in each of
    ``styles.check_families`` under ``check_style/<family>/``, and with ``synth.styled_copies``
    that many redrawings in the styles of ``styles.augment`` (by default pre-training's), under
    ``styled/<k>/``.

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
        rename = dict(zip(keys, short_keys(scene, text), strict=True)) if short else {}
        keys = [rename.get(k, k) for k in keys]
        prompts.append(
            {"prompt_id": pid, "prompt": text, "elements": keys, "type": "real" if real else "synthetic"}
        )
        for gen in gens:
            drawn = corrupt(scene, GENERATORS[gen], rng)
            img_path = f"{gen}/{counter:05d}.png"
            if on_drawn is not None:
                on_drawn(img_path, scene, drawn)
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
    jobs = []
    if book.heldout:
        jobs.append(("heldout_style", book.heldout, out / HELDOUT_DIR, "heldout_style"))
    for fam in book.check_families:  # more unseen families, each from a stream of its own
        jobs.append((f"check_{fam}", book.family(fam), out / CHECK_DIR / fam, f"check:{fam}"))
    styled = book.augmenting()  # styles.augment, or pre-training's less the benchmark's own drawing
    if cfg.styled_copies and not styled:
        raise ValueError(
            "synth.styled_copies: styles.augment is empty and styles.pretrain names no style "
            "beside styles.synth to draw in"
        )
    for k in range(cfg.styled_copies):
        jobs.append((f"styled_{k}", styled, out / STYLED_DIR / str(k), f"styled:{k}"))
    counts.update(_draw_all_again(scenes, jobs, cfg))
    return counts


def _draw_all_again(
    scenes: dict[str, Scene], jobs: list[tuple[str, tuple[Style, ...], Path, str]], cfg: SynthConfig
) -> dict[str, int]:
    """Run :func:`draw_again` for each ``(name, styles, out, stream)`` job; return name -> count.

    Why side by side: the redrawings are most of the drawing (measured, one after another: 48.6 of
    SynthMuse's 55.7 s on 2 cores), and each job draws from a random stream of its own, so a process per job
    writes the very bytes a serial run writes. One process each, even on 2 cores: three streams
    time-sliced over two cores end sooner than two workers taking three jobs.
    """
    if len(jobs) < 2 or (os.cpu_count() or 1) < 2:
        return {name: draw_again(scenes, styles, cfg, dest, stream) for name, styles, dest, stream in jobs}
    # spawn, not fork: the caller may hold torch's thread pool (a test, a flow)
    with ProcessPoolExecutor(len(jobs), mp_context=multiprocessing.get_context("spawn")) as pool:
        running = {
            name: pool.submit(draw_again, scenes, styles, cfg, dest, stream)
            for name, styles, dest, stream in jobs
        }
        return {name: job.result() for name, job in running.items()}


#: Where :func:`generate` writes the labelled pairs redrawn in the held-out style family, the
#: redrawings fine-tuning may swap in (``styled/<k>/``, one folder per copy) and the redrawings in
#: each check family (``check_style/<family>/``).
HELDOUT_DIR, STYLED_DIR, CHECK_DIR = "heldout_style", "styled", "check_style"


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
