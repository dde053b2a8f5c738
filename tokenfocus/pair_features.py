"""The ridge stacker's pair features: read from each backbone's prediction row, and from the
ensemble's own (combined) element probabilities, once per pair."""

from __future__ import annotations

import numpy as np

FEATURES = ("score", "entropy", "element_mean")
#: Features a row of element probabilities alone gives (no pair score): ``stack.element_features``.
ELEMENT_FEATURES = ("element_mean",)
#: Per-category features: ``category:<name>`` (mean P(yes)), ``share:<name>`` (share of elements).
CATEGORY_PREFIXES = ("category:", "share:")


def feature_row(row: dict, features: list[str]) -> list[float]:
    """One backbone's features for one pair.

    ``score``, ``entropy``, ``element_mean`` (mean element P(yes)), ``category:<name>``: the
    mean P(yes) of the pair's elements of that category (the element mean when it has none), and
    ``share:<name>``: the share of the pair's elements in that category (0 without elements).
    Measured with the tiny bases: the pair's score lies mostly in its elements, and the
    categories weigh differently (objects most); how much a category's misses cost the pair
    depends on how many of its elements the category holds, hence the shares.
    """
    from tokenfocus.evalmuse import parse_element_key

    probs = row["elements"]
    mean = float(np.mean(list(probs.values()))) if probs else 0.5
    cats = [parse_element_key(k).category for k in probs]
    out = []
    for f in features:
        if f.startswith("category:"):
            cat = f.removeprefix("category:")
            own = [p for c, p in zip(cats, probs.values(), strict=True) if c == cat]
            out.append(float(np.mean(own)) if own else mean)
        elif f.startswith("share:"):
            out.append(cats.count(f.removeprefix("share:")) / len(cats) if cats else 0.0)
        else:
            out.append({"score": row["score"], "entropy": row["entropy"], "element_mean": mean}[f])
    return out


def design(
    tables: dict[str, list[dict]],
    features: list[str],
    elements: list[dict[str, float]] | None = None,
    element_features: list[str] = (),
) -> np.ndarray:
    """The ridge stacker's (N, backbones x features + element features) matrix.

    Args:
        tables: per backbone, its prediction table; all list the same pairs in the same order.
        features: read from each backbone's own row (:func:`feature_row`).
        elements: per pair, the ensemble's element P(yes) (the element stacker's); needed when
            ``element_features`` is not empty.
        element_features: read from ``elements``, once per pair (no ``score`` or ``entropy``).
    """
    slugs = sorted(tables)
    paths = [r["img_path"] for r in tables[slugs[0]]]
    for s in slugs[1:]:
        if [r["img_path"] for r in tables[s]] != paths:
            raise ValueError(f"prediction tables of {slugs[0]} and {s} list different pairs")
    own = np.array(
        [[v for s in slugs for v in feature_row(tables[s][i], features)] for i in range(len(paths))]
    ).reshape(len(paths), -1)
    if not element_features:
        return own
    shared = np.array([feature_row({"elements": e}, list(element_features)) for e in elements])
    return np.hstack([own, shared.reshape(len(paths), -1)])


def design_names(slugs: list[str], features: list[str], element_features: list[str] = ()) -> list[str]:
    """Names of :func:`design`'s columns, in order (``<slug>:<feature>``, ``ensemble:<feature>``)."""
    return [f"{s}:{f}" for s in sorted(slugs) for f in features] + [f"ensemble:{f}" for f in element_features]


def check_features(features: list[str], element_features: list[str]) -> None:
    """Raise ValueError naming any stacking feature the stacker cannot compute."""

    def known(f: str, plain: tuple[str, ...]) -> bool:
        return f in plain or any(f.startswith(p) and f[len(p) :] for p in CATEGORY_PREFIXES)

    bad = [f for f in features if not known(f, FEATURES)]
    if bad:
        raise ValueError(
            f"stack.features: unknown feature(s) {bad}; choose from {list(FEATURES)}, "
            "category:<name> or share:<name>"
        )
    bad = [f for f in element_features if not known(f, ELEMENT_FEATURES)]
    if bad:
        raise ValueError(
            f"stack.element_features: unknown feature(s) {bad}; these are read from the ensemble's "
            f"element probabilities alone: choose from {list(ELEMENT_FEATURES)}, category:<name> or share:<name>"
        )


def unlisted_categories(elements: list[dict[str, float]], element_features: list[str]) -> list[str]:
    """Categories of these elements that no ``category:`` or ``share:`` feature names."""
    from tokenfocus.evalmuse import parse_element_key

    named = {f.split(":", 1)[1] for f in element_features if f.startswith(CATEGORY_PREFIXES)}
    found = {parse_element_key(k).category or "none" for e in elements for k in e}
    return sorted(found - named)
