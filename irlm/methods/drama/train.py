"""Train a retriever on the original pairs plus DRAMA-augmented data, then score it (METHODS.md §2).

    irlm train drama --config recipes/drama-scifact-tiny.yaml --set augment_files=[runs/drama/crop.jsonl]
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import asdict
from pathlib import Path

import torch

from irlm.data.training import TrainExample, held_out_qids, read_examples, recase
from irlm.eval.benchmark import evaluate_dev, evaluate_encoder
from irlm.methods.drama.config import RetrieverConfig
from irlm.models import LLMEncoder
from irlm.progress import stage_progress
from irlm.train.cached import cached_encoder
from irlm.train.contrastive import ContrastiveTask, batch_texts, qrels_examples
from irlm.train.loop import Trainer, init_distributed, seed_everything, train_config, world
from irlm.utils import bf16_is_faster, claim_folder, write_json


def dev_qids(cfg: RetrieverConfig) -> set[str]:
    """The held-out train queries (the same for every seed and method: irlm.data.training.held_out_qids)."""
    return held_out_qids(cfg.data, cfg.train_split, cfg.dev_queries)


def training_examples(cfg: RetrieverConfig, held_out: set[str] = frozenset()) -> list[TrainExample]:
    """The train qrels' pairs without the held-out dev queries, then each augmentation file's examples."""
    examples = qrels_examples(cfg.data, cfg.train_split, cfg.n_negatives, cfg.seed) if cfg.data else []
    examples = [ex for ex in examples if ex.meta.get("qid") not in held_out]
    for path in cfg.augment_files:
        examples.extend(read_examples(path)[: cfg.augment_limit or None])
    return recase(examples, cfg.case_augment, cfg.seed) if cfg.case_augment else examples


def train(cfg: RetrieverConfig) -> dict:
    """InfoNCE for `steps` steps on all examples, then nDCG@10 etc. on each eval set; writes results.json."""
    claim_folder(cfg.output_dir, "model")  # before any model loads: a folder of another kind is refused
    init_distributed()
    seed_everything(cfg.seed)
    held_out = dev_qids(cfg)
    examples = training_examples(cfg, held_out)
    encoder = LLMEncoder.from_pretrained(cfg.model, device=cfg.device, pooling=cfg.pooling,
                                         max_length=cfg.max_length, dtype="fp32",
                                         lowercase=cfg.lowercase)  # fmt: skip
    encoder.config.dtype = "auto"  # fp32 master weights; the saved model loads as bf16 where faster
    texts = batch_texts(encoder, examples)
    with stage_progress("retriever stage", stage_phases(cfg, encoder, texts, held_out), disable=world()[0] != 0):
        if cfg.cache_layers:
            encoder = cached_encoder(encoder, cfg.cache_layers, texts, cfg.activations or None, cfg.activation_dtype)
        task = ContrastiveTask(encoder, cfg.temperature, cfg.n_negatives, cfg.cache_chunk)
        history = Trainer(task, examples, train_config(cfg, cfg.steps)).fit()
        if world()[0] != 0:
            return {}
        metrics = evaluate_trained(cfg, encoder, held_out)
    sources = Counter(ex.meta.get("strategy", "original") for ex in examples)
    results = {"config": asdict(cfg), "examples": dict(sources), "final_loss": history[-1] if history else None,
               "metrics": metrics}  # fmt: skip
    write_json(Path(cfg.output_dir) / "results.json", results)
    print(json.dumps({"method": "drama", "output_dir": cfg.output_dir, "examples": dict(sources),
                      **{f"{d}_ndcg@10": m["ndcg@10"] for d, m in results["metrics"].items()}}))  # fmt: skip
    return results


def evaluate_trained(cfg: RetrieverConfig, encoder, held_out: set[str]) -> dict:
    """Dev (tuning the fusion weight), then each eval set once with that weight."""
    encoder.model.eval()
    if bf16_is_faster(encoder.device):
        encoder.model.to(torch.bfloat16)
    built = {}  # the dev queries and the test queries of one corpus search one index of it (dense and BM25)
    metrics, weight = evaluate_dev(encoder, cfg.data, cfg.train_split, held_out, cfg.output_dir, cfg.hybrid, built)
    metrics.update(evaluate_encoder(encoder, cfg.eval_data, runs_dir=cfg.output_dir, hybrid=cfg.hybrid, built=built,
                                    fusion_weight=weight))  # fmt: skip
    return metrics


def stage_phases(cfg: RetrieverConfig, encoder, fill: list[str], held_out: set[str]) -> dict:
    """{phase: (cost, items)} for the stage's progress line. Cost in token-layers (a token through one layer,
    forward; training counts the backward as two more); tokens estimated as characters / 4, the same error
    in every phase, so the ratios hold."""
    from irlm.data import load_dataset

    n_layers, top = encoder.model.config.num_hidden_layers, encoder.model.config.num_hidden_layers - cfg.cache_layers

    def tokens(texts) -> float:
        return sum(min(cfg.max_length, len(t) // 4 + 1) for t in texts)

    phases = {"fill": (tokens(fill) * cfg.cache_layers, len(fill))} if cfg.cache_layers else {}
    per_text = tokens(fill) / max(1, len(fill))
    phases["train"] = (cfg.steps * cfg.batch_size * (2 + cfg.n_negatives) * per_text * top * 3, cfg.steps)
    cached, cost, items = set(fill) if cfg.cache_layers else set(), 0.0, 0
    for name in dict.fromkeys(([cfg.data] if held_out else []) + list(cfg.eval_data)):
        ds = load_dataset(name)
        docs = [encoder.config.passage_prefix + t for t in ds.corpus.texts()]
        n_test = len(ds.split_queries("test")) if name in cfg.eval_data else 0
        n_queries = n_test + (len(held_out) if name == cfg.data else 0)
        cost += sum(tokens([d]) * (top if d in cached else n_layers) for d in docs) + 16 * n_layers * n_queries
        items += len(docs) + n_queries
    phases["eval"] = (cost, items)
    return phases
