"""LoRA for a loaded backbone: the adapter's target modules, and the modules it trains whole.

The targets are named one by one inside the language model, so that a vision tower that reuses
their names (Qwen2.5-VL's ``visual`` MLPs: gate/up/down_proj) stays frozen unless asked.
"""

from __future__ import annotations

from tokenfocus.config import Params


def target_modules(model, lc) -> dict:
    """The adapter's target modules by name: each module whose last name part is one of
    ``lc.target_modules``, inside the language model unless ``lc.include_vision``."""
    # Named one by one, inside the language model only: vision towers reuse names such as q_proj
    # or gate_proj (Qwen2.5-VL's), under names without "vision" (`visual`).
    decoder = model.get_decoder()
    lm = next(n for n, m in model.named_modules() if m is decoder) + "."
    return {
        n: m
        for n, m in model.named_modules()
        if n.split(".")[-1] in lc.target_modules and (lc.include_vision or n.startswith(lm))
    }


def saved_modules(model, lc) -> dict:
    """The modules trained whole beside the adapter, by name (``lc.modules_to_save``)."""
    return {n: m for n, m in model.named_modules() if n.split(".")[-1] in lc.modules_to_save}


def apply_lora(model, slug: str, params: Params):
    """Wrap the model in a LoRA adapter on the language model's target modules only."""
    from peft import LoraConfig, get_peft_model

    lc = params.backbone(slug).lora
    names = list(target_modules(model, lc))
    if not names:
        raise ValueError(f"{slug}: LoRA target modules {lc.target_modules} match nothing in the model")
    found = {n.split(".")[-1] for n in saved_modules(model, lc)}
    missing = [m for m in lc.modules_to_save if m not in found]
    if missing:
        raise ValueError(f"{slug}: lora.modules_to_save {missing} match no module of the model")
    config = LoraConfig(
        r=lc.r,
        lora_alpha=lc.alpha,
        lora_dropout=lc.dropout,
        target_modules=names,
        modules_to_save=list(lc.modules_to_save) or None,
    )
    return get_peft_model(model, config)
