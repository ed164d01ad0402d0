"""`irlm compare` on TREC files scored with SciFact's test qrels: means equal `evaluate`'s, an identical run
gets p = 1, a run better on every query is significant, and bad input is one line."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from irlm.data import load_dataset
from irlm.eval import evaluate, write_trec


def irlm(*args):
    return subprocess.run([sys.executable, "-c", "from irlm.cli import run; run()", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """base: the relevant documents at ranks 3.. on every query; better: at rank 1; copy: base again;
    mixed: base on half the queries, better on the other half."""
    folder = tmp_path_factory.mktemp("runs")
    qrels = load_dataset("scifact").qrels["test"]
    noise = [f"noise{i}" for i in range(2)]

    def ranking(q, first):
        docs = [d for d, g in qrels[q].items() if g > 0]
        order = docs + noise if first else noise + docs
        return {d: float(len(order) - i) for i, d in enumerate(order)}

    made = {"base": {q: ranking(q, False) for q in qrels}, "better": {q: ranking(q, True) for q in qrels}}
    made["copy"] = made["base"]
    made["mixed"] = {q: ranking(q, i % 2 == 0) for i, q in enumerate(qrels)}
    for name, run in made.items():
        write_trec(run, folder / f"{name}.trec")
    return folder, made, qrels


def test_compare_json(runs):
    folder, made, qrels = runs
    out = irlm("compare", *(str(folder / f"{n}.trec") for n in ("base", "better", "copy", "mixed")), "--data",
               "scifact", "--metrics", "mrr@10", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    lines = out.stdout.strip().splitlines()
    assert len(lines) == 1
    got = json.loads(lines[0])
    assert got["baseline"] == str(folder / "base.trec") and got["split"] == "test"
    rows = {(r["system"].rsplit("/", 1)[-1], r["metric"]): r for r in got["rows"]}
    assert set(rows) == {(f"{n}.trec", m) for n in ("base", "better", "copy", "mixed") for m in ("ndcg@10", "mrr@10")}
    for (name, metric), row in rows.items():
        want = evaluate(made[name.removesuffix(".trec")], qrels, [metric])[metric]
        assert row["mean"] == pytest.approx(want, abs=1e-6) and row["queries"] == len(qrels)
    copy, better = rows[("copy.trec", "ndcg@10")], rows[("better.trec", "ndcg@10")]
    assert copy["p_randomization"] == copy["p_ttest"] == copy["p_randomization_holm"] == 1.0
    assert (copy["wins"], copy["ties"], copy["losses"], copy["diff"]) == (0, len(qrels), 0, 0.0)
    assert not copy["significant"]
    assert better["significant"] and better["p_randomization"] == pytest.approx(1 / 10_001)
    assert better["p_randomization_holm"] == pytest.approx(3 / 10_001)  # the smallest of three: x3
    assert better["ci"][0] <= better["diff"] <= better["ci"][1] and better["ci"][0] > 0
    assert better["wins"] == len(qrels) and better["losses"] == 0
    mixed = rows[("mixed.trec", "ndcg@10")]
    assert mixed["wins"] == (len(qrels) + 1) // 2 and mixed["losses"] == 0 and mixed["significant"]
    assert mixed["diff"] == pytest.approx(better["diff"] / 2, abs=0.01)


def test_compare_table_and_seeded_results(runs):
    folder, _, _ = runs
    args = ["compare", str(folder / "base.trec"), str(folder / "mixed.trec"), "--data", "scifact"]
    out = irlm(*args)
    assert out.returncode == 0, out.stderr
    assert "baseline" in out.stdout and "* p < 0.05" in out.stdout and "ndcg@10" in out.stdout
    assert "150/150/0" in out.stdout  # wins/ties/losses of the mixed run
    first, second = (json.loads(irlm(*args, "--json").stdout) for _ in range(2))
    assert first == second  # seeded bootstrap and permutations
    third = json.loads(irlm(*args, "--json", "--seed", "7").stdout)
    assert third["rows"][1]["ci"] != first["rows"][1]["ci"]


@pytest.mark.parametrize("case, message", [
    ("one run", "at least two different runs"),
    ("missing file", "no such file"),
    ("bad line", "bad.trec:2: expected 6 columns"),
    ("bad metric", "unknown metric(s) 'ndgc@10'"),
    ("bad split", "has no split 'nope'"),
])  # fmt: skip
def test_bad_input_is_one_line(runs, tmp_path, case, message):
    folder, _, _ = runs
    base = str(folder / "base.trec")
    bad = tmp_path / "bad.trec"
    bad.write_text("1 Q0 d 1 1.0 x\n1 Q0 d 1.0 x\n")
    args = {"one run": [base], "missing file": [base, str(tmp_path / "none.trec")], "bad line": [base, str(bad)],
            "bad metric": [base, base + "x", "--metrics", "ndgc@10"], "bad split": [base, str(bad), "--split", "nope"]}
    out = irlm("compare", *args[case], "--data", "scifact")
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert message in out.stderr.replace("\n", "")


def test_a_saved_system_is_searched_on_the_split(tmp_path, toy_beir):
    """A folder is any saved system (load_retriever): searched for the split's queries, then compared."""
    from irlm.index import BM25Retriever

    ds = load_dataset(str(toy_beir))
    system = BM25Retriever.build(ds.corpus)
    system.save(tmp_path / "bm25")
    write_trec(system.search(ds.split_queries("test"), 5), tmp_path / "bm25.trec")
    out = irlm("compare", str(tmp_path / "bm25.trec"), str(tmp_path / "bm25"), "--data", str(toy_beir), "--k", "5",
               "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    base, saved = json.loads(out.stdout)["rows"]
    assert saved["system"] == str(tmp_path / "bm25") and saved["mean"] == base["mean"]
    assert saved["ties"] == 3 and saved["p_randomization"] == 1.0


def test_limit_compares_on_the_splits_first_queries_as_irlm_eval_limit_does(runs):
    folder, made, _ = runs
    queries, qrels = load_dataset("scifact").first_queries("test", 10)
    out = irlm("compare", str(folder / "base.trec"), str(folder / "mixed.trec"), "--data", "scifact", "--limit",
               "10", "--json")  # fmt: skip
    assert out.returncode == 0, out.stderr
    mixed = json.loads(out.stdout)["rows"][1]
    want = evaluate({q: made["mixed"][q] for q in queries}, qrels, ["ndcg@10"])["ndcg@10"]
    assert mixed["queries"] == 10 and mixed["mean"] == pytest.approx(want, abs=1e-6)
    assert mixed["wins"] + mixed["ties"] + mixed["losses"] == 10
