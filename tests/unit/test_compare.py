"""The statistics of `irlm compare`: the randomization test against scipy and by hand, the paired t-test,
the bootstrap interval, Holm's correction and per-query scores that average to `evaluate`'s means."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import permutation_test, ttest_rel

from irlm.eval import evaluate
from irlm.eval.compare import (
    bootstrap_ci,
    compare_scores,
    holm,
    paired_randomization,
    paired_ttest,
    per_query,
    wins_ties_losses,
)


def _scipy_p(a, b, n_resamples=10_000, seed=0):
    def mean_diff(x, y, axis):
        return np.mean(x - y, axis=axis)

    return permutation_test((b, a), mean_diff, permutation_type="samples", n_resamples=n_resamples,
                            vectorized=True, alternative="two-sided", rng=seed).pvalue  # fmt: skip


def test_a_small_case_by_hand():
    # differences 1, 2, 3: of the 8 sign patterns only +1+2+3 and -1-2-3 reach |sum| 6
    assert paired_randomization([0, 0, 0], [1, 2, 3]) == 0.25
    # differences 1, 1, 2: |sum| >= 4 for (+,+,+), (-,-,-): 2 of 8; the ties at |sum| 2 do not count
    assert paired_randomization([0, 0, 0], [1, 1, 2]) == 0.25
    assert paired_randomization([0, 0], [1, -1]) == 1.0  # sum 0: every pattern is as extreme


@pytest.mark.parametrize("seed", range(5))
def test_exact_randomization_equals_scipy(seed):
    rng = np.random.default_rng(seed)
    a = rng.random(9)
    b = np.clip(a + rng.normal(0.08, 0.15, 9), 0, 1)
    assert paired_randomization(a, b) == pytest.approx(_scipy_p(a, b), abs=1e-12)  # 512 patterns: both exact
    assert paired_randomization(b, a) == pytest.approx(_scipy_p(a, b), abs=1e-12)  # two-sided: symmetric


def test_sampled_randomization_agrees_with_scipy():
    rng = np.random.default_rng(7)
    a = rng.random(60)
    b = np.clip(a + rng.normal(0.03, 0.15, 60), 0, 1)
    ours = paired_randomization(a, b, n_resamples=10_000, seed=1)
    assert 0.01 < ours < 0.9  # a case where sampling error matters
    assert ours == pytest.approx(_scipy_p(a, b, 10_000, seed=3), abs=0.015)  # two Monte Carlo draws
    assert paired_randomization(a, b, seed=1) == ours  # seeded: the same p every run


def test_identical_runs_give_p_one():
    a = list(np.random.default_rng(0).random(50))
    assert paired_randomization(a, a) == 1.0
    assert paired_ttest(a, a) == 1.0
    assert bootstrap_ci(a, a) == (0.0, 0.0)
    assert wins_ties_losses(a, a) == (0, 50, 0)


def test_a_run_better_on_every_query_gives_p_near_zero():
    rng = np.random.default_rng(0)
    a = rng.random(300) * 0.8
    b = a + 0.05 + rng.random(300) * 0.01
    assert paired_randomization(a, b) == pytest.approx(1 / 10_001)  # no sampled pattern is as extreme
    assert paired_randomization(b, a) == pytest.approx(1 / 10_001)
    assert paired_ttest(a, b) < 1e-50
    assert paired_ttest(a, a + 0.05) == 0.0  # the same shift everywhere: scipy's t is infinite
    assert wins_ties_losses(a, b) == (300, 0, 0) and wins_ties_losses(b, a) == (0, 0, 300)


def test_ttest_is_scipys():
    rng = np.random.default_rng(3)
    a, b = rng.random(40), rng.random(40)
    assert paired_ttest(a, b) == pytest.approx(ttest_rel(b, a).pvalue)


def test_bootstrap_interval_is_about_the_normal_one():
    rng = np.random.default_rng(0)
    a = rng.random(2000)
    b = a + rng.normal(0.02, 0.1, 2000)
    d = b - a
    half = 1.96 * d.std(ddof=1) / np.sqrt(len(d))
    lo, hi = bootstrap_ci(a, b)
    assert lo == pytest.approx(d.mean() - half, abs=half * 0.06)
    assert hi == pytest.approx(d.mean() + half, abs=half * 0.06)
    assert bootstrap_ci(a, b) == (lo, hi)  # seeded


def test_holm_by_hand():
    # sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 = 0.02, 0.03, 0.06, 0.04 -> running max 0.06 for the last
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == [1.0, 1.0]  # capped at 1
    assert holm([0.02]) == [0.02]  # one comparison: nothing to correct


def test_holm_keeps_the_order_of_the_raw_p_values():
    raw = list(np.random.default_rng(1).random(12) * 0.2)
    adjusted = holm(raw)
    order = np.argsort(raw)
    assert all(np.diff(np.asarray(adjusted)[order]) >= 0)
    assert all(x >= r for x, r in zip(adjusted, raw))


def test_per_query_scores_average_to_evaluate():
    qrels = {"q1": {"d1": 1, "d2": 0}, "q2": {"d3": 2, "d4": 1}, "q3": {"d5": 1}, "q4": {"d6": 0}}
    run = {"q1": {"d2": 3.0, "d1": 2.0}, "q2": {"d4": 1.0, "d9": 0.5, "d3": 0.2}, "q4": {"d6": 1.0}}
    scores = per_query(run, qrels, "ndcg@10")
    assert set(scores) == {"q1", "q2", "q3"}  # q4 has no relevant document: evaluate leaves it out too
    assert scores["q3"] == 0.0  # not in the run
    assert scores["q1"] == pytest.approx(1 / np.log2(3))
    assert np.mean(list(scores.values())) == pytest.approx(evaluate(run, qrels, ["ndcg@10"])["ndcg@10"], abs=1e-6)


def test_compare_scores_corrects_over_the_systems_compared():
    rng = np.random.default_rng(0)
    qids = [f"q{i}" for i in range(200)]
    base = dict(zip(qids, rng.random(200) * 0.7))
    better = {q: s + 0.1 for q, s in base.items()}
    noisy = {q: s + rng.normal(0, 0.05) for q, s in base.items()}
    rows = compare_scores({"noisy": noisy, "bm25": base, "better": better}, "bm25")
    assert [r["system"] for r in rows] == ["bm25", "noisy", "better"]
    by = {r["system"]: r for r in rows}
    assert "diff" not in by["bm25"]
    assert by["better"]["diff"] == pytest.approx(0.1) and by["better"]["significant"]
    assert by["better"]["ci"] == pytest.approx([0.1, 0.1])
    assert (by["better"]["wins"], by["better"]["ties"], by["better"]["losses"]) == (200, 0, 0)
    raw = [by["noisy"]["p_randomization"], by["better"]["p_randomization"]]
    assert [by["noisy"]["p_randomization_holm"], by["better"]["p_randomization_holm"]] == pytest.approx(holm(raw))
    assert by["noisy"]["p_ttest_holm"] == pytest.approx(holm([by["noisy"]["p_ttest"], by["better"]["p_ttest"]])[0])
    assert by["noisy"]["significant"] == (by["noisy"]["p_randomization_holm"] < 0.05)
    assert by["noisy"]["wins"] + by["noisy"]["ties"] + by["noisy"]["losses"] == 200


def test_significance_is_read_after_holm():
    rng = np.random.default_rng(11)
    qids = [f"q{i}" for i in range(100)]
    base = dict(zip(qids, rng.random(100) * 0.7))
    strong = {q: s + 0.1 for q, s in base.items()}
    weak = {q: s + rng.normal(0.02, 0.1) for q, s in base.items()}
    null = {q: s + (0.05 if i % 2 else -0.05) for i, (q, s) in enumerate(base.items())}
    by = {r["system"]: r for r in compare_scores({"bm25": base, "strong": strong, "weak": weak, "null": null}, "bm25")}
    assert by["weak"]["p_randomization"] < 0.05 and by["weak"]["p_ttest"] < 0.05  # alone it would pass
    assert by["weak"]["p_randomization_holm"] == pytest.approx(2 * by["weak"]["p_randomization"])  # second of three
    assert not by["weak"]["significant"] and by["strong"]["significant"]
    assert by["null"]["p_randomization"] == 1.0 and by["null"]["diff"] == pytest.approx(0, abs=1e-12)


def test_p_values_print_as_tables_need_them():
    from irlm.eval.compare import format_p

    assert [format_p(p) for p in (1.0, 0.01234, 3e-5, 0.0)] == ["1.0000", "0.0123", "3.0e-05", "<1e-15"]
