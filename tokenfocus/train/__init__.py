"""Fine-tuning one backbone with the token-focus loss (or the LM baseline), resumably.

The story: load the base through the Auto classes -> optionally wrap in LoRA -> for each step,
draw a batch of (image, prompt) pairs with one element question each -> read the first answer
position -> loss -> AdamW with warm-up and cosine decay -> every so often, evaluate on val,
keep the best model and write a checkpoint that resumes exactly.
"""

from tokenfocus.train.trainer import LogFn, Trainer, train

__all__ = ["LogFn", "Trainer", "train"]
