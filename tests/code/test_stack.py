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
fit_ensemble(tables(), StackConfig(features=["score", "element_mean", "category:color"], element_method="logistic")).save(sys.argv[1])
"""


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
    from tokenfocus.stack import feature_row

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


def test_a_saved_ensemble_is_the_same_bytes_in_another_process_and_loads_back(tmp_path):
    """skops names arrays by memory address; the saved files must not change with the process."""
    for k in range(2):
        subprocess.run([sys.executable, "-c", SAVE, str(tmp_path / f"e{k}")], check=True)
    for name in ("stacker.skops", "element_stacker.skops", "ensemble.json"):
        assert (tmp_path / "e0" / name).read_bytes() == (tmp_path / "e1" / name).read_bytes(), name
    cfg = StackConfig(features=["score", "element_mean", "category:color"], element_method="logistic")
    fitted = fit_ensemble(tables(), cfg)
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
