"""Score an encoder or retriever on named datasets' test splits: the numbers every method README reports."""

from __future__ import annotations

from pathlib import Path

from irlm.data import load_dataset
from irlm.eval.metrics import evaluate


def evaluate_encoder(encoder, names: list[str], split: str = "test", k: int = 1000, runs_dir: str | None = None,
                     hybrid: bool = False) -> dict[str, dict]:  # fmt: skip
    """{dataset: metrics} for a dense retriever built on each corpus with `encoder`. With `hybrid`, also
    {dataset+bm25: metrics} for its run fused with BM25's by RRF; with `runs_dir`, each dense run is kept
    there as DATASET.trec (re-scorable with `irlm eval --run`)."""
    from irlm.eval import write_trec
    from irlm.index import BM25Retriever, DenseRetriever
    from irlm.index.fusion import rrf, top_k

    out = {}
    for name in names:
        ds = load_dataset(name)
        queries, qrels = ds.split_queries(split), ds.qrels[split]
        run = DenseRetriever.build(ds.corpus, encoder).search(queries, k=k)
        if runs_dir:
            write_trec(run, Path(runs_dir) / f"{ds.name}.trec")
        out[name] = evaluate(run, qrels)
        if hybrid:
            bm25 = BM25Retriever.build(ds.corpus).search(queries, k=k)
            out[f"{name}+bm25"] = evaluate(top_k(rrf([run, bm25]), k), qrels)
    return out
