"""Cut a masked model down to its kept structures and write a plain transformers folder.

The pruned hidden dimensions are zero in the masked model's residual stream, so RMSNorm there divides
by sqrt(mean over all H dims); the exported norm averages over H' kept dims. Scaling each norm's weight
by sqrt(H / H') and its epsilon by H / H' makes the two agree exactly.

The gate values of the kept structures are folded into the weights they multiply, so a model trained
with gates strictly between 0 and 1 exports as itself once its dropped gates are 0: head and
intermediate gates scale the input columns of o_proj and down_proj; the layer and hidden gates scale
what each layer writes to the residual stream (the rows of o_proj and down_proj) and the embedding's
columns. A tied LM head shares those columns, so the final norm's weight is divided by the hidden gate.

This module knows shapes and weights only; prune.py (the masks) imports it, never the other way.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import torch


@dataclass
class Shape:
    layers: int
    hidden: int
    kv_heads: int
    intermediate: int

    @classmethod
    def of(cls, config) -> Shape:
        return cls(config.num_hidden_layers, config.hidden_size, config.num_key_value_heads, config.intermediate_size)


def head_dim(config) -> int:
    return getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads


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


def ones_like_gates(config) -> dict[str, torch.Tensor]:
    """Gate values of an unmasked model: every structure fully on (export with 0/1 masks)."""
    f = Shape.of(config)
    return {"layers": torch.ones(f.layers), "heads": torch.ones(f.layers, f.kv_heads),
            "hidden": torch.ones(f.hidden), "intermediate": torch.ones(f.layers, f.intermediate)}  # fmt: skip


def _layer_state(layer, sel: dict, li: int, q_per_kv: int, d: int, scale: float, gates: dict) -> dict:
    h, groups, inter = sel["hidden"], sel["heads"][li].cpu(), sel["intermediate"][li]
    q_rows, kv_rows = _head_dims(groups, q_per_kv, d), _head_dims(groups, 1, d)
    a, m = layer.self_attn, layer.mlp
    writes = (gates["hidden"][h.cpu()] * gates["layers"][li])[:, None]  # (H', 1): what reaches the residual
    head_cols = gates["heads"][li][groups].repeat_interleave(q_per_kv * d)[None, :]  # (1, H_q' * d)
    inter_cols = gates["intermediate"][li][inter.cpu()][None, :]  # (1, I')
    out = {"input_layernorm.weight": _rows(layer.input_layernorm.weight, h) * scale,
           "post_attention_layernorm.weight": _rows(layer.post_attention_layernorm.weight, h) * scale,
           "self_attn.q_proj.weight": _cols(_rows(a.q_proj.weight, q_rows), h),
           "self_attn.k_proj.weight": _cols(_rows(a.k_proj.weight, kv_rows), h),
           "self_attn.v_proj.weight": _cols(_rows(a.v_proj.weight, kv_rows), h),
           "self_attn.o_proj.weight": _cols(_rows(a.o_proj.weight, h), q_rows) * _on(writes * head_cols, a.o_proj),
           "mlp.gate_proj.weight": _cols(_rows(m.gate_proj.weight, inter), h),
           "mlp.up_proj.weight": _cols(_rows(m.up_proj.weight, inter), h),
           "mlp.down_proj.weight": _cols(_rows(m.down_proj.weight, h), inter) * _on(writes * inter_cols,
                                                                                      m.down_proj)}  # fmt: skip
    for name, rows in (("q_proj", q_rows), ("k_proj", kv_rows), ("v_proj", kv_rows)):
        if getattr(a, name).bias is not None:  # Qwen2 carries q/k/v biases
            out[f"self_attn.{name}.bias"] = _rows(getattr(a, name).bias, rows)
    for name, rows in (("gate_proj", inter), ("up_proj", inter)):
        if getattr(m, name).bias is not None:
            out[f"mlp.{name}.bias"] = _rows(getattr(m, name).bias, rows)
    for key, proj in (("self_attn.o_proj.bias", a.o_proj), ("mlp.down_proj.bias", m.down_proj)):
        if proj.bias is not None:  # the residual gate multiplies the projection's whole output, bias included
            out[key] = _rows(proj.bias, h) * _on(writes[:, 0], proj)
    return out


def _on(gate: torch.Tensor, like: torch.nn.Module) -> torch.Tensor:
    """A gate tensor on the weight's device and in its dtype."""
    return gate.to(like.weight.device, like.weight.dtype)


def pruned_state(model, sel: dict, target: Shape, gates: dict | None = None) -> dict[str, torch.Tensor]:
    """The small model's weights: the kept rows and columns, with the kept gate values folded in."""
    cfg, h = model.config, sel["hidden"]
    gates = {k: v.detach().cpu().float() for k, v in (gates or ones_like_gates(cfg)).items()}
    q_per_kv, d = cfg.num_attention_heads // cfg.num_key_value_heads, head_dim(cfg)
    scale = math.sqrt(cfg.hidden_size / target.hidden)
    z_h = gates["hidden"][h.cpu()]  # (H',)
    embed, norm = model.get_input_embeddings(), model.model.norm
    # a tied head reads the embedding's columns, now scaled by z_h: the final norm divides it back out
    unfold = torch.where(z_h > 0, 1 / z_h, torch.ones_like(z_h)) if _tied(cfg) else torch.ones_like(z_h)
    state = {"model.embed_tokens.weight": _cols(embed.weight, h) * _on(z_h[None, :], embed),
             "model.norm.weight": _rows(norm.weight, h) * scale * _on(unfold, norm),
             "lm_head.weight": _cols(model.get_output_embeddings().weight, h)}  # fmt: skip
    layers = model.model.layers
    for new, li in enumerate(sel["layers"].tolist()):
        for name, value in _layer_state(layers[li], sel, li, q_per_kv, d, scale, gates).items():
            state[f"model.layers.{new}.{name}"] = value
    return state


def _tied(config) -> bool:
    return bool(getattr(config, "tie_word_embeddings", False))


@torch.no_grad()
def build_pruned(model, sel: dict, target: Shape, gates: dict | None = None):
    """The target-shape transformers model in memory: `sel` the kept indices (StructuredMasks.selection),
    `gates` the values the kept structures were multiplied by (default 1)."""
    from transformers import AutoModelForCausalLM

    cfg = pruned_config(model.config, target, sel["layers"].tolist())
    small = AutoModelForCausalLM.from_config(cfg, dtype=model.dtype).to(model.device)
    state = pruned_state(model, sel, target, gates)
    if _tied(cfg):
        state.pop("lm_head.weight")
    small.load_state_dict(state, strict=not _tied(cfg))
    return small.eval()


def export_pruned(model, sel: dict, target: Shape, folder, tokenizer=None, gates: dict | None = None):
    """Write the target-shape model to `folder` (loads with AutoModelForCausalLM alone); returns it."""
    small = build_pruned(model, sel, target, gates)
    Path(folder).mkdir(parents=True, exist_ok=True)
    small.save_pretrained(folder)
    if tokenizer is not None:
        tokenizer.save_pretrained(folder)
    return small
