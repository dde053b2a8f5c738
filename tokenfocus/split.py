"""Grouped, stratified splits: no prompt in two splits; K stacking folds over train."""

from __future__ import annotations

import json
import random
from collections import defaultdict
from pathlib import Path

from tokenfocus.config import SplitConfig
from tokenfocus.evalmuse import Record, load_records, write_json_atomic

SPLITS = ("train", "val", "test")


def assign(records: list[Record], cfg: SplitConfig) -> dict[str, dict[str, int | str]]:
    """Assign each prompt_id to a split (and train prompts to a fold).

    Prompts are grouped (all images of a prompt land together) and stratified by prompt
    ``type`` so that both registers appear in every split. Sorting before shuffling makes the
    result independent of record order.

    Returns:
        ``{prompt_id: {"split": "train"|"val"|"test", "fold": k or -1}}``.
    """
    by_type: dict[str, list[str]] = defaultdict(list)
    seen = set()
    for r in records:
        if r.prompt_id not in seen:
            seen.add(r.prompt_id)
            by_type[r.type].append(r.prompt_id)
    rng = random.Random(cfg.seed)
    out: dict[str, dict[str, int | str]] = {}
    for t in sorted(by_type):
        ids = sorted(by_type[t])
        rng.shuffle(ids)
        n_test = round(len(ids) * cfg.test_frac)
        n_val = round(len(ids) * cfg.val_frac)
        for i, pid in enumerate(ids):
            split = "test" if i < n_test else "val" if i < n_test + n_val else "train"
            fold = (i - n_test - n_val) % cfg.folds if split == "train" else -1
            out[pid] = {"split": split, "fold": fold}
    return out


def main(cfg: SplitConfig, data: str | Path = "data") -> dict[str, int]:
    """Write ``cfg.out`` for ``data/train_list.json``; return the pair count per split."""
    records = load_records(Path(data) / "train_list.json")
    assignment = assign(records, cfg)
    write_json_atomic(cfg.out, {"seed": cfg.seed, "folds": cfg.folds, "prompts": assignment})
    counts = {s: 0 for s in SPLITS}
    for r in records:
        counts[str(assignment[r.prompt_id]["split"])] += 1
    return counts


def load_split(
    records: list[Record],
    splits_path: str | Path,
    split: str,
    *,
    fold: int | None = None,
    exclude_fold: bool = False,
) -> list[Record]:
    """Records of one split (optionally one fold, or all train folds but one)."""
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; choose from {SPLITS}")
    prompts = json.loads(Path(splits_path).read_text())["prompts"]
    out = []
    for r in records:
        a = prompts.get(r.prompt_id)
        if a is None:
            raise KeyError(f"{r.img_path}: prompt_id {r.prompt_id!r} missing from {splits_path}; rerun split")
        if a["split"] != split:
            continue
        if fold is not None and ((a["fold"] == fold) == exclude_fold):
            continue
        out.append(r)
    return out
