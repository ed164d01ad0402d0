"""`irlm run`: stage caching by config hash, invalidation of later stages, resume after a kill,
`${stage}` references, recipe errors, and the report (markdown, JSON, PNG)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

from irlm import pipeline
from irlm.configs import TRAINERS
from irlm.errors import InputError
from irlm.eval.report import write_report
from irlm.utils import mark_as_irlm

STUB = Path(__file__).parents[1] / "scripts" / "pipeline_stub.py"


@pytest.fixture
def marks(monkeypatch):
    ran: list[str] = []

    def mark(settings, folder, run_dir):
        ran.append(folder.name)
        return {"value": settings.get("value"), "input": settings.get("input")}

    monkeypatch.setitem(pipeline.STAGES, "mark", mark)
    return ran


def recipe(tmp_path: Path, values=(1, 2, 3), name="r.yaml") -> Path:
    stages = [{"name": n, "kind": "mark", "value": v} for n, v in zip("abc", values)]
    stages[1]["input"] = "${a}/out.txt"
    path = tmp_path / name
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages}))
    return path


def test_finished_stages_are_skipped(tmp_path, marks):
    state = pipeline.run_pipeline(recipe(tmp_path))
    assert marks == ["a", "b", "c"]
    assert state["b"]["result"] == {"value": 2, "input": str(tmp_path / "run" / "a") + "/out.txt"}
    pipeline.run_pipeline(recipe(tmp_path))
    assert marks == ["a", "b", "c"]  # nothing ran again
    pipeline.run_pipeline(recipe(tmp_path), force=True)
    assert marks == ["a", "b", "c"] * 2


def test_until_runs_the_stages_through_the_one_named_and_keeps_the_later_records(tmp_path, marks):
    pipeline.run_pipeline(recipe(tmp_path))
    state = pipeline.run_pipeline(recipe(tmp_path, values=(1, 20, 30)), until="b")
    assert marks == ["a", "b", "c", "b"]  # c changed too, but is past --until
    assert state["c"]["result"]["value"] == 3  # its earlier record stays
    pipeline.run_pipeline(recipe(tmp_path, values=(1, 20, 30)))
    assert marks == ["a", "b", "c", "b", "c"]
    pipeline.run_pipeline(recipe(tmp_path, values=(1, 20, 30)), force=True, until="a")
    assert marks[-1] == "a" and pipeline.run_pipeline(recipe(tmp_path, values=(1, 20, 30)), until="a")["c"]
    with pytest.raises(InputError, match="--until d: the recipe has no such stage"):
        pipeline.run_pipeline(recipe(tmp_path), until="d")


def test_a_changed_stage_reruns_with_the_stages_that_reference_it(tmp_path, marks):
    pipeline.run_pipeline(recipe(tmp_path))
    state = pipeline.run_pipeline(recipe(tmp_path, values=(10, 2, 3)))  # b reads ${a}; c uses neither
    assert marks == ["a", "b", "c", "a", "b"]
    assert state["a"]["result"]["value"] == 10
    saved = json.loads((tmp_path / "run" / "state.json").read_text())
    stages = yaml.safe_load(recipe(tmp_path, (10, 2, 3)).read_text())["stages"]
    assert saved["b"]["hash"] == pipeline.stage_hash(stages[1], {"a": saved["a"]["hash"]})


def test_editing_an_unrelated_earlier_stage_reruns_nothing_after_it(tmp_path, marks):
    pipeline.run_pipeline(recipe(tmp_path))
    pipeline.run_pipeline(recipe(tmp_path, values=(1, 20, 3)))  # nobody references b
    assert marks == ["a", "b", "c", "b"]


def test_a_report_reruns_when_any_stage_ran(tmp_path, marks):
    path = recipe(tmp_path)
    body = yaml.safe_load(path.read_text())
    body["stages"].append({"name": "r", "kind": "mark", "value": 0})
    body["stages"][-1]["kind"] = "report"
    assert pipeline.dependencies(body["stages"][-1], ["a", "b", "c"]) == ["a", "b", "c"]
    assert pipeline.dependencies(body["stages"][1], ["a"]) == ["a"]
    assert pipeline.dependencies(body["stages"][2], ["a", "b"]) == []


def test_touching_a_file_read_by_path_reruns_the_stage_that_reads_it(tmp_path, marks):
    data = tmp_path / "crops.jsonl"
    data.write_text("{}\n")
    config = tmp_path / "c.yaml"
    config.write_text(yaml.safe_dump({"augment_files": [str(data)]}))
    path = tmp_path / "r.yaml"
    stages = [{"name": "a", "kind": "mark", "value": 1, "config": str(config)},
              {"name": "b", "kind": "mark", "value": 2, "input": str(data)},
              {"name": "c", "kind": "mark", "value": 3}]  # fmt: skip
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages}))
    pipeline.run_pipeline(path)
    pipeline.run_pipeline(path)
    assert marks == ["a", "b", "c"]
    data.write_text("{}\n{}\n")  # new content: both readers re-run, c does not
    pipeline.run_pipeline(path)
    assert marks == ["a", "b", "c", "a", "b"]


def test_a_killed_run_resumes_at_the_unfinished_stage(tmp_path):
    path = recipe(tmp_path)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(STUB), str(path)], env={**os.environ, "SLOW": "b"})
    deadline = time.time() + 60
    while not (run / "started.txt").exists():
        assert proc.poll() is None and time.time() < deadline, "the stub ended before stage b"
        time.sleep(0.2)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert (run / "ran.txt").read_text() == "a\n"
    assert set(json.loads((run / "state.json").read_text())) == {"a"}
    subprocess.run([sys.executable, str(STUB), str(path)], check=True, env={**os.environ, "SLOW": ""})
    assert (run / "ran.txt").read_text() == "a\nb\nc\n"  # a was not run twice


@pytest.mark.parametrize("stages, message", [
    ([{"name": "a", "kind": "nope"}], "unknown kind 'nope'"),
    ([{"name": "a", "kind": "data"}, {"name": "a", "kind": "data"}], "two stages are named 'a'"),
    ([{"kind": "data"}], "needs a 'name' and a 'kind'"),
    ([], "non-empty list"),
])  # fmt: skip
def test_recipe_errors(tmp_path, stages, message):
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump({"stages": stages}))
    with pytest.raises(InputError, match=message):
        pipeline.run_pipeline(path)


def test_a_reference_must_name_an_earlier_stage(tmp_path, marks):
    path = tmp_path / "r.yaml"
    stages = [{"name": "a", "kind": "mark", "input": "${b}"}, {"name": "b", "kind": "mark"}]
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages}))
    with pytest.raises(InputError, match="names no earlier stage"):
        pipeline.run_pipeline(path)


def test_report_tables_and_charts(tmp_path):
    run = tmp_path / "run"
    (run / "train").mkdir(parents=True)
    logs = [{"step": s, "lr": 1e-4, "infonce": 2.0 / s, "reward_mean": 0.1 * s, "grad_norm": 1.0} for s in (1, 2, 3)]
    (run / "train" / "log.jsonl").write_text("".join(json.dumps(r) + "\n" for r in logs))
    state = {"bm25": {"kind": "eval", "result": {"system": "bm25", "metrics": {"scifact": {"ndcg@10": 0.6762}}}},
             "sr": {"kind": "train", "result": {"metrics": {"hits@1": 0.25, "mrr@5": 0.375}}},
             "data": {"kind": "data", "result": {"scifact": {"docs": 5183}}}}  # fmt: skip
    (run / "state.json").write_text(json.dumps(state))
    mark_as_irlm(run, "run")  # as `irlm run` leaves it: report writes only into folders irlm made
    md = write_report(run)
    text = md.read_text()
    assert "| bm25 | scifact | ndcg@10 | 0.6762 |" in text and "| sr | - | mrr@5 | 0.3750 |" in text
    for png in ("metrics.png", "loss.png", "reward.png"):
        assert (md.parent / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"]({png})" in text
    report = json.loads((md.parent / "report.json").read_text())
    assert [r["system"] for r in report["rows"]] == ["bm25", "sr"]
    assert report["logs"]["train"]["infonce"] == pytest.approx(2.0 / 3)
    with pytest.raises(InputError, match="neither a run directory"):
        write_report(tmp_path / "nothing")


def test_report_of_one_training_output(tmp_path):
    out = tmp_path / "grpo"
    out.mkdir()
    (out / "log.jsonl").write_text("".join(json.dumps({"step": s, "reward_mean": 0.5 + s / 10}) + "\n" for s in (1, 2)))
    (out / "results.json").write_text(json.dumps({"metrics": {"scifact": {"ndcg@10": 0.4386}}, "config": {}}))
    mark_as_irlm(out, "model")  # as a trainer leaves its output_dir
    md = write_report(out)
    assert "| grpo | scifact | ndcg@10 | 0.4386 |" in md.read_text()
    assert (md.parent / "reward.png").read_bytes()[:4] == b"\x89PNG"
    assert list(json.loads((md.parent / "report.json").read_text())["logs"]) == ["grpo"]


def test_curve_panels_split_by_stage_and_keep_losses_apart_from_bookkeeping():
    from irlm.eval.report import curve_panels

    logs = {"prune": [{"step": 1, "lm": 4.0, "penalty": 0.0, "keep_layers": 0.99, "lr": 1e-4},
                      {"step": 2, "lm": 3.5, "penalty": 0.2, "keep_layers": 0.9, "lr": 1e-4}],
            "grpo": [{"step": 1, "grpo": 0.1, "infonce": 2.0, "reward_mean": 0.4, "reencoded": 80.0,
                      "clip_fraction": 0.0}]}  # fmt: skip
    loss = curve_panels(logs, "loss")
    assert {run: [k for k, _, _ in series] for run, series in loss.items()} == {
        "prune": ["lm", "penalty"],
        "grpo": ["grpo", "infonce"],
    }
    assert loss["prune"][0] == ("lm", [1, 2], [4.0, 3.5])
    assert curve_panels(logs, "reward") == {"grpo": [("reward_mean", [1], [0.4])]}


def test_real_stages_through_the_cli(tmp_path, toy_beir):
    from irlm.data import load_dataset
    from irlm.eval import evaluate
    from irlm.index import BM25Retriever

    path = tmp_path / "q.yaml"
    stages = [{"name": "data", "kind": "data", "data": str(toy_beir)},
              {"name": "bm25", "kind": "eval", "data": str(toy_beir), "retriever": "bm25", "k": 10},
              {"name": "report", "kind": "report"}]  # fmt: skip
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages}))
    out = subprocess.run([sys.executable, "-c", "from irlm.cli import run; run()", "run", str(path)],
                         capture_output=True, text=True, check=True)  # fmt: skip
    report = Path(out.stdout.strip().splitlines()[-1])
    assert report == tmp_path / "run" / "report" / "report.md" and report.is_file()
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    ds = load_dataset(str(toy_beir))
    expected = evaluate(BM25Retriever.build(ds.corpus).search(ds.split_queries("test"), 10), ds.qrels["test"])
    assert state["bm25"]["result"]["metrics"]["toy"] == pytest.approx(expected)
    assert state["data"]["result"]["toy"]["docs"] == len(ds.corpus)
    assert (tmp_path / "run" / "bm25" / "run.trec").is_file()


def test_train_stage_feeds_a_later_eval_stage(tmp_path, toy_beir, llama_dir):
    """A DRAMA retriever trained in one stage, scored by the stage after it through ${train}/final."""
    path = tmp_path / "t.yaml"
    train = {"name": "train", "kind": "train", "method": "drama", "model": str(llama_dir), "data": str(toy_beir),
             "train_split": "test", "eval_data": [str(toy_beir)], "steps": 2, "batch_size": 2, "max_length": 32,
             "precision": "fp32", "save_every": 0, "device": "cpu", "n_negatives": 0}  # fmt: skip
    score = {"name": "score", "kind": "eval", "data": str(toy_beir), "retriever": "dense", "model": "${train}/final",
             "k": 10, "device": "cpu"}  # fmt: skip
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": [train, score]}))
    state = pipeline.run_pipeline(path)
    trained = state["train"]["result"]["metrics"][str(toy_beir)]
    assert state["train"]["result"]["examples"] == {"original": 3}
    assert (tmp_path / "run" / "train" / "final" / "config.json").is_file()
    assert state["score"]["result"]["system"] == str(tmp_path / "run" / "train") + "/final"
    assert state["score"]["result"]["metrics"]["toy"]["ndcg@10"] == pytest.approx(trained["ndcg@10"], abs=0.02)


@pytest.mark.parametrize("recipe", sorted(str(p) for p in Path("recipes").glob("*.yaml")
                                          if "stages" in yaml.safe_load(p.read_text())))  # fmt: skip
def test_shipped_pipelines_name_known_methods_and_settings(recipe):
    """Every train stage of a shipped pipeline builds its method's config (a typo'd key is an error)."""
    import importlib

    _, stages = pipeline.load_recipe(recipe)
    folders = {st["name"]: Path("run") / st["name"] for st in stages}
    trains = [pipeline.resolve_refs(dict(st), folders) for st in stages if st["kind"] == "train"]
    for st in trains:
        module, cls, _ = TRAINERS[st["method"]]
        settings = {k: v for k, v in st.items() if k not in ("name", "kind", "method")}
        cfg = pipeline._config(getattr(importlib.import_module(module), cls), settings, output_dir="x")
        assert cfg.output_dir == "x" and all(
            getattr(cfg, k) == v for k, v in settings.items() if k not in ("config", "expected")
        )
    assert all(st["kind"] in pipeline.STAGES for st in stages)


def test_a_changed_stage_starts_empty_and_a_killed_one_keeps_its_checkpoints(tmp_path, monkeypatch):
    seen, crash = [], {"on": True}

    def stage(settings, folder, run_dir):
        seen.append(sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")))  # irlm's marks
        (folder / "checkpoint").write_text(str(settings["value"]))
        if crash["on"]:
            raise RuntimeError("killed mid-stage")
        return {}

    monkeypatch.setitem(pipeline.STAGES, "mark", stage)
    path = tmp_path / "r.yaml"
    for value, fails in ((1, True), (1, False), (2, False)):
        crash["on"] = fails
        stages = [{"name": "a", "kind": "mark", "value": value}]
        path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages}))
        if fails:
            with pytest.raises(RuntimeError):
                pipeline.run_pipeline(path)
        else:
            pipeline.run_pipeline(path)
    assert seen == [[], ["checkpoint"], []]  # resumed with its own checkpoint; new settings start clean


def test_editing_a_stage_config_file_reruns_it_and_force_starts_empty(tmp_path, monkeypatch):
    seen = []

    def stage(settings, folder, run_dir):
        seen.append(sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")))  # irlm's marks
        (folder / "checkpoint").write_text("x")
        return {}

    monkeypatch.setitem(pipeline.STAGES, "mark", stage)
    config = tmp_path / "c.yaml"
    config.write_text("steps: 1\n")
    path = tmp_path / "r.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"),
                                    "stages": [{"name": "a", "kind": "mark", "config": str(config)}]}))  # fmt: skip
    pipeline.run_pipeline(path)
    pipeline.run_pipeline(path)  # unchanged: skipped
    config.write_text("steps: 2\n")
    pipeline.run_pipeline(path)  # the file it names changed: runs, from an empty folder
    pipeline.run_pipeline(path, force=True)
    assert seen == [[], [], []]


def test_an_eval_stage_scores_the_first_limit_queries_as_irlm_eval_does(tmp_path, toy_beir):
    from irlm.data import load_dataset
    from irlm.eval import evaluate
    from irlm.index import BM25Retriever

    ds = load_dataset(str(toy_beir))
    first = dict(list(ds.split_queries("test").items())[:2])
    stages = [{"name": "bm25", "kind": "eval", "data": str(toy_beir), "retriever": "bm25", "k": 10, "limit": 2}]
    path = tmp_path / "q.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages}))
    pipeline.run_pipeline(path)
    state = json.loads((tmp_path / "run" / "state.json").read_text())
    qrels = {q: judged for q, judged in ds.qrels["test"].items() if q in first}
    expected = evaluate(BM25Retriever.build(ds.corpus).search(first, 10), qrels)
    assert len(first) == 2 < len(ds.split_queries("test"))
    assert state["bm25"]["result"]["metrics"]["toy"] == pytest.approx(expected)
    assert {line.split()[0] for line in (tmp_path / "run" / "bm25" / "run.trec").read_text().splitlines()} == set(first)
    stages[0]["limit"] = -1
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run2"), "stages": stages}))
    with pytest.raises(InputError, match="limit"):
        pipeline.run_pipeline(path)
