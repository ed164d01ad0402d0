"""The command line: bad input ends with one line and exit code 2, never a traceback; eval scores a subset."""

from __future__ import annotations

import subprocess
import sys


def irlm(*args):
    return subprocess.run([sys.executable, "-c", "from irlm.cli import run; run()", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_unknown_option_is_a_usage_error():
    out = irlm("eval", "--data", "scifact", "--bogus")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "bogus" in out.stderr


def test_unknown_dataset_names_what_was_tried(tmp_path):
    out = irlm("eval", "--data", str(tmp_path / "nope"), "--json")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "not found; tried" in out.stderr


def test_bad_corpus_line_is_one_line(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "1", "text": "ok"}\n{"_id": "2", "text": \n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    out = irlm("eval", "--data", str(tmp_path), "--json")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "corpus.jsonl:2" in out.stderr.replace("\n", "")


def test_unknown_metric_is_one_line():
    out = irlm("eval", "--data", "cranfield", "--limit", "3", "--metrics", "hits@1,recal@5,hits")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "unknown metric(s) 'recal@5', 'hits'" in out.stderr


def test_eval_limit_scores_the_first_queries_only(tmp_path):
    import json

    from irlm.data import load_dataset
    from irlm.eval import evaluate, read_trec

    out = irlm("eval", "--data", "cranfield", "--limit", "5", "--metrics", "hits@1,mrr@5", "--k", "10",
               "--out-run", str(tmp_path / "r.trec"), "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout.strip().splitlines()[-1])
    first = list(load_dataset("cranfield").split_queries("test"))[:5]
    run = read_trec(tmp_path / "r.trec")
    assert sorted(run) == sorted(first)
    qrels = load_dataset("cranfield").qrels["test"]
    want = evaluate(run, {q: qrels[q] for q in first}, ["hits@1", "mrr@5"])
    assert {k: got[k] for k in want} == want and set(got) == {"data", "split", "system", "hits@1", "mrr@5"}
    again = irlm("eval", "--data", "cranfield", "--run", str(tmp_path / "r.trec"), "--limit", "5", "--metrics",
                 "hits@1,mrr@5", "--json")  # fmt: skip
    assert json.loads(again.stdout.strip().splitlines()[-1])["mrr@5"] == want["mrr@5"]
