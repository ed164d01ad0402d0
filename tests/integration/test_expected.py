"""A recipe's `expected:` numbers are compared with what its stages measured: PASS/FAIL lines, --check."""

from __future__ import annotations

import subprocess
import sys

import pytest
import yaml

from irlm.config_files import Expected
from irlm.eval.expected import check_expected, check_line

STATE = {"retriever": {"result": {"metrics": {"scifact": {"ndcg@10": 0.60}, "scifact-dev": {"ndcg@10": 0.70},
                                              "scifact+bm25-weighted": {"ndcg@10": 0.72}}}},
         "bm25": {"result": {"metrics": {"scifact": {"ndcg@10": 0.6762}}}}}  # fmt: skip


def test_each_expected_number_is_checked_against_its_stage_and_dataset():
    expected = {"retriever": [Expected("ndcg@10", "scifact", 0.605, 0.01), Expected("ndcg@10", "scifact+bm25-weighted", 0.70, 0.01),
                              Expected("ndcg@10", None, 0.60, 0.0)],
                "bm25": [Expected("recall@100", "scifact", 0.9, 0.01)],
                "missing": [Expected("ndcg@10", "scifact", 0.5, 0.5)]}  # fmt: skip
    rows = check_expected(expected, STATE)
    assert [r["ok"] for r in rows] == [True, False, True, False, False]
    assert rows[1]["got"] == pytest.approx(0.72) and rows[3]["got"] is None and rows[4]["got"] is None
    assert check_line(rows[0]).startswith("PASS retriever scifact ndcg@10 0.6000")
    assert check_line(rows[1]).startswith("FAIL") and "not measured" in check_line(rows[3])


def test_the_tolerance_is_a_bound_on_both_sides():
    ok = lambda value: check_expected({"bm25": [Expected("ndcg@10", "scifact", value, 0.001)]}, STATE)[0]["ok"]  # noqa: E731
    assert ok(0.6762) and ok(0.6770) and ok(0.6754)
    assert not ok(0.6775) and not ok(0.6750)


@pytest.mark.parametrize("value, check, code", [(None, True, 0), (0.01, False, 0), (0.01, True, 1)])
def test_irlm_run_prints_the_check_and_check_sets_the_exit_status(tmp_path, toy_beir, value, check, code):
    from irlm.data import load_dataset
    from irlm.eval import evaluate
    from irlm.index import BM25Retriever

    ds = load_dataset(str(toy_beir))
    real = evaluate(BM25Retriever.build(ds.corpus).search(ds.split_queries("test"), 10), ds.qrels["test"])["ndcg@10"]
    want = real if value is None else value
    stage = {"name": "bm25", "kind": "eval", "data": str(toy_beir), "retriever": "bm25", "k": 10,
             "expected": {"toy_ndcg@10": {"value": want, "tolerance": 0.001}}}  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": [stage]}))
    cmd = [sys.executable, "-c", "from irlm.cli import run; run()", "run", str(path), *(["--check"] if check else [])]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == code, out.stderr[-2000:]
    verdict = "PASS" if value is None else "FAIL"
    assert f"{verdict} bm25 toy ndcg@10 {real:.4f}" in out.stderr
    state = yaml.safe_load((tmp_path / "run" / "state.json").read_text())
    assert 0 <= state["bm25"]["seconds"] < 600  # each stage's wall time, for bench/quickstart.sh


def test_until_checks_only_the_stages_it_reached(tmp_path, toy_beir):
    """A stage past --until is not run, so its expected number is not checked (nor counted a FAIL)."""
    stages = [{"name": n, "kind": "eval", "data": str(toy_beir), "retriever": "bm25", "k": 10,
               "expected": {"toy_ndcg@10": {"value": 0.0, "tolerance": 2.0}}} for n in ("first", "later")]  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages}))
    cmd = [sys.executable, "-c", "from irlm.cli import run; run()", "run", str(path), "--check", "--until", "first"]
    out = subprocess.run(cmd, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert "PASS first toy ndcg@10" in out.stderr and "later" not in out.stderr
    assert not (tmp_path / "run" / "later").exists()
