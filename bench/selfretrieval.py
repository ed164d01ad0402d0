"""Self-Retrieval cost: latency per query at beams 5 and 10 on the cached path and on the reference path
(transformers' generate, one pass per title, one verdict pass) in the same run, the cached path also
without verdicts (`_cached_noassess`), whether both rank alike,
time per generated token with and without the trie constraint, and the trie's memory. One JSON line.

    python bench/selfretrieval.py --model runs/selfretrieval/final --queries 20
    OMP_NUM_THREADS=2 python bench/selfretrieval.py --model smollm2-135m --queries 10  # untrained: cost only
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import time
from pathlib import Path

import torch


def load(model: str, dtype: str):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from irlm.models.resolve import resolve_model

    path = model if Path(model).is_dir() else resolve_model(model)
    lm = AutoModelForCausalLM.from_pretrained(path, dtype=getattr(torch, dtype)).eval()
    return lm, AutoTokenizer.from_pretrained(path)


def per_token(model, prompts, processor, beams: int, tokens: int, pad: int) -> tuple[float, float]:
    """Seconds per generated token of beam search without and with `processor`, exactly `tokens` new
    tokens per query; the two alternate prompt by prompt, so a change in the machine's load hits both."""
    from transformers import LogitsProcessorList

    from irlm.methods.selfretrieval.decode import left_pad

    spent = [0.0, 0.0]
    for p in prompts:
        ids, mask = left_pad([p], pad, model.device)
        for n, procs in enumerate(([], [processor(ids.shape[1])])):
            start = time.perf_counter()
            model.generate(input_ids=ids, attention_mask=mask, num_beams=beams, do_sample=False, pad_token_id=pad,
                           min_new_tokens=tokens, max_new_tokens=tokens, logits_processor=LogitsProcessorList(procs))
            spent[n] += time.perf_counter() - start
    free, constrained = (t / (len(prompts) * tokens) for t in spent)
    return free, constrained


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="nq-open-oracle")
    ap.add_argument("--queries", type=int, default=10)
    ap.add_argument("--dtype", default="float32", help="float32 (as SelfRetriever.load) or bfloat16 (faster "
                    "on CPUs with bf16 units; the two paths then differ by bf16 rounding, which can swap near ties)")
    args = ap.parse_args()

    from irlm.data import load_dataset
    from irlm.index.trie import TokenTrie
    from irlm.methods.selfretrieval.data import QUERY_PROMPT
    from irlm.methods.selfretrieval.retriever import SelfRetriever

    ds = load_dataset(args.data)
    model, tok = load(args.model, args.dtype)
    queries = list(ds.split_queries("test").values())[: args.queries]
    sr = SelfRetriever(model, tok, ds.corpus, settings(args.model, args.data))
    latency, same = {}, {}
    for beams in (5, 10):
        ranked, spent = {"reference": [], "cached": []}, {"reference": 0.0, "cached": 0.0}
        sr.candidates(queries[0], beams)  # warm-up
        for q in queries:  # the paths alternate query by query, so a change in the machine's load hits both
            for path in ranked:
                sr.reference = path == "reference"
                start = time.perf_counter()
                ranked[path].append(sr.candidates(q, beams))
                spent[path] += time.perf_counter() - start
        spent["cached_noassess"] = _without_verdicts(sr, queries, beams)
        for path, seconds in spent.items():
            latency[f"latency_s_beam{beams}_{path}"] = round(seconds / len(queries), 3)
        latency[f"speedup_beam{beams}"] = round(latency[f"latency_s_beam{beams}_reference"]
                                                / latency[f"latency_s_beam{beams}_cached"], 2)  # fmt: skip
        same[f"same_ranking_beam{beams}"] = _agreement(ranked["reference"], ranked["cached"])
    prompts = [sr.fmt.prompt(QUERY_PROMPT, q) for q in queries]
    pad = sr.pad
    free, constrained = per_token(model, prompts, lambda n: _MaskOnly(sr.trie, n), 5, 8, pad)
    full = TokenTrie.build([sr.fmt.title(d.title) + [sr.fmt.sep] + sr.fmt.ids(" " + d.text) for d in ds.corpus.docs])
    print(json.dumps({"bench": "selfretrieval", "model": args.model, "data": args.data, "queries": len(queries),
                      "cpu": _cpu(), "threads": torch.get_num_threads(), "dtype": args.dtype, **latency, **same,
                      "s_per_token_unconstrained": round(free, 4), "s_per_token_constrained": round(constrained, 4),
                      "ratio_constrained_vs_free": round(constrained / free, 3),
                      "title_trie_bytes": sr.trie.nbytes,
                      "title_trie_bytes_per_token": round(sr.trie.bytes_per_token, 2),
                      "full_corpus_trie_bytes": full.nbytes,
                      "full_corpus_trie_bytes_per_token": round(full.bytes_per_token, 2)}))  # fmt: skip


def settings(model: str, data: str):
    """A trained folder's own Self-Retrieval settings (passage length, beams, ...); the defaults otherwise."""
    from dataclasses import replace

    from irlm.methods.selfretrieval.config import SelfRetrievalConfig
    from irlm.methods.selfretrieval.retriever import CONFIG_FILE, saved_config

    trained = (Path(model) / CONFIG_FILE).is_file()
    return replace(saved_config(model), data=data) if trained else SelfRetrievalConfig(data=data)


def _without_verdicts(sr, queries, beams: int) -> float:
    """Seconds of the cached path over `queries` with self-assessment off at inference (no verdict pass;
    passages read only up to where they differ under their title)."""
    sr.reference, assessment = False, sr.cfg.assessment
    sr.cfg.assessment = False
    try:
        start = time.perf_counter()
        for q in queries:
            sr.candidates(q, beams)
        return time.perf_counter() - start
    finally:
        sr.cfg.assessment = assessment


def _agreement(reference: list, cached: list) -> dict:
    """Share of queries ranked the same (same passages in the same order) and the largest score gap."""
    same = sum([c.doc_id for c in a] == [c.doc_id for c in b] for a, b in zip(reference, cached))
    gap = max((abs(x.score - y.score) for a, b in zip(reference, cached) for x, y in zip(a, b)), default=0.0)
    return {"queries": round(same / len(reference), 3), "max_score_gap": float(f"{gap:.2g}")}


def _cpu() -> str:
    """lscpu's model name (platform.processor() is empty on Linux)."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown"
    names = [line.split(":", 1)[1].strip() for line in out.splitlines() if line.startswith("Model name")]
    return names[0] if names else "unknown"


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
