"""Test-time BatchNorm adaptation: a convolutional vision tower's normalisation statistics
re-estimated on the images a split is about to be scored on (AdaBN: Li et al., 2016; Schneider et
al., 2020, who measure it on ImageNet-C's corruptions).

Why: a BatchNorm layer subtracts the mean and divides by the spread that its training images gave
it. A drawing of another kind (darker, softer, a patterned backdrop) shifts every channel's mean
and spread, and each layer passes the shift on to the next. Re-estimating the statistics on the
scored images themselves, with no label, takes the shift out before the language model reads the
map. Measured (docs/styles.md, "The towers' BatchNorm statistics from the scored images"): on
SynthMuse's pipeline the stack's held-out family gains +0.022 / +0.026 NTIRE at training seeds
0 / 1, washed +0.046 / +0.042 and dusk +0.058 / +0.059, and test loses 0.002 / 0.004.

What it assumes: the scored split is a set, and the statistics of the whole set are what each of
its images is normalised by. So a pair's score depends on the split it is scored in, as a
BatchNorm model's does in training mode. ``tokenfocus score`` adapts per split; one image at a time
(``score-one``, the served model) keeps the statistics the model was saved with. A tower without
BatchNorm (ViTs, with LayerNorm) is left as it is.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from tokenfocus.backbones import vision_tower


def norm_layers(model) -> list:
    """The BatchNorm layers inside ``model``'s vision tower (empty for a LayerNorm tower)."""
    import torch

    tower = vision_tower(model)
    if tower is None:
        return []
    return [m for m in tower.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]


def adapt_norm(model, processor, batches: Iterable[list]) -> int:
    """Re-estimate the vision tower's BatchNorm statistics on ``batches`` of images.

    Each layer's running mean and variance are reset and set to the average of its batches'
    statistics (PyTorch's cumulative average, ``momentum=None``); nothing else moves: weights, other
    layers and the model's mode are as they were. The same batches give the same statistics. Where
    no image comes, or reading a batch fails (an unreadable image), the layers keep the statistics
    they had, so the scorer is as it was before the call.

    Args:
        model: a loaded image-text-to-text model (or a peft model around one).
        processor: its processor; its image processor makes the tower's ``pixel_values``.
        batches: lists of RGB images, each one forward of the tower.

    Returns:
        How many BatchNorm layers were re-estimated (0: the tower has none; ``batches`` is unread).

    Raises:
        ValueError: ``batches`` held no image.
    """
    import torch

    layers = norm_layers(model)
    if not layers:
        return 0
    tower = vision_tower(model)
    param = next(tower.parameters())
    # momentum, mode and statistics (running mean, variance, batch count) to put back afterwards
    state = [(m.momentum, m.training, [b.clone() for b in m.buffers(recurse=False)]) for m in layers]
    for m in layers:  # only the statistics learn: the layers' affine weights take no gradient here
        m.reset_running_stats()
        m.momentum = None
        m.train()
    seen, done = 0, False
    try:
        with torch.no_grad():
            for batch in batches:
                pixels = processor.image_processor(images=batch, return_tensors="pt")["pixel_values"]
                tower(pixels.to(param.device, param.dtype))
                seen += len(batch)
        if not seen:
            raise ValueError("adapt_norm: no images to estimate the tower's statistics from")
        done = True
    finally:
        with torch.no_grad():
            for m, (momentum, training, saved) in zip(layers, state, strict=True):
                m.momentum = momentum
                m.train(training)
                if not done:  # half-estimated statistics would score with neither set
                    for b, old in zip(m.buffers(recurse=False), saved, strict=True):
                        b.copy_(old)
    return len(layers)


def adapt_to_split(
    scorer, img_paths: list[str], root: str | Path, *, max_images: int, batch: int = 64
) -> int:
    """:func:`adapt_norm` on a split's distinct images (at most ``max_images``, evenly spaced through
    the split, so a large split costs a bounded pass), ``batch`` decoded at a time.

    Returns:
        How many BatchNorm layers were re-estimated.
    """
    from tokenfocus.images import load_images

    if not norm_layers(scorer.model):
        return 0
    paths = list(dict.fromkeys(img_paths))
    if len(paths) > max_images:  # evenly spaced: the same subset on every run and every rank
        paths = [paths[i * len(paths) // max_images] for i in range(max_images)]

    def batches():
        for start in range(0, len(paths), batch):
            part = paths[start : start + batch]
            images = load_images(root, part)
            yield [images[p] for p in part]

    return adapt_norm(scorer.model, scorer.processor, batches())
