import pytest

from tokenfocus.config import ConfigError, load_params


def test_repo_params_load():
    p = load_params("params.yaml")
    assert p.synth.n_prompts * p.synth.images_per_prompt >= 3000


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ("synth:\n  sede: 1\n", "unknown key"),
        ("synth:\n  seed: one\n", "synth.seed"),
        ("synth: 3\n", "expected a mapping"),
        ("stack:\n  fit_styled: -1\n", "stack.fit_styled: -1 is below 0"),
        ("stack:\n  fit_on: oof\n  fit_styled: 2\n", "stack.fit_styled: 2 .* needs stack.fit_on: val"),
    ],
)
def test_bad_params_name_the_key(tmp_path, text, needle):
    f = tmp_path / "params.yaml"
    f.write_text(text)
    with pytest.raises(ConfigError, match=needle):
        load_params(f)


def test_backbone_pretrain_overrides_apply_to_that_backbone_only(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(
        "pretrain: {steps: 10, lr: 0.001}\n"
        "backbones:\n"
        "  a: {source: x, pretrain: {steps: 20}}\n"
        "  b: {source: y}\n"
        "  c: {source: z, pretrain: {steps: many}}\n"
    )
    p = load_params(f)
    assert (p.pretrain_for("a").steps, p.pretrain_for("a").lr) == (20, 0.001)
    assert p.pretrain_for("b").steps == 10
    with pytest.raises(ConfigError, match=r"backbones.c.pretrain.steps: expected int"):
        p.pretrain_for("c")


def test_backbone_train_overrides_and_bagging_apply_to_that_backbone_only(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text(
        "train: {steps: 10, lr: 0.001, elements_per_pair: 1}\n"
        "stack: {bagging_seeds: 1}\n"
        "backbones:\n"
        "  a: {source: x, steps: 30, bagging_seeds: 2, train: {elements_per_pair: 3, lr: 0.01}}\n"
        "  b: {source: y}\n"
        "  c: {source: z, train: {elements_per_pair: many}}\n"
        "  d: {source: w, lr: 0.1, train: {lr: 0.2}}\n"
    )
    p = load_params(f)
    a, b = p.train_for("a"), p.train_for("b")
    assert (a.steps, a.lr, a.elements_per_pair) == (30, 0.01, 3)
    assert (b.steps, b.lr, b.elements_per_pair) == (10, 0.001, 1)
    assert (p.bagging_for("a"), p.bagging_for("b")) == (2, 1)
    with pytest.raises(ConfigError, match=r"backbones.c.train.elements_per_pair: expected int"):
        p.train_for("c")
    with pytest.raises(ConfigError, match=r"backbones.d: lr is set twice"):
        p.train_for("d")


@pytest.mark.parametrize(
    ("entry", "needle"),
    [
        ("train: {out: elsewhere}", r"backbones.a: train.out is pipeline-wide"),
        ("train: {seed: 3}", "train.seed is pipeline-wide"),
        ("train: {stepz: 3}", "train.stepz is no train key"),
        ("bagging_seeds: 0", r"backbones.a: bagging_seeds must be >= 1"),
    ],
)
def test_backbone_train_overrides_refuse_what_one_backbone_cannot_own(tmp_path, entry, needle):
    f = tmp_path / "params.yaml"
    f.write_text(f"backbones:\n  a: {{source: x, {entry}}}\n")
    with pytest.raises(ConfigError, match=needle):
        load_params(f)
