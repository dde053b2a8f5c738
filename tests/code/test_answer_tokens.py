"""Answer tokens resolved in context, on the tokenizer kinds real checkpoints use: byte-level BPE
(Qwen2, Llama 3: "yes" and " yes" are different tokens) and SentencePiece-style Metaspace (Llama 2,
Gemma: a word alone gets a "▁" that it does not get after a newline)."""

from __future__ import annotations

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from tokenfocus.backbones import BackboneError, TemplateParts
from tokenfocus.config import PromptConfig
from tokenfocus.prompts import answer_tokens, in_context_ids

CORPUS = [
    "user\nDoes the image show two red circles ? Answer yes or no .\nassistant\nyes",
    "user\nRate from 1 to 5 .\nassistant\n4",
    "Yes , No , yes no 1 2 3 4 5 yes no Yes No",
    "model\nno model\nYes model\n3 model\n5 model\n1 model\n2",
] * 50

QWEN_LIKE = TemplateParts(head="<|im_start|>user\n<image>", tail="<|im_end|>\n<|im_start|>assistant\n")
GEMMA_LIKE = TemplateParts(head="<start_of_turn>user\n<image>", tail="<end_of_turn>\n<start_of_turn>model\n")


def _byte_level() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    special = ["<|im_start|>", "<|im_end|>", "<image>", "<pad>"]
    tok.train_from_iterator(
        CORPUS,
        trainers.BpeTrainer(
            vocab_size=400, special_tokens=special, initial_alphabet=pre_tokenizers.ByteLevel.alphabet()
        ),
    )
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>")


def _metaspace() -> PreTrainedTokenizerFast:
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first")
    tok.decoder = decoders.Metaspace(replacement="▁", prepend_scheme="first")
    special = ["<start_of_turn>", "<end_of_turn>", "<image>", "<pad>", "<unk>"]
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=400, special_tokens=special))
    return PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", unk_token="<unk>")


@pytest.mark.parametrize(("make", "parts"), [(_byte_level, QWEN_LIKE), (_metaspace, GEMMA_LIKE)])
def test_answer_ids_are_those_the_model_reads_after_the_generation_prompt(make, parts):
    tok = make()
    context = parts.head + "Q" + parts.tail
    ids = answer_tokens(tok, PromptConfig(), slug="real-like", parts=parts)
    for word, got in (("yes", ids.yes_id), ("no", ids.no_id), ("4", ids.score_ids[3])):
        assert [got] == in_context_ids(tok, context, word)
        # the joined text really carries that id where the answer starts
        full = tok.encode(context + word, add_special_tokens=False)
        assert full[-1] == got
    # the surface forms differ on these tokenizers, and each one found is a single in-context token
    assert len(set(ids.yes_ids)) >= 2 and not set(ids.yes_ids) & set(ids.no_ids)
    for i in ids.yes_ids:
        assert tok.decode([i]).strip().lower() == "yes"


def test_the_bare_word_is_not_the_in_context_token_on_a_metaspace_tokenizer():
    """What the old lookup (the word encoded alone) got wrong, shown on the tokenizer itself."""
    tok = _metaspace()
    context = GEMMA_LIKE.head + "Q" + GEMMA_LIKE.tail
    assert tok.encode("yes", add_special_tokens=False) != in_context_ids(tok, context, "yes")


def test_forms_are_summed_as_probabilities():
    ids = answer_tokens(_byte_level(), PromptConfig(), slug="b", parts=QWEN_LIKE)
    logits = torch.randn(3, 400)
    got = ids.yes_no_logits(logits).softmax(-1)[:, 0]
    p = logits.softmax(-1)
    want = p[:, list(ids.yes_ids)].sum(-1) / (
        p[:, list(ids.yes_ids)].sum(-1) + p[:, list(ids.no_ids)].sum(-1)
    )
    assert torch.allclose(got, want, atol=1e-6)


def test_a_configured_word_that_is_not_one_token_in_context_is_refused():
    with pytest.raises(BackboneError, match="answer word 'maybe so'"):
        answer_tokens(_byte_level(), PromptConfig(yes_token="maybe so"), slug="b", parts=QWEN_LIKE)
