"""DRAMA augmentation end to end: each strategy, invalid output counted, resume after SIGKILL, CLI."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

SCRIPTS = Path(__file__).parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from conftest import write_beir  # noqa: E402
from fake_teacher import FakeTeacher  # noqa: E402

from irlm.methods.drama.augment import run_augment, skipped_path, stats_path  # noqa: E402
from irlm.methods.drama.config import AugmentConfig  # noqa: E402
from irlm.models.generator import Generation, Usage  # noqa: E402

TOPICS = ["kinase", "statin", "malaria", "insulin", "retina", "glacier", "sonnet", "neutrino", "enzyme", "tundra",
          "falcon", "copper", "vaccine", "cortex", "plasma", "lichen", "quartz", "opioid", "saline", "ozone"]


def corpus_rows(n: int) -> list[dict]:
    """Documents of three sentences on one topic each, with a length that differs per document."""
    rows = []
    for i in range(n):
        t = TOPICS[i % len(TOPICS)]
        extra = " ".join([t] * (i % 5))
        rows.append({"_id": f"d{i}", "title": f"On {t} {i}",
                     "text": f"Work number {i} studies the {t} in detail. The {t} matters for many people here. "
                             f"We report findings on {t} {extra} and more."})  # fmt: skip
    return rows


@pytest.fixture
def beir(tmp_path) -> Path:
    return write_beir(tmp_path / "syn", corpus_rows(40), [{"_id": "q1", "text": "kinase"}], {"test": [("q1", "d0", 1)]})


def cfg(beir, tmp_path, strategy, **kw) -> AugmentConfig:
    base = {"n": 12, "batch_size": 4, "top_k": 6, "negatives_from": 3, "rerank_negatives_from": 4,
            "min_sentence_words": 3}  # fmt: skip
    return AugmentConfig(strategy=strategy, data=str(beir), out=str(tmp_path / f"{strategy}.jsonl"), **{**base, **kw})


def rows(path) -> list[dict]:
    return [json.loads(line) for line in Path(path).read_text().splitlines()] if Path(path).exists() else []


def test_crop_examples_carry_provenance_and_rank_splits(beir, tmp_path):
    c = cfg(beir, tmp_path, "crop")
    stats = run_augment(c)
    out = rows(c.out)
    assert stats["examples"] == len(out) == 12 and stats["skipped"] == 0 and stats["invalid_generations"] == 0
    for ex in out:
        assert ex["strategy"] == "crop" and ex["retriever"] == "bm25" and ex["teacher"] is None
        assert len(ex["positives"]) == 1 and len(ex["negatives"]) == len(ex["negative_ids"]) == 4  # ranks 3..6
        assert ex["positive_ids"][0] not in ex["negative_ids"]
    hits = sum(ex["positive_ids"][0] == ex["source_doc"] for ex in out)
    assert hits >= 9  # the cropped sentence finds its own document at rank 1 most of the time


def test_qgen_counts_retries_and_skips(beir, tmp_path):
    c = cfg(beir, tmp_path, "qgen", n=20)
    teacher = FakeTeacher(bad_every=3, hopeless_every=5)
    stats = run_augment(c, generator=teacher)
    out, skipped = rows(c.out), rows(skipped_path(Path(c.out)))
    assert len(out) + len(skipped) == 20 and stats["examples"] == len(out) and stats["skipped"] == len(skipped)
    assert skipped and all(s["reason"] == "no usable query" and s["raw"] == "The passage is:" for s in skipped)
    assert any(temp > 0 for _, temp in teacher.calls)  # invalid replies were retried with sampling
    # every hopeless unit failed 1 + retries times; the others at most once
    assert stats["invalid_generations"] >= 3 * len(skipped) and stats["invalid_generations"] < 3 * len(skipped) + 20
    assert all(ex["teacher"] == "fake-teacher" and ex["prompt_version"] for ex in out)
    assert all(ex["query"].startswith("what about") for ex in out)
    assert json.loads(stats_path(Path(c.out)).read_text())["examples"] == len(out)


@pytest.mark.parametrize("context", [100_000, 260])
def test_rerank_puts_the_teachers_top1_first(beir, tmp_path, context):
    """The fake teacher prefers longer passages; with a short context the window shrinks and slides."""
    c = cfg(beir, tmp_path, "rerank", n=8, top_k=10, window=10, step=5, passage_words=30)
    teacher = FakeTeacher(bad_every=10**9, hopeless_every=10**9)
    teacher.context_length = context
    run_augment(c, generator=teacher)
    out = rows(c.out)
    assert len(out) == 8
    lengths = {r["_id"]: len(f"{r['title']} {r['text']}") for r in corpus_rows(40)}
    for ex in out:
        cands = ex["retriever_ids"]
        assert ex["positive_ids"] == [max(cands, key=lambda d: (lengths[d], -cands.index(d)))]
        assert len(ex["negative_ids"]) == len(cands) - 3 and ex["positive_ids"][0] not in ex["negative_ids"]
    calls = sum(n for n, _ in teacher.calls)
    assert (calls == 8) == (context == 100_000)  # one prompt per query, or several windows each


def test_triplet_from_the_teacher(beir, tmp_path):
    class Triplets:
        name, context_length, usage = "t", 10_000, Usage()

        def count_tokens(self, p):
            return 1

        def generate(self, prompts, params=None):
            assert prompts[0][-1] == {"role": "assistant", "content": '{"query": "'}  # the JSON's opening is prefilled
            replies = ['q one", "positive": "a", "negative": "b"}', "no json"] * len(prompts)
            return [Generation(r, 1, 1) for r in replies[: len(prompts)]]

    c = cfg(beir, tmp_path, "triplet", n=6, retries=0)
    stats = run_augment(c, generator=Triplets())
    assert stats["examples"] == 3 and stats["skipped"] == 3 and stats["invalid_generations"] == 3
    assert rows(c.out)[0] | {"id": 0, "source_doc": 0} == {
        "query": "q one", "positives": ["a"], "negatives": ["b"], "strategy": "triplet", "teacher": "t",
        "retriever": None, "prompt_version": "drama-v2", "data": str(beir), "id": 0, "source_doc": 0}  # fmt: skip


def test_token_budget_stops_cleanly(beir, tmp_path):
    c = cfg(beir, tmp_path, "qgen", n=20)
    teacher = FakeTeacher(bad_every=10**9, hopeless_every=10**9)
    teacher.usage = Usage(budget=1)
    stats = run_augment(c, generator=teacher)
    assert 0 < stats["examples"] < 20  # the first batch is written, then the budget stops the run


def _script(beir, out, *extra):
    return [sys.executable, str(SCRIPTS / "fake_teacher.py"), str(beir), str(out), "qgen", *map(str, extra)]


def test_resume_after_sigkill_neither_duplicates_nor_loses(beir, tmp_path):
    straight, killed = tmp_path / "straight.jsonl", tmp_path / "killed.jsonl"
    subprocess.run(_script(beir, straight), check=True, capture_output=True, timeout=120)
    proc = subprocess.Popen(_script(beir, killed, "--sleep", "0.4"), stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 60
    while time.time() < deadline and len(rows(killed)) + len(rows(skipped_path(killed))) < 6:
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done_before = len(rows(killed)) + len(rows(skipped_path(killed)))
    assert 6 <= done_before < 30, "the run was not killed mid-way"
    subprocess.run(_script(beir, killed), check=True, capture_output=True, timeout=120)
    for a, b in [(straight, killed), (skipped_path(straight), skipped_path(killed))]:
        ra, rb = rows(a), rows(b)
        assert len({r["id"] for r in rb}) == len(rb)  # no duplicates
        assert sorted(ra, key=lambda r: r["id"]) == sorted(rb, key=lambda r: r["id"])  # nothing lost or changed
    assert len(rows(killed)) + len(rows(skipped_path(killed))) == 30


def test_cli_qgen_with_a_real_tiny_model(beir, tmp_path, llama_dir):
    out = tmp_path / "cli.jsonl"
    cmd = [sys.executable, "-m", "irlm.cli", "augment", "--strategy", "qgen", "--data", str(beir), "--out", str(out),
           "--teacher", str(llama_dir), "--n", "4", "--set", "max_new_tokens=8", "--set", "retries=1"]  # fmt: skip
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    stats = json.loads(res.stdout.strip().splitlines()[-1])
    assert stats["examples"] + stats["skipped"] == 4
    assert stats["this_run"]["completion_tokens"] > 0 and stats["this_run"]["completion_tokens_per_s"] > 0
    assert all(ex["teacher"] == str(llama_dir) for ex in rows(out))
