"""Pre-training's questions about parts of a scene: one box of a fresh scene kept, the rest filled
with its median colour, as the scorer reads counts (:mod:`tokenfocus.scoring.counting`), asked in
the scoring wording, the label counted from where the renderer put each shape."""

from __future__ import annotations

import random

from tokenfocus.config import PromptConfig
from tokenfocus.pretrain.curriculum import ElementQuestion, fresh_scene
from tokenfocus.prompts import element_text
from tokenfocus.render import COUNTS, SHAPES, Style, pick_style, render
from tokenfocus.synth import make_prompt, plural
from tokenfocus.views import Box, box_view, canvas


def count_in(placed: list[tuple[int, float, float, float]], groups: list[int], box: Box) -> int | None:
    """How many of the shapes drawn for ``groups`` (see :func:`~tokenfocus.render.render`'s
    ``placed``) a view of ``box`` shows, or None where one of them is cut in two: at least a quarter
    and at most three quarters of its square inside the box, a count no label can settle."""
    (x0, x1), (y0, y1) = box
    n = 0
    for gi, cx, cy, r in placed:
        if gi not in groups:
            continue
        w = max(0.0, min(cx + r, x1) - max(cx - r, x0)) * max(0.0, min(cy + r, y1) - max(cy - r, y0))
        share = w / (2 * r) ** 2
        if 0.25 <= share <= 0.75:
            return None
        n += share > 0.75
    return n


def part_question(
    rng: random.Random,
    parts,
    prompts: PromptConfig,
    size: int,
    boxes: list[Box],
    *,
    want: bool | None = None,
    styles: tuple[Style, ...] | None = None,
) -> ElementQuestion:
    """A fresh scene drawn in a style from ``styles``, one of its ``boxes`` kept and the rest filled
    with its median colour (as the scorer reads counts: :mod:`tokenfocus.scoring.counting`), asked
    in the scoring wording "circle (object)" or "two circles (counting)" about the part, the label
    counted from where the renderer put each shape. True (yes) or not as ``want`` says, else 1:1.

    Why: the scorer reads a count from the answers on parts of the image, and a base that has only
    been asked about whole scenes puts the peak of a part's count on the drawn one for 0.54 of
    groups of three and 0.45 of four (docs/styles.md)."""
    want = rng.random() < 0.5 if want is None else want
    while True:
        scene = fresh_scene(rng, 3, (1.0, 1.0, 1.0, 1.0))  # counts at even odds: parts of two or more
        placed: list[tuple[int, float, float, float]] = []
        image = render(scene, size, rng, pick_style(styles, rng), placed)
        box = rng.choice(boxes)
        shape = rng.choice([g.shape for g in scene.groups] + [rng.choice(SHAPES)])
        n = count_in(placed, [i for i, g in enumerate(scene.groups) if g.shape == shape], box)
        asked = None if n is None else _part_number(n, want, rng)
        if asked is not None:
            break
    key = f"{shape} (object)" if asked == 0 else f"{COUNTS[asked]} {plural(shape, asked)} (counting)"
    text = element_text(parts, prompts, make_prompt(scene, rng, rng.random() < 0.5), key)
    return ElementQuestion(
        "part object" if asked == 0 else "part count",
        text,
        "yes" if want else "no",
        box_view(canvas(image), *box),
        scene,
    )


def _part_number(n: int, want: bool, rng: random.Random) -> int | None:
    """The number a part question claims (0: it asks for the object), true or not as ``want`` says:
    a third of the questions ask for the object, the scorer asks one of them and four counts; a
    false count is one off half the time, where the bases err most."""
    if rng.random() < 1 / 3:
        return 0 if want == (n > 0) else None
    if want:
        return n if n in COUNTS else None
    near = [c for c in COUNTS if abs(c - n) == 1]
    return rng.choice(near if near and rng.random() < 0.5 else [c for c in COUNTS if c != n])
