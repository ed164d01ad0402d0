"""A recipe's `expected:` numbers against what its stages measured: one pass/fail row per number.

    rows = check_expected(expectations("recipes/quickstart.yaml"), state)   # after run_pipeline
"""

from __future__ import annotations

from irlm.config_files import Expected


def stage_metrics(rec: dict | None) -> dict[str, dict]:
    """{dataset: {metric: value}} of a finished stage ({} when it has none)."""
    metrics = ((rec or {}).get("result") or {}).get("metrics") or {}
    if metrics and not all(isinstance(v, dict) for v in metrics.values()):
        return {"-": metrics}
    return metrics


def measured(per_data: dict[str, dict], e: Expected) -> float | None:
    """The stage's value of `e.metric` on `e.data`; with no data named, on the only dataset it scored."""
    if e.data is None:
        plain = [d for d in per_data if "-dev" not in d and "+" not in d]
        data = plain[0] if len(plain) == 1 else None
    else:
        data = e.data if e.data in per_data else None
    value = per_data.get(data, {}).get(e.metric) if data else None
    return float(value) if isinstance(value, (int, float)) else None


def check_expected(expected: dict[str, list[Expected]], state: dict) -> list[dict]:
    """One row per expected number: stage, data, metric, expected, tolerance, got (None: not measured), ok."""
    rows = []
    for stage, items in expected.items():
        per_data = stage_metrics(state.get(stage))
        for e in items:
            got = measured(per_data, e)
            ok = got is not None and abs(got - e.value) <= e.tolerance + 1e-12
            rows.append({"stage": stage, "data": e.data or "-", "metric": e.metric, "expected": e.value,
                         "tolerance": e.tolerance, "got": got, "ok": ok})  # fmt: skip
    return rows


def check_line(row: dict) -> str:
    """'PASS retriever scifact ndcg@10 0.6895 (expected 0.6895 +- 0.005)'."""
    got = "not measured" if row["got"] is None else f"{row['got']:.4f}"
    verdict = "PASS" if row["ok"] else "FAIL"
    return (f"{verdict} {row['stage']} {row['data']} {row['metric']} {got} "
            f"(expected {row['expected']:.4f} +- {row['tolerance']:g})")  # fmt: skip
