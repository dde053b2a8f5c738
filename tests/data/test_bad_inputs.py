"""The bad-input corpus across the CLI, the batch predictor and the served model's parser.

Each case is either accepted and handled (converted, truncated with a warning) or refused with
a clear error naming the item and the problem; never a traceback, never a sunk batch.
"""

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from tests.conftest import bomb_png
from tokenfocus.cli import app
from tokenfocus.config import ServeConfig
from tokenfocus.images import ImageError, open_image
from tokenfocus.serving.requests import RecordError, limits_from, parse_records


def _png(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


_bomb = bomb_png


RGB = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))


def _gif() -> bytes:
    frames = [Image.new("RGB", (32, 32), c) for c in ("red", "blue")]
    buf = io.BytesIO()
    frames[0].save(buf, format="GIF", save_all=True, append_images=frames[1:], duration=100, loop=0)
    return buf.getvalue()


#: name -> (bytes, None when accepted, else a fragment of the error)
IMAGES = {
    "truncated-png": (_png(RGB)[:300], "cannot decode"),
    "truncated-jpeg": (_png(RGB, "JPEG")[:400], "cannot decode"),
    "zero-byte": (b"", "empty"),
    "text-named-png": (b"hello, I am not an image at all", "cannot decode"),
    "bomb-30000": (_bomb(), "exceeds"),
    "one-pixel": (_png(Image.new("RGB", (1, 1), "red")), None),
    "4000x4000": (_png(Image.new("RGB", (4000, 4000), "white"), compress_level=1), None),
    "rgba": (_png(RGB.convert("RGBA")), None),
    "palette": (_png(RGB.convert("P")), None),
    "cmyk": (_png(RGB.convert("CMYK"), "JPEG"), None),
    "16-bit": (_png(Image.fromarray(np.full((8, 8), 40000, dtype=np.uint16))), None),
    "grayscale": (_png(RGB.convert("L")), None),
    "animated-gif": (_gif(), None),
}


@pytest.mark.parametrize("name", list(IMAGES))
def test_image_cases(name, tmp_path):
    data, error = IMAGES[name]
    path = tmp_path / f"{name}.png"
    path.write_bytes(data)
    if error is None:
        img = open_image(path)
        assert img.mode == "RGB" and img.width >= 1
    else:
        with pytest.raises(ImageError, match=error) as exc:
            open_image(path)
        assert f"{name}.png" in str(exc.value)


def _limits(root):
    limits = limits_from(ServeConfig(allowed_root=str(root)))
    return limits


@pytest.mark.parametrize(
    ("record", "needle"),
    [
        ({"prompt": "", "image": "ok.png"}, "record 0: missing or empty 'prompt'"),
        ({"image": "ok.png"}, "record 0: missing or empty 'prompt'"),
        ({"prompt": "x", "image": "../outside.png"}, "outside the allowed root"),
        ({"prompt": "x", "image": "/etc/passwd"}, "outside the allowed root"),
        ({"prompt": "x", "image": "missing.png"}, "file not found"),
        ({"prompt": "x", "image": "A" * 80 + "!!"}, "neither valid base64 nor a path"),
        (
            {"prompt": "x", "image": base64.b64encode(IMAGES["text-named-png"][0] * 4).decode()},
            "cannot decode",
        ),
        ({"prompt": "x", "image": base64.b64encode(_bomb()).decode()}, "exceeds"),
        ({"prompt": "x", "image": "ok.png", "elements": "not json ["}, "'elements' is not a JSON list"),
        (
            {"prompt": "x", "image": "ok.png", "elements": [""]},
            "'elements' must be a list of non-empty strings",
        ),
        ({"prompt": "x", "image": 42}, "'image' must be a base64 string or a path"),
    ],
)
def test_served_record_errors_name_the_record(tmp_path, record, needle):
    (tmp_path / "ok.png").write_bytes(_png(RGB))
    (tmp_path.parent / "outside.png").write_bytes(_png(RGB))
    with pytest.raises(RecordError, match=needle.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
        parse_records([record], _limits(tmp_path))


def test_served_records_accepted_cases(tmp_path):
    (tmp_path / "ok.png").write_bytes(_png(RGB))
    records = [
        {"prompt": "два красных круга", "image": "ok.png"},  # non-Latin prompt
        {"prompt": "x" * 5000, "image": base64.b64encode(_png(RGB.convert("RGBA"))).decode()},
        {
            "prompt": "a cat",
            "image": "data:image/png;base64," + base64.b64encode(_png(RGB)).decode(),
            "elements": ["cat (hat) (object)", "cat (hat) (object)", "no category"],
        },
    ]
    images, prompts, elements = parse_records(records, _limits(tmp_path))
    assert [im.mode for im in images] == ["RGB"] * 3
    assert elements[2] == ["cat (hat) (object)", "no category"]  # duplicates scored once


# Unreadable JSON files (not a list, invalid, not UTF-8): tests/code/test_evalmuse.py.


@pytest.fixture(scope="module")
def tiny_scorer(tiny_params):
    from tokenfocus.scoring import Scorer

    return Scorer.load(tiny_params.backbone("idefics3_tiny").source)


def test_scorer_truncates_long_prompts_and_scores_non_latin(tiny_scorer, caplog):
    res = tiny_scorer([RGB, RGB], ["x " * 2500, "два красных круга"], [["red (color)"], []])
    assert all(1 <= r.score <= 5 for r in res)
    assert "truncated" in caplog.text


def test_batch_predict_reports_bad_items_and_scores_the_rest(tiny_params, tiny_scorer, tmp_path):
    from tokenfocus.predict import predict_file

    images = tmp_path / "images"
    images.mkdir()
    (images / "good.png").write_bytes(_png(RGB))
    (images / "bad.png").write_bytes(IMAGES["truncated-png"][0])
    (images / "gray.png").write_bytes(IMAGES["grayscale"][0])
    (tmp_path / "secret.png").write_bytes(_png(RGB))
    recs = [
        {
            "prompt_id": str(i),
            "prompt": "two red circles",
            "img_path": p,
            "element_score": {"red circles (color)": None, "a (b) (object)": None},
        }
        for i, p in enumerate(["good.png", "bad.png", "gray.png", "../secret.png", "nope.png"])
    ]
    recs.append({"prompt_id": "9", "img_path": "good.png"})  # no prompt
    (tmp_path / "test.json").write_text(json.dumps(recs))
    out = tmp_path / "output.json"
    out.write_text("[]")  # an earlier result: replaced whole, never half-written

    def ensemble_like(imgs, prompts, elements):  # a real tiny model, in the ensemble's output form
        return [
            {"total_score": r.score, "element_scores": r.elements}
            for r in tiny_scorer(imgs, prompts, elements)
        ]

    summary = predict_file(tiny_params, tmp_path / "test.json", images, out, scorer=ensemble_like)
    assert summary["scored"] == 2 and summary["failed"] == 4
    written = json.loads(out.read_text())
    assert [r["img_path"] for r in written] == ["good.png", "gray.png"]
    assert list(written[0]["element_score"]) == ["red circles (color)", "a (b) (object)"]
    errors = json.loads((tmp_path / "output.json.errors.json").read_text())
    text = json.dumps(errors)
    assert "bad.png: cannot decode" in text and "outside the images root" in text
    assert "nope.png: file not found" in text and "test.json[5].prompt" in text


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--image", "missing.png", "--prompt", "x"], "missing.png: file not found"),
        (["--image", "bad.png", "--prompt", "x"], "bad.png: cannot decode"),
        (["--image", "ok.png", "--prompt", "  "], "empty prompt"),
        (["--image", ".", "--prompt", "x"], ".: a folder, not an image file"),
        (
            ["--image", "ok.png", "--prompt", "x", "-e", "red (color)", "-e", " "],
            "element 1: ' ' is not a non-empty",
        ),
    ],
)
def test_cli_score_one_errors_are_clear(tiny_params, tmp_path, monkeypatch, args, needle):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "ok.png").write_bytes(_png(RGB))
    (tmp_path / "bad.png").write_bytes(IMAGES["zero-byte"][0] + b"GIF89a")
    result = CliRunner().invoke(
        app, ["score-one", *args, "--backbone", tiny_params.backbone("idefics3_tiny").source]
    )
    assert result.exit_code == 1
    assert needle in result.output and "Traceback" not in result.output


def test_cli_score_one_prints_the_distribution(tiny_params, tmp_path):
    (tmp_path / "ok.png").write_bytes(_png(RGB.convert("P")))
    result = CliRunner().invoke(
        app,
        [
            "score-one",
            "--image",
            str(tmp_path / "ok.png"),
            "--prompt",
            "two red circles",
            "-e",
            "red circles (color)",
            "--backbone",
            tiny_params.backbone("idefics3_tiny").source,
        ],
    )
    assert result.exit_code == 0, result.output
    assert (
        "distribution 1:" in result.output
        and "P(yes)" in result.output
        and "red circles (color)" in result.output
    )
