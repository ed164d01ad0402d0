"""Score an encoder or retriever on named datasets' test splits: the numbers every method README reports."""

from __future__ import annotations

from irlm.data import load_dataset
from irlm.eval.metrics import evaluate


def evaluate_encoder(encoder, names: list[str], split: str = "test", k: int = 1000) -> dict[str, dict]:
    """{dataset: metrics} for a dense retriever built on each corpus with `encoder`."""
    from irlm.index import DenseRetriever

    out = {}
    for name in names:
        ds = load_dataset(name)
        run = DenseRetriever.build(ds.corpus, encoder).search(ds.split_queries(split), k=k)
        out[name] = evaluate(run, ds.qrels[split])
    return out
