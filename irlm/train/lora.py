"""LoRA through peft: wrap an encoder's backbone, and merge back before saving."""

from __future__ import annotations


def add_lora(encoder, r: int = 16, alpha: int | None = None, dropout: float = 0.0, targets="all-linear",
             layers: list[int] | None = None):  # fmt: skip
    """Freeze the backbone and train rank-`r` adapters on its linear layers (alpha defaults to 2r).
    `layers` limits the adapters to those layer indices (the top ones, above cached activations)."""
    from peft import LoraConfig, get_peft_model

    if layers is not None:  # full module names: peft's layer pattern misses a bare model's "layers.N"
        targets = linear_names(encoder.model, set(layers))
    config = LoraConfig(r=r, lora_alpha=alpha or 2 * r, lora_dropout=dropout, target_modules=targets)
    encoder.model = get_peft_model(encoder.model, config)
    return encoder


def linear_names(model, layers: set[int]) -> list[str]:
    """Full names of the linear modules inside the given layers, e.g. layers.20.self_attn.q_proj."""
    import re

    import torch

    def layer_of(name: str) -> int | None:
        m = re.search(r"(?:^|\.)layers\.(\d+)\.", name)
        return int(m.group(1)) if m else None

    return [n for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and layer_of(n) in layers]


def merge_lora(encoder):
    """Fold adapters into the weights so the saved folder is a plain transformers model."""
    from peft import PeftModel

    if isinstance(encoder.model, PeftModel):
        encoder.model = encoder.model.merge_and_unload()
    return encoder
