"""Cut a masked model down to its kept structures and write a plain transformers folder.

The pruned hidden dimensions are zero in the masked model's residual stream, so RMSNorm there divides
by sqrt(mean over all H dims); the exported norm averages over H' kept dims. Scaling each norm's weight
by sqrt(H / H') and its epsilon by H / H' makes the two agree exactly.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch

from irlm.methods.drama.prune import Shape, StructuredMasks, head_dim


def _rows(w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return w.index_select(0, idx.to(w.device)).clone()


def _cols(w: torch.Tensor, idx: torch.Tensor) -> torch.Tensor:
    return w.index_select(1, idx.to(w.device)).clone()


def _head_dims(groups: torch.Tensor, per_group: int, d: int) -> torch.Tensor:
    """Row indices of the heads in the kept key/value groups: each group is `per_group` heads of d rows."""
    heads = (groups[:, None] * per_group + torch.arange(per_group)).flatten()
    return (heads[:, None] * d + torch.arange(d)).flatten()


def pruned_config(config, target: Shape, kept_layers: list[int]):
    cfg = config.__class__.from_dict(config.to_dict())
    q_per_kv = config.num_attention_heads // config.num_key_value_heads
    cfg.head_dim = head_dim(config)  # no longer hidden / heads once either is cut
    cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = target.layers, target.hidden, target.intermediate
    cfg.num_key_value_heads, cfg.num_attention_heads = target.kv_heads, target.kv_heads * q_per_kv
    cfg.rms_norm_eps = config.rms_norm_eps * config.hidden_size / target.hidden  # see the module docstring
    if isinstance(getattr(cfg, "layer_types", None), list):
        cfg.layer_types = [config.layer_types[i] for i in kept_layers]
    return cfg


def _layer_state(layer, sel: dict, li: int, q_per_kv: int, d: int, scale: float) -> dict[str, torch.Tensor]:
    h, groups, inter = sel["hidden"], sel["heads"][li].cpu(), sel["intermediate"][li]
    q_rows, kv_rows = _head_dims(groups, q_per_kv, d), _head_dims(groups, 1, d)
    a, m = layer.self_attn, layer.mlp
    out = {"input_layernorm.weight": _rows(layer.input_layernorm.weight, h) * scale,
           "post_attention_layernorm.weight": _rows(layer.post_attention_layernorm.weight, h) * scale,
           "self_attn.q_proj.weight": _cols(_rows(a.q_proj.weight, q_rows), h),
           "self_attn.k_proj.weight": _cols(_rows(a.k_proj.weight, kv_rows), h),
           "self_attn.v_proj.weight": _cols(_rows(a.v_proj.weight, kv_rows), h),
           "self_attn.o_proj.weight": _cols(_rows(a.o_proj.weight, h), q_rows),
           "mlp.gate_proj.weight": _cols(_rows(m.gate_proj.weight, inter), h),
           "mlp.up_proj.weight": _cols(_rows(m.up_proj.weight, inter), h),
           "mlp.down_proj.weight": _cols(_rows(m.down_proj.weight, h), inter)}  # fmt: skip
    for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows), ("o_proj", h)):
        if getattr(a, name).bias is not None:  # Qwen2 carries q/k/v biases
            out[f"self_attn.{name}.bias"] = _rows(getattr(a, name).bias, rows)
    for name, rows in (("gate_proj", inter), ("up_proj", inter), ("down_proj", h)):
        if getattr(m, name).bias is not None:
            out[f"mlp.{name}.bias"] = _rows(getattr(m, name).bias, rows)
    return out


def pruned_state(model, sel: dict, target: Shape) -> dict[str, torch.Tensor]:
    cfg, h = model.config, sel["hidden"]
    q_per_kv, d = cfg.num_attention_heads // cfg.num_key_value_heads, head_dim(cfg)
    scale = math.sqrt(cfg.hidden_size / target.hidden)
    state = {"model.embed_tokens.weight": _cols(model.get_input_embeddings().weight, h),
             "model.norm.weight": _rows(model.model.norm.weight, h) * scale,
             "lm_head.weight": _cols(model.get_output_embeddings().weight, h)}  # fmt: skip
    layers = model.model.layers
    for new, li in enumerate(sel["layers"].tolist()):
        for name, value in _layer_state(layers[li], sel, li, q_per_kv, d, scale).items():
            state[f"model.layers.{new}.{name}"] = value
    return state


@torch.no_grad()
def export_pruned(model, masks: StructuredMasks, target: Shape, folder, tokenizer=None):
    """Write the target-shape model to `folder` (loads with AutoModelForCausalLM alone); returns it."""
    from transformers import AutoModelForCausalLM

    sel = masks.selection(target)
    cfg = pruned_config(model.config, target, sel["layers"].tolist())
    small = AutoModelForCausalLM.from_config(cfg, dtype=model.dtype)
    state = pruned_state(model, sel, target)
    if getattr(cfg, "tie_word_embeddings", False):
        state.pop("lm_head.weight")
    small.load_state_dict(state, strict=not getattr(cfg, "tie_word_embeddings", False))
    Path(folder).mkdir(parents=True, exist_ok=True)
    small.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return small
