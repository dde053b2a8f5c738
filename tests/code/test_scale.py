"""`make scale` (scripts/scale.py): the harness itself, at two tiny sizes, through the real CLI."""

from __future__ import annotations

import json
import resource
import shutil
import sys
from pathlib import Path

import pytest

from tests.conftest import write_tiny_params

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT / "scripts"))


@pytest.mark.slow  # ~75 s of stage processes; `make test-all` runs it
def test_the_harness_times_every_stage_at_every_size(tiny_params, tmp_path):
    import scale

    from tokenfocus.train import Trainer

    slug = "idefics3_tiny"
    repo = tmp_path / "repo"
    repo.mkdir()
    write_tiny_params(repo / "params.yaml", backbones=(slug,))
    shutil.copytree(tiny_params.backbone(slug).source, repo / "models" / "base" / slug)
    Trainer(slug, tiny_params, out=repo / "models" / "trained" / slug).run()

    result = scale.run((100, 200), tmp_path / "work", repo)
    rows = result["rows"]
    names = ["synth", "validate", "split", f"score@{slug}", "stack", "evaluate", "register", "predict"]
    assert [(r["stage"], r["pairs"]) for r in rows] == [(s, n) for n in (100, 200) for s in names]
    assert all(
        r["seconds"] > 0 and r["s_per_pair"] == pytest.approx(r["seconds"] / r["pairs"], rel=0.01)
        for r in rows
    )
    assert all(0.02 < r["peak_rss_gib"] < 8 for r in rows)
    # each figure is the stage's own, not the (large) harness process's that launched it
    own = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    split = [r["peak_rss_gib"] for r in rows if r["stage"] == "split"]
    assert max(split) < 0.5 * own, (split, own)
    # the data really had that shape, and predict scored every test pair
    for n in (100, 200):
        d = tmp_path / "work" / str(n)
        labelled = json.loads((d / "data" / "train_list.json").read_text())
        test = json.loads((d / "data" / "test.json").read_text())
        assert len(labelled) + len(test) == n and len(labelled) == 3 * len(test)
        assert len(json.loads((d / "output.json").read_text())) == len(test)
        assert result["epochs"][n][slug] > 0
    assert result["epochs"][100][slug] == pytest.approx(2 * result["epochs"][200][slug], rel=0.25)

    text = scale.write(result, tmp_path / "scaling.md", tmp_path / "scaling.png")
    assert "| stage | pairs | seconds | s_per_pair | peak_rss_gib |" in text
    assert (tmp_path / "scaling.png").stat().st_size > 1000
    verdict = {v["stage"]: v for v in scale.verdict(rows)}
    assert set(verdict) == set(names) and all(v["meets"] in ("yes", "no") for v in verdict.values())
