"""Metrics through pytrec_eval (trec_eval itself), never computed by hand.

A run is ranked by score, ties kept in the run's own order (the order its retriever returned or its
TREC file lists), as ranx did before; trec_eval would break ties by document id instead, so each
ranking reaches it as rank-derived scores.
"""

from __future__ import annotations

import re
from collections import defaultdict

from irlm.errors import InputError
from irlm.types import Qrels, Run

DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map", "hits@1", "hits@5", "hits@10")


METRIC = re.compile(r"(ndcg|recall|precision|mrr|hits)@[1-9][0-9]*|map")
KNOWN = ("ndcg@k", "recall@k", "precision@k", "mrr@k", "map", "hits@k")
# irlm name -> trec_eval measure; irlm's hits@k is the QA sense (share of queries with a relevant
# document in the top k), which trec_eval calls success
TREC = {"ndcg": "ndcg_cut", "recall": "recall", "precision": "P", "hits": "success"}


def check_metrics(metrics) -> list[str]:
    """The metric names, checked; an unknown one is an InputError, before any retrieval runs."""
    unknown = [m for m in metrics if not METRIC.fullmatch(m)]
    if unknown:
        shown = ", ".join(repr(m) for m in unknown)
        raise InputError(f"unknown metric(s) {shown} (known: {', '.join(KNOWN)})", field="metrics")
    return list(metrics)


def _measures(metrics) -> tuple[set[str], dict[int, list[str]]]:
    """trec_eval measure strings ({'ndcg_cut.10,100', 'map'}) and the mrr cut-offs, grouped by cut-off."""
    cuts, mrr = defaultdict(set), defaultdict(list)
    for m in metrics:
        name, _, k = m.partition("@")
        if name == "mrr":
            mrr[int(k)].append(m)
        elif name == "map":
            cuts.setdefault("map", set())  # no cut-off: written as plain `map`
        else:
            cuts[TREC[name]].add(int(k))
    return {f"{n}.{','.join(map(str, sorted(ks)))}" if ks else n for n, ks in cuts.items()}, mrr


def _trec_key(metric: str) -> str:
    name, _, k = metric.partition("@")
    return "map" if name == "map" else f"{TREC[name]}_{k}"


def ranked(docs: dict[str, float]) -> dict[str, float]:
    """{doc: n - rank}: score descending, ties in the run's order (a stable sort), as trec_eval will read it."""
    order = sorted(docs, key=lambda d: -docs[d])
    return {d: float(len(order) - i) for i, d in enumerate(order)}


def _means(measures: set[str], run: Run, judged: Qrels) -> dict[str, float]:
    """{trec_eval key: mean over the judged queries}; a query absent from `run` counts 0."""
    import pytrec_eval

    per_query = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(run) if run else {}
    keys = {k for scores in per_query.values() for k in scores}
    return {k: sum(per_query.get(q, {}).get(k, 0.0) for q in judged) / len(judged) for k in keys}


def evaluate(run: Run, qrels: Qrels, metrics=DEFAULT_METRICS, ignore_identical_ids: bool = True) -> dict[str, float]:
    """Mean of each metric over the judged queries; a judged query missing from the run scores 0.

    Example:
        >>> evaluate({"q": {"d1": 2.0, "d2": 1.0}}, {"q": {"d2": 1}}, ["mrr@10"])
        {'mrr@10': 0.5}
    """
    judged = {q: {d: int(g) for d, g in docs.items() if g > 0} for q, docs in qrels.items()}
    judged = {q: docs for q, docs in judged.items() if docs}
    if not judged:
        raise InputError("qrels hold no relevant judgements to evaluate against")
    if ignore_identical_ids:  # BEIR's rule: a document with the query's own id (arguana, quora) is not scored
        run = {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}
    run = {q: ranked(docs) for q, docs in run.items() if q in judged and docs}
    measures, mrr = _measures(check_metrics(metrics))
    means = _means(measures, run, judged) if measures else {}
    out = {m: means.get(_trec_key(m), 0.0) for m in metrics if not m.startswith("mrr@")}
    for k, names in mrr.items():  # trec_eval's recip_rank has no cut-off: it reads the top k only
        top = {q: {d: s for d, s in docs.items() if s > len(docs) - k} for q, docs in run.items()}
        out.update(dict.fromkeys(names, _means({"recip_rank"}, top, judged).get("recip_rank", 0.0)))
    return {m: round(out[m], 6) for m in metrics}
