"""Scoring whole splits with one backbone, reading the prediction tables back, and a record list's metrics.

A prediction table is a JSON list, one row per pair: ``img_path``, ``prompt_id``, ``score``,
``distribution``, ``entropy``, ``elements`` (key -> P(yes)), and the ground truth when known.
"""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from tokenfocus.config import Params
from tokenfocus.distributed import init, merge_shards, world
from tokenfocus.evalmuse import Record, load_records, write_json_atomic, write_submission
from tokenfocus.metrics import evaluate
from tokenfocus.split import load_split

log = logging.getLogger(__name__)
#: Splits a backbone is scored on: val (stacker fit), test (report), ntire (test.json, eval.json).
SCORED_SPLITS = ("val", "test", "ntire")
#: The test split's pairs drawn in the held-out style family (SynthMuse's ``heldout_style/``).
HELDOUT = "heldout_style"
#: The test split's pairs with SynthMuse's element keys in EvalMuse's short form (same images, labels).
SHORT = "test_short"
#: The test split's variants, reported beside it in the same form (see :func:`test_variants`).
TEST_VARIANTS = (HELDOUT, SHORT)
#: ``check_<family>``: the test split's pairs drawn in a check family (``styles.check_families``).
CHECK = "check_"
#: ``val_styled<k>``: the val split's pairs redrawn in fine-tuning's styles (SynthMuse's
#: ``styled/<k>/``), extra rows for the stacker's fit (``stack.fit_styled``).
STYLED_VAL = "val_styled"


def scored_splits(params: Params) -> tuple[str, ...]:
    """:data:`SCORED_SPLITS`, plus on SynthMuse (its ``styles.json``) :data:`SHORT`,
    :data:`HELDOUT` where the data holds a held-out style set, each check family's set it holds,
    and the first ``stack.fit_styled`` of val's redrawings that the data holds."""
    root = Path(params.validate.data)
    short = (SHORT,) if (root / "styles.json").exists() else ()
    drawn = tuple(v for v in test_variants(params) if v != SHORT and image_root(params, v).is_dir())
    styled = tuple(
        f"{STYLED_VAL}{k}" for k in range(params.stack.fit_styled) if styled_root(root, k).is_dir()
    )
    return SCORED_SPLITS + short + drawn + styled


def test_variants(params: Params) -> tuple[str, ...]:
    """The test split's variants, each reported beside it: :data:`TEST_VARIANTS`, then
    ``check_<family>`` for each of ``styles.check_families``."""
    return TEST_VARIANTS + tuple(f"{CHECK}{fam}" for fam in params.styles.check_families)


def styled_root(data: Path, k: int) -> Path:
    """The images of SynthMuse's ``k``-th redrawing of the labelled pairs."""
    from tokenfocus.synth import STYLED_DIR

    return data / STYLED_DIR / str(k) / "images"


def image_root(params: Params, split: str) -> Path:
    """The folder a split's ``img_path`` values are relative to."""
    from tokenfocus.synth import CHECK_DIR

    root = Path(params.validate.data)
    if split.startswith(STYLED_VAL):
        return styled_root(root, int(split.removeprefix(STYLED_VAL)))
    if split.startswith(CHECK):
        return root / CHECK_DIR / split.removeprefix(CHECK) / "images"
    return root / HELDOUT / "images" if split == HELDOUT else root / "images"


def split_records(params: Params, split: str) -> list[Record]:
    """Records of a split: ``train``/``val``/``test`` of train_list.json, ``ntire`` (test.json
    with labels from eval.json when it exists), ``heldout_style`` or ``check_<family>`` (the
    test split's records, whose images :func:`image_root` finds in that family's set), or
    ``val_styled<k>`` (val's records, drawn in SynthMuse's ``k``-th redrawing)."""
    root = Path(params.validate.data)
    if split == SHORT:
        from tokenfocus.synth import shorten

        return [_rekeyed(r, shorten(list(r.element_score), r.prompt)) for r in split_records(params, "test")]
    if split == HELDOUT or split.startswith(CHECK):
        split = "test"
    if split.startswith(STYLED_VAL):
        split = "val"
    if split.startswith("train-fold"):  # one stacking fold of the train split
        fold = int(split.removeprefix("train-fold"))
        return load_split(load_records(root / "train_list.json"), params.split.out, "train", fold=fold)
    if split != "ntire":
        return load_split(load_records(root / "train_list.json"), params.split.out, split)
    records = load_records(root / "test.json")
    if (root / "eval.json").exists():
        truth = {r.img_path: r for r in load_records(root / "eval.json")}
        for r in records:
            t = truth.get(r.img_path)
            if t is not None:
                r.total_score, r.element_score = (
                    t.total_score,
                    {k: t.element_score.get(k) for k in r.element_score},
                )
    return records


def _rekeyed(r: Record, keys: list[str]) -> Record:
    """``r`` with its element keys renamed, in order (the labels follow their key)."""
    from dataclasses import replace

    from tokenfocus.evalmuse import parse_element_key

    scores = dict(zip(keys, r.element_score.values(), strict=True))
    return replace(r, element_score=scores, elements=[parse_element_key(k) for k in keys])


def prediction_rows(records: list[Record], results) -> list[dict]:
    """Rows of a prediction table from records and their :class:`ScoreResult` list."""
    return [
        {
            "img_path": r.img_path,
            "prompt_id": r.prompt_id,
            "prompt": r.prompt,
            "score": res.score,
            "distribution": res.distribution,
            "entropy": res.entropy,
            "elements": res.elements,
            "gt_score": r.total_score,
            "gt_elements": r.element_score,
        }
        for r, res in zip(records, results, strict=True)
    ]


def write_table_submission(path: str | Path, params: Params, rows: list[dict]) -> Path:
    """The NTIRE ``output.json`` of a prediction table of ``test.json`` (in that file's order)."""
    records = load_records(Path(params.validate.data) / "test.json")
    by_path = {r["img_path"]: r for r in rows}
    return write_submission(
        path,
        records,
        [by_path[r.img_path]["score"] for r in records],
        [by_path[r.img_path]["elements"] for r in records],
    )


def metrics_of(rows: list[dict]) -> dict[str, float]:
    """NTIRE metrics of a prediction table with ground truth."""
    rows = [r for r in rows if r["gt_score"] is not None]
    if len(rows) < 3:
        return {}
    pe = [r["elements"][k] for r in rows for k, v in r["gt_elements"].items() if v is not None]
    ge = [v for r in rows for v in r["gt_elements"].values() if v is not None]
    out = evaluate([r["score"] for r in rows], [r["gt_score"] for r in rows], pe, ge)
    if any(r["elements"] for r in rows):
        # how well the mean element P(yes) alone ranks the pairs: what the stacker builds on
        means = [sum(r["elements"].values()) / len(r["elements"]) if r["elements"] else 0.5 for r in rows]
        out["element_mean_srcc"] = evaluate(means, [r["gt_score"] for r in rows])["srcc"]
    return out


def read_table(path: str | Path) -> list[dict]:
    """Read a prediction table written by :func:`score_backbone`."""
    return json.loads(Path(path).read_text())


def score_backbone(
    slug: str,
    params: Params,
    *,
    splits: tuple[str, ...] = SCORED_SPLITS,
    model_dir: str | Path | None = None,
    out: str | Path | None = None,
) -> dict[str, dict]:
    """Score splits with a trained backbone; write tables, the NTIRE output.json and metrics.

    Returns:
        Metrics per split (empty for a split without labels).
    """
    from tokenfocus.gemm import backbone_products
    from tokenfocus.scoring import Scorer

    model_dir = Path(model_dir or Path(params.train.out) / slug / "model")
    if not model_dir.exists():
        raise FileNotFoundError(
            f"{slug}: no trained model at {model_dir}; run `tokenfocus train --backbone {slug}`"
        )
    w = world()  # under torchrun: each rank scores its strided shard, rank 0 merges
    init(w)  # first: on CUDA it picks this rank's device, where the model then loads
    scorer = Scorer.load(
        model_dir,
        batch_size=params.score.batch_size,
        prefix_reuse=params.score.prefix_reuse,
        threads=params.score.threads,
        kv_budget_mib=params.score.kv_budget_mib,
        batch_tokens=params.score.batch_tokens,
        grounding=params.score.grounding,
    )
    out = Path(out or Path(params.score.out) / slug)
    metrics = {}
    with backbone_products(params.score.gemm, params.score.threads, scorer.model):
        for split in splits:
            metrics.update(_score_split(scorer, slug, params, split, model_dir, out, w))
    return metrics


def _score_split(scorer, slug: str, params: Params, split: str, model_dir: Path, out: Path, w) -> dict:
    """One split of :func:`score_backbone`: its metrics by split name (none off rank 0)."""
    records = split_records(params, split)
    root = image_root(params, split)
    adapted = 0
    if params.score.adapt_norm:  # every rank from the whole split's images: one set of statistics
        from tokenfocus.scoring.adapt import adapt_to_split

        adapted = adapt_to_split(
            scorer, [r.img_path for r in records], root, max_images=params.score.adapt_images
        )
    recs = [records[i] for i in w.shard(list(range(len(records))))]
    stem = out / (split if w.size == 1 else f"{split}.rank{w.rank}")
    # another BLAS rounds other bits: a partial table from the other one is not resumed
    made_with = {"adapted_norm": adapted, "gemm": params.score.gemm}
    rows = score_resumably(scorer, recs, root, stem, params.score.chunk, model_dir, made_with=made_with)
    if w.size > 1:
        rows = merge_shards(out / split, rows, w, len(records))
        if rows is None:  # not rank 0: its shard is on disk for rank 0
            return {}
    write_json_atomic(out / f"{split}.json", rows)
    if split == "ntire":
        write_table_submission(out / "output.json", params, rows)
    metrics = metrics_of(rows)
    log.info("%s %s: %s", slug, split, metrics)
    return {split: metrics}


def score_resumably(
    scorer,
    records: list[Record],
    root: Path,
    stem: Path,
    chunk: int,
    model_dir: Path,
    *,
    stop_after: int | None = None,
    made_with: dict | None = None,
) -> list[dict]:
    """Score ``records`` ``chunk`` pairs at a time, appending each chunk's rows to
    ``<stem>.partial.jsonl`` as it goes; a run killed midway resumes after the last whole chunk.

    Only one chunk's images are decoded at a time, so memory does not grow with the split. Every
    run scores the same chunks, so a resumed table equals an uninterrupted one byte for byte. The
    partial file starts with what it was made from (the model's digest, the pairs and their
    images); another model, another split or changed data starts it afresh, as does another
    ``made_with`` (how the scorer was set up: statistics adapted to the split). ``stop_after``
    (tests): return after that many chunks.
    """
    from tokenfocus.checkpoint import data_signature, folder_digest
    from tokenfocus.images import load_images

    partial = stem.with_name(stem.name + ".partial.jsonl")
    head = {
        "model": folder_digest(model_dir),
        "pairs": data_signature(records, [root]),
        "chunk": chunk,
        **(made_with or {}),
    }
    rows: list[dict] = []
    if partial.exists():
        lines = partial.read_text().splitlines()
        if lines and json.loads(lines[0]) == head:
            for line in lines[1:]:
                try:
                    rows.append(json.loads(line))
                except json.JSONDecodeError:  # a line cut by the kill: that chunk is scored again
                    break
            rows = rows[: len(rows) // chunk * chunk]  # whole chunks only
            log.info("%s: resuming after %d of %d pairs", partial.name, len(rows), len(records))
        else:
            log.warning("%s: made from another model, split or data; scoring afresh", partial.name)
            rows = []
    partial.parent.mkdir(parents=True, exist_ok=True)
    with partial.open("w") as f:  # rewritten: the kept rows, then each new chunk as it is scored
        f.write(json.dumps(head) + "\n")
        f.writelines(json.dumps(r) + "\n" for r in rows)
        f.flush()
        for k, start in enumerate(range(len(rows), len(records), chunk)):
            if stop_after is not None and k >= stop_after:
                return rows
            part = records[start : start + chunk]
            images = load_images(root, [r.img_path for r in part])
            results = scorer(
                [images[r.img_path] for r in part],
                [r.prompt for r in part],
                [[e.key for e in r.elements] for r in part],
            )
            new = prediction_rows(part, results)
            f.writelines(json.dumps(r) + "\n" for r in new)
            f.flush()
            os.fsync(f.fileno())
            rows += new
    partial.unlink()
    return rows
