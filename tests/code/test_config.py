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
