"""Self-Retrieval cost: latency per query at beams 5 and 10, time per generated token with and without
the trie constraint, and the trie's memory. Prints one JSON line.

    python bench/selfretrieval.py --model runs/selfretrieval/final --queries 20
    python bench/selfretrieval.py --model smollm2-135m --queries 10      # an untrained model: cost only
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch


def load(model: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from irlm.models.resolve import resolve_model

    path = model if Path(model).is_dir() else resolve_model(model)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=torch.bfloat16).eval()
    return lm, AutoTokenizer.from_pretrained(path)


def per_token(model, prompts, processor, beams: int, tokens: int, pad: int) -> float:
    """Seconds per generated token of beam search, exactly `tokens` new tokens per query."""
    from transformers import LogitsProcessorList

    from irlm.methods.selfretrieval.decode import left_pad

    start = time.perf_counter()
    for p in prompts:
        ids, mask = left_pad([p], pad, model.device)
        procs = LogitsProcessorList([processor(ids.shape[1])] if processor else [])
        model.generate(input_ids=ids, attention_mask=mask, num_beams=beams, do_sample=False, min_new_tokens=tokens,
                       max_new_tokens=tokens, pad_token_id=pad, logits_processor=procs)  # fmt: skip
    return (time.perf_counter() - start) / (len(prompts) * tokens)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="nq-open-oracle")
    ap.add_argument("--queries", type=int, default=10)
    args = ap.parse_args()

    from irlm.data import load_dataset
    from irlm.index.trie import TokenTrie
    from irlm.methods.selfretrieval.config import SelfRetrievalConfig
    from irlm.methods.selfretrieval.data import QUERY_PROMPT
    from irlm.methods.selfretrieval.retriever import SelfRetriever

    ds = load_dataset(args.data)
    model, tok = load(args.model)
    queries = list(ds.split_queries("test").values())[: args.queries]
    sr = SelfRetriever(model, tok, ds.corpus, SelfRetrievalConfig(data=args.data))
    latency = {}
    for beams in (5, 10):
        sr.candidates(queries[0], beams)  # warm-up
        start = time.perf_counter()
        for q in queries:
            sr.candidates(q, beams)
        latency[f"latency_s_beam{beams}"] = round((time.perf_counter() - start) / len(queries), 3)
    prompts = [sr.fmt.prompt(QUERY_PROMPT, q) for q in queries]
    pad = sr.pad
    free = per_token(model, prompts, None, 5, 8, pad)
    constrained = per_token(model, prompts, lambda n: _MaskOnly(sr.trie, n), 5, 8, pad)
    full = TokenTrie.build([sr.fmt.title(d.title) + [sr.fmt.sep] + sr.fmt.ids(" " + d.text) for d in ds.corpus.docs])
    print(json.dumps({"bench": "selfretrieval", "model": args.model, "data": args.data, "queries": len(queries),
                      "threads": torch.get_num_threads(), **latency,
                      "s_per_token_unconstrained": round(free, 4), "s_per_token_constrained": round(constrained, 4),
                      "ratio_constrained_vs_free": round(constrained / free, 3),
                      "title_trie_bytes": sr.trie.nbytes,
                      "full_corpus_trie_bytes": full.nbytes,
                      "full_corpus_trie_bytes_per_token": round(full.bytes_per_token, 2)}))  # fmt: skip


class _MaskOnly:
    """The trie's mask without the forced copy; once the trie is exhausted any token is allowed, so a
    constrained run generates as many tokens as the unconstrained one and only the masking cost differs."""

    def __init__(self, trie, prompt_len: int):
        self.trie, self.prompt_len = trie, prompt_len

    def __call__(self, input_ids, scores):
        out = scores.clone()
        for row, generated in enumerate(input_ids[:, self.prompt_len :].tolist()):
            allowed = self.trie.allowed(generated)
            if allowed:
                keep = out[row, allowed].clone()
                out[row] = float("-inf")
                out[row, allowed] = keep
        return out


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
