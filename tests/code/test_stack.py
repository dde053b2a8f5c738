import subprocess
import sys

import numpy as np

from tokenfocus.config import StackConfig
from tokenfocus.stack import Ensemble, fit_ensemble

SAVE = """
import sys
import numpy as np
from tests.code.test_stack import tables
from tokenfocus.config import StackConfig
from tokenfocus.stack import fit_ensemble
from tests.code.test_stack import CFG
fit_ensemble(tables(), CFG).save(sys.argv[1])
"""


CFG = StackConfig(
    features=["score", "element_mean", "category:color"],
    element_method="logistic",
    element_features=["category:object", "share:color"],
)


def tables() -> dict[str, list[dict]]:
    """Two backbones' prediction tables over 40 pairs, with elements of two categories."""
    rng = np.random.default_rng(0)
    out = {}
    truth = rng.uniform(1, 5, 40)
    for k, slug in enumerate(("a", "b")):
        rows = []
        for i, t in enumerate(truth):
            p = float(np.clip(t / 5 + rng.normal(0, 0.1), 0, 1))
            rows.append(
                {
                    "img_path": f"{i}.png",
                    "prompt_id": str(i),
                    "score": float(t + rng.normal(0, 0.5 + k)),
                    "entropy": 1.0,
                    "distribution": [0.2] * 5,
                    "elements": {"red circle (color)": p, "circle (object)": 1 - p / 2},
                    "gt_score": float(t),
                    "gt_elements": {"red circle (color)": float(t > 3), "circle (object)": 1.0},
                }
            )
        out[slug] = rows
    return out


def test_category_features_take_the_category_mean_or_the_element_mean():
    from tokenfocus.pair_features import feature_row

    row = {
        "score": 3.0,
        "entropy": 0.5,
        "elements": {"red circle (color)": 0.2, "blue star (color)": 0.4, "star (object)": 0.9},
    }
    assert feature_row(row, ["category:color", "category:object", "category:spatial"]) == [
        0.30000000000000004,
        0.9,
        np.mean([0.2, 0.4, 0.9]),
    ]


def test_share_features_count_the_pairs_elements_of_a_category():
    from tokenfocus.pair_features import feature_row

    row = {"elements": {"red circle (color)": 0.2, "blue star (color)": 0.4, "star (object)": 0.9}}
    assert feature_row(row, ["share:color", "share:object", "share:spatial"]) == [2 / 3, 1 / 3, 0.0]
    assert feature_row({"elements": {}}, ["share:color"]) == [0.0]


def test_element_features_are_read_from_the_combined_elements_once_per_pair():
    """The ridge's ensemble columns come from the element stacker's probabilities, not from any
    backbone's own: the combined score is the ridge on [score per backbone, color mean, shares]."""
    t = tables()
    cfg = StackConfig(
        features=["score"], element_method="logistic", element_features=["category:color", "share:object"]
    )
    ens = fit_ensemble(t, cfg)
    rows = ens.combine(t)
    x = np.array(
        [
            [t["a"][i]["score"], t["b"][i]["score"], r["elements"]["red circle (color)"], 0.5]
            for i, r in enumerate(rows)
        ]
    )
    assert np.allclose([r["score"] for r in rows], np.clip(ens.stacker.predict(x), 1, 5))
    raw = x.copy()
    raw[:, 2] = [t["a"][i]["elements"]["red circle (color)"] for i in range(len(rows))]
    assert not np.allclose(ens.stacker.predict(raw), ens.stacker.predict(x))  # the raw ones differ
    assert ens.stacker[-1].coef_.shape == (4,)


def test_categories_without_an_element_feature_are_named_in_a_warning(caplog):
    import logging

    cfg = StackConfig(features=["score"], element_method="logistic", element_features=["category:color"])
    with caplog.at_level(logging.WARNING, logger="tokenfocus.stack"):
        fit_ensemble(tables(), cfg)
    assert "['object']" in caplog.text  # the tables' other category; color is listed
    caplog.clear()
    cfg.element_features = ["category:color", "share:object"]
    with caplog.at_level(logging.WARNING, logger="tokenfocus.stack"):
        fit_ensemble(tables(), cfg)
    assert "element_features" not in caplog.text


def test_unknown_stacking_features_are_refused_by_name():
    import pytest

    for cfg, name in (
        (StackConfig(features=["score", "loudness"]), "stack.features"),
        (StackConfig(element_features=["score"]), "stack.element_features"),  # no pair score there
        (StackConfig(element_features=["share:"]), "stack.element_features"),
    ):
        with pytest.raises(ValueError, match=name):
            fit_ensemble(tables(), cfg)


def test_an_ensemble_saved_before_element_features_loads_and_combines_as_before(tmp_path):
    import json

    old = StackConfig(features=["score", "element_mean"], element_method="logistic")
    fitted = fit_ensemble(tables(), old)
    fitted.save(tmp_path)
    meta = json.loads((tmp_path / "ensemble.json").read_text())
    del meta["element_features"]  # what bundles registered before it wrote
    (tmp_path / "ensemble.json").write_text(json.dumps(meta))
    back = Ensemble.load(tmp_path)
    assert back.element_features == []
    assert [r["score"] for r in back.combine(tables())] == [r["score"] for r in fitted.combine(tables())]


def test_a_saved_ensemble_is_the_same_bytes_in_another_process_and_loads_back(tmp_path):
    """skops names arrays by memory address; the saved files must not change with the process."""
    for k in range(2):
        subprocess.run([sys.executable, "-c", SAVE, str(tmp_path / f"e{k}")], check=True)
    for name in ("stacker.skops", "element_stacker.skops", "ensemble.json"):
        assert (tmp_path / "e0" / name).read_bytes() == (tmp_path / "e1" / name).read_bytes(), name
    fitted = fit_ensemble(tables(), CFG)
    back = Ensemble.load(tmp_path / "e0")
    a, b = fitted.combine(tables()), back.combine(tables())
    assert [r["score"] for r in a] == [r["score"] for r in b]
    assert [r["elements"] for r in a] == [r["elements"] for r in b]


def test_combined_elements_are_each_elements_own_stacked_probability():
    """All elements go through the element stacker in one call; each pair still gets its own keys'
    probabilities, in order, when pairs hold different numbers of elements (none included)."""
    t = tables()
    for slug in t:
        for i, r in enumerate(t[slug]):
            keep = list(r["elements"])[: i % 3]  # 0, 1 or 2 elements
            r["elements"] = {k: r["elements"][k] for k in keep}
            r["gt_elements"] = {k: r["gt_elements"][k] for k in keep}
    cfg = StackConfig(features=["score", "element_mean"], element_method="logistic")
    ens = fit_ensemble(t, cfg)
    rows = ens.combine(t)
    for i, row in enumerate(rows):
        assert list(row["elements"]) == list(t["a"][i]["elements"])
        for k, got in row["elements"].items():
            p = np.clip([t[s][i]["elements"][k] for s in ("a", "b")], 1e-6, 1 - 1e-6)
            one = ens.element_stacker.predict_proba(np.log(p / (1 - p)).reshape(1, -1))[0, 1]
            assert abs(got - one) < 1e-12
    assert len({round(p, 6) for r in rows for p in r["elements"].values()}) > 10  # not one constant
    ens.element_method = "mean"
    for i, row in enumerate(ens.combine(t)):
        for k, got in row["elements"].items():
            assert got == np.mean([t[s][i]["elements"][k] for s in ("a", "b")])
