"""Weight averaging over the end of fine-tuning (``train.average_from``): the saved model is the
running mean of the trained weights over the steps from a fraction of training on.

Why: a mean of the weights along the trajectory sits in a flatter region of the loss than any one
step's weights, and flatter minima transfer better to data drawn unlike the training data (SWA,
Izmailov et al. 2018; SWAD, Cha et al. 2021, on domain generalisation). It costs one copy of the
trained weights and no forward pass.
"""

from __future__ import annotations

from contextlib import contextmanager

import torch


def averaged_tensors(model: torch.nn.Module) -> list[torch.Tensor]:
    """What the average covers: every trained parameter, and the running statistics of each
    BatchNorm layer that trains (they move with its weights; a frozen one's stay as they are)."""
    out = [p for p in model.parameters() if p.requires_grad]
    for m in model.modules():
        trained = any(p.requires_grad for p in m.parameters())
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and trained:
            out += [b for b in (m.running_mean, m.running_var) if b is not None]
    return out


class WeightAverage:
    """The running mean of ``tensors`` over the steps from ``start`` (counted after the step) on.

    Example:
        >>> average = WeightAverage(averaged_tensors(model), start=400)
        >>> average.update(step)  # after each optimizer step
        >>> with average.applied():  # the mean in the model for the block
        ...     save(model)
    """

    def __init__(self, tensors: list[torch.Tensor], start: int):
        self.tensors, self.start, self.count = tensors, start, 0
        # in float32 whatever the weights' dtype: a bf16 mean would stop moving once each step's
        # share, 1/count of a difference, falls below its 8-bit mantissa's resolution
        self.mean = [t.detach().float().clone() for t in tensors]

    @torch.no_grad()
    def update(self, step: int) -> None:
        """Take in the weights as they are after ``step`` steps (nothing before ``start``)."""
        if step < self.start:
            return
        self.count += 1
        for mean, t in zip(self.mean, self.tensors, strict=True):
            if self.count == 1:
                mean.copy_(t)
            else:  # an incremental mean: no sum of many steps' weights to lose precision in
                mean.add_(t.float() - mean, alpha=1.0 / self.count)

    @contextmanager
    def applied(self):
        """The mean in the model for the block, the trained weights restored after it; the weights
        as they are while no step has been taken in."""
        if self.count == 0:
            yield
            return
        with torch.no_grad():
            kept = [t.detach().clone() for t in self.tensors]
            for t, mean in zip(self.tensors, self.mean, strict=True):
                t.copy_(mean)
        try:
            yield
        finally:
            with torch.no_grad():
                for t, k in zip(self.tensors, kept, strict=True):
                    t.copy_(k)

    def state_dict(self) -> dict:
        """What a checkpoint keeps, so that a resumed run averages the same steps."""
        return {"count": self.count, "mean": self.mean}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        self.count = state["count"]
        for mean, saved in zip(self.mean, state["mean"], strict=True):
            mean.copy_(saved)
