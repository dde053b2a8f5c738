"""What stage 1's per-position heads are taught: at each position of the tower's map, the count
of the group drawn there and where that group stands against the others (docs/styles.md).
"""

from __future__ import annotations

import functools

import torch

from tokenfocus.render import Scene


@functools.lru_cache(maxsize=256)
def _where(relation: str | None, k: int, height: int, width: int) -> tuple[int | None, ...]:
    """At each position of a ``height`` x ``width`` map, the index of the region (of ``k``, laid out
    by ``relation``) that holds its centre, None where none does. The layout depends on nothing
    else, so a batch's maps are looked up, not recomputed (stage 1 asks twice a scene a step)."""
    from tokenfocus.render.draw import _regions

    boxes = _regions(Scene(groups=[], relation=relation), k)
    where = []
    for i in range(height * width):
        cx, cy = (i % width + 0.5) / width, (i // width + 0.5) / height
        hit = (gi for gi, (x0, y0, x1, y1) in enumerate(boxes) if x0 <= cx < x1 and y0 <= cy < y1)
        where.append(next(hit, None))
    return tuple(where)


def _layout(scene: Scene, height: int, width: int):
    """The scene's groups (extras last), their regions, and at each position of a ``height`` x
    ``width`` map the index of the group whose region holds its centre (None: no region does)."""
    from tokenfocus.render.draw import _regions

    groups = list(scene.groups) + scene.extras
    return groups, _regions(scene, len(groups)), _where(scene.relation, len(groups), height, width)


def token_counts(scenes: list[Scene], height: int, width: int) -> torch.Tensor:
    """(B, height * width) targets: at each position of a ``height`` x ``width`` map, the count of
    the group drawn in the region (:func:`~tokenfocus.render.draw.regions`) that holds the
    position's centre; 0 where that group is missing. Why: the language model's attention averages
    over image tokens and cannot add them into a count, so each token should carry its group's."""
    rows = []
    for sc in scenes:
        groups, _, where = _layout(sc, height, width)
        rows.append([0 if gi is None or gi in sc.missing else groups[gi].count for gi in where])
    return torch.tensor(rows, dtype=torch.long).reshape(len(scenes), height * width)


#: The directions :func:`token_relations` marks, in its columns' order.
DIRECTIONS = ("left of", "right of", "above", "below")


def token_relations(scenes: list[Scene], height: int, width: int) -> torch.Tensor:
    """(B, height * width, 4) targets: at each position of a ``height`` x ``width`` map that lies in
    a drawn group's region, whether that group is left of / right of / above / below some other
    drawn group (along the axis their regions' centres differ most). Why: the language model reads
    a token's content by attention and does not compare two tokens' places (docs/styles.md), so the
    token of a group should itself carry where it stands against the others, as it carries its
    colour: one attention step then answers "circle left of star"."""
    rows = []
    for sc in scenes:
        groups, boxes, where = _layout(sc, height, width)
        drawn = [gi for gi in range(len(groups)) if gi not in sc.missing]
        centre = {gi: ((boxes[gi][0] + boxes[gi][2]) / 2, (boxes[gi][1] + boxes[gi][3]) / 2) for gi in drawn}
        marks = {gi: [0.0] * len(DIRECTIONS) for gi in drawn}
        for gi in drawn:
            for gj in drawn:
                if gi == gj:
                    continue
                dx, dy = centre[gj][0] - centre[gi][0], centre[gj][1] - centre[gi][1]
                if abs(dx) >= abs(dy):  # gi is left of gj when gj lies to its right
                    marks[gi][0 if dx > 0 else 1] = 1.0
                else:  # image rows grow downwards: gj below gi puts gi above it
                    marks[gi][2 if dy > 0 else 3] = 1.0
        none = [0.0] * len(DIRECTIONS)
        rows.append([marks.get(gi, none) for gi in where])
    return torch.tensor(rows, dtype=torch.float32).reshape(len(scenes), height * width, len(DIRECTIONS))
