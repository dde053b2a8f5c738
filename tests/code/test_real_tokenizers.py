"""Backbones built with the tokenizers and chat templates of real checkpoints (issue 25): byte-level
BPE after ChatML (Qwen2), SentencePiece-style Metaspace after Gemma's and Llama 2's templates.

The word-level tiny bases read "yes" as one id wherever it stands; these do not, so the answer ids,
the training targets and the prefix-reuse split are checked where they could go wrong. (Prefix reuse
against the plain path runs on them in tests/code/test_scoring.py, through PATH_BACKBONES.)
"""

from __future__ import annotations

import pytest
import torch

from tests.conftest import REAL_TOKENIZERS
from tokenfocus.backbones import BackboneError, assistant_end
from tokenfocus.config import BackboneConfig, PromptConfig
from tokenfocus.evalmuse import load_records
from tokenfocus.images import load_images
from tokenfocus.losses import answer_lm_loss, answer_target_ids
from tokenfocus.prompts import element_text, overall_text
from tokenfocus.scoring import Scorer, encode
from tokenfocus.tiny import build_tiny


@pytest.fixture(scope="module")
def pair(small_data):
    rec = load_records(small_data / "train_list.json")[0]
    img = load_images(small_data / "images", [rec.img_path])[rec.img_path]
    return rec, img


@pytest.mark.parametrize("slug", list(REAL_TOKENIZERS))
def test_training_targets_and_scoring_read_the_same_answer_ids(tiny_params, pair, slug):
    rec, img = pair
    scorer = Scorer.load(tiny_params.backbone(slug).source)
    tok, prompts, ids = scorer.processor.tokenizer, scorer.prompts, scorer.tokens
    key = rec.elements[0].key
    texts = [overall_text(scorer.parts, prompts, rec.prompt, None)] * 5
    texts += [element_text(scorer.parts, prompts, rec.prompt, key)] * 2
    answers = [*prompts.score_tokens, prompts.yes_token, prompts.no_token]
    end = assistant_end(scorer.processor)
    targets = answer_target_ids(tok, texts, answers, end)
    # what the lm baseline trains on starts with the id the focus loss and the scorer read
    assert [t[0] for t in targets] == [*ids.score_ids, ids.yes_id, ids.no_id]
    # and the model's input really ends with those targets (the processor expands the image only)
    for text, answer, target in zip(texts, answers, targets, strict=True):
        got = encode(scorer.processor, [text + answer + end], [img])["input_ids"][0, -len(target) :]
        assert got.tolist() == target
    loss = answer_lm_loss(scorer.model, scorer.processor, texts, answers, [img] * len(texts), end)
    assert torch.isfinite(loss) and loss.item() > 0


@pytest.mark.parametrize("slug", list(REAL_TOKENIZERS))
def test_the_answer_forms_are_distinct_ids_on_these_tokenizers(tiny_params, slug):
    """What the word-level bases cannot show: "yes", "Yes", " yes" are different ids, all read as yes,
    and a word encoded alone is not the id that follows a Metaspace template's generation prompt."""
    scorer = Scorer.load(tiny_params.backbone(slug).source)
    tok, ids = scorer.processor.tokenizer, scorer.tokens
    kind = REAL_TOKENIZERS[slug]["tokenizer"]
    assert len(ids.yes_ids) == 4 and len(ids.no_ids) == 4  # yes Yes " yes" " Yes"
    assert all(len(s) == 2 for s in ids.score_sets)  # "4" and " 4"
    assert {tok.decode([i]).strip() for i in ids.yes_ids} == {"yes", "Yes"}
    alone = tok.encode(scorer.prompts.yes_token, add_special_tokens=False)
    if kind == "metaspace" and scorer.parts.tail.endswith("\n"):
        assert alone != [ids.yes_id]  # "▁yes" alone, "yes" after the newline
    if kind == "byte_bpe":
        assert tok.convert_ids_to_tokens(ids.yes_id) == "yes"
        assert "Ġyes" in tok.convert_ids_to_tokens(list(ids.yes_ids))


def test_unknown_tokenizer_kind_or_template_is_a_clear_error(small_data, tmp_path):
    for tiny, match in (
        ({"tokenizer": "wordpiece"}, "unknown tiny tokenizer kind 'wordpiece'"),
        ({"chat_template": "vicuna"}, "x: unknown tiny chat template 'vicuna'"),
    ):
        cfg = BackboneConfig(source=str(tmp_path / "x"), family="llava", tiny=tiny)
        with pytest.raises(BackboneError, match=match):
            build_tiny("x", cfg, PromptConfig(), ["two red circles"], tmp_path / "x")
        assert not (tmp_path / "x").exists()
