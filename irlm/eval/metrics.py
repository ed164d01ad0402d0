"""Metrics through ranx (trec_eval-compatible definitions), never computed by hand."""

from __future__ import annotations

import re
import warnings

from irlm.errors import InputError
from irlm.types import Qrels, Run

DEFAULT_METRICS = ("ndcg@10", "recall@100", "mrr@10", "map", "hits@1", "hits@5", "hits@10")


METRIC = re.compile(r"(ndcg|recall|precision|mrr|hits)@[1-9][0-9]*|map")
KNOWN = ("ndcg@k", "recall@k", "precision@k", "mrr@k", "map", "hits@k")


def _ranx_name(metric: str) -> str:
    # irlm's hits@k is the QA sense (share of queries with a relevant document in the top k),
    # which ranx calls hit_rate; ranx's own "hits" counts relevant documents instead.
    return metric.replace("hits@", "hit_rate@") if metric.startswith("hits@") else metric


def check_metrics(metrics) -> list[str]:
    """The ranx names of irlm metric names; an unknown one is an InputError, before any retrieval runs."""
    unknown = [m for m in metrics if not METRIC.fullmatch(m)]
    if unknown:
        shown = ", ".join(repr(m) for m in unknown)
        raise InputError(f"unknown metric(s) {shown} (known: {', '.join(KNOWN)})", field="metrics")
    return [_ranx_name(m) for m in metrics]


def evaluate(run: Run, qrels: Qrels, metrics=DEFAULT_METRICS, ignore_identical_ids: bool = True) -> dict[str, float]:
    """Mean of each metric over the judged queries; a judged query missing from the run scores 0.

    Example:
        >>> evaluate({"q": {"d1": 2.0, "d2": 1.0}}, {"q": {"d2": 1}}, ["mrr@10"])
        {'mrr@10': 0.5}
    """
    from ranx import Qrels as RQrels
    from ranx import Run as RRun
    from ranx import evaluate as ranx_evaluate

    judged = {q: {d: g for d, g in docs.items() if g > 0} for q, docs in qrels.items()}
    judged = {q: docs for q, docs in judged.items() if docs}
    if not judged:
        raise InputError("qrels hold no relevant judgements to evaluate against")
    if ignore_identical_ids:  # BEIR's rule: a document with the query's own id (arguana, quora) is not scored
        run = {q: {d: s for d, s in docs.items() if d != q} for q, docs in run.items()}
    # ranx needs every judged query in the run; an empty ranking there means all metrics are 0
    sentinel = {"__none__": 0.0}
    filled = {q: (run.get(q) or sentinel) for q in judged}
    names = check_metrics(metrics)
    with warnings.catch_warnings():  # numba warns about a uint64 cast inside ranx
        warnings.simplefilter("ignore")
        scores = ranx_evaluate(RQrels(judged), RRun(filled), names, make_comparable=True)
    if len(names) == 1:
        scores = {names[0]: scores}
    return {m: round(float(scores[n]), 6) for m, n in zip(metrics, names)}
