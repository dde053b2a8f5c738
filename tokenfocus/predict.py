"""Batch prediction: a whole NTIRE ``test.json`` through the registered champion."""

from __future__ import annotations

import logging
from pathlib import Path

from tqdm.auto import tqdm

from tokenfocus.config import Params
from tokenfocus.evalmuse import (
    EvalMuseError,
    average_record,
    read_json_list,
    write_json_atomic,
    write_submission,
)
from tokenfocus.images import ImageError, open_image

log = logging.getLogger(__name__)


def load_scorer(params: Params, model_uri: str | None = None):
    """The champion's in-process ensemble scorer (loaded through MLflow's pyfunc loader)."""
    import mlflow

    from tokenfocus.tracking import setup

    setup(params.tracking)
    uri = model_uri or f"models:/{params.tracking.model_name}@champion"
    return mlflow.pyfunc.load_model(uri).unwrap_python_model().scorer


def predict_file(
    params: Params,
    input_path: str | Path,
    images_root: str | Path,
    output: str | Path,
    *,
    model_uri: str | None = None,
    scorer=None,
    chunk: int = 64,
) -> dict:
    """Score every record; bad records are reported in ``<output>.errors.json``, not fatal.

    Returns:
        Counts of scored and failed records and the paths written.
    """
    raws = read_json_list(input_path)
    root = Path(images_root).resolve()
    good, images, errors = [], [], []
    for i, raw in enumerate(raws):
        try:
            rec = average_record(raw, i, source=Path(input_path).name)
            path = (root / rec.img_path).resolve()
            if root not in path.parents:
                raise ImageError(f"{rec.img_path}: path outside the images root")
            images.append(open_image(path, max_pixels=params.serve.max_pixels, name=rec.img_path))
            good.append(rec)
        except (EvalMuseError, ImageError) as exc:
            errors.append({"index": i, "img_path": raw.get("img_path"), "error": str(exc)})
            log.warning("skipped record %d: %s", i, exc)
    scorer = scorer or load_scorer(params, model_uri)
    totals, elements = [], []
    for start in tqdm(range(0, len(good), chunk), desc="predict", disable=None):
        part = good[start : start + chunk]
        out = scorer(
            images[start : start + chunk],
            [r.prompt for r in part],
            [[e.key for e in r.elements] for r in part],
        )
        totals += [o["total_score"] for o in out]
        elements += [o["element_scores"] for o in out]
    write_submission(output, good, totals, elements)
    err_path = Path(str(output) + ".errors.json")
    if errors:
        write_json_atomic(err_path, errors)
    elif err_path.exists():
        err_path.unlink()
    return {
        "scored": len(good),
        "failed": len(errors),
        "output": str(output),
        "errors": str(err_path) if errors else None,
    }
