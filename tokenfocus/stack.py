"""Combining backbones: bagging (seeds), blending (weights tuned on val), ridge stacking.

The stacker is fitted on held-out predictions only: the val split, which no backbone trained
on. ``fit_ensemble`` refuses any row whose prompt is in the train split, so a leak cannot
happen by accident.
"""

from __future__ import annotations

import itertools
import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from tokenfocus.config import StackConfig
from tokenfocus.evalmuse import write_json_atomic
from tokenfocus.metrics import evaluate
from tokenfocus.pair_features import check_features, design, unlisted_categories

log = logging.getLogger(__name__)


class LeakError(ValueError):
    """A stacker asked to fit on predictions of data a backbone trained on."""


def bag_tables(tables: list[list[dict]]) -> list[dict]:
    """Average several prediction tables of one backbone (seeds) row by row."""
    if len(tables) == 1:
        return tables[0]
    out = []
    for rows in zip(*tables, strict=True):
        base = dict(rows[0])
        dist = np.mean([r["distribution"] for r in rows], axis=0)
        base["distribution"] = dist.tolist()
        base["score"] = float(np.dot(dist, np.arange(1, len(dist) + 1)))
        base["entropy"] = float(-(dist * np.log(np.clip(dist, 1e-12, None))).sum())
        base["elements"] = {k: float(np.mean([r["elements"][k] for r in rows])) for k in base["elements"]}
        out.append(base)
    return out


@dataclass
class Ensemble:
    """A fitted combination of backbones (everything but the backbones themselves)."""

    slugs: list[str]
    method: str
    features: list[str]
    weights: list[float] = field(default_factory=list)  # blend weights, one per backbone
    element_method: str = "mean"
    # read once per pair from the ensemble's own element P(yes); bundles saved before have none
    element_features: list[str] = field(default_factory=list)
    stacker: object = None  # sklearn Pipeline(StandardScaler, RidgeCV)
    element_stacker: object = None  # sklearn LogisticRegression over backbone P(yes) logits

    def combine(self, tables: dict[str, list[dict]], method: str | None = None) -> list[dict]:
        """Ensemble rows (``score``, ``elements``, ``distribution``, per-backbone scores)."""
        method = method or self.method
        slugs = self.slugs
        n = len(tables[slugs[0]])
        elements = self.stacked_elements(tables)
        scores = np.array([[tables[s][i]["score"] for s in slugs] for i in range(n)])
        if method == "ridge":
            total = self.stacker.predict(self.design(tables, elements))
        elif method == "blend":
            total = scores @ np.array(self.weights)
        elif method == "mean":
            total = scores.mean(1)
        else:
            raise ValueError(f"unknown ensemble method {method!r}")
        total = np.clip(total, 1.0, 5.0)
        out = []
        for i in range(n):
            first = tables[slugs[0]][i]
            dist = np.mean([tables[s][i]["distribution"] for s in slugs], axis=0)
            out.append(
                {
                    **{
                        k: first[k]
                        for k in ("img_path", "prompt_id", "prompt", "gt_score", "gt_elements")
                        if k in first
                    },
                    "score": float(total[i]),
                    "elements": elements[i],
                    "distribution": dist.tolist(),
                    "entropy": float(-(dist * np.log(np.clip(dist, 1e-12, None))).sum()),
                    "backbone_scores": {s: float(tables[s][i]["score"]) for s in slugs},
                }
            )
        return out

    def design(self, tables: dict[str, list[dict]], elements: list[dict[str, float]]) -> np.ndarray:
        """The ridge stacker's input for these pairs, given their :meth:`stacked_elements`."""
        return design({s: tables[s] for s in self.slugs}, self.features, elements, self.element_features)

    def stacked_elements(self, tables: dict[str, list[dict]]) -> list[dict[str, float]]:
        """Per pair, each element's P(yes) combined over the backbones (:meth:`_elements`)."""
        slugs = self.slugs
        keys = [list(r["elements"]) for r in tables[slugs[0]]]
        # every element of every pair in one call: the stacker's input checks cost more than its
        # arithmetic (measured: one call per element was a fifth of the stack stage)
        flat = self._elements(
            np.array([[tables[s][i]["elements"][k] for s in slugs] for i, ks in enumerate(keys) for k in ks])
        ).tolist()
        out, start = [], 0
        for ks in keys:
            out.append(dict(zip(ks, flat[start : start + len(ks)], strict=True)))
            start += len(ks)
        return out

    def _elements(self, p: np.ndarray) -> np.ndarray:
        """P(yes) of elements (M,) from each backbone's P(yes) (M, backbones)."""
        p = p.reshape(-1, len(self.slugs))
        if self.element_method == "logistic" and self.element_stacker is not None:
            if not len(p):
                return np.empty(0)
            z = np.log(np.clip(p, 1e-6, 1 - 1e-6) / np.clip(1 - p, 1e-6, 1))
            return self.element_stacker.predict_proba(z)[:, 1]
        return p.mean(1)

    # -- persistence: skops for sklearn objects, JSON for the rest (no pickle) ------------------
    def save(self, out: str | Path) -> Path:

        out = Path(out)
        out.mkdir(parents=True, exist_ok=True)
        meta = {k: v for k, v in asdict(self).items() if k not in ("stacker", "element_stacker")}
        if self.stacker is not None:
            _dump_stable(self.stacker, out / "stacker.skops")
            ridge = self.stacker[-1]
            meta["ridge"] = {
                "alpha": float(ridge.alpha_),
                "coef": ridge.coef_.tolist(),
                "intercept": float(ridge.intercept_),
            }
        if self.element_stacker is not None:
            _dump_stable(self.element_stacker, out / "element_stacker.skops")
        write_json_atomic(out / "ensemble.json", meta)
        return out

    @classmethod
    def load(cls, path: str | Path) -> Ensemble:
        import skops.io as sio

        path = Path(path)
        meta = json.loads((path / "ensemble.json").read_text())
        meta.pop("ridge", None)
        ens = cls(**meta)
        for attr, name in (("stacker", "stacker.skops"), ("element_stacker", "element_stacker.skops")):
            if (path / name).exists():
                trusted = sio.get_untrusted_types(file=path / name)
                # Only sklearn/numpy types we wrote ourselves are accepted.
                bad = [t for t in trusted if not t.startswith(("sklearn.", "numpy."))]
                if bad:
                    raise ValueError(f"{path / name}: unexpected types {bad}")
                setattr(ens, attr, sio.load(path / name, trusted=trusted))
        return ens


def _dump_stable(obj, path: Path) -> None:
    """skops' file, made the same bytes for the same fitted object: skops names the arrays it
    stores by ``id()`` (a memory address) and stamps the zip with the time, so a rerun of the same
    commit would otherwise change the DVC output. Arrays and object references are renumbered in
    order of appearance and every entry gets a fixed date."""
    import io
    import re
    import zipfile

    import skops.io as sio

    src = zipfile.ZipFile(io.BytesIO(sio.dumps(obj)))
    schema = src.read("schema.json").decode()
    names = {}
    for m in re.finditer(r'"(\d+\.npy)"', schema):
        names.setdefault(m.group(1), f"{len(names)}.npy")
    for old, new in names.items():
        schema = schema.replace(f'"{old}"', f'"{new}"')
    ids: dict[str, str] = {}  # shared-object references are addresses too
    schema = re.sub(
        r'("__id__": )(\d+)', lambda m: m.group(1) + ids.setdefault(m.group(2), str(len(ids))), schema
    )
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as dst:
        for info in sorted(src.infolist(), key=lambda i: names.get(i.filename, i.filename)):
            data = schema.encode() if info.filename == "schema.json" else src.read(info.filename)
            dst.writestr(
                zipfile.ZipInfo(names.get(info.filename, info.filename), (1980, 1, 1, 0, 0, 0)), data
            )
    path.write_bytes(buf.getvalue())


def fit_ensemble(
    val: dict[str, list[dict]], cfg: StackConfig, *, train_prompts: set[str] = frozenset()
) -> Ensemble:
    """Fit the blend weights, the ridge stacker and the element stacker on held-out rows.

    Args:
        val: per backbone, its prediction table on held-out data (the val split).
        cfg: methods, features and the alpha grid.
        train_prompts: prompt ids the backbones trained on; any of them in ``val`` is a leak.
    """
    from sklearn.linear_model import LogisticRegression, RidgeCV
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    slugs = sorted(val)
    leaked = {r["prompt_id"] for s in slugs for r in val[s]} & set(train_prompts)
    if leaked:
        raise LeakError(f"stacker rows include {len(leaked)} training prompt(s), e.g. {sorted(leaked)[:3]}")
    check_features(list(cfg.features), list(cfg.element_features))
    y = np.array([r["gt_score"] for r in val[slugs[0]]], dtype=float)
    ens = Ensemble(
        slugs=slugs,
        method=cfg.method,
        features=list(cfg.features),
        element_method=cfg.element_method,
        element_features=list(cfg.element_features),
    )
    ens.weights = _blend_weights(val, slugs, y)
    # the elements first: the ridge may read the pair's features from the combined elements
    if cfg.element_method == "logistic":
        xs, ys = [], []
        for i, r in enumerate(val[slugs[0]]):
            for k, g in r["gt_elements"].items():
                p = np.clip([val[s][i]["elements"][k] for s in slugs], 1e-6, 1 - 1e-6)
                xs.append(np.log(p / (1 - p)))
                ys.append(int(g >= 0.5))
        ens.element_stacker = LogisticRegression().fit(np.array(xs), np.array(ys))
    # Measured (docs/styles.md): the combined elements' per-category means and shares carry over
    # to drawings no model saw better than each backbone's raw ones. The element stacker sees
    # these same rows, but with one weight per backbone it does not overfit them: the ridge fitted
    # on element stackers from the other folds (grouped by prompt) scores the same to 0.0006.
    elements = ens.stacked_elements(val)
    missing = unlisted_categories(elements, ens.element_features) if ens.element_features else []
    if missing:  # real data names other categories than SynthMuse's: say which reach no column
        log.warning(
            "stack.element_features names no column for the element categories %s of the fit rows: "
            "their elements reach the pair score only through the backbones' features; list them as "
            "category:<name> and share:<name> to give them their own",
            missing,
        )
    stacker = make_pipeline(StandardScaler(), RidgeCV(alphas=cfg.alphas))
    ens.stacker = stacker.fit(ens.design(val, elements), y)
    return ens


def _blend_weights(
    val: dict[str, list[dict]], slugs: list[str], y: np.ndarray, step: float = 0.1
) -> list[float]:
    """Weights on a simplex grid that maximise val SRCC + PLCC of the weighted score."""
    scores = np.array([[r["score"] for r in val[s]] for s in slugs]).T
    ticks = int(round(1 / step))
    best, best_w = -math.inf, [1.0 / len(slugs)] * len(slugs)
    for combo in itertools.product(range(ticks + 1), repeat=len(slugs)):
        if sum(combo) != ticks:
            continue
        w = np.array(combo) / ticks
        m = evaluate(scores @ w, y)
        value = (m["srcc"] or 0.0) + (m["plcc"] or 0.0)
        if value > best + 1e-9:
            best, best_w = value, w.tolist()
    return best_w


def comparison(
    tables: dict[str, list[dict]],
    ens: Ensemble,
    *,
    singles: dict[str, list[dict]] | None = None,
    bagged: dict[str, dict] | None = None,
) -> list[dict]:
    """Test-set rows for the report: each backbone (single seed), bagging, mean, blend and stack."""
    from tokenfocus.predictions import metrics_of

    singles = singles or tables
    rows = [{"model": s, **metrics_of(singles[s])} for s in ens.slugs]
    best = max(rows, key=lambda r: r.get("final") or -1.0)
    out = [{**best, "model": f"best single ({best['model']})"}]
    for s, m in (bagged or {}).items():
        out.append({"model": f"bagging ({s})", **m})
    for method in ("mean", "blend", "ridge"):
        out.append(
            {"model": {"ridge": "ridge stack"}.get(method, method), **metrics_of(ens.combine(tables, method))}
        )
    return rows + out
