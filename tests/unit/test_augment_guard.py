"""`irlm augment` settings and its output file: a value that would run silently wrong is refused, and an
output file of another dataset or strategy is never appended to (a rerun of the same one resumes)."""

from __future__ import annotations

import json

import pytest

from irlm.errors import InputError
from irlm.methods.drama.augment import check_same_source
from irlm.methods.drama.config import AugmentConfig


@pytest.mark.parametrize("setting, words", [
    ({"top_k": -1}, "top_k must be at least 1, got -1"),
    ({"n": 0}, "n must be at least 1"),
    ({"batch_size": 0}, "batch_size must be at least 1"),
    ({"window": 1}, "window must be at least 2"),
    ({"retries": -1}, "retries must be at least 0"),
    ({"token_budget": 0}, "token_budget must be at least 1"),
    ({"temperature": -0.5}, "temperature must be between 0 and 2"),
    ({"strategy": "nope"}, "strategy: unknown value 'nope'"),
])  # fmt: skip
def test_a_setting_out_of_range_is_refused(setting, words):
    with pytest.raises(InputError, match=words):
        AugmentConfig(**setting)


def test_the_defaults_are_valid():
    AugmentConfig()
    AugmentConfig(token_budget=None, max_new_tokens=0, retries=0)


def example(data: str, strategy: str = "crop") -> str:
    return json.dumps({"query": "q", "positives": ["d1"], "negatives": [], "strategy": strategy, "data": data,
                       "id": "d1"}) + "\n"  # fmt: skip


def test_another_datasets_output_is_refused_and_the_same_resumes(tmp_path):
    out = tmp_path / "crop.jsonl"
    check_same_source(out, AugmentConfig(data="scifact", out=str(out)))  # nothing there yet
    out.write_text(example("scifact"))
    check_same_source(out, AugmentConfig(data="scifact", out=str(out)))  # a rerun resumes
    with pytest.raises(InputError, match="already holds examples made with data 'scifact'; this run has data 'nq'"):
        check_same_source(out, AugmentConfig(data="nq", out=str(out)))
    with pytest.raises(InputError, match="strategy 'crop'"):
        check_same_source(out, AugmentConfig(data="scifact", strategy="qgen", out=str(out)))
    assert out.read_text() == example("scifact")


def test_an_output_of_only_skipped_units_is_judged_by_its_stats(tmp_path):
    out = tmp_path / "qgen.jsonl"
    (tmp_path / "qgen.stats.json").write_text(json.dumps({"config": {"data": "scifact", "strategy": "qgen"}}))
    with pytest.raises(InputError, match="data 'scifact'"):
        check_same_source(out, AugmentConfig(data="nq", strategy="qgen", out=str(out)))
