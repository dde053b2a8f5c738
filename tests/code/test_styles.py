"""Drawing styles as data: the catalog's checks, labels that stay exact, the held-out family kept
out of everything a model learns from, and what SynthMuse writes for it."""

import dataclasses
import json
import random

import numpy as np
import pytest

from tests.conftest import ROOT, SMALL, repo_styles
from tokenfocus.config import StylesConfig, load_params
from tokenfocus.evalmuse import load_records
from tokenfocus.render import BACKGROUNDS, COLORS, SHAPES, Group, Scene, Style, StyleError, pick_style, render
from tokenfocus.render.effects import MOTIF_SHAPES, background, relight

BOOK = repo_styles().book()


def _scene() -> Scene:
    return Scene(
        [Group("circle", "white", "large", 2), Group("square", "red", "small", 1)],
        relation="left of",
        background=6,
    )


@pytest.mark.parametrize("name", sorted(BOOK.catalog))
def test_every_catalog_style_draws_deterministically(name):
    style = BOOK.catalog[name]
    a = np.asarray(render(_scene(), 64, random.Random(1), style))
    b = np.asarray(render(_scene(), 64, random.Random(1), style))
    assert a.shape == (64, 64, 3) and (a == b).all()
    assert a.std() > 5  # something was drawn


def test_classic_style_draws_exactly_what_no_style_draws():
    plain = np.asarray(render(_scene(), 64, random.Random(2)))
    classic = np.asarray(render(_scene(), 64, random.Random(2), BOOK.catalog["classic"]))
    assert (plain == classic).all()
    assert BOOK.catalog["classic"].plain and not BOOK.catalog["outlined"].plain


def test_a_styled_image_draws_white_as_white():
    """The classic drawing inverts a colour too close to its background (white on light grey is
    drawn near black); a styled one moves the background instead, so the label stays exact."""

    def count(img, rgb):
        px = np.asarray(img).reshape(-1, 3).astype(int)
        return int((np.abs(px - np.array(rgb)).sum(1) < 20).sum())

    assert BACKGROUNDS[6] == (235, 235, 235)  # _scene()'s: too close to white
    styled = render(_scene(), 64, random.Random(3), Style(name="smaller", scale=(0.9, 0.9)))
    classic = render(_scene(), 64, random.Random(3))
    assert count(styled, COLORS["white"]) > 300 and count(styled, (5, 5, 5)) < 20
    assert count(classic, (5, 5, 5)) > 300  # the old inversion, kept bit for bit in classic


@pytest.mark.parametrize(
    ("raw", "match"),
    [
        ({"background": ["marble"]}, r"styles.catalog.bad.background: \['marble'\]"),
        ({"scale": [0.5, 1.0]}, r"styles.catalog.bad.scale: .* small and large meet"),
        ({"blur": [1.0, 0.5]}, r"styles.catalog.bad.blur: .* not a \[low, high\] range"),
        ({"jpeg": [20, 120]}, r"styles.catalog.bad.jpeg"),
        ({"colour": 1}, r"styles.catalog.bad: unknown key\(s\) \['colour'\]"),
    ],
)
def test_a_bad_style_is_refused_naming_it(raw, match):
    with pytest.raises(StyleError, match=match):
        Style.from_params("bad", raw)


def test_no_model_may_learn_from_the_held_out_family():
    cfg = repo_styles()
    assert cfg.heldout_family and BOOK.heldout
    assert not {s.family for s in BOOK.styles("pretrain") + BOOK.styles("synth")} & {cfg.heldout_family}
    bad = StylesConfig(
        heldout_family=cfg.heldout_family,
        synth=["classic"],
        pretrain=["classic", "studio"],
        catalog=cfg.catalog,
    )
    with pytest.raises(
        StyleError, match=r"styles.pretrain: 'studio' belongs to the held-out family 'studio'"
    ):
        bad.book()
    with pytest.raises(StyleError, match=r"styles.synth: unknown style 'nope'"):
        StylesConfig(synth=["nope"]).book()
    # fine-tuning's redrawings (styles.augment) too, refused when the book is built
    with pytest.raises(StyleError, match=r"styles.augment: 'studio' belongs to the held-out family"):
        dataclasses.replace(bad, pretrain=["classic"], augment=["patchwork", "studio"]).book()
    # a backbone's own pre-training styles (backbones.<slug>.pretrain.styles) go through the same gate
    where = "backbones.x.pretrain.styles"
    with pytest.raises(StyleError, match=rf"{where}: 'studio_light' belongs to the held-out family"):
        BOOK.learned(["patchwork", "studio_light"], where)
    with pytest.raises(StyleError, match=rf"{where}: unknown style 'nope'"):
        BOOK.learned(["nope"], where)
    assert BOOK.learned(["classic", "patchwork"], where) == (
        BOOK.catalog["classic"],
        BOOK.catalog["patchwork"],
    )


def test_no_model_may_learn_from_a_check_family():
    """The check families are kept out of every list a model learns from, like the held-out one;
    a check family must exist, and be named once."""
    cfg = repo_styles()
    fam = cfg.check_families[0]
    assert BOOK.family(fam) and not {s.family for s in _learned_styles()} & set(cfg.check_families)
    with pytest.raises(StyleError, match=rf"styles.augment: '{fam}' belongs to the check family '{fam}'"):
        dataclasses.replace(cfg, augment=["patchwork", fam]).book()
    with pytest.raises(StyleError, match=rf"backbones.x.pretrain.styles: '{fam}' belongs to the check"):
        BOOK.learned(["classic", fam], "backbones.x.pretrain.styles")
    with pytest.raises(StyleError, match=r"styles.check_families: no style of family 'nope'"):
        dataclasses.replace(cfg, check_families=["nope"]).book()
    with pytest.raises(StyleError, match=rf"styles.check_families: '{fam}' is named twice"):
        dataclasses.replace(cfg, check_families=[fam, fam]).book()
    with pytest.raises(StyleError, match=r"'studio' is named twice \(or is the held-out family\)"):
        dataclasses.replace(cfg, check_families=["studio"]).book()


def _learned_styles():
    """Every style a model learns from: the benchmark's, styles.pretrain, each backbone's own and
    fine-tuning's redrawings'."""
    params = load_params(ROOT / "params.yaml")
    own = [n for slug in params.backbones for n in params.pretrain_for(slug).styles]
    mine = BOOK.learned(own, "backbones.*.pretrain.styles") if own else ()
    return BOOK.styles("pretrain") + BOOK.styles("synth") + mine + BOOK.augmenting()


def test_held_out_kinds_appear_in_no_training_style():
    """Far from the training styles, not a mild variant: its backdrop and fill are kinds no
    training style draws."""
    held = {k for s in BOOK.heldout for k in s.background + s.fill}
    seen = {k for s in _learned_styles() for k in s.background + s.fill}
    assert held - seen == {"checker", "shaded"}


def test_patchwork_draws_a_few_large_regions_near_the_background_tone():
    """Irregular hard-edged patches: a handful of tones (one per cell), each near the base colour,
    where noise draws thousands and flat one."""
    bg, other = (128, 128, 128), (200, 200, 190)
    for seed in range(6):
        px = np.asarray(background("patchwork", 256, bg, other, random.Random(seed))).reshape(-1, 3)
        tones, counts = np.unique(px, axis=0, return_counts=True)
        assert 3 <= len(tones) <= 20
        assert np.abs(tones.astype(int) - np.array(bg)).max() <= 40 + 4 * 6 + 1
        assert counts.max() >= 256 * 256 / 20  # at least one large region
    flat = np.asarray(background("flat", 256, bg, other, random.Random(0))).reshape(-1, 3)
    assert len(np.unique(flat, axis=0)) == 1


def test_motif_tiles_one_tone_to_every_edge_and_never_a_checkers_cell():
    """A repeated figure is backdrop only if it fills the canvas: two tones (background and
    figure), the figure's 40-150 levels off, present near every edge; and no square or diamond,
    which the held-out family's checker draws."""
    assert set(MOTIF_SHAPES) <= set(SHAPES) and not {"square", "diamond"} & set(MOTIF_SHAPES)
    assert "motif" in BOOK.catalog and all("motif" not in s.background for s in BOOK.heldout)
    bg, other = (120, 110, 100), (200, 200, 190)
    for seed in range(8):
        px = np.asarray(background("motif", 256, bg, other, random.Random(seed)))
        tones, counts = np.unique(px.reshape(-1, 3), axis=0, return_counts=True)
        assert len(tones) == 2, seed
        fig = tones[counts.argmin()].astype(int)
        assert 40 <= abs(fig - np.array(bg)).mean() <= 151, (seed, fig)
        mask = (px == fig).all(-1)
        for band in (mask[:32], mask[-32:], mask[:, :32], mask[:, -32:]):
            assert band.mean() > 0.02, seed
        assert 0.05 < mask.mean() < 0.6, seed


def test_one_style_takes_nothing_from_the_random_stream():
    a, b = random.Random(4), random.Random(4)
    assert pick_style((BOOK.catalog["classic"],), a) is BOOK.catalog["classic"]
    assert a.random() == b.random()
    assert pick_style(None, a) is None


def test_relight_is_seeded_and_off_at_zero():
    img = render(_scene(), 64, random.Random(5))
    assert relight(img, 0.0, np.random.default_rng(0)) is img
    one = np.asarray(relight(img, 0.3, np.random.default_rng(1)))
    assert (one == np.asarray(relight(img, 0.3, np.random.default_rng(1)))).all()
    assert (one != np.asarray(img)).any()


def test_synthmuse_records_the_style_and_redraws_every_labelled_pair(small_data):
    train = json.loads((small_data / "train_list.json").read_text())
    drawn_in = json.loads((small_data / "styles.json").read_text())
    assert set(drawn_in) == {r["img_path"] for r in train} | {
        r["img_path"] for r in json.loads((small_data / "test.json").read_text())
    }
    assert set(drawn_in.values()) == set(BOOK.synth)
    held = json.loads((small_data / "heldout_style" / "styles.json").read_text())
    assert set(held) == {r["img_path"] for r in train}
    assert set(held.values()) <= {s.name for s in BOOK.heldout}
    for p in list(held)[:5]:
        a = np.asarray(render_file(small_data / "images" / p))
        b = np.asarray(render_file(small_data / "heldout_style" / "images" / p))
        assert a.shape == b.shape and (a != b).any()
    # each check family likewise, in its own folder, pixels of its own
    assert BOOK.check_families
    for fam in BOOK.check_families:
        drawn = json.loads((small_data / "check_style" / fam / "styles.json").read_text())
        assert set(drawn) == set(held) and set(drawn.values()) == {s.name for s in BOOK.family(fam)}
        p = next(iter(drawn))
        c = np.asarray(render_file(small_data / "check_style" / fam / "images" / p))
        assert (c != np.asarray(render_file(small_data / "heldout_style" / "images" / p))).any()
    # the EvalMuse loader reads the same records, the side files ignored
    assert len(load_records(small_data / "train_list.json")) == SMALL.n_prompts * SMALL.images_per_prompt


def render_file(path):
    from PIL import Image

    return Image.open(path).convert("RGB")


def test_synthmuse_redraws_each_labelled_scene_in_the_styles_pretraining_draws(small_data, tmp_path):
    """`styled/<k>/`: what fine-tuning's style augmentation swaps in. Every labelled pair, in
    styles.augment's styles (by default the ones pre-training learns from, never the benchmark's
    own, never the held-out family), and the benchmark's files do not move with the copies."""
    train = {r["img_path"] for r in json.loads((small_data / "train_list.json").read_text())}
    allowed = {s.name for s in BOOK.augmenting()}
    if not repo_styles().augment:  # the default: pre-training's styles less the benchmark's own
        assert allowed == {s.name for s in BOOK.styles("pretrain")} - set(BOOK.synth)
    copies = sorted((small_data / "styled").iterdir())
    assert [c.name for c in copies] == [str(k) for k in range(SMALL.styled_copies)]
    drawn = [json.loads((c / "styles.json").read_text()) for c in copies]
    for d in drawn:
        assert set(d) == train and set(d.values()) <= allowed and len(set(d.values())) > 1
    assert drawn[0] != drawn[1]  # each copy its own stream
    for p in sorted(train)[:5]:
        a = np.asarray(render_file(small_data / "images" / p))
        for c in copies:
            b = np.asarray(render_file(c / "images" / p))
            assert a.shape == b.shape and (a != b).any()
    from tests.code.test_synth import _digest
    from tokenfocus.synth import generate

    generate(dataclasses.replace(SMALL, styled_copies=0), tmp_path / "none", styles=repo_styles())
    assert _digest(tmp_path / "none") == {
        k: v for k, v in _digest(small_data).items() if not k.startswith("styled/")
    }
    # styles.augment names the redrawings' styles (weighted as pre-training's list is), and moves
    # nothing but them
    own = dataclasses.replace(repo_styles(), augment=["patchwork", "patchwork", "outlined"])
    generate(dataclasses.replace(SMALL, styled_copies=1), tmp_path / "own", styles=own)
    drawn = json.loads((tmp_path / "own" / "styled" / "0" / "styles.json").read_text())
    assert set(drawn) == train and set(drawn.values()) == {"patchwork", "outlined"}
    assert list(drawn.values()).count("patchwork") > list(drawn.values()).count("outlined")
    assert {k: v for k, v in _digest(tmp_path / "own").items() if not k.startswith("styled/")} == {
        k: v for k, v in _digest(small_data).items() if not k.startswith("styled/")
    }


def _full_canvas(kind: str, big: int, bg, other, rng: random.Random) -> np.ndarray:
    """Each kind's canvas computed the plain way, as the pre-trained bases and SynthMuse were drawn:
    a float32 big x big x 3 canvas of ``bg``, the kind's layer added over all of it, one clip. (The
    motif and clutter draw on the flat canvas with PIL; their strokes are checked through it.)"""
    import math

    base = np.empty((big, big, 3), np.float32)
    base[:] = bg
    nrng = np.random.default_rng(rng.getrandbits(32))
    yy, xx = np.mgrid[0:big, 0:big].astype(np.float32) / big
    if kind == "gradient":
        a = rng.uniform(0, 2 * math.pi)
        t = (np.cos(a) * (xx - 0.5) + np.sin(a) * (yy - 0.5)) / 0.71 * 0.5 + 0.5
        base = base + (np.asarray(other, np.float32) - base) * t[..., None] * 0.6
    elif kind == "noise":
        coarse = nrng.normal(0.0, rng.uniform(8, 22), (big // 2, big // 2, 1)).astype(np.float32)
        base = base + np.repeat(np.repeat(coarse, 2, 0), 2, 1)
    elif kind == "texture":
        period, a = rng.uniform(6, 18), rng.uniform(0, math.pi)
        wave = np.sin((np.cos(a) * xx + np.sin(a) * yy) * big / period * 2 * math.pi)
        base = base + (rng.uniform(10, 25) * wave)[..., None]
    elif kind == "patchwork":
        k = rng.randint(3, 20)
        seeds = nrng.random((k, 2)).astype(np.float32)
        sy, sx = np.mgrid[0 : big // 4, 0 : big // 4].astype(np.float32) / (big // 4)
        cell = ((sy[..., None] - seeds[:, 0]) ** 2 + (sx[..., None] - seeds[:, 1]) ** 2).argmin(-1)
        cell = np.repeat(np.repeat(cell, 4, 0), 4, 1)
        tone = nrng.uniform(-1.0, 1.0, (k, 1)) * rng.uniform(18, 40) + nrng.normal(0.0, 6.0, (k, 3))
        base = base + tone.astype(np.float32)[cell]
    elif kind == "checker":
        cell = rng.randint(big // 12, big // 6)
        tone = ((np.arange(big)[:, None] // cell + np.arange(big)[None, :] // cell) % 2).astype(np.float32)
        base = base + ((tone - 0.5) * 2 * rng.uniform(22, 34))[..., None]
    return np.clip(base, 0, 255).astype(np.uint8)


@pytest.mark.parametrize("kind", ["flat", "gradient", "noise", "texture", "patchwork", "checker"])
def test_every_canvas_is_the_full_canvas_arithmetic_byte_for_byte(kind):
    """The renderer computes a canvas in fewer passes (a row times a column, a coarse canvas blown
    up after its clip) but must give the bytes the plain arithmetic gives, and leave the stream
    where it did: the shipped bases were pre-trained on those bytes, and SynthMuse is drawn in them."""
    for big in (256, 192):
        for bg, other in (
            ((128, 128, 128), (200, 200, 190)),
            ((0, 0, 0), (255, 255, 255)),
            ((255, 250, 0), (0, 0, 30)),
        ):
            for seed in range(5):
                fast, plain = random.Random(seed), random.Random(seed)
                got = np.asarray(background(kind, big, bg, other, fast))
                assert np.array_equal(got, _full_canvas(kind, big, bg, other, plain)), (kind, big, bg, seed)
                assert fast.random() == plain.random()
