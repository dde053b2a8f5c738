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
