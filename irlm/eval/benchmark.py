"""Score an encoder or retriever on named datasets' test splits: the numbers every method README reports."""

from __future__ import annotations

from pathlib import Path

from irlm.data import load_dataset
from irlm.eval.metrics import evaluate


def _once(built: dict | None, key, make):
    if built is None:
        return make()
    if key not in built:
        built[key] = make()
    return built[key]


def dense_retriever(encoder, ds, built: dict | None = None):
    """A DenseRetriever of `ds`'s corpus; with `built`, one per dataset name, so a dev and a test evaluation
    of the same corpus encode it once (for SmolLM2 on SciFact, about 25 minutes on 2 cores)."""
    from irlm.index import DenseRetriever

    return _once(built, ds.name, lambda: DenseRetriever.build(ds.corpus, encoder))


def bm25_retriever(ds, built: dict | None = None):
    """A BM25Retriever of `ds`'s corpus; with `built`, one per dataset name, as `dense_retriever`."""
    from irlm.index import BM25Retriever

    return _once(built, (ds.name, "bm25"), lambda: BM25Retriever.build(ds.corpus))


FUSION_GRID = tuple(i / 20 for i in range(21))  # dense weights 0, 0.05, ..., 1 (0: BM25 alone)


def tune_fusion_weight(dense: dict, bm25: dict, qrels: dict, grid=FUSION_GRID, metric: str = "ndcg@10"):
    """(best dense weight, {dense weight: score}) of min-max weighted fusion (`with_bm25`) on held-out
    queries. Ties go to the lower weight, the one nearer BM25 alone, so a dense run that adds nothing
    leaves BM25 as it is."""
    from irlm.index.fusion import top_k, with_bm25

    scores = {w: evaluate(top_k(with_bm25(dense, bm25, w), 100), qrels, [metric])[metric] for w in grid}
    best = max(scores, key=lambda w: (scores[w], -w))
    return best, scores


def evaluate_dev(encoder, data: str, split: str, held_out: set[str], runs_dir: str | None = None,
                 hybrid: bool = False, built: dict | None = None) -> tuple[dict[str, dict], float | None]:  # fmt: skip
    """({DATA-dev: metrics}, None) on the held-out `split` queries (for tuning; test is scored once per
    recipe). With `hybrid`, the dense run's weight in a fusion with BM25 is tuned on them and returned
    instead of None, and {DATA-dev+bm25-weighted: metrics + "dense_weight"} added (scored on the queries it
    was chosen on, so it flatters the hybrid). With `runs_dir`, the dense run is kept as DATA-dev.trec."""
    from irlm.eval import write_trec
    from irlm.index.fusion import top_k, with_bm25

    if not held_out:
        return {}, None
    ds = load_dataset(data)
    queries = {q: t for q, t in ds.split_queries(split).items() if q in held_out}
    run = dense_retriever(encoder, ds, built).search(queries, k=1000)
    if runs_dir:
        write_trec(run, Path(runs_dir) / f"{ds.name}-dev.trec")  # kept: fusion weights are tuned on it
    qrels = {q: r for q, r in ds.qrels[split].items() if q in held_out}
    out = {f"{data}-dev": evaluate(run, qrels)}
    if not hybrid:
        return out, None
    bm25 = bm25_retriever(ds, built).search(queries, k=1000)
    weight, _ = tune_fusion_weight(run, bm25, qrels)
    fused = top_k(with_bm25(run, bm25, weight), 1000)
    out[f"{data}-dev+bm25-weighted"] = {**evaluate(fused, qrels), "dense_weight": weight}
    return out, weight


def evaluate_encoder(encoder, names: list[str], split: str = "test", k: int = 1000, runs_dir: str | None = None,
                     hybrid: bool = False, built: dict | None = None,
                     fusion_weight: float | None = None) -> dict[str, dict]:  # fmt: skip
    """{dataset: metrics} for a dense retriever built on each corpus with `encoder`. With `hybrid`, also
    {dataset+bm25: metrics} for its run fused with BM25's by RRF, and with a dense `fusion_weight` (tuned on
    one dev split: `tune_fusion_weight`) {dataset+bm25-weighted: metrics}; with `runs_dir`, each run is kept
    there as DATASET.trec, DATASET+bm25.trec, DATASET+bm25-weighted.trec (re-scorable with `irlm eval --run`,
    compared query by query by `irlm report`); `built`: see `dense_retriever`."""
    from irlm.eval import write_trec
    from irlm.index.fusion import rrf, top_k, with_bm25

    out = {}
    for name in names:
        ds = load_dataset(name)
        queries, qrels = ds.split_queries(split), ds.qrels[split]
        run = dense_retriever(encoder, ds, built).search(queries, k=k)
        if runs_dir:
            write_trec(run, Path(runs_dir) / f"{ds.name}.trec")
        out[name] = evaluate(run, qrels)
        if hybrid:
            bm25 = bm25_retriever(ds, built).search(queries, k=k)
            fused = {"+bm25": top_k(rrf([run, bm25]), k)}
            if fusion_weight is not None:
                fused["+bm25-weighted"] = top_k(with_bm25(run, bm25, fusion_weight), k)
            for suffix, fused_run in fused.items():
                if runs_dir:  # the report tests each run against its baseline, query by query
                    write_trec(fused_run, Path(runs_dir) / f"{ds.name}{suffix}.trec")
                out[f"{name}{suffix}"] = evaluate(fused_run, qrels)
    return out
