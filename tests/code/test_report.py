"""docs/results.md's tables from eval/: the test split beside its variants."""

import json
from pathlib import Path

from tokenfocus.config import BackboneConfig, Params
from tokenfocus.report import families_table, variant_table


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


def test_the_families_table_puts_each_drawing_side_by_side(tmp_path, monkeypatch):
    """One row per model; NTIRE, SRCC and element accuracy in test, the held-out family and each
    check family, in the order params.yaml lists them; without a check family's set, it says so."""
    from tokenfocus.config import StylesConfig

    monkeypatch.chdir(tmp_path)
    params = Params(
        backbones={"a": BackboneConfig(source="x")}, styles=StylesConfig(check_families=["w", "b"])
    )
    assert "Not measured" in families_table(params)
    m = {"srcc": 0.5, "plcc": 0.6, "element_acc": 0.8, "final": 0.7}
    blocks = {"test": m, "heldout_style": {**m, "final": 0.6}, "check_w": {**m, "final": 0.5}}
    _write(tmp_path / "eval/ensemble/metrics.json", {**blocks, "check_b": {**m, "final": 0.4}})
    _write(tmp_path / "eval/a/metrics.json", blocks)
    lines = families_table(params).splitlines()
    assert lines[0].startswith("| model | NTIRE test | NTIRE held-out | NTIRE w | NTIRE b | SRCC test")
    assert lines[2].startswith("| a | 0.700 | 0.600 | 0.500 | - | 0.500 |")
    assert lines[3].startswith("| ensemble | 0.700 | 0.600 | 0.500 | 0.400 | 0.500 |")


def _base(root, cpu: float):
    """A pre-trained base's folder whose report took ``cpu`` CPU minutes, under ``root``."""
    base = root / "models" / "base" / "b"
    base.mkdir(parents=True)
    stages = {"tower": {"steps": 4, "cpu_minutes": cpu / 2}, "elements": {"steps": 2, "cpu_minutes": cpu / 2}}
    report = {
        "stages": stages,
        "cpu_minutes": cpu,
        "check_accuracy": {"color": 0.9, "all": 0.9},
        "element_accuracy": {"object": 1.0, "all": 1.0},
    }
    (base / "tokenfocus.json").write_text(json.dumps({"slug": "b", "pretrain": report}, indent=1))
    return base


def test_a_bases_cpu_times_move_beside_it_so_a_rerun_gives_the_same_folder(tmp_path, monkeypatch):
    """The base's metadata keeps its checks and loses its CPU times, which go to the stage's own
    record; two runs that differ in their times alone leave the same bytes in the base."""
    from tokenfocus.report import bases_table
    from tokenfocus.stages import PRETRAIN_COSTS, record_costs

    metas = []
    for run, cpu in (("a", 60.0), ("b", 66.0)):
        (tmp_path / run).mkdir()
        monkeypatch.chdir(tmp_path / run)
        base = _base(tmp_path / run, cpu)
        report, costs = record_costs("b", base)
        assert costs == {"cpu_minutes": cpu, "stages": {"tower": cpu / 2, "elements": cpu / 2}}
        assert json.loads(Path(PRETRAIN_COSTS.format(slug="b")).read_text()) == costs
        assert report["check_accuracy"] == {"color": 0.9, "all": 0.9} and report["stages"]["tower"] == {
            "steps": 4
        }
        metas.append((base / "tokenfocus.json").read_bytes())
    assert metas[0] == metas[1] and b"cpu_minutes" not in metas[0]
    # the results table reads the CPU minutes from the stage's record (here run b's)
    params = Params(
        backbones={"b": BackboneConfig(source=str(tmp_path / "b" / "models" / "base" / "b"), family="x")}
    )
    assert "| b | 66.0 | 0.900 | 1.000 |" in bases_table(params)
