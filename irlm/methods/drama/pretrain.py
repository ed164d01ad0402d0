"""Entry points of DRAMA's backbone stages: prune to a target shape, then recover by LM pretraining.

    irlm prune --config recipes/drama-prune-tiny.yaml
    irlm pretrain --config recipes/drama-prune-tiny.yaml --set model=runs/drama/prune/final
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path

import torch

from irlm.data.text import iter_texts, pack_blocks
from irlm.errors import InputError
from irlm.methods.drama.config import PretrainConfig, PruneConfig
from irlm.methods.drama.prune import PruneTask, Shape
from irlm.models.resolve import resolve_model
from irlm.train.lm import LMTask
from irlm.train.loop import Trainer, init_distributed, seed_everything, train_config, world
from irlm.utils import check_replaceable, claim_folder, pick_device, write_json


def non_embedding_params(model) -> int:
    """Parameters outside the token embedding and LM head: what pruning shrinks and what costs compute."""
    skip = {id(model.get_input_embeddings().weight), id(model.get_output_embeddings().weight)}
    return sum(p.numel() for p in model.parameters() if id(p) not in skip)


def load_lm(name: str, device: str | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    path = resolve_model(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)  # fp32 master weights
    return model.to(pick_device(device)), AutoTokenizer.from_pretrained(path)


def _blocks(sources: list[str], tokenizer, block_size: int, max_blocks: int) -> list[list[int]]:
    blocks = pack_blocks(iter_texts(sources), tokenizer, block_size, max_blocks or None)
    if not blocks:
        raise InputError(f"no {block_size}-token block of text in {', '.join(sources)}")
    return blocks


def _train(task, blocks, cfg) -> list[dict]:
    return Trainer(task, blocks, train_config(cfg, cfg.steps)).fit()


def prune(cfg: PruneConfig) -> dict:
    """Learn the masks, export output_dir/final, and write summary.json (shapes and parameter counts)."""
    from transformers import AutoConfig

    if not 0.0 <= cfg.harden < 1.0:
        raise InputError(f"harden is the share of steps that hardens the gates, in [0, 1), not {cfg.harden}",
                         field="harden")  # fmt: skip
    check_replaceable(cfg.output_dir, "output_dir", "model")  # before any model is read: another kind is refused
    full, target = check_target(cfg, AutoConfig.from_pretrained(resolve_model(cfg.model)))  # before loading weights
    claim_folder(cfg.output_dir, "model")  # settings checked first: a refused run leaves no folder behind
    init_distributed()
    seed_everything(cfg.seed)
    model, tok = load_lm(cfg.model, cfg.device)
    before = non_embedding_params(model)
    task = PruneTask(model, tok, target, cfg.lr, cfg.mask_lr, cfg.lambda_lr, cfg.init_keep, cfg.target_warmup,
                     harden=cfg.harden, constrain_params=cfg.constrain_params, output_dir=cfg.output_dir)  # fmt: skip
    history = _train(task, _blocks(cfg.text, tok, cfg.block_size, cfg.max_blocks), cfg)
    final = Path(cfg.output_dir) / "final"
    report = final / "prune_report.json"  # the export's LM loss beside the soft model's (PruneTask.save)
    extra = {"prune_report": json.loads(report.read_text()) if report.is_file() else None}
    return _summary(cfg, "prune", history, before, final, full, extra)


def check_target(cfg: PruneConfig, config) -> tuple[Shape, Shape]:
    """The model's shape and the target's, or a one-line error for a target that cannot be exported."""
    target, full = Shape(cfg.layers, cfg.hidden, cfg.kv_heads, cfg.intermediate), Shape.of(config)
    if any(getattr(target, k) > getattr(full, k) for k in vars(full)):
        raise InputError(f"target shape {target} is larger than the model's {full}")
    heads = cfg.kv_heads * config.num_attention_heads // config.num_key_value_heads
    if cfg.hidden % heads:  # transformers' Llama/Qwen2 configs refuse it, so the export would not load
        raise InputError(f"hidden {cfg.hidden} is not a multiple of the {heads} attention heads kept", field="hidden")
    return full, target


def pretrain(cfg: PretrainConfig) -> dict:
    """Continued next-token pretraining; output_dir/final is a plain transformers folder."""
    claim_folder(cfg.output_dir, "model")  # before any model loads: a folder of another kind is refused
    init_distributed()
    seed_everything(cfg.seed)
    model, tok = load_lm(cfg.model, cfg.device)
    history = _train(LMTask(model, tok), _blocks(cfg.text, tok, cfg.block_size, cfg.max_blocks), cfg)
    return _summary(cfg, "pretrain", history, non_embedding_params(model), Path(cfg.output_dir) / "final")


def _summary(cfg, stage: str, history: list[dict], before: int, final: Path, full: Shape | None = None,
             extra: dict | None = None) -> dict:  # fmt: skip
    if world()[0] != 0:
        return {}
    from transformers import AutoConfig, AutoModelForCausalLM

    small = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(final))
    after = non_embedding_params(small)
    out = {"stage": stage, "config": asdict(cfg), "model": str(final), "shape": asdict(Shape.of(small.config)),
           "full_shape": asdict(full) if full else None, "non_embedding_params": after,
           "non_embedding_params_before": before, "ratio": round(after / before, 4),
           "final": history[-1] if history else None, **(extra or {})}  # fmt: skip
    write_json(Path(cfg.output_dir) / "summary.json", out)
    shown = ("stage", "model", "shape", "non_embedding_params", "ratio", *(extra or {}))
    print(json.dumps({k: out[k] for k in shown}))
    return out
