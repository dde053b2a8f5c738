"""The data gate: Great Expectations 1.x suites over raw and averaged EvalMuse records.

Nothing trains on data that failed here: the DVC ``validate`` stage and the Prefect flow both
stop on a failed report. Each failed expectation is reported with example offending rows.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from tokenfocus.config import ValidateConfig
from tokenfocus.evalmuse import (
    CATEGORIES,
    EvalMuseError,
    average_record,
    raw_problems,
    read_json_list,
    write_json_atomic,
)
from tokenfocus.images import ImageError, open_image

log = logging.getLogger(__name__)
#: Files of a dataset root and whether they carry labels.
DATA_FILES = {"train_list.json": True, "test.json": False, "eval.json": True}
KEY_REGEX = r"^.*\S\s+\([^()]+\)\s*$"


@dataclass
class Failure:
    file: str
    check: str
    column: str | None
    count: int
    examples: list[str] = field(default_factory=list)

    def line(self) -> str:
        col = f" [{self.column}]" if self.column else ""
        return f"{self.file}: {self.check}{col}: {self.count} offending; e.g. " + "; ".join(self.examples)


@dataclass
class Report:
    success: bool
    files: dict[str, int]
    failures: list[Failure]

    def summary(self) -> str:
        """Readable text: one line per failed expectation, with examples."""
        if self.success:
            return "validation passed: " + ", ".join(f"{f} ({n} records)" for f, n in self.files.items())
        return "validation FAILED:\n" + "\n".join("  - " + f.line() for f in self.failures)

    def to_dict(self) -> dict[str, Any]:
        return {"success": self.success, "files": self.files, "failures": [f.__dict__ for f in self.failures]}


def _image_facts(
    root: Path, img_paths: list[str], cfg: ValidateConfig
) -> dict[str, tuple[str | None, int, int]]:
    facts = {}
    for p in dict.fromkeys(img_paths):
        try:
            img = open_image(root / "images" / p, max_pixels=cfg.max_pixels, name=p)
            facts[p] = (None, img.width, img.height)
        except ImageError as exc:
            facts[p] = (str(exc), 0, 0)
    return facts


def frames(root: Path, name: str, cfg: ValidateConfig) -> tuple[pd.DataFrame, pd.DataFrame, list[str]]:
    """Averaged record and element frames of one file, plus raw-format problems."""
    raws = read_json_list(root / name)
    problems = raw_problems(raws, source=name)
    records = [average_record(r, i, source=name) for i, r in enumerate(raws)]
    facts = _image_facts(root, [r.img_path for r in records], cfg)
    rec = pd.DataFrame(
        {
            "row": [f"{name}[{i}] {r.img_path}" for i, r in enumerate(records)],
            "prompt_id": [r.prompt_id for r in records],
            "prompt": [r.prompt for r in records],
            "img_path": [r.img_path for r in records],
            "total_score": [r.total_score for r in records],
            "n_elements": [len(r.elements) for r in records],
            "image_problem": [facts[r.img_path][0] for r in records],
            "width": [facts[r.img_path][1] for r in records],
            "height": [facts[r.img_path][2] for r in records],
        }
    )
    els = [
        (f"{name}[{i}] {r.img_path}", e.key, e.category, r.element_score[e.key])
        for i, r in enumerate(records)
        for e in r.elements
    ]
    el = pd.DataFrame(els, columns=["row", "key", "category", "score"])
    rec["total_score"] = rec["total_score"].astype("float64")
    el["score"] = el["score"].astype("float64")
    return rec, el, problems


def _suites(gx, cfg: ValidateConfig, labelled: bool):
    E = gx.expectations
    records = [
        E.ExpectColumnValuesToNotBeNull(column="prompt_id"),
        E.ExpectColumnValuesToMatchRegex(column="prompt", regex=r"\S"),
        E.ExpectColumnValuesToNotBeNull(column="img_path"),
        E.ExpectCompoundColumnsToBeUnique(column_list=["prompt_id", "img_path"]),
        E.ExpectColumnValuesToBeNull(column="image_problem"),
        E.ExpectColumnValuesToBeBetween(column="width", min_value=cfg.min_side, max_value=cfg.max_side),
        E.ExpectColumnValuesToBeBetween(column="height", min_value=cfg.min_side, max_value=cfg.max_side),
        E.ExpectColumnValuesToBeBetween(column="n_elements", min_value=1),
    ]
    elements = [
        E.ExpectColumnValuesToMatchRegex(column="key", regex=KEY_REGEX),
        E.ExpectColumnValuesToBeInSet(column="category", value_set=list(CATEGORIES)),
    ]
    if labelled:
        records += [
            E.ExpectColumnValuesToNotBeNull(column="total_score"),
            E.ExpectColumnValuesToBeBetween(column="total_score", min_value=1, max_value=5),
        ]
        elements += [
            E.ExpectColumnValuesToNotBeNull(column="score"),
            E.ExpectColumnValuesToBeBetween(column="score", min_value=0, max_value=1),
        ]
    return {"records": records, "elements": elements}


def run_suites(
    named_frames: dict[str, tuple[pd.DataFrame, pd.DataFrame, bool]], cfg: ValidateConfig
) -> list[Failure]:
    """Run the GX suites over each file's frames; return the failed expectations."""
    import great_expectations as gx

    ctx = gx.get_context(mode="ephemeral")
    try:  # progress bars would flood CI logs
        ctx.variables.progress_bars = gx.data_context.types.base.ProgressBarsConfig(globally=False)
    except Exception:  # pragma: no cover - older GX layouts; bars only
        pass
    ds = ctx.data_sources.add_pandas("tokenfocus")
    failures = []
    definitions: dict[tuple[str, bool], Any] = {}
    for labelled in (True, False):
        for kind, exps in _suites(gx, cfg, labelled).items():
            suite = ctx.suites.add(gx.ExpectationSuite(name=f"{kind}-{labelled}", expectations=exps))
            bd = ds.add_dataframe_asset(f"{kind}-{labelled}").add_batch_definition_whole_dataframe("all")
            definitions[(kind, labelled)] = ctx.validation_definitions.add(
                gx.ValidationDefinition(name=f"{kind}-{labelled}", data=bd, suite=suite)
            )
    for name, (rec, el, labelled) in named_frames.items():
        for kind, df in (("records", rec), ("elements", el)):
            if df.empty:
                continue
            res = definitions[(kind, labelled)].run(
                batch_parameters={"dataframe": df}, result_format={"result_format": "COMPLETE"}
            )
            for r in res.results:
                if r.success:
                    continue
                conf = r.expectation_config
                idx = (r.result or {}).get("unexpected_index_list") or []
                column = conf.kwargs.get("column")
                examples = []
                for i in idx[: cfg.max_examples]:
                    row = df.iloc[i] if isinstance(i, int) else None
                    if row is not None:
                        val = (
                            row[column] if column else {c: row[c] for c in conf.kwargs.get("column_list", [])}
                        )
                        examples.append(
                            f"{row['row']} -> {val!r}" + (f" ({row['key']})" if kind == "elements" else "")
                        )
                failures.append(
                    Failure(
                        name,
                        conf.type,
                        column,
                        int((r.result or {}).get("unexpected_count") or len(idx)),
                        examples,
                    )
                )
    return failures


def validate_root(root: str | Path, cfg: ValidateConfig) -> Report:
    """Validate every EvalMuse file present under ``root``.

    Args:
        root: a dataset root holding ``train_list.json`` (required), ``test.json`` and
            ``eval.json`` (optional), and ``images/``.
        cfg: limits and report settings.

    Returns:
        The report; ``success`` is False when any check failed.
    """
    root = Path(root)
    named, failures, counts = {}, [], {}
    for name, labelled in DATA_FILES.items():
        if not (root / name).exists():
            if name == "train_list.json":
                failures.append(Failure(name, "file_exists", None, 1, [str(root / name)]))
            continue
        try:
            rec, el, problems = frames(root, name, cfg)
        except EvalMuseError as exc:
            failures.append(Failure(name, "readable_evalmuse_file", None, 1, [str(exc)]))
            continue
        counts[name] = len(rec)
        if problems:
            failures.append(
                Failure(
                    name, "raw_annotator_lists_consistent", None, len(problems), problems[: cfg.max_examples]
                )
            )
        named[name] = (rec, el, labelled)
    failures += run_suites(named, cfg)
    return Report(success=not failures, files=counts, failures=failures)


def main(cfg: ValidateConfig, root: str | None = None, report_path: str | None = None) -> Report:
    """Validate, write the JSON report atomically, and return it (the CLI exits on failure)."""
    report = validate_root(root or cfg.data, cfg)
    write_json_atomic(report_path or cfg.report, report.to_dict())
    return report
