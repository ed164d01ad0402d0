"""LoRA through peft: wrap an encoder's backbone, and merge back before saving."""

from __future__ import annotations


def add_lora(encoder, r: int = 16, alpha: int | None = None, dropout: float = 0.0, targets="all-linear"):
    """Freeze the backbone and train rank-`r` adapters on its linear layers (alpha defaults to 2r)."""
    from peft import LoraConfig, get_peft_model

    config = LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=dropout, target_modules=targets)
    encoder.model = get_peft_model(encoder.model, config)
    return encoder


def merge_lora(encoder):
    """Fold adapters into the weights so the saved folder is a plain transformers model."""
    from peft import PeftModel

    if isinstance(encoder.model, PeftModel):
        encoder.model = encoder.model.merge_and_unload()
    return encoder
