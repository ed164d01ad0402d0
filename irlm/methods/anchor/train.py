"""Anchor embeddings: Stage I bidirectional reconstruction, then Stage II InfoNCE (METHODS.md §1).

    irlm train anchor --config recipes/anchor-scifact-tiny.yaml
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

import torch

from irlm.data.training import TrainExample, held_out_qids, read_examples
from irlm.eval.benchmark import evaluate_dev, evaluate_encoder
from irlm.losses.reconstruction import bidirectional_loss, reconstruction_loss
from irlm.methods.anchor.config import AnchorConfig
from irlm.models import LLMEncoder
from irlm.train.cached import cached_encoder
from irlm.train.contrastive import ContrastiveTask, batch_texts, qrels_examples
from irlm.train.loop import Trainer, init_distributed, seed_everything, train_config, world
from irlm.train.lora import add_lora, merge_lora
from irlm.utils import bf16_is_faster, claim_folder, write_json


def scale_prefix(pooled: torch.Tensor, scale: str, token_norm: float) -> torch.Tensor:
    """The Stage I prefix from pooled states (B, C): `raw` as pooled, `embedding` L2-normalised, `token`
    normalised then stretched to `token_norm`, the mean norm of the input token embeddings it sits beside."""
    if scale == "raw":
        return pooled
    unit = torch.nn.functional.normalize(pooled, dim=-1)
    return unit * token_norm if scale == "token" else unit


def mean_token_norm(model) -> float:
    """Mean L2 norm of the rows of the model's input embedding matrix."""
    with torch.no_grad():
        return model.get_input_embeddings().weight.float().norm(dim=-1).mean().item()


class ReconstructionTask:
    """EBQ2D + EBD2Q: each side's embedding is the only context for generating the other side."""

    probe_precision = True  # a step has no side effects: `precision: auto` may time it (irlm.train.precision)

    def __init__(self, encoder: LLMEncoder, alpha: float, target_max_length: int, prefix_scale: str = "token"):
        self.encoder, self.alpha, self.target_max_length = encoder, alpha, target_max_length
        self.prefix_scale = prefix_scale

    def parameters(self):
        return self.encoder.model.parameters()

    def named_parameters(self):
        return self.encoder.model.named_parameters()

    def _targets(self, texts: list[str]):
        tok = self.encoder.tokenizer
        ids = tok(texts, truncation=True, max_length=self.target_max_length)["input_ids"]
        batch = tok.pad({"input_ids": ids}, padding=True, pad_to_multiple_of=16, return_tensors="pt",
                        padding_side="right")
        return batch["input_ids"].to(self.encoder.device), batch["attention_mask"].to(self.encoder.device)

    def _embed(self, texts: list[str]):
        batch = self.encoder.collate(self.encoder.tokenize(texts))
        if self.prefix_scale == "embedding":  # what retrieval embeds: the prefix is the embedding itself
            return self.encoder.embed(**batch)
        token_norm = mean_token_norm(self.encoder.model)  # read each step: Stage I moves the embeddings too
        return scale_prefix(self.encoder.pooled(**batch), self.prefix_scale, token_norm)

    def step(self, examples: list[TrainExample], scale: float = 1.0, seed: int = 0) -> dict[str, float]:
        cfg, enc = self.encoder.config, self.encoder
        queries = [ex.query for ex in examples]
        docs = [random.Random(f"{seed}:{ex.query}").choice(ex.positives) for ex in examples]
        e_q = self._embed([cfg.query_prefix + q for q in queries])  # (B, C)
        e_d = self._embed([cfg.passage_prefix + d for d in docs])
        q2d = reconstruction_loss(enc.model, enc.lm_head, e_q, *self._targets(docs))
        d2q = reconstruction_loss(enc.model, enc.lm_head, e_d, *self._targets(queries))
        loss = bidirectional_loss(q2d, d2q, self.alpha)
        (loss * scale).backward()
        return {"q2d": q2d.item(), "d2q": d2q.item(), "stage1": loss.item()}

    def save(self, folder) -> None:
        self.encoder.save(folder)


def training_examples(cfg: AnchorConfig, held_out: set[str] = frozenset()) -> list[TrainExample]:
    """Examples from a JSONL file, or from the dataset's qrels with BM25-mined hard negatives, without the
    held-out dev queries."""
    if cfg.train_file:
        return read_examples(cfg.train_file)
    examples = qrels_examples(cfg.data, cfg.train_split, cfg.n_negatives, cfg.seed)
    return [ex for ex in examples if ex.meta.get("qid") not in held_out]


def checkpointing(model, on: bool) -> None:
    """Recompute each layer's activations in backward (on) or keep them (off); transformers 5 names it
    activation checkpointing, 4 gradient checkpointing. Transformers recomputes only in train mode, so the
    model is put there (and back in eval mode, as it loads, when off): the LLMs trained here have no dropout."""
    model.train(on)
    v5 = hasattr(model, "activation_checkpointing_enable")
    if on and v5:
        model.activation_checkpointing_enable({"use_reentrant": False})
    elif on:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    elif model.is_activation_checkpointing if v5 else model.is_gradient_checkpointing:
        (model.activation_checkpointing_disable if v5 else model.gradient_checkpointing_disable)()
        model.disable_input_require_grads()  # the hook enabling it added, so Stage II runs as without


def _stage(cfg: AnchorConfig, name: str, task, examples, steps: int, lr: float) -> list[dict]:
    tc = train_config(cfg, steps, output_dir=str(Path(cfg.output_dir) / name), lr=lr, grad_accum=cfg.grad_accum)
    return Trainer(task, examples, tc).fit()


def train(cfg: AnchorConfig) -> dict:
    """Run Stage I (if stage1_steps > 0) then Stage II, evaluate, and write results.json."""
    claim_folder(cfg.output_dir, "model")  # before any model loads: a folder of another kind is refused
    init_distributed()
    seed_everything(cfg.seed)
    held_out = held_out_qids(cfg.data, cfg.train_split, cfg.dev_queries)
    examples = training_examples(cfg, held_out)
    encoder = LLMEncoder.from_pretrained(cfg.model, device=cfg.device, with_lm_head=cfg.stage1_steps > 0,
                                         pooling=cfg.pooling, max_length=cfg.max_length, dtype="fp32",
                                         lowercase=cfg.lowercase)
    encoder.config.dtype = "auto"  # fp32 master weights for training; the saved model loads as bf16 where faster
    if cfg.lora_r:
        add_lora(encoder, cfg.lora_r)
    history = {}
    if cfg.stage1_steps:
        task = ReconstructionTask(encoder, cfg.alpha, cfg.target_max_length, cfg.prefix_scale)
        checkpointing(encoder.model, cfg.gradient_checkpointing)
        history["stage1"] = _stage(cfg, "stage1", task, examples, cfg.stage1_steps, cfg.stage1_lr)
        checkpointing(encoder.model, False)  # Stage II's passes are one model's, as in a Stage-II-only run
    if cfg.cache_layers:  # after Stage I: its lower layers are what Stage II freezes and reads from the cache
        encoder = cached_encoder(encoder, cfg.cache_layers, batch_texts(encoder, examples), cfg.activations or None)
    task = ContrastiveTask(encoder, cfg.temperature, cfg.n_negatives, cfg.cache_chunk)
    history["stage2"] = _stage(cfg, "stage2", task, examples, cfg.stage2_steps, cfg.lr)
    merge_lora(encoder)
    if world()[0] != 0:
        return {}
    encoder.model.eval()
    if bf16_is_faster(encoder.device):  # as LLMEncoder.from_pretrained(dtype="auto") would load it
        encoder.model.to(torch.bfloat16)
    built = {}  # dev and test queries of one corpus search one index of it
    metrics, _ = evaluate_dev(encoder, cfg.data, cfg.train_split, held_out, cfg.output_dir, built=built)
    # each test run kept (DATA.trec) so `irlm compare` / `irlm report` can test I+II against II per query
    metrics.update(evaluate_encoder(encoder, cfg.eval_data, runs_dir=cfg.output_dir, built=built))
    results = {"config": asdict(cfg), "examples": len(examples), "metrics": metrics,
               "final_loss": {k: v[-1] for k, v in history.items() if v}}  # fmt: skip
    write_json(Path(cfg.output_dir) / "results.json", results)
    print(json.dumps({"method": "anchor", "output_dir": cfg.output_dir,
                      **{f"{d}_ndcg@10": m["ndcg@10"] for d, m in results["metrics"].items()}}))  # fmt: skip
    return results
