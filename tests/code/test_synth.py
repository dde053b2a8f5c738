import hashlib
import json
import random
from pathlib import Path

from tests.conftest import SMALL, repo_styles
from tokenfocus.config import SynthConfig
from tokenfocus.render import COLORS, SHAPES, Group, Scene
from tokenfocus.synth import (
    GENERATORS,
    ceiling,
    corrupt,
    elements_of,
    generate,
    latent_alignment,
    make_prompt,
    realised,
)


def _digest(root: Path) -> dict[str, str]:
    return {
        str(p.relative_to(root)): hashlib.md5(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def test_generation_is_byte_identical(tmp_path, small_data):
    generate(SMALL, tmp_path / "again", styles=repo_styles())
    assert _digest(tmp_path / "again") == _digest(small_data)


def test_the_redrawings_side_by_side_write_the_bytes_of_a_serial_run(tmp_path, small_data, monkeypatch):
    """The held-out family's and the styled redrawings run one process each; each draws from a
    stream of its own, so they write the bytes of one process drawing them in turn."""
    import tokenfocus.synth as synth

    assert (small_data / "heldout_style").is_dir() and (small_data / "styled" / "1").is_dir()  # 3 jobs
    monkeypatch.setattr(synth.os, "cpu_count", lambda: 1)  # one core: in this process, in turn
    generate(SMALL, tmp_path / "serial", styles=repo_styles())
    assert _digest(tmp_path / "serial") == _digest(small_data)


def test_another_seed_gives_other_data(tmp_path, small_data):
    generate(SynthConfig(**{**SMALL.__dict__, "seed": 6}), tmp_path / "other", styles=repo_styles())
    assert _digest(tmp_path / "other") != _digest(small_data)


def test_layout_and_sizes(small_data):
    train = json.loads((small_data / "train_list.json").read_text())
    test = json.loads((small_data / "test.json").read_text())
    assert len(train) == SMALL.n_prompts * SMALL.images_per_prompt
    assert len(test) == SMALL.n_test_prompts * SMALL.images_per_prompt
    assert all("total_score" not in r for r in test)
    gens = {r["img_path"].split("/")[0] for r in train}
    assert len(gens) >= 5 and gens <= set(GENERATORS)
    r = train[0]
    assert len(r["total_score"]) == SMALL.n_annotators
    assert all(len(v) == SMALL.n_annotators for v in r["element_score"].values())
    assert {r["type"] for r in train} == {"real", "synthetic"}
    assert (small_data / "contact_sheet.png").stat().st_size > 1000
    assert set(json.loads((small_data / "latent.json").read_text())) == {x["img_path"] for x in train + test}


def test_vocabulary_covered():
    assert {"circle", "square", "triangle", "star"} <= set(SHAPES)
    assert {"red", "green", "blue", "yellow", "purple", "orange", "white", "black"} <= set(COLORS)
    scene = Scene([Group("circle", "red", "small", 2), Group("star", "blue", "large", 1)], relation="left of")
    keys = [k for k, *_ in elements_of(scene)]
    assert keys == [
        "circle (object)",
        "two circles (counting)",
        "red circles (color)",
        "small circles (attribute)",
        "star (object)",
        "one star (counting)",
        "blue star (color)",
        "large star (attribute)",
        "circle left of star (spatial)",
    ]
    assert (
        make_prompt(scene, random.Random(0), real=False)
        == "two small red circles left of one large blue star"
    )


def test_errors_lower_latent_alignment():
    scene = Scene([Group("circle", "red", "small", 2), Group("star", "blue", "large", 1)], relation="left of")
    assert latent_alignment(scene, scene) == 1.0
    bad = corrupt(scene, {k: 1.0 for k in GENERATORS["ChromaGAN-XL"]}, random.Random(1))
    assert latent_alignment(scene, bad) < 0.5


def test_an_element_of_a_group_drawn_as_another_shape_is_false_when_bound():
    """`synth.bind_shape`: "two circles (counting)" asks for circles; two triangles in their place
    realise neither the count, the colour nor the size of circles, nor a relation naming them.
    Unbound (the labels before), those follow the group's count, colour and size alone."""
    scene = Scene([Group("circle", "red", "small", 2), Group("star", "blue", "large", 1)], relation="left of")
    drawn = Scene(
        [Group("triangle", "red", "small", 2), Group("star", "blue", "large", 1)], relation="left of"
    )
    keys = [k for k, *_ in elements_of(scene)]
    bound = dict(zip(keys, realised(scene, drawn), strict=True))
    loose = dict(zip(keys, realised(scene, drawn, bind_shape=False), strict=True))
    circles = [
        "circle (object)",
        "two circles (counting)",
        "red circles (color)",
        "small circles (attribute)",
    ]
    assert [bound[k] for k in circles] == [False] * 4
    assert [loose[k] for k in circles] == [False, True, True, True]
    assert not bound["circle left of star (spatial)"] and loose["circle left of star (spatial)"]
    assert all(bound[k] and loose[k] for k in keys[4:8])  # the star's group is drawn as asked
    # the second group of the relation, too; and the alignment counts only what the image holds
    other = Scene(
        [Group("circle", "red", "small", 2), Group("cross", "blue", "large", 1)], relation="left of"
    )
    assert realised(scene, other)[:4] == [True] * 4 and not realised(scene, other)[-1]
    assert latent_alignment(scene, drawn) < latent_alignment(scene, drawn, bind_shape=False) < 1.0


def test_ceiling_is_high_but_below_one(small_data):
    c = ceiling(small_data)
    assert 0.5 < c < 1.0


def test_a_share_of_prompts_carry_evalmuse_short_keys(small_data):
    """`synth.short_keys` of the prompts are keyed with EvalMuse's spans; the labels follow the
    key, and a span two groups share keeps its compositional key (keys stay unique)."""
    from tokenfocus.synth import short_keys

    def form(key: str) -> str:  # a short key names no shape
        nouns = {w for s in SHAPES for w in (s, s + "s", s + "es")}
        return "compositional" if nouns & set(key.rsplit("(", 1)[0].split()) else "short"

    train = json.loads((small_data / "train_list.json").read_text())
    forms = {pid: {form(k) for k in r["element_score"]} for r in train for pid in [r["prompt_id"]]}
    short = [p for p, f in forms.items() if "short" in f]
    assert 0 < len(short) < len(forms)
    scene = Scene([Group("circle", "red", "small", 2), Group("star", "red", "large", 1)], relation="left of")
    assert short_keys(scene) == [
        "circle (object)",
        "two (counting)",
        "red circles (color)",  # both groups are red: "red (color)" would name two elements
        "small (attribute)",
        "star (object)",
        "one (counting)",
        "red star (color)",
        "large (attribute)",
        "left of (spatial)",
    ]
    assert [form(k) for k in short_keys(scene)].count("short") == 5
    # with the prompt, the spans as it writes them (EvalMuse's annotators key the prompt's words)
    written = "a drawing with two tiny red circles to the left of a huge red star"
    assert short_keys(scene, written) == [
        "circle (object)",
        "two (counting)",
        "red circles (color)",
        "tiny (attribute)",
        "star (object)",
        "a (counting)",
        "red star (color)",
        "huge (attribute)",
        "to the left of (spatial)",
    ]
