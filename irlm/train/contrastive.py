"""The contrastive task: an LLMEncoder trained with InfoNCE on (query, positive, negatives)."""

from __future__ import annotations

import random

from irlm.data.training import TrainExample
from irlm.errors import InputError
from irlm.losses.contrastive import ContrastiveLoss


def pick_docs(ex: TrainExample, n_negatives: int, seed: int, fallback: list[str] = ()) -> list[str]:
    """One positive and `n_negatives` negatives, drawn from a generator of this example and seed only,
    so the same step draws the same documents on any number of processes and after a resume.
    An example with nothing mined (the margin can filter every candidate) draws from `fallback`."""
    rng = random.Random(f"{seed}:{ex.query}")
    pool = ex.negatives or list(fallback)
    if len(pool) >= n_negatives:
        negs = rng.sample(pool, n_negatives)
    else:  # fewer mined than asked for: cycle through them
        negs = [pool[i % len(pool)] for i in range(n_negatives)]
    return [rng.choice(ex.positives), *negs]


def make_batch(encoder, examples: list[TrainExample], n_negatives: int, seed: int = 0) -> dict:
    """Tokenised queries and docs laid out as [pos, neg_1..neg_H] per query (see losses.contrastive)."""
    docs = []
    for ex in examples:
        others = [p for other in examples if other is not ex for p in other.positives[:1]]
        if n_negatives and not (ex.negatives or others):
            raise InputError("an example has no negatives to sample; mine some (irlm mine) or set n_negatives: 0")
        docs.extend(pick_docs(ex, n_negatives, seed, others))
    cfg = encoder.config
    return {
        "query": encoder.collate(encoder.tokenize([cfg.query_prefix + ex.query for ex in examples])),
        "docs": encoder.collate(encoder.tokenize([cfg.passage_prefix + d for d in docs])),
        "group": 1 + n_negatives,
    }


def batch_texts(encoder, examples: list[TrainExample]) -> list[str]:
    """Every text make_batch can embed for these examples, prefixed as it prefixes them (each once)."""
    cfg = encoder.config
    docs = dict.fromkeys(d for ex in examples for d in [*ex.positives, *ex.negatives])
    return [cfg.query_prefix + ex.query for ex in examples] + [cfg.passage_prefix + d for d in docs]


def qrels_examples(data: str, split: str = "train", n_negatives: int = 1, seed: int = 42) -> list[TrainExample]:
    """(query, positive) pairs from a dataset's qrels, with hard negatives mined by BM25 (margin 0.95)."""
    from irlm.data import load_dataset
    from irlm.data.mining import mine_examples
    from irlm.index import BM25Retriever

    ds = load_dataset(data)
    queries = ds.split_queries(split)
    run = BM25Retriever.build(ds.corpus).search(queries, k=100)
    return mine_examples(queries, ds.qrels[split], ds.corpus, run, n_negatives, seed=seed)


class ContrastiveTask:
    """Task for irlm.train.loop.Trainer. `cache_chunk` > 0 switches on gradient caching."""

    probe_precision = True  # a step has no side effects: `precision: auto` may time it (irlm.train.precision)

    def __init__(self, encoder, temperature: float = 0.05, n_negatives: int = 1, cache_chunk: int = 0):
        self.encoder, self.n_negatives = encoder, n_negatives
        self.loss = ContrastiveLoss(encoder, temperature, cache_chunk)

    def parameters(self):
        return self.encoder.model.parameters()

    def named_parameters(self):
        return self.encoder.model.named_parameters()

    def step(self, examples: list[TrainExample], scale: float = 1.0, seed: int = 0) -> dict[str, float]:
        batch = make_batch(self.encoder, examples, self.n_negatives, seed)
        if self.loss.cache_chunk:
            return self.loss.backward_cached(batch, scale)
        parts = self.loss(batch)
        (sum(parts.values()) * scale).backward()
        return {k: v.item() for k, v in parts.items()}

    def save(self, folder) -> None:
        self.encoder.save(folder)
