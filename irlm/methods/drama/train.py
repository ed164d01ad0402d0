"""Train a retriever on the original pairs plus DRAMA-augmented data, then score it (METHODS.md §2).

    irlm train drama --config recipes/drama-scifact-tiny.yaml --set augment_files=[runs/drama/crop.jsonl]
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch

from irlm.data.training import TrainExample, read_examples
from irlm.eval.benchmark import evaluate_encoder
from irlm.methods.drama.config import RetrieverConfig
from irlm.models import LLMEncoder
from irlm.train.contrastive import ContrastiveTask, qrels_examples
from irlm.train.loop import TrainConfig, Trainer, init_distributed, seed_everything, world
from irlm.utils import bf16_is_faster, write_json


def training_examples(cfg: RetrieverConfig) -> list[TrainExample]:
    examples = qrels_examples(cfg.data, cfg.train_split, cfg.n_negatives, cfg.seed) if cfg.data else []
    for path in cfg.augment_files:
        examples.extend(read_examples(path)[: cfg.augment_limit or None])
    return examples


def train(cfg: RetrieverConfig) -> dict:
    """InfoNCE for `steps` steps on all examples, then nDCG@10 etc. on each eval set; writes results.json."""
    init_distributed()
    seed_everything(cfg.seed)
    examples = training_examples(cfg)
    encoder = LLMEncoder.from_pretrained(cfg.model, device=cfg.device, pooling=cfg.pooling,
                                         max_length=cfg.max_length, dtype="fp32")  # fmt: skip
    encoder.config.dtype = "auto"  # fp32 master weights; the saved model loads as bf16 where faster
    task = ContrastiveTask(encoder, cfg.temperature, cfg.n_negatives, cfg.cache_chunk)
    tc = TrainConfig(output_dir=cfg.output_dir, max_steps=cfg.steps, lr=cfg.lr, batch_size=cfg.batch_size,
                     precision=cfg.precision, save_every=cfg.save_every, seed=cfg.seed)  # fmt: skip
    history = Trainer(task, examples, tc).fit()
    if world()[0] != 0:
        return {}
    encoder.model.eval()
    if bf16_is_faster(encoder.device):
        encoder.model.to(torch.bfloat16)
    sources = Counter(ex.meta.get("strategy", "original") for ex in examples)
    results = {"config": asdict(cfg), "examples": dict(sources), "final_loss": history[-1] if history else None,
               "metrics": evaluate_encoder(encoder, cfg.eval_data)}  # fmt: skip
    write_json(Path(cfg.output_dir) / "results.json", results)
    print(json.dumps({"method": "drama", "output_dir": cfg.output_dir, "examples": dict(sources),
                      **{f"{d}_ndcg@10": m["ndcg@10"] for d, m in results["metrics"].items()}}))  # fmt: skip
    return results
