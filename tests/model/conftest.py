"""The shipped pre-trained bases, as `make run` uses them (pulled from the in-repo DVC remote)."""

import pytest

from tests.conftest import ROOT
from tokenfocus.config import load_params

PARAMS = load_params(ROOT / "params.yaml")
SHIPPED = [s for s, bb in PARAMS.backbones.items() if bb.family]


@pytest.fixture(scope="module", params=SHIPPED)
def scorer(request):
    from tokenfocus.scoring import Scorer

    source = ROOT / PARAMS.backbone(request.param).source
    if not list(source.glob("model*.safetensors")):  # weights, whole or sharded
        pytest.fail(f"{source} is missing: `make bases` (or `dvc pull pretrain`) brings the shipped bases")
    return Scorer.load(source, params=ROOT / "params.yaml")
