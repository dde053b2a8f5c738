import json
import math

import pytest

from tokenfocus.evalmuse import (
    EvalMuseError,
    average_record,
    load_records,
    parse_element_key,
    raw_problems,
    read_json_list,
    read_submission,
    write_json_atomic,
    write_submission,
)

RAW = {
    "prompt_id": "p1",
    "prompt": "a red puffin",
    "img_path": "SDXL-Turbo/00805.png",
    "type": "real",
    "total_score": [4, 5, 3],
    "element_score": {"puffin (animal)": [1, 1, 0], "red (color)": [0, 0, 1]},
    "promt_meaningless": [0, 0, 1],
    "split_confidence": [0, 0, 0],
    "attribute_confidence": [1, 1, 1],
}


@pytest.mark.parametrize(
    ("key", "text", "cat"),
    [
        ("puffin (animal)", "puffin", "animal"),
        ("red (color)", "red", "color"),
        ("a cat (with a hat) (object)", "a cat (with a hat)", "object"),
        ("left of (spatial)", "left of", "spatial"),
        ("x ((y)) (other)", "x ((y))", "other"),
        ("no category here", "no category here", None),
        ("trailing (broken", "trailing (broken", None),
    ],
)
def test_parse_element_key(key, text, cat):
    el = parse_element_key(key)
    assert (el.key, el.text, el.category) == (key, text, cat)


def test_average_record_means_and_flags():
    r = average_record(RAW, 0)
    assert r.total_score == pytest.approx(4.0)
    assert r.element_score == {"puffin (animal)": pytest.approx(2 / 3), "red (color)": pytest.approx(1 / 3)}
    assert [e.category for e in r.elements] == ["animal", "color"]
    assert r.flags["promt_meaningless"] == pytest.approx(1 / 3)
    assert r.type == "real"


def test_average_record_accepts_already_averaged_eval_json():
    r = average_record({**RAW, "total_score": 3.5, "element_score": {"red (color)": 0.25}}, 0)
    assert r.total_score == 3.5 and r.element_score == {"red (color)": 0.25}


def test_unlabelled_record_has_no_scores():
    raw = {k: v for k, v in RAW.items() if k != "total_score"}
    raw["element_score"] = {"red (color)": None}
    r = average_record(raw, 0)
    assert r.total_score is None and r.element_score == {"red (color)": None}


@pytest.mark.parametrize(
    ("patch", "needle"),
    [
        ({"prompt": None}, "records[3].prompt"),
        ({"total_score": ["a"]}, "records[3].total_score"),
        ({"total_score": []}, "empty annotator list"),
        ({"element_score": [1]}, "records[3].element_score"),
    ],
)
def test_average_record_errors_name_index_and_field(patch, needle):
    with pytest.raises(EvalMuseError, match=needle.replace("[", r"\[").replace("]", r"\]")):
        average_record({**RAW, **patch}, 3)


def test_raw_problems_flag_mismatched_annotator_lists():
    bad = {**RAW, "total_score": [4, 5]}
    problems = raw_problems([RAW, bad])
    assert len(problems) == 1 and "records[1]" in problems[0] and "total_score=2" in problems[0]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"\xff\xfe not utf8", "not UTF-8"),
        (b'[{"a": 1}', "invalid JSON"),
        (b'{"a": 1}', "expected a JSON list"),
        (b"[1, 2]", "record 0 is int"),
    ],
)
def test_read_json_list_errors_name_the_file(tmp_path, content, needle):
    p = tmp_path / "train_list.json"
    p.write_bytes(content)
    with pytest.raises(EvalMuseError, match=needle) as exc:
        read_json_list(p)
    assert "train_list.json" in str(exc.value)


def test_submission_round_trip(tmp_path):
    p = tmp_path / "train_list.json"
    p.write_text(json.dumps([RAW]))
    records = load_records(p)
    out = write_submission(
        tmp_path / "output.json", records, [3.25], [{"puffin (animal)": 0.9, "red (color)": 0.1}]
    )
    back = read_submission(out)
    assert back[0].img_path == RAW["img_path"] and back[0].total_score == 3.25
    assert list(back[0].element_score) == list(RAW["element_score"])  # keys exactly as given
    assert back[0].element_score["red (color)"] == 0.1


def test_submission_missing_element_is_an_error(tmp_path):
    p = tmp_path / "t.json"
    p.write_text(json.dumps([RAW]))
    with pytest.raises(EvalMuseError, match="red \\(color\\)"):
        write_submission(tmp_path / "o.json", load_records(p), [3.0], [{"puffin (animal)": 0.5}])
    assert not (tmp_path / "o.json").exists()


def test_atomic_write_keeps_old_file_on_failure(tmp_path):
    p = write_json_atomic(tmp_path / "x.json", {"ok": 1})
    with pytest.raises(ValueError):  # infinity is not JSON; fails half-way through the dump
        write_json_atomic(p, {"fine": list(range(100)), "bad": math.inf})
    assert json.loads(p.read_text()) == {"ok": 1}
    assert [f.name for f in tmp_path.iterdir()] == ["x.json"]


def test_atomic_write_turns_nan_into_null(tmp_path):
    p = write_json_atomic(tmp_path / "x.json", {"ci": [math.nan, 0.5], "deep": {"v": math.nan}})
    assert json.loads(p.read_text()) == {"ci": [None, 0.5], "deep": {"v": None}}
