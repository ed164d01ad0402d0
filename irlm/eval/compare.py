"""Paired comparison of runs against a baseline, query by query, the way IR papers report it.

Per-query scores come from `evaluate` (trec_eval); the statistics are free functions of two score lists:
a two-sided paired randomization test (sign flips of the per-query differences, Fisher's test as
Smucker et al. 2007 recommend for IR), scipy's paired t-test, a percentile bootstrap confidence interval of
the mean difference, and Holm's step-down correction over the systems compared against one baseline.

    >>> base, new = {"q1": 0.5, "q2": 0.2}, {"q1": 0.7, "q2": 0.2}
    >>> compare_scores({"bm25": base, "new": new}, "bm25")[1]["wins"]
    1
"""

from __future__ import annotations

import math

import numpy as np

from irlm.errors import InputError
from irlm.eval.metrics import evaluate
from irlm.types import Qrels, Run

N_RESAMPLES = 10_000  # permutations and bootstrap samples: p-values to about +-0.005 near 0.05
SEED = 42
ALPHA = 0.05


def format_p(p: float) -> str:
    """A p-value for a table: 4 decimals, small ones in scientific notation, ones scipy rounds to 0 as a bound."""
    if p < 1e-15:
        return "<1e-15"
    return f"{p:.4f}" if p >= 1e-4 else f"{p:.1e}"


def judged(qrels: Qrels) -> dict[str, dict[str, int]]:
    """The queries `evaluate` averages over: those with at least one relevant document."""
    rel = {q: {d: int(g) for d, g in docs.items() if g > 0} for q, docs in qrels.items()}
    return {q: docs for q, docs in rel.items() if docs}


def per_query(run: Run, qrels: Qrels, metric: str = "ndcg@10") -> dict[str, float]:
    """{qid: score} for every judged query (0 where the run has none), each from `evaluate` on that query
    alone, so the mean of the scores is `evaluate`'s mean.

    Example:
        >>> per_query({"a": {"d1": 1.0}}, {"a": {"d1": 1}, "b": {"d2": 1}}, "mrr@10")
        {'a': 1.0, 'b': 0.0}
    """
    rel = judged(qrels)
    return {q: evaluate({q: run[q]} if q in run else {}, {q: docs}, [metric])[metric] for q, docs in rel.items()}


def _differences(a, b) -> np.ndarray:
    """b - a per query, rounded as the metrics are: 0.7 - 0.5 and 0.4 - 0.2 are the same difference."""
    return np.round(np.asarray(b, dtype=float) - np.asarray(a, dtype=float), 9)


def _constant(d: np.ndarray) -> bool:
    return bool(np.all(d == d[0]))


def paired_randomization(a, b, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> float:
    """Two-sided p-value that the mean of b - a is 0: each query's difference keeps or flips its sign at
    random. Exact (all 2^n sign patterns) when there are no more of them than `n_resamples`; otherwise
    `n_resamples` random patterns, counting the observed one as scipy's permutation_test does.

    Example:
        >>> paired_randomization([0.0, 0.0], [1.0, 2.0])  # 1 of 4 sign patterns is as extreme: (+1, +2)
        0.5
    """
    d = _differences(a, b)
    observed = abs(d.sum())
    if observed == 0:
        return 1.0
    exact = len(d) <= math.log2(n_resamples)
    if exact:  # every pattern of signs, as rows of 0/1 bits
        signs = (np.arange(2 ** len(d))[:, None] >> np.arange(len(d)) & 1) * 2 - 1
    else:
        signs = np.random.default_rng(seed).integers(0, 2, size=(n_resamples, len(d)), dtype=np.int8) * 2 - 1
    # a relative tolerance, so sums equal to the observed one up to rounding count as extreme
    extreme = int((np.abs(signs @ d) >= observed * (1 - 1e-9)).sum())
    return extreme / len(signs) if exact else (extreme + 1) / (n_resamples + 1)


def paired_ttest(a, b) -> float:
    """Two-sided p-value of scipy's paired t-test; 1 when every difference is 0 (scipy gives nan)."""
    from scipy.stats import ttest_rel

    d = _differences(a, b)
    if not d.any():
        return 1.0
    if _constant(d):  # the same non-zero shift on every query: no variance, certainly not noise
        return 0.0
    return float(ttest_rel(b, a).pvalue)


def bootstrap_ci(a, b, level: float = 0.95, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of b - a (queries resampled with replacement).

    Example:
        >>> bootstrap_ci([0.0, 0.0], [1.0, 1.0])
        (1.0, 1.0)
    """
    from scipy.stats import bootstrap

    d = _differences(a, b)
    if _constant(d):  # scipy warns on a degenerate sample; the interval is the single value
        return float(d[0]), float(d[0])
    res = bootstrap((d,), np.mean, confidence_level=level, n_resamples=n_resamples, method="percentile",
                    rng=np.random.default_rng(seed))  # fmt: skip
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the input order: the i-th smallest is multiplied by m - i
    (i from 0), and no adjusted value is below one of a smaller p.

    Example:
        >>> holm([0.01, 0.04, 0.03])
        [0.03, 0.06, 0.06]
    """
    m = len(pvalues)
    adjusted, running = [0.0] * m, 0.0
    for i, j in enumerate(sorted(range(m), key=lambda j: pvalues[j])):
        running = max(running, min(1.0, (m - i) * pvalues[j]))
        adjusted[j] = round(running, 12)
    return adjusted


def wins_ties_losses(a, b, tol: float = 1e-6) -> tuple[int, int, int]:
    """Queries where b beats a, equals it (to `tol`, the metrics' rounding) and loses to it."""
    d = _differences(a, b)
    return int((d > tol).sum()), int((np.abs(d) <= tol).sum()), int((d < -tol).sum())


def against(base, other, n_resamples: int = N_RESAMPLES, seed: int = SEED) -> dict:
    """`other` against `base` (per-query scores in the same order): difference of means, its 95 % bootstrap
    interval, the two tests' p-values, wins, ties and losses."""
    wins, ties, losses = wins_ties_losses(base, other)
    ci = bootstrap_ci(base, other, 0.95, n_resamples, seed)
    return {"diff": float(np.mean(other) - np.mean(base)), "ci": list(ci),
            "p_randomization": paired_randomization(base, other, n_resamples, seed),
            "p_ttest": paired_ttest(base, other), "wins": wins, "ties": ties, "losses": losses}  # fmt: skip


def compare_scores(scores: dict[str, dict[str, float]], baseline: str, n_resamples: int = N_RESAMPLES,
                   seed: int = SEED) -> list[dict]:  # fmt: skip
    """One row per system (the baseline first) on the queries they all share: mean, and against the
    baseline the difference, its 95 % bootstrap interval, randomization and t-test p-values (raw and Holm
    over the systems compared), wins, ties, losses and `significant` (Holm randomization p < 0.05)."""
    qids = sorted(set.intersection(*(set(s) for s in scores.values())))
    if not qids:
        raise InputError("the systems share no scored query")
    base = [scores[baseline][q] for q in qids]
    rows = [{"system": baseline, "mean": float(np.mean(base)), "queries": len(qids)}]
    for name, per_q in scores.items():
        if name != baseline:
            other = [per_q[q] for q in qids]
            rows.append({"system": name, "mean": float(np.mean(other)), "queries": len(qids),
                         **against(base, other, n_resamples, seed)})  # fmt: skip
    compared = rows[1:]
    for key in ("p_randomization", "p_ttest"):
        for row, p in zip(compared, holm([r[key] for r in compared])):
            row[f"{key}_holm"] = p
    for row in compared:
        row["significant"] = row["p_randomization_holm"] < ALPHA
    return rows


def compare_runs(runs: dict[str, Run], qrels: Qrels, metrics=("ndcg@10",), n_resamples: int = N_RESAMPLES,
                 seed: int = SEED) -> list[dict]:  # fmt: skip
    """`compare_scores` for each metric of named runs, the first the baseline; one row per system and
    metric, `metric` naming it."""
    baseline = next(iter(runs))
    rows = []
    for metric in metrics:
        scores = {name: per_query(run, qrels, metric) for name, run in runs.items()}
        rows += [{"metric": metric, **row} for row in compare_scores(scores, baseline, n_resamples, seed)]
    return rows
