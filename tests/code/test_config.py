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
