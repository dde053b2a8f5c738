"""The Great Expectations gate: passes on SynthMuse, names the offender on bad input."""

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.conftest import bomb_png
from tokenfocus.config import ValidateConfig
from tokenfocus.images import open_image
from tokenfocus.validate import main, validate_root

CFG = ValidateConfig(max_pixels=4096 * 4096)


def _records(root: Path) -> list[dict]:
    return json.loads((root / "train_list.json").read_text())


def _save(root: Path, records: list[dict]) -> None:
    (root / "train_list.json").write_text(json.dumps(records))


def test_suite_passes_on_synthmuse(small_data, tmp_path):
    report = main(CFG, str(small_data), str(tmp_path / "report.json"))
    assert report.success, report.summary()
    saved = json.loads((tmp_path / "report.json").read_text())
    assert saved["success"] is True and saved["files"]["train_list.json"] == 120


def _truncate_png(root, recs):
    p = root / "images" / recs[2]["img_path"]
    p.write_bytes(p.read_bytes()[:200])
    return recs[2]["img_path"]


def _missing_image(root, recs):
    (root / "images" / recs[2]["img_path"]).unlink()
    return recs[2]["img_path"]


def _bomb(root, recs):
    (root / "images" / recs[2]["img_path"]).write_bytes(bomb_png(30000, 30000))
    return recs[2]["img_path"]


def _score(value):
    def mutate(root, recs):
        recs[2]["total_score"] = [value, value, value]
        _save(root, recs)
        return recs[2]["img_path"]

    return mutate


def _empty_prompt(root, recs):
    recs[2]["prompt"] = "   "
    _save(root, recs)
    return recs[2]["img_path"]


def _no_category(root, recs):
    recs[2]["element_score"]["plain words"] = [1, 1, 1]
    _save(root, recs)
    return "plain words"


def _duplicate(root, recs):
    recs.append(dict(recs[2]))
    _save(root, recs)
    return recs[2]["img_path"]


def _mismatched_lists(root, recs):
    recs[2]["total_score"] = [3, 4]
    _save(root, recs)
    return "train_list.json[2]"


def _non_utf8(root, recs):
    (root / "train_list.json").write_bytes(
        json.dumps(recs).encode("utf-8").replace(b'"prompt"', b'"pr\xffompt"', 1)
    )
    return "not UTF-8"


def _bad_element_score(root, recs):
    key = next(iter(recs[2]["element_score"]))
    recs[2]["element_score"][key] = [1, 2, 2]
    _save(root, recs)
    return key


@pytest.mark.parametrize(
    ("mutate", "check"),
    [
        (_truncate_png, "image_problem"),
        (_missing_image, "image_problem"),
        (_bomb, "image_problem"),
        (_score(7), "total_score"),
        (_score(float("nan")), "total_score"),
        (_empty_prompt, "prompt"),
        (_no_category, "key"),
        (_duplicate, "compound_columns_to_be_unique"),
        (_mismatched_lists, "raw_annotator_lists_consistent"),
        (_non_utf8, "readable_evalmuse_file"),
        (_bad_element_score, "score"),
    ],
    ids=[
        "truncated-png",
        "missing-image",
        "bomb-30000",
        "score-7",
        "score-nan",
        "empty-prompt",
        "key-without-category",
        "duplicate-pair",
        "mismatched-annotators",
        "non-utf8-json",
        "element-score-2",
    ],
)
def test_bad_input_fails_naming_the_offender(data_copy, mutate, check):
    offender = mutate(data_copy, _records(data_copy))
    report = validate_root(data_copy, CFG)
    assert not report.success
    summary = report.summary()
    assert check in summary, summary
    assert offender in summary, summary


@pytest.mark.parametrize("mode", ["RGBA", "L", "CMYK", "P", "I;16"])
def test_non_rgb_images_are_accepted_and_converted(data_copy, mode):
    recs = _records(data_copy)
    path = data_copy / "images" / recs[0]["img_path"]
    rgb = Image.open(path).convert("RGB")
    if mode == "I;16":
        img = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257)
        assert img.mode.startswith("I;16")
    else:
        img = rgb.convert(mode)
    img.save(path.with_suffix(".tif") if mode == "CMYK" else path, format="TIFF" if mode == "CMYK" else "PNG")
    if mode == "CMYK":
        path.with_suffix(".tif").rename(path)
    assert validate_root(data_copy, CFG).success
    out = open_image(path)
    assert out.mode == "RGB" and out.size == rgb.size
