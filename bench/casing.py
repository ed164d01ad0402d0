"""Casing robustness: nDCG@10 with the queries (and optionally the documents) re-cased.

Each system is scored on the original test split and on every casing variant; the JSON line holds
each score and its drop from the original. Texts an encoder would see identically (an uncased model, or
one saved with `lowercase`) are encoded once.

    python bench/casing.py --system bm25 --system minilm-l6 --system runs/x/final --docs
    python bench/casing.py --system runs/x/final --lowercase     # the same model, lower-cased at inference
    python bench/casing.py --system runs/x/final --cache-layers 20   # reuse the training activation cache
"""

from __future__ import annotations

import argparse
import hashlib
import json
import time

from irlm.data.training import CASINGS  # the casings training augments with (case_augment)


def recase_queries(queries: dict[str, str], how: str) -> dict[str, str]:
    return {qid: CASINGS[how](q) for qid, q in queries.items()} if how != "original" else dict(queries)


def recase_corpus(corpus, how: str):
    from dataclasses import replace

    from irlm.types import Corpus

    if how == "original":
        return corpus
    f = CASINGS[how]
    return Corpus([replace(d, title=f(d.title or ""), text=f(d.text)) for d in corpus.docs])


def variants(casings: list[str], docs: bool) -> list[tuple[str, str]]:
    """(query casing, document casing) pairs: the original, each query casing, and with `docs` each
    document casing and each casing applied to both."""
    out = [("original", "original")] + [(c, "original") for c in casings]
    if docs:
        out += [("original", c) for c in casings] + [(c, c) for c in casings]
    return out


class DenseSystem:
    """A dense encoder whose corpus embeddings are kept per distinct input, so a variant that the encoder
    reads identically (uncased tokenizer, `lowercase`) costs nothing."""

    def __init__(self, encoder):
        self.encoder, self.seen = encoder, {}

    def _key(self, texts: list[str]) -> str:
        ids = self.encoder.tokenize(texts)  # what the model sees, not the raw text
        return hashlib.sha1(json.dumps(ids).encode()).hexdigest()

    def search(self, corpus, queries: dict[str, str], k: int) -> dict:
        from irlm.index import DenseRetriever

        key = self._key(corpus.texts())
        if key not in self.seen:
            self.seen[key] = DenseRetriever.build(corpus, self.encoder)
        return self.seen[key].search(queries, k=k)


class BM25System:
    def __init__(self):
        self.seen = {}

    def search(self, corpus, queries: dict[str, str], k: int) -> dict:
        from irlm.index import BM25Retriever

        key = hashlib.sha1("\n".join(corpus.texts()).encode()).hexdigest()
        if key not in self.seen:
            self.seen[key] = BM25Retriever.build(corpus)
        return self.seen[key].search(queries, k=k)


def load_system(name: str, args):
    if name == "bm25":
        return BM25System()
    from irlm.models import LLMEncoder

    enc = LLMEncoder.from_pretrained(name, device=args.device, lowercase=True if args.lowercase else None)
    if args.cache_layers:
        from irlm.train.cached import CachedEncoder

        enc = CachedEncoder.wrap(enc, args.cache_layers)
    return DenseSystem(enc)


def score_system(name: str, ds, args) -> dict:
    from irlm.eval import evaluate

    system, queries, qrels = load_system(name, args), ds.split_queries(args.split), ds.qrels[args.split]
    rows = {}
    for qc, dc in variants(args.casings, args.docs):
        run = system.search(recase_corpus(ds.corpus, dc), recase_queries(queries, qc), k=args.k)
        rows[f"q={qc},d={dc}"] = round(evaluate(run, qrels)["ndcg@10"], 4)
    base = rows["q=original,d=original"]
    drops = {v: round(base - s, 4) for v, s in rows.items()}
    return {"ndcg@10": rows, "drop": drops, "max_drop": max(drops.values())}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--system", action="append", required=True, help="bm25, or an encoder (name or folder)")
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--casings", default="upper,title,lower")
    ap.add_argument("--docs", action="store_true", help="also re-case the documents (one corpus pass each)")
    ap.add_argument("--lowercase", action="store_true", help="lower-case at inference (encoders only)")
    ap.add_argument("--cache-layers", type=int, default=0, help="read the lower layers from the activation cache")
    ap.add_argument("--k", type=int, default=100)
    ap.add_argument("--device", default=None)
    args = ap.parse_args()
    args.casings = [c for c in args.casings.split(",") if c]
    bad = [c for c in args.casings if c not in CASINGS]
    if bad:
        ap.error(f"--casings: unknown {bad}; choose from {sorted(CASINGS)}")

    from irlm.data import load_dataset

    ds, start = load_dataset(args.data), time.perf_counter()
    systems = {name: score_system(name, ds, args) for name in args.system}
    worst = {n: r["max_drop"] for n, r in systems.items()}
    print(json.dumps({"bench": "casing", "data": args.data, "split": args.split, "docs": args.docs,
                      "lowercase": args.lowercase, "systems": systems, "max_drop": worst,
                      "seconds": round(time.perf_counter() - start, 1)}))


if __name__ == "__main__":
    main()
