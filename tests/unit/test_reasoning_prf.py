"""The keyword teacher without an LLM (irlm/methods/reasoning/prf.py): salient words of the feedback documents."""

from __future__ import annotations

import json
import math

import pytest

from irlm.errors import InputError
from irlm.methods.reasoning.prf import PRFTeacher

CORPUS = {"d1": "Red apples and green apples", "d2": "green pears", "d3": "blue sky 1999"}
AVGDL = (5 + 2 + 3) / 3  # words per document, stopwords included


def bm25_weight(tf: int, df: int, length: int) -> float:
    idf = math.log(1 + (3 - df + 0.5) / (df + 0.5))
    return idf * tf * 1.9 / (tf + 0.9 * (0.6 + 0.4 * length / AVGDL))


def test_positive_feedback_weighs_the_positives_words_by_bm25():
    """The positive's words, not the query's, not stopwords, heaviest first, as first written."""
    words, weights, docs = PRFTeacher(CORPUS, "prf-positive").keywords("q", "apples", positive_id="d1")
    assert docs == ["d1"] and words == ["Red", "green"]  # "apples" is the query's, "and" a stopword
    assert weights["Red"] == pytest.approx(bm25_weight(1, 1, 5), abs=1e-4)
    assert weights["green"] == pytest.approx(bm25_weight(1, 2, 5), abs=1e-4)


def test_bm25_feedback_takes_bm25s_top_documents():
    """BM25's top 2 for "green" are d1 and d2 (not d3); words of both, weights summed over them."""
    teacher = PRFTeacher(CORPUS, "prf-bm25", depth=2)
    words, weights, docs = teacher.keywords("q", "green")
    assert sorted(docs) == ["d1", "d2"]
    assert words == ["apples", "pears", "Red"]  # apples twice in d1; pears in the short d2; "blue" never
    assert weights["apples"] == pytest.approx(bm25_weight(2, 1, 5), abs=1e-4)
    assert weights["pears"] == pytest.approx(bm25_weight(1, 1, 2), abs=1e-4)
    assert teacher.keywords("q", "green") == (words, weights, docs)  # deterministic


def test_words_without_a_letter_and_the_cap():
    assert PRFTeacher(CORPUS, "prf-positive").keywords("q", "sky", "d3")[0] == ["blue"]  # not "1999"
    assert PRFTeacher(CORPUS, "prf-bm25", depth=2, max_keywords=1).keywords("q", "green")[0] == ["apples"]


def test_bad_prf_settings_are_refused():
    with pytest.raises(InputError, match="PRF teacher must be one of"):
        PRFTeacher(CORPUS, "prf-llm")
    with pytest.raises(InputError, match="prf_docs must be at least 1"):
        PRFTeacher(CORPUS, "prf-bm25", depth=0)
    with pytest.raises(InputError, match="positive 'd9' is not in the corpus"):
        PRFTeacher(CORPUS, "prf-positive").keywords("q", "apples", "d9")


def test_the_prf_teacher_writes_the_llm_teachers_rows(toy_beir, tmp_path):
    """Selected by `teacher`, as an LLM is; one row per query with the same provenance fields (plus the
    feedback documents), the keywords from those documents; the same file twice over; resumes; a file
    of another teacher's rows is refused rather than mixed."""
    from irlm.methods.reasoning.config import ReasoningConfig
    from irlm.methods.reasoning.train import train

    common = {"data": str(toy_beir), "train_split": "test", "stage": "data", "prf_docs": 1}
    made = train(ReasoningConfig(teacher="prf-positive", reasoning_file=str(tmp_path / "a.jsonl"), **common))
    rows = [json.loads(line) for line in open(tmp_path / "a.jsonl")]
    assert made["examples"] == made["this_run"] == 3
    assert {"query_id", "query", "positive_id", "positive", "reasoning", "raw", "teacher", "prompt_version",
            "feedback"} <= set(rows[0])  # fmt: skip
    assert all(r["teacher"] == "prf-positive" and r["prompt_version"] == "prf-v1" for r in rows)
    q1 = next(r for r in rows if r["query_id"] == "q1")  # "why do dogs bark", positive d2 (its "Dogs" is the query's word)
    assert q1["feedback"] == ["d2"] and set(q1["reasoning"].split(", ")) == {"loudly", "every", "postman", "morning"}
    assert q1["raw"].split("; ")[0].split(" ")[0] == q1["reasoning"].split(", ")[0]  # raw: words and weights
    again = train(ReasoningConfig(teacher="prf-positive", reasoning_file=str(tmp_path / "b.jsonl"), **common))
    assert again["examples"] == 3 and (tmp_path / "b.jsonl").read_text() == (tmp_path / "a.jsonl").read_text()
    assert train(ReasoningConfig(teacher="prf-positive", reasoning_file=str(tmp_path / "a.jsonl"),
                                 **common))["this_run"] == 0  # fmt: skip
    bm25 = train(ReasoningConfig(teacher="prf-bm25", reasoning_file=str(tmp_path / "c.jsonl"), **common))
    rows = {json.loads(line)["query_id"]: json.loads(line) for line in open(tmp_path / "c.jsonl")}
    assert bm25["examples"] == 3 and rows["q3"]["feedback"] == ["d4"]  # BM25's top for "baking sourdough bread"
    with pytest.raises(InputError, match="holds rows of teacher prf-bm25"):
        train(ReasoningConfig(teacher="prf-positive", reasoning_file=str(tmp_path / "c.jsonl"), **common))
