"""Recipes and configs: no YAML anchors or aliases (a 1 KB file of nested aliases once grew past 3 GB, and a
self-referencing one raised RecursionError), a typed `expected:`, and `${name}` references checked against
the stages before any stage runs, naming the stage and the file."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from irlm import pipeline
from irlm.config_files import Expected, load_config, parse_expected, read_yaml
from irlm.errors import InputError
from irlm.methods.anchor import AnchorConfig

RECIPES = sorted(Path(__file__).resolve().parents[2].glob("recipes/*.yaml"))



def laughs(indent: str = "", levels: int = 9) -> str:
    """`expected:` holding nested aliases: nine levels of nine are 9**9 (387 million) strings once expanded."""
    rows = [f'{indent}expected:', f'{indent}  a0: &a0 ["lol"]']
    rows += [f"{indent}  a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, levels + 1)]
    return "\n".join(rows) + "\n"


LAUGHS = "run_dir: runs/x\nstages:\n  - name: a\n    kind: mark\n" + laughs("    ")  # the first anchor: line 6


@pytest.fixture
def marks(monkeypatch):
    ran = []
    monkeypatch.setitem(pipeline.STAGES, "mark", lambda s, folder, run_dir: ran.append(folder.name) or {})
    return ran


def recipe(tmp_path: Path, stages: list, text: str | None = None) -> Path:
    path = tmp_path / "recipe.yaml"
    path.write_text(text or yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": stages}))
    return path


@pytest.mark.parametrize("text, line", [
    (LAUGHS, 6),
    ("stages: &s [*s]\n", 1),  # refers to itself: once a RecursionError
    ("run_dir: runs/x\nstages:\n  - &stage {name: a, kind: mark}\n", 3),  # an anchor alone
    ("run_dir: runs/x\nstages:\n  - {name: a, kind: mark}\n  - {name: b, kind: mark, <<: *x}\n", 4),
])  # fmt: skip
def test_anchors_and_aliases_are_one_line_naming_file_and_line(tmp_path, marks, text, line):
    path = recipe(tmp_path, [], text)
    with pytest.raises(InputError) as e:
        pipeline.run_pipeline(path)
    assert str(e.value).startswith(f"{path}:{line}: YAML anchors (&name) and aliases (*name) are not accepted")
    assert "\n" not in str(e.value) and marks == [] and not (tmp_path / "run").exists()


def test_a_config_file_and_an_override_refuse_aliases_too(tmp_path):
    config = tmp_path / "anchor.yaml"
    config.write_text("data: &d scifact\neval_data: [*d]\n")
    with pytest.raises(InputError, match=f"^{config}:1: YAML anchors"):
        load_config(AnchorConfig, config)
    with pytest.raises(InputError, match="override 'eval_data=&a \\[\\*a\\]': YAML anchors"):
        load_config(AnchorConfig, None, ["eval_data=&a [*a]"])


def test_a_stage_config_file_with_aliases_is_refused_before_any_stage_runs(tmp_path, marks):
    config = tmp_path / "anchor.yaml"
    config.write_text("data: scifact\n" + laughs())
    stages = [{"name": "first", "kind": "mark"}, {"name": "t", "kind": "train", "method": "anchor",
                                                  "config": str(config)}]  # fmt: skip
    with pytest.raises(InputError, match=f"^{config}:3: YAML anchors"):
        pipeline.run_pipeline(recipe(tmp_path, stages))
    assert marks == []


def test_ampersands_and_stars_inside_values_still_read(tmp_path):
    config = tmp_path / "anchor.yaml"
    config.write_text("model: 'Q & A *'\ndata: a&b*\n")
    cfg = load_config(AnchorConfig, config, ["activations=x&y*", "train_file='*starred*'"])
    assert (cfg.model, cfg.data, cfg.activations, cfg.train_file) == ("Q & A *", "a&b*", "x&y*", "*starred*")


def test_every_shipped_recipe_reads_and_its_expected_numbers_are_typed():
    for path in RECIPES:
        values = read_yaml(path)
        parse_expected(values.get("expected"), str(path))
        if "stages" in values:
            pipeline.load_recipe(path)
    reference = read_yaml(Path(__file__).resolve().parents[2] / "recipes" / "reference-scifact.yaml")
    bm25 = next(st for st in reference["stages"] if st["name"] == "bm25")
    assert parse_expected(bm25["expected"]) == [Expected("ndcg@10", "scifact", 0.6762, 0.0005),
                                                Expected("recall@100", "scifact", 0.9127, 0.0005)]  # fmt: skip


def test_expected_forms():
    assert parse_expected({}) == [] and parse_expected(None) == []
    assert parse_expected({"map": 0.3, "nq-open_hits@5": {"value": 0.5, "tolerance": 0.02}}) == [
        Expected("map", None, 0.3, 0.01), Expected("hits@5", "nq-open", 0.5, 0.02)]  # fmt: skip
    listed = [{"metric": "mrr@10", "data": "cranfield", "value": 0.4, "tolerance": 0}]
    assert parse_expected(listed) == [Expected("mrr@10", "cranfield", 0.4, 0.0)]


@pytest.mark.parametrize("raw, words", [
    ({"scifact_ndgc@10": 0.4}, "'scifact_ndgc@10' is not METRIC or DATA_METRIC"),
    ({"scifact_ndcg@10": "high"}, "expected: ndcg@10 must be a number, got 'high'"),
    ({"scifact_ndcg@10": True}, "must be a number"),
    ([{"metric": "ndcg@10"}], "entry 1 needs 'metric' and 'value'"),
    ([{"metric": "ndcg@10", "value": 0.4, "tol": 0.1}], "entry 1 has unknown key 'tol'"),
    ([{"metric": "ndcg@10", "value": 0.4, "tolerance": -0.1}], "tolerance must be at least 0"),
    ([{"metric": "ndcg", "value": 0.4}], "unknown metric 'ndcg'"),
    ([0.4], "entry 1 is not a mapping"),
    ("0.4036", "a mapping {DATA_METRIC: value} or a list"),
])  # fmt: skip
def test_a_bad_expected_is_one_line_naming_the_file_before_any_stage_runs(tmp_path, marks, raw, words):
    path = recipe(tmp_path, [{"name": "a", "kind": "mark"}, {"name": "b", "kind": "eval", "expected": raw}])
    with pytest.raises(InputError) as e:
        pipeline.run_pipeline(path)
    assert str(e.value).startswith(f"{path}: stage 'b'") and words in str(e.value) and marks == []
    config = tmp_path / "anchor.yaml"
    config.write_text(yaml.safe_dump({"data": "scifact", "expected": raw}))
    with pytest.raises(InputError, match=f"^{config}: expected"):
        load_config(AnchorConfig, config)


def test_expectations_of_a_recipe_come_from_its_stages_and_their_config_files(tmp_path):
    tiny = tmp_path / "anchor.yaml"
    tiny.write_text("data: scifact\nexpected: {scifact_ndcg@10: 0.4036, cranfield_ndcg@10: 0.1506}\n")
    stages = [{"name": "bm25", "kind": "eval", "data": "scifact", "expected": {"scifact_ndcg@10": 0.6762}},
              {"name": "anchor", "kind": "train", "method": "anchor", "config": str(tiny)},
              {"name": "report", "kind": "report"}]  # fmt: skip
    got = pipeline.expectations(recipe(tmp_path, stages))
    assert got == {"bm25": [Expected("ndcg@10", "scifact", 0.6762)],
                   "anchor": [Expected("ndcg@10", "scifact", 0.4036), Expected("ndcg@10", "cranfield", 0.1506)]}


@pytest.mark.parametrize("ref, where", [("b", "comes after it"), ("nope", "is not in the recipe")])
def test_a_forward_reference_is_refused_before_any_stage_runs(tmp_path, marks, ref, where):
    stages = [{"name": "first", "kind": "mark"}, {"name": "a", "kind": "mark", "input": f"${{{ref}}}/x"},
              {"name": "b", "kind": "mark"}]  # fmt: skip
    path = recipe(tmp_path, stages)
    with pytest.raises(InputError) as e:
        pipeline.run_pipeline(path)
    assert str(e.value).startswith(f"{path}: stage 'a': '${{{ref}}}' names no earlier stage (stage '{ref}' {where}")
    assert marks == [] and not (tmp_path / "run").exists()


def test_a_stage_may_use_its_own_folder_and_the_earlier_ones(tmp_path, marks):
    stages = [{"name": "a", "kind": "mark"}, {"name": "b", "kind": "mark", "input": "${a}/x", "own": "${b}/y"}]
    pipeline.run_pipeline(recipe(tmp_path, stages))
    assert marks == ["a", "b"]
