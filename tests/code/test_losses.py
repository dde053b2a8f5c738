import pytest
import torch

from tokenfocus.losses import element_loss, focus_loss, lm_loss, score_target


@pytest.mark.parametrize("score", [1.0, 2.5, 3.4, 4.99, 5.0])
def test_soft_target_is_a_distribution_with_the_human_mean(score):
    t = score_target(torch.tensor([score]))
    assert t.sum().item() == pytest.approx(1.0)
    assert (t * torch.arange(1, 6)).sum().item() == pytest.approx(score, abs=1e-5)
    assert (t > 0).sum() <= 2


def test_hard_target_is_one_hot_on_rounded_score():
    assert score_target(torch.tensor([3.6]), soft=False).tolist() == [[0, 0, 0, 1, 0]]


def test_focus_loss_gradient_only_through_score_logits_at_first_answer_position():
    torch.manual_seed(0)
    vocab, score_ids = 20, [3, 7, 8, 11, 15]
    logits = torch.randn(4, 6, vocab, requires_grad=True)  # (batch, positions, vocab)
    first_answer = logits[:, -1, :]
    out = focus_loss(first_answer[:, score_ids], torch.tensor([1.0, 2.5, 4.0, 5.0]), mse_weight=0.5)
    out["loss"].backward()
    grad = logits.grad
    mask = torch.zeros_like(grad, dtype=torch.bool)
    mask[:, -1, score_ids] = True
    assert grad[~mask].abs().max().item() == 0.0
    assert grad[mask].abs().min().item() > 0.0


def test_focus_loss_is_lower_for_the_right_answer():
    good = torch.tensor([[0.0, 0.0, 0.0, 5.0, 0.0]])
    bad = torch.tensor([[5.0, 0.0, 0.0, 0.0, 0.0]])
    y = torch.tensor([4.0])
    assert focus_loss(good, y)["loss"] < focus_loss(bad, y)["loss"]
    assert focus_loss(good, y)["mse"] < 0.1


def test_element_loss_prefers_correct_yes_no():
    yes_no = torch.tensor([[3.0, -3.0]])
    assert element_loss(yes_no, torch.tensor([1.0])) < element_loss(yes_no, torch.tensor([0.0]))


def test_lm_loss_ignores_masked_positions():
    logits = torch.zeros(1, 2, 5)
    logits[0, 1, 2] = 10.0
    assert lm_loss(logits, torch.tensor([[-100, 2]])).item() < 0.01


class _FullLogits(torch.nn.Module):
    """The model, asked for every position's logits whatever the caller keeps: the test can then
    see where the trainer's loss sends gradient. Records the batch it saw."""

    def __init__(self, model):
        super().__init__()
        self.inner, self.device = model, model.device

    def forward(self, **kw):
        kw.pop("logits_to_keep", None)
        out = self.inner(**kw, logits_to_keep=0)
        out.logits.retain_grad()
        self.full, self.mask = out.logits, kw["attention_mask"]
        return out


def test_the_trainer_sends_gradient_only_through_the_answer_tokens_at_the_first_answer_position():
    """Through Trainer._loss itself: left-padded rows of different lengths, overall and element
    questions; the loss's gradient w.r.t. every position's logits is zero except at the last
    position (the first answer token) and there only on the score tokens (overall rows) or on
    yes/no (element rows)."""
    from pathlib import Path

    from tokenfocus.config import load_params
    from tokenfocus.evalmuse import load_records
    from tokenfocus.images import load_images
    from tokenfocus.train import Trainer

    root = Path(__file__).resolve().parents[2]
    params = load_params(root / "params.yaml")
    trainer = Trainer("fastvlm_qwen2", params, source=str(root / "models/base/fastvlm_qwen2"))
    trainer.setup()
    recs = load_records(root / "data/train_list.json")[:6]
    trainer.images = load_images(root / "data/images", [r.img_path for r in recs])
    recs[1].prompt += " and a few more words to pad the others"  # rows of different lengths
    keys = [r.elements[-1].key for r in recs]
    wrapped = _FullLogits(trainer.model)
    trainer.model = wrapped
    # the wrapper sees one forward: the per-row path (the shared image prefix's loss and gradients
    # equal it, tests/code/test_train.py)
    trainer.share_prefix = False
    out = trainer._loss(recs, keys, trainer.cfg.steps)  # after the MSE warm-up: every term on
    out["loss"].backward()
    grad, mask = wrapped.full.grad, wrapped.mask
    assert (mask[:, -1] == 1).all() and (mask[:, 0] == 0).any(), "rows are not left-padded"
    b, tokens = len(recs), trainer.scorer.tokens
    expected = torch.zeros_like(grad, dtype=torch.bool)
    expected[:b, -1, tokens.score_ids] = True
    expected[b:, -1, [tokens.yes_id, tokens.no_id]] = True
    assert grad[~expected].abs().max().item() == 0.0
    assert (grad[expected].abs() > 0).float().mean().item() > 0.9


def test_answer_lm_loss_reads_each_answer_token_where_it_is_predicted_under_left_padding():
    """The batched, left-padded lm loss equals a by-hand cross-entropy of each row alone: the
    logits at position t predict the token at t + 1, over the answer and end-of-turn tokens only."""
    from pathlib import Path

    import torch.nn.functional as F

    from tokenfocus.backbones import assistant_end, load_model_and_processor, template_parts
    from tokenfocus.config import BackboneConfig
    from tokenfocus.evalmuse import load_records
    from tokenfocus.images import load_images
    from tokenfocus.losses import answer_lm_loss
    from tokenfocus.scoring import encode

    root = Path(__file__).resolve().parents[2]
    src = root / "models/base/fastvlm_qwen2"
    model, processor = load_model_and_processor(src, BackboneConfig(source=str(src)), slug="t")
    processor.tokenizer.padding_side = "left"
    end = assistant_end(processor)
    recs = load_records(root / "data/train_list.json")[:3]
    images = load_images(root / "data/images", [r.img_path for r in recs])
    imgs = [images[r.img_path] for r in recs]
    parts = template_parts(processor)
    texts = [parts.head + r.prompt + " ? " * i + parts.tail for i, r in enumerate(recs)]
    answers = ["yes", "4", "no"]
    got = answer_lm_loss(model, processor, texts, answers, imgs, end)
    total, count = 0.0, 0
    tok = processor.tokenizer
    for text, answer, img in zip(texts, answers, imgs, strict=True):
        n = len(tok.encode(answer + end, add_special_tokens=False))
        batch = encode(processor, [text + answer + end], [img])
        with torch.no_grad():
            logits = model(**batch).logits[0]
        ids = batch["input_ids"][0]
        length = ids.shape[0]
        total += F.cross_entropy(
            logits[length - n - 1 : length - 1].float(), ids[length - n :], reduction="sum"
        ).item()
        count += n
    assert got.item() == pytest.approx(total / count, abs=1e-4)
