"""The data blocks of ``params.yaml``: SynthMuse, drawing styles, validation, the split."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class SynthConfig:
    seed: int = 1234
    out: str = "data"
    n_prompts: int = 800  # x images_per_prompt = the ~4000 labelled pairs the brief asks for
    n_test_prompts: int = 80  # the unlabelled NTIRE-style test.json (+ eval.json with labels)
    images_per_prompt: int = 5  # one image per simulated generator, like EvalMuse
    image_size: int = 64  # big enough for 4 large shapes, small enough for 2 CPU cores
    n_annotators: int = 3
    label_flip: float = 0.05  # per-annotator element label noise
    score_noise: float = 0.45  # sd of each annotator's total-score noise, in score points
    real_fraction: float = 0.5  # share of prompts in the varied "real" register
    short_keys: float = 0.0  # share of prompts keyed with EvalMuse's short spans ("red (color)")
    styled_copies: int = 0  # per labelled pair, redrawings in pre-training's styles (styled/<k>/)
    # an element of a group drawn as another shape is false ("two squares" where two circles
    # stand): labels as the question reads them. False: it follows the group's count/colour/size
    bind_shape: bool = True


@dataclass
class StylesConfig:
    """Drawing styles as data (built into :class:`tokenfocus.render.StyleBook`, which checks them).

    ``catalog`` maps a style's name to its drawing choices (see :class:`tokenfocus.render.Style`
    for the keys); ``synth`` names the styles SynthMuse draws its benchmark in, ``pretrain`` the
    ones pre-training randomises over, ``augment`` the ones SynthMuse's redrawings for
    fine-tuning's style augmentation are drawn in (empty: each style of ``pretrain`` beside
    ``synth`` once), and no style of ``heldout_family`` or of ``check_families`` may be in any of
    them.
    """

    heldout_family: str = ""  # never seen by any model; the pipeline reports it beside test
    # more families no model sees, drawn and reported like the held-out one: a lever is judged
    # across all of them, so that it is not chosen against one family's drawing
    check_families: list[str] = field(default_factory=list)
    synth: list[str] = field(default_factory=lambda: ["classic"])
    pretrain: list[str] = field(default_factory=lambda: ["classic"])
    augment: list[str] = field(default_factory=list)
    catalog: dict[str, dict] = field(default_factory=dict)

    def book(self):
        """The checked :class:`tokenfocus.render.StyleBook` of this block."""
        from tokenfocus.render import StyleBook

        return StyleBook.from_config(self)


@dataclass
class ValidateConfig:
    data: str = "data"
    report: str = "eval/validation.json"
    min_side: int = 8
    max_side: int = 4096
    max_pixels: int = 4096 * 4096  # also Pillow's decompression-bomb limit
    max_examples: int = 5  # offending rows shown per failed expectation


@dataclass
class SplitConfig:
    seed: int = 7
    val_frac: float = 0.15
    test_frac: float = 0.15
    folds: int = 5
    out: str = "work/splits.json"
