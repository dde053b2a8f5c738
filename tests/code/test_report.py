"""docs/results.md's tables from eval/: the test split beside its variants."""

import json

from tokenfocus.config import BackboneConfig, Params
from tokenfocus.report import variant_table


def _write(path, obj):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(obj))


def test_a_variant_table_survives_a_model_without_a_ranking(tmp_path, monkeypatch):
    """A tiny model that scores every pair alike has no SRCC, so no NTIRE score: its row says so
    ("-") instead of failing the whole report."""
    monkeypatch.chdir(tmp_path)
    m = {"srcc": 0.5, "plcc": 0.6, "element_acc": 0.8, "final": 0.7}
    flat = {"srcc": None, "plcc": None, "element_acc": 0.8, "final": None}
    _write(tmp_path / "eval/ensemble/metrics.json", {"test": m, "heldout_style": {**m, "final": 0.6}})
    _write(tmp_path / "eval/a/metrics.json", {"test": m, "heldout_style": flat})
    table = variant_table(Params(backbones={"a": BackboneConfig(source="x")}), "heldout_style", "held-out")
    rows = {line.split(" | ")[0].strip("| "): line for line in table.splitlines()[2:]}
    assert rows["a"].endswith("| - |")
    assert rows["ensemble"].endswith("| -0.1000 |")
    assert "Not measured" in variant_table(Params(), "test_short", "short keys")


def test_the_ensemble_heading_says_what_the_stacker_was_fitted_on():
    from tokenfocus.config import StackConfig
    from tokenfocus.report import fitted_on

    assert fitted_on(StackConfig()) == "val"
    assert fitted_on(StackConfig(fit_styled=2)) == "val and 2 redrawings of val in fine-tuning's styles"
    assert fitted_on(StackConfig(fit_styled=1)) == "val and 1 redrawing of val in fine-tuning's styles"
    assert fitted_on(StackConfig(fit_on="oof")) == "out-of-fold predictions of the train split"
