"""Grouped splits, stable when data is added: no prompt in two splits; K stacking folds over train."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from tokenfocus.config import SplitConfig
from tokenfocus.evalmuse import Record, load_records, write_json_atomic

SPLITS = ("train", "val", "test")


def _unit(seed: int, prompt_id: str, salt: str) -> float:
    """A number in [0, 1) that depends on the seed and the prompt id alone."""
    h = hashlib.sha256(f"{seed}:{salt}:{prompt_id}".encode()).digest()
    return int.from_bytes(h[:8], "big") / 2**64


def assign(records: list[Record], cfg: SplitConfig) -> dict[str, dict[str, int | str]]:
    """Assign each prompt_id to a split (and train prompts to a fold), by a hash of the prompt id.

    Why a hash: a prompt's split depends on its id and the seed alone, so adding data never moves
    an existing prompt, and a champion trained on yesterday's data never meets one of its own
    training prompts in today's test split. Prompts are grouped (all images of a prompt land
    together); the fractions hold in expectation (in SynthMuse's 800 prompts, within a few).

    Returns:
        ``{prompt_id: {"split": "train"|"val"|"test", "fold": k or -1}}``.
    """
    out: dict[str, dict[str, int | str]] = {}
    for pid in sorted({r.prompt_id for r in records}):
        u = _unit(cfg.seed, pid, "split")
        split = "test" if u < cfg.test_frac else "val" if u < cfg.test_frac + cfg.val_frac else "train"
        fold = int(_unit(cfg.seed, pid, "fold") * cfg.folds) if split == "train" else -1
        out[pid] = {"split": split, "fold": fold}
    return out


def digest(assignment: dict[str, dict[str, int | str]]) -> str:
    """A short digest of a split assignment: equal digests, equal splits."""
    text = json.dumps({k: assignment[k]["split"] for k in sorted(assignment)}, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def trained_on(splits_path: str | Path) -> list[str]:
    """The prompt ids a model fitted on these splits has seen: train (its weights) and val (its
    checkpoint choice and the stacker)."""
    prompts = json.loads(Path(splits_path).read_text())["prompts"]
    return sorted(k for k, a in prompts.items() if a["split"] in ("train", "val"))


def main(cfg: SplitConfig, data: str | Path = "data") -> dict[str, int]:
    """Write ``cfg.out`` for ``data/train_list.json``; return the pair count per split."""
    records = load_records(Path(data) / "train_list.json")
    assignment = assign(records, cfg)
    write_json_atomic(
        cfg.out, {"seed": cfg.seed, "folds": cfg.folds, "digest": digest(assignment), "prompts": assignment}
    )
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
