"""RL environment cost: selective re-embedding (positives + top-k neighbours + a rolling slice) against
a full re-encode after every real training step. Prints one JSON line with the reward drift
(|rank accuracy under the selective index - under the fully re-encoded one|) and the cost ratio.

    python bench/rl_env.py --model minilm-l6 --docs 2000 --steps 8
"""

from __future__ import annotations

import argparse
import json
import os
import time

import numpy as np
import torch


def corpus_with_positives(ds, examples, n_docs: int):
    """The first n_docs documents plus every positive of the training examples (rewards need them)."""
    by_text = {d.full_text(): d.id for d in ds.corpus.docs}
    ids = [d.id for d in ds.corpus.docs[:n_docs]]
    texts = {d.id: d.full_text() for d in ds.corpus.docs}
    for ex in examples:
        pid = by_text.get(ex.positives[0])
        if pid and pid not in ids:
            ids.append(pid)
    return ids, texts, by_text


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--docs", type=int, default=2000)
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--top-k", type=int, default=10)
    ap.add_argument("--slice", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-5)
    args = ap.parse_args()

    from irlm.data import load_dataset
    from irlm.methods.reasoning.env import SelectiveIndex
    from irlm.methods.reasoning.rewards import rank_accuracy
    from irlm.models import LLMEncoder
    from irlm.train.contrastive import ContrastiveTask, qrels_examples

    torch.manual_seed(0)
    ds = load_dataset(args.data)
    examples = qrels_examples(args.data, "train", n_negatives=0)[: args.steps * args.batch]
    ids, texts, by_text = corpus_with_positives(ds, examples, args.docs)
    enc = LLMEncoder.from_pretrained(args.model, device="cpu", dtype="fp32", max_length=128)
    task = ContrastiveTask(enc, temperature=0.05, n_negatives=0)
    opt = torch.optim.AdamW(task.parameters(), lr=args.lr)

    def encode(doc_ids):
        return enc.encode_corpus([texts[i] for i in doc_ids], progress=False)

    env = SelectiveIndex(ids, encode, args.top_k, args.slice)
    drift, sel_s, full_s, sel_docs = [], 0.0, 0.0, 0
    for step in range(args.steps):
        batch = examples[step * args.batch : (step + 1) * args.batch]
        enc.model.train()
        task.step(batch)  # a real update: the policy, and so every document embedding, moves
        opt.step()
        opt.zero_grad()
        enc.model.eval()
        q = enc.encode_queries([ex.query for ex in batch], progress=False)
        pos = [by_text[ex.positives[0]] for ex in batch]
        t = time.perf_counter()
        sel_docs += len(env.refresh(q, pos))
        sel_s += time.perf_counter() - t
        selective = [rank_accuracy(r, len(ids)) for r in env.ranks(q, pos)]
        t = time.perf_counter()
        full = SelectiveIndex(ids, encode, args.top_k, args.slice)  # the reference: everything re-encoded
        full_s += time.perf_counter() - t
        exact = [rank_accuracy(r, len(ids)) for r in full.ranks(q, pos)]
        drift += [abs(a - b) for a, b in zip(selective, exact)]
    print(json.dumps({"bench": "rl_env", "model": args.model, "data": args.data, "corpus": len(ids),
                      "steps": args.steps, "batch": args.batch, "top_k": args.top_k, "slice": args.slice,
                      "lr": args.lr, "threads": torch.get_num_threads(),
                      "docs_per_step_selective": round(sel_docs / args.steps, 1),
                      "docs_ratio_full_vs_selective": round(len(ids) * args.steps / sel_docs, 2),
                      "time_ratio_full_vs_selective": round(full_s / sel_s, 2),
                      "reward_drift_mean": round(float(np.mean(drift)), 5),
                      "reward_drift_max": round(float(np.max(drift)), 5)}))  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
