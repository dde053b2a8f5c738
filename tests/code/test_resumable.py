"""Bounded memory and resumable scoring (issue 25, section 1): images decoded on demand into a
bounded cache; scoring appends each chunk as it goes and a killed run resumes to the same table."""

from __future__ import annotations

import json
from pathlib import Path

from tokenfocus.images import ImageCache
from tokenfocus.predictions import score_resumably, split_records


def test_the_image_cache_decodes_on_demand_and_stays_bounded(small_data):
    paths = [r["img_path"] for r in json.loads((small_data / "train_list.json").read_text())[:3]]
    cache = ImageCache(small_data / "images", max_items=2)
    for p in paths:
        assert cache[p].size == (64, 64)
    assert len(cache) == 2 and cache.decoded == 3
    cache[paths[2]]  # still held: no decode
    assert cache.decoded == 3
    cache[paths[0]]  # evicted first: decoded again
    assert cache.decoded == 4 and len(cache) == 2
    small = ImageCache(small_data / "images", max_side=32)
    assert small[paths[0]].size == (32, 32)


def test_a_killed_scoring_run_resumes_to_the_uninterrupted_table(tiny_params, tmp_path):
    from tokenfocus.scoring import Scorer

    base = Path(tiny_params.backbone("fastvlm_gemma").source)
    scorer = Scorer.load(base, batch_size=4)
    records = split_records(tiny_params, "test")[:10]
    root = Path(tiny_params.validate.data) / "images"
    whole = score_resumably(scorer, records, root, tmp_path / "a" / "test", 4, base)
    assert len(whole) == 10 and not (tmp_path / "a" / "test.partial.jsonl").exists()
    stem = tmp_path / "b" / "test"
    cut = score_resumably(scorer, records, root, stem, 4, base, stop_after=1)  # "killed" after a chunk
    partial = stem.with_name("test.partial.jsonl")
    assert len(cut) == 4 and len(partial.read_text().splitlines()) == 1 + 4
    with partial.open("a") as f:
        f.write('{"img_path": "cut in the mid')  # the kill landed inside a write
    resumed = score_resumably(scorer, records, root, stem, 4, base)
    assert json.dumps(resumed) == json.dumps(whole)
    assert not partial.exists()


def test_a_partial_file_of_another_model_is_not_resumed(tiny_params, tmp_path):
    from tokenfocus.scoring import Scorer

    base = Path(tiny_params.backbone("fastvlm_gemma").source)
    scorer = Scorer.load(base, batch_size=4)
    records = split_records(tiny_params, "test")[:6]
    root = Path(tiny_params.validate.data) / "images"
    whole = score_resumably(scorer, records, root, tmp_path / "a" / "test", 4, base)
    stem = tmp_path / "b" / "test"
    stale = {"model": "another", "pairs": "x", "chunk": 4}
    fake = {**whole[0], "score": 9.0}
    stem.parent.mkdir(parents=True)
    stem.with_name("test.partial.jsonl").write_text(json.dumps(stale) + "\n" + json.dumps(fake) + "\n" * 1)
    assert json.dumps(score_resumably(scorer, records, root, stem, 4, base)) == json.dumps(whole)


def test_a_partial_file_of_other_pairs_at_the_same_paths_is_not_resumed(tiny_params, tmp_path):
    """Regression: the partial file named its pairs by image path alone, so a table cut while
    scoring one set of questions about the images resumed into another set at the same paths."""
    import dataclasses

    from tokenfocus.scoring import Scorer

    base = Path(tiny_params.backbone("fastvlm_gemma").source)
    scorer = Scorer.load(base, batch_size=4)
    records = split_records(tiny_params, "test")[:8]
    other = [dataclasses.replace(r, elements=r.elements[:1]) for r in records]
    root = Path(tiny_params.validate.data) / "images"
    stem = tmp_path / "b" / "test"
    score_resumably(scorer, records, root, stem, 4, base, stop_after=1)  # "killed" after a chunk
    fresh = score_resumably(scorer, other, root, tmp_path / "a" / "test", 4, base)
    assert json.dumps(score_resumably(scorer, other, root, stem, 4, base)) == json.dumps(fresh)
