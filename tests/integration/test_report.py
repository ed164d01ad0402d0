"""The report's comparisons with a baseline: every system with a run file is tested against it on the
same queries (SciFact test qrels, synthetic runs), significant rows are marked in report.md, report.json
and report.html, per_query.csv holds each query's scores and differences, and report.html is one
self-contained file whose per-query view has every query's top 10s and snippets."""

from __future__ import annotations

import base64
import csv
import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest
import yaml

from irlm import pipeline
from irlm.data import load_dataset
from irlm.errors import InputError
from irlm.eval import evaluate, write_trec
from irlm.eval.compare import holm, per_query
from irlm.eval.report import write_report
from irlm.eval.significance import MAX_QUERIES, SNIPPET, TOP
from irlm.utils import mark_as_irlm


@pytest.fixture(scope="module")
def scifact():
    return load_dataset("scifact")


def _runs(ds) -> dict[str, dict]:
    """base: relevant documents after 3 others on every query; better: first; mixed: first on every
    second query; dev: a run of other queries (train split), never compared."""
    qrels = ds.qrels["test"]
    others = ds.corpus.ids[:40]

    def ranking(q, first, n_before=3):
        rel = [d for d, g in qrels[q].items() if g > 0]
        noise = [d for d in others if d not in rel][:12]
        order = rel + noise if first else noise[:n_before] + rel + noise[n_before:]
        return {d: float(len(order) - i) for i, d in enumerate(order)}

    return {"base": {q: ranking(q, False) for q in qrels}, "better": {q: ranking(q, True) for q in qrels},
            "mixed": {q: ranking(q, i % 2 == 0) for i, q in enumerate(qrels)},
            "worse": {q: ranking(q, False, 10) for q in qrels}}  # fmt: skip


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory, scifact):
    """A run directory as `irlm run` leaves it: eval stages (run.trec) and a training (DATA.trec files)."""
    run = tmp_path_factory.mktemp("report") / "run"
    runs, qrels = _runs(scifact), scifact.qrels["test"]
    state = {"data": {"hash": "0", "kind": "data", "result": {"scifact": {"docs": len(scifact.corpus)}}}}
    for stage, name in (("bm25", "base"), ("better", "better"), ("worse", "worse")):
        (run / stage).mkdir(parents=True)
        write_trec(runs[name], run / stage / "run.trec")
        result = {"system": stage, "metrics": {"scifact": evaluate(runs[name], qrels)}, "split": "test",
                  "source": "scifact"}  # fmt: skip
        state[stage] = {"hash": "0", "kind": "eval", "result": result}
    train_qrels = scifact.qrels["train"]  # a run of the train split: other queries, so never paired with bm25
    (run / "train-run").mkdir()
    write_trec({q: runs["base"][next(iter(qrels))] for q in train_qrels}, run / "train-run" / "run.trec")
    state["train-run"] = {"hash": "0", "kind": "eval", "result": {"system": "train-run", "split": "train",
                          "metrics": {"scifact": {"ndcg@10": 0.1}}, "source": "scifact"}}  # fmt: skip
    (run / "retriever").mkdir()
    dev = {q: runs["better"][next(iter(qrels))] for q in list(scifact.qrels["train"])[:5]}
    files = {"scifact": runs["mixed"], "scifact+bm25": runs["better"], "scifact-dev": dev}
    metrics = {}
    for key, r in files.items():
        write_trec(r, run / "retriever" / f"{key}.trec")
        metrics[key] = evaluate(r, scifact.qrels["train" if key.endswith("dev") else "test"])
    state["retriever"] = {"hash": "0", "kind": "train", "result": {"metrics": metrics}}
    (run / "state.json").write_text(json.dumps(state))
    mark_as_irlm(run, "run")
    return run, runs


@pytest.fixture(scope="module")
def report(run_dir):
    run, _ = run_dir
    md = write_report(run)
    return md.parent


def test_every_system_is_tested_against_the_baseline(report, run_dir, scifact):
    rows = json.loads((report / "report.json").read_text())["rows"]
    by = {(r["system"], r["data"]): r for r in rows}
    assert by[("bm25", "scifact")].get("baseline") is True and "vs" not in by[("bm25", "scifact")]
    compared = [("better", "scifact"), ("worse", "scifact"), ("retriever", "scifact"), ("retriever", "scifact+bm25")]
    for key in compared:
        vs = by[key]["vs"]
        assert vs["baseline"] == "bm25" and vs["metric"] == "ndcg@10"
        assert vs["diff"] == pytest.approx(by[key]["ndcg@10"] - by[("bm25", "scifact")]["ndcg@10"], abs=2e-6)
        assert vs["ci"][0] <= vs["diff"] <= vs["ci"][1]
        assert vs["wins"] + vs["ties"] + vs["losses"] == len(scifact.qrels["test"])
    assert "vs" not in by[("retriever", "scifact-dev")]  # other queries: nothing to pair with
    assert "vs" not in by[("train-run", "scifact")] and "baseline" not in by[("train-run", "scifact")]
    # Holm over the four systems compared on SciFact test
    raw = [by[k]["vs"]["p_randomization"] for k in compared]
    assert [by[k]["vs"]["p_randomization_holm"] for k in compared] == pytest.approx(holm(raw))
    assert all(by[k]["vs"]["significant"] for k in compared)
    assert by[("worse", "scifact")]["vs"]["diff"] < 0 and by[("worse", "scifact")]["vs"]["losses"] > 0


def test_markdown_marks_the_significant_rows(report):
    text = (report / "report.md").read_text()
    lines = {line.split(" | ")[0].strip("| ") + " " + line.split(" | ")[1]: line for line in text.splitlines()
             if line.startswith("| ") and not line.startswith("| system")}  # fmt: skip
    assert "| baseline |" in lines["bm25 scifact"]
    assert " * |" in lines["better scifact"] and " * |" in lines["retriever scifact+bm25"]
    assert lines["retriever scifact-dev"].endswith("| - |  |  |  |  |")
    assert "Holm-corrected" in text and "4 against bm25 on 300 queries" in text


def test_per_query_csv_holds_scores_and_differences(report, run_dir, scifact):
    _, runs = run_dir
    with open(report / "per_query.csv", newline="") as f:
        table = list(csv.DictReader(f))
    qrels = scifact.qrels["test"]
    assert len(table) == len(qrels) and {r["query"] for r in table} == set(qrels)
    want_base, want_mixed = per_query(runs["base"], qrels), per_query(runs["mixed"], qrels)
    for r in table:
        assert (r["data"], r["split"], r["metric"]) == ("scifact", "test", "ndcg@10")
        assert float(r["bm25"]) == pytest.approx(want_base[r["query"]], abs=1e-6)
        assert float(r["retriever"]) == pytest.approx(want_mixed[r["query"]], abs=1e-6)
        assert float(r["retriever - bm25"]) == pytest.approx(float(r["retriever"]) - float(r["bm25"]), abs=2e-6)
        assert float(r["retriever+bm25 - bm25"]) >= 0
    assert "bm25 - bm25" not in table[0]


class Page(HTMLParser):
    """Every tag with its attributes, the text of each table, the script blocks."""

    def __init__(self):
        super().__init__()
        self.tags, self.scripts, self.cells, self._in = [], [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in.append(tag)
        if tag == "script":
            self.scripts.append([dict(attrs), ""])

    def handle_endtag(self, tag):
        if self._in and self._in[-1] == tag:
            self._in.pop()

    def handle_data(self, data):
        if self._in and self._in[-1] == "script":
            self.scripts[-1][1] += data
        elif self._in and self._in[-1] in ("td", "th"):
            self.cells.append(data)


def test_html_is_one_self_contained_file(report, scifact):
    page = Page()
    page.feed((report / "report.html").read_text(encoding="utf-8"))
    tags = page.tags
    for tag, attrs in tags:  # nothing fetched from anywhere: no external src or href, no script file
        for key in ("src", "href"):
            value = attrs.get(key, "")
            assert not value.startswith(("http://", "https://", "//")), (tag, value[:80])
        if tag == "script":
            assert "src" not in attrs
        if tag == "link":
            raise AssertionError(f"a <link> to {attrs}")
    images = [a["src"] for t, a in tags if t == "img"]
    assert len(images) == 1 and images[0].startswith("data:image/png;base64,")
    assert base64.b64decode(images[0].split(",", 1)[1])[:8] == b"\x89PNG\r\n\x1a\n"
    assert ("table", {"class": "sortable", "id": "results"}) in tags
    assert {"better", "worse", "retriever", "scifact+bm25", "baseline", "+0.0000 *"} - set(page.cells) == {"+0.0000 *"}
    sig_rows = [a for t, a in tags if t == "tr" and a.get("class") in ("sig-up", "sig-down")]
    assert len(sig_rows) == 4
    blocks = [text for attrs, text in page.scripts if attrs.get("type") == "application/json"]
    assert len(blocks) == 1
    (group,) = json.loads(blocks[0])
    qrels = scifact.qrels["test"]
    assert group["baseline"] == "bm25" and group["data"] == "scifact" and group["split"] == "test"
    assert set(group["systems"]) == {"bm25", "better", "worse", "retriever", "retriever+bm25"}
    assert set(group["queries"]) == set(qrels) and len(qrels) <= MAX_QUERIES
    for q in qrels:
        assert group["queries"][q] == scifact.queries[q]
        assert group["relevant"][q] == {d: g for d, g in qrels[q].items() if g > 0}
        for name in group["systems"]:
            top = group["top"][name][q]
            assert 1 <= len(top) <= TOP and all(d in group["docs"] for d, _ in top)
    first = next(iter(qrels))
    assert [d for d, _ in group["top"]["better"][first]][0] in group["relevant"][first]
    docs = {d.id: d for d in scifact.corpus.docs}
    for d, shown in group["docs"].items():
        assert shown["text"] == docs[d].text[:SNIPPET] and len(shown["text"]) <= SNIPPET


def test_a_document_cannot_break_out_of_the_data_block(tmp_path):
    from irlm.eval.report_html import _json_block

    block = _json_block([{"docs": {"d": {"text": "</script><img src=http://x>"}}}])
    assert block.count("</script>") == 1 and "http://x" in block and "<img" not in block


def test_named_baseline_and_old_run_dirs(run_dir, tmp_path, scifact):
    run, _ = run_dir
    upper = write_report(run, tmp_path / "r0", baseline="BM25")  # as people write it
    rows = json.loads((upper.parent / "report.json").read_text())["rows"]
    assert next(r for r in rows if r["system"] == "bm25")["baseline"] is True
    md = write_report(run, tmp_path / "r1", baseline="better")
    rows = {(r["system"], r["data"]): r for r in json.loads((md.parent / "report.json").read_text())["rows"]}
    assert rows[("better", "scifact")]["baseline"] and rows[("bm25", "scifact")]["vs"]["diff"] < 0
    with pytest.raises(InputError, match="baseline 'nope' is none of the report's systems"):
        write_report(run, tmp_path / "r2", baseline="nope")
    # a state.json from before eval stages recorded their split and data: run.trec and the data set's name serve
    old = tmp_path / "old"
    old.mkdir()
    state = json.loads((run / "state.json").read_text())
    for stage in ("bm25", "better"):
        (old / stage).mkdir()
        (old / stage / "run.trec").write_bytes((run / stage / "run.trec").read_bytes())
        state[stage]["result"] = {k: state[stage]["result"][k] for k in ("system", "metrics")}
    state = {k: state[k] for k in ("bm25", "better")}
    (old / "state.json").write_text(json.dumps(state))
    mark_as_irlm(old, "run")
    rows = json.loads((write_report(old).parent / "report.json").read_text())["rows"]
    assert rows[1]["vs"]["significant"] and rows[0]["baseline"]


def test_without_runs_the_report_says_so(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    mark_as_irlm(run, "run")
    state = {"bm25": {"hash": "0", "kind": "eval", "result": {"system": "bm25", "metrics": {"scifact": {"ndcg@10": 0.6}}}}}
    (run / "state.json").write_text(json.dumps(state))
    md = write_report(run)
    assert "No system was compared with a baseline" in md.read_text()
    assert "no per-query view" in (md.parent / "report.html").read_text()
    assert (md.parent / "per_query.csv").read_text().startswith("data,split,metric,query")


def test_the_pipeline_report_compares_with_the_recipes_baseline(tmp_path, toy_beir):
    """Real eval stages on a toy corpus, the report stage naming its baseline; a baseline that names no
    stage fails before any stage runs; `irlm report` reuses the recipe's baseline."""
    stages = [{"name": "bm25", "kind": "eval", "data": str(toy_beir), "retriever": "bm25", "k": 5},
              {"name": "again", "kind": "eval", "data": str(toy_beir), "retriever": "bm25", "k": 5, "label": "bm25b"},
              {"name": "report", "kind": "report", "baseline": "bm25b"}]  # fmt: skip
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages}))
    state = pipeline.run_pipeline(path)
    assert state["bm25"]["result"]["split"] == "test" and state["bm25"]["result"]["source"] == str(toy_beir)
    assert state["report"]["result"]["baseline"] == "bm25b"
    report = json.loads((tmp_path / "run" / "report" / "report.json").read_text())
    assert report["baseline"] == "bm25b"
    bm25 = next(r for r in report["rows"] if r["system"] == "bm25")
    assert bm25["vs"]["diff"] == 0 and bm25["vs"]["p_randomization"] == 1.0 and bm25["vs"]["ties"] == 3
    out = subprocess.run([sys.executable, "-c", "from irlm.cli import run; run()", "report", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads((tmp_path / "run" / "report" / "report.json").read_text())["baseline"] == "bm25b"
    bad = subprocess.run([sys.executable, "-c", "from irlm.cli import run; run()", "report", str(tmp_path / "run"),
                          "--baseline", "nope"], capture_output=True, text=True, timeout=120)  # fmt: skip
    assert bad.returncode == 2 and "Traceback" not in bad.stderr and "baseline 'nope'" in bad.stderr

    stages[-1]["baseline"] = "bm25c"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run2"), "stages": stages}))
    with pytest.raises(InputError, match="baseline: 'bm25c' names no stage or system"):
        pipeline.run_pipeline(path)
    assert not (tmp_path / "run2" / "bm25").exists()  # refused before the first stage ran
    assert Path(state["report"]["result"]["report"]).name == "report.md"


def test_a_trained_retrievers_runs_are_kept_for_the_report(tmp_path, toy_beir, llama_encoder):
    """evaluate_encoder keeps the dense run and both hybrids, each scoring what its metrics say, so a training
    stage's hybrid rows are tested against BM25 like any eval stage."""
    from irlm.eval import read_trec
    from irlm.eval.benchmark import evaluate_encoder

    name = toy_beir.name
    (tmp_path / "runs").mkdir()
    metrics = evaluate_encoder(llama_encoder, [str(toy_beir)], k=5, runs_dir=str(tmp_path / "runs"),
                               hybrid=True, fusion_weight=0.3)  # fmt: skip
    qrels = load_dataset(str(toy_beir)).qrels["test"]
    for suffix in ("", "+bm25", "+bm25-weighted"):
        run = read_trec(tmp_path / "runs" / f"{name}{suffix}.trec")
        assert evaluate(run, qrels) == pytest.approx(metrics[f"{toy_beir}{suffix}"], abs=1e-6)


def test_the_chart_has_a_panel_per_data_set_values_on_bars_and_the_baseline_line(monkeypatch, tmp_path):
    from irlm.eval import report

    figures = []
    monkeypatch.setattr(report, "_save", lambda fig, plt, path: figures.append(fig) or path)
    rows = [{"system": "bm25", "stage": "bm25", "data": "scifact", "ndcg@10": 0.6762, "baseline": True},
            {"system": "retriever", "stage": "retriever", "data": "scifact+bm25-weighted", "ndcg@10": 0.6895,
             "vs": {"significant": True, "diff": 0.0133}},
            {"system": "minilm-l6", "stage": "minilm", "data": "scifact", "ndcg@10": 0.6443,
             "vs": {"significant": False, "diff": -0.03}},
            {"system": "bm25", "stage": "bm25c", "data": "cranfield", "ndcg@10": 0.3515, "baseline": True},
            {"system": "retriever", "stage": "retriever", "data": "scifact-dev", "ndcg@10": 0.43}]  # fmt: skip
    report.metrics_chart(rows, tmp_path)
    (fig,) = figures
    axes = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in axes] == ["scifact", "cranfield", "scifact-dev"]
    scifact, cranfield, dev = axes
    assert [t.get_text() for t in scifact.texts] == ["0.676", "0.690*", "0.644"]  # values, * where significant
    assert [t.get_text() for t in scifact.get_xticklabels()] == ["bm25", "retriever+bm25-weighted", "minilm-l6"]
    assert [line.get_ydata()[0] for line in scifact.lines] == [0.6762]  # the baseline, dashed across the panel
    assert [line.get_ydata()[0] for line in cranfield.lines] == [0.3515] and len(dev.lines) == 0
    colours = [tuple(round(c, 3) for c in bar.get_facecolor()[:3]) for bar in scifact.patches]
    assert len(set(colours)) == 3  # baseline, significantly better, not significant
    assert all(ax.get_legend() is None for ax in axes) and len(fig.legends) == 1  # the legend is off the data
    labels = [t.get_text() for t in fig.legends[0].get_texts()]
    assert labels == ["baseline", "above it, p < 0.05 (Holm)", "no significant difference, or not compared",
                      "baseline value"]  # fmt: skip


def test_top_docs_rank_by_score_ties_in_run_order():
    from irlm.eval.significance import top_docs

    # a TREC file from another tool need not list documents in score order
    assert top_docs({"a": 1.0, "b": 3.0, "c": 2.0, "d": 3.0}, 3) == [("b", 3.0), ("d", 3.0), ("c", 2.0)]
