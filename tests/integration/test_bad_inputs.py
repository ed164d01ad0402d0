"""A table of bad inputs run through the real `irlm` command: each must exit non-zero with one line that
names the problem, print no traceback, and leave the files it was pointed at as they were."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml
from conftest import TOY_CORPUS, TOY_QRELS, TOY_QUERIES, write_beir

from irlm.index import BM25Index, DenseIndex


@pytest.fixture(scope="module")
def ws(tmp_path_factory) -> Path:
    """A workspace: a toy dataset, a BM25 and a dense index, a run file, a plain file and a plain folder."""
    root = tmp_path_factory.mktemp("bad-inputs")
    write_beir(root / "toy", TOY_CORPUS, TOY_QUERIES, TOY_QRELS)
    bm25 = BM25Index()
    bm25.add([d["_id"] for d in TOY_CORPUS], [d["text"] for d in TOY_CORPUS])
    bm25.save(root / "bm25")
    for backend in ("exact", "hnsw"):
        dense = DenseIndex(4, backend, meta={"encoder": {"model": "unused"}})
        dense.add([d["_id"] for d in TOY_CORPUS], np.random.default_rng(0).normal(size=(5, 4)).astype(np.float32))
        dense.save(root / backend)
    (root / "a.trec").write_text("q1 Q0 d1 1 2.0 t\n")
    (root / "plain.txt").write_text("not a folder")
    (root / "folder").mkdir()
    (root / "bad-syntax.yaml").write_text("steps: [1, 2\nlr: 1\n")
    (root / "wrong-type.yaml").write_text("batch_size: [1, 2]\n")
    (root / "badmodel").mkdir()
    (root / "badmodel" / "config.json").write_text('{"model_type": "nosuch", "hidden_size": 8}')
    other = {"query": "q", "positives": ["x1"], "negatives": [], "strategy": "crop", "data": "scifact", "id": "x1"}
    (root / "aug-other.jsonl").write_text(json.dumps(other) + "\n")  # examples of another dataset
    return root


def recipe(ws: Path, name: str, stages: list[dict]) -> Path:
    path = ws / f"{name}.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(ws / f"run-{name}"), "stages": stages}))
    return path


def damage(ws: Path, backend: str, file: str, how) -> Path:
    """A copy of a saved index with one file damaged by `how(path)`."""
    import shutil

    folder = ws / f"damaged-{backend}-{file.replace('/', '-')}-{how.__name__}"
    if not folder.exists():
        shutil.copytree(ws / backend, folder)
        how(folder / file)
    return folder


def truncate(p: Path):
    p.write_bytes(p.read_bytes()[: len(p.read_bytes()) // 2])


def empty(p: Path):
    p.write_bytes(b"")


def remove(p: Path):
    p.unlink()


def pickled(p: Path):
    np.save(p, np.array([{"a": 1}], dtype=object), allow_pickle=True)


def wrong_dim(p: Path):
    np.save(p, np.zeros((5, 3), np.float32))


def flip_byte(p: Path):
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 0xFF
    p.write_bytes(bytes(data))


def drop_last_line(p: Path):
    p.write_text("".join(p.read_text().splitlines(keepends=True)[:-1]))


def bad_json_line(p: Path):
    p.write_text(p.read_text() + "{not json\n")


CASES = {  # id -> (arguments, with {ws} for the workspace; words the one error line must hold)
    "search k negative": ("search --index {ws}/bm25 -q cats --k -5", "--k must be at least 1"),
    "search k zero": ("search --index {ws}/bm25 -q cats --k 0", "--k must be at least 1"),
    "search unknown split": ("search --index {ws}/bm25 --data {ws}/toy --split nosuch --out {ws}/r.trec",
                             "no split 'nosuch'"),
    "search out is a folder": ("search --index {ws}/bm25 --data {ws}/toy --out {ws}/folder", "is a folder"),
    "eval k zero": ("eval --data {ws}/toy --k 0", "--k must be at least 1"),
    "eval unknown retriever": ("eval --data {ws}/toy --retriever nope", "--retriever: unknown value 'nope'"),
    "eval unknown fusion": ("eval --data {ws}/toy --retriever hybrid --fusion nope", "--fusion: unknown value"),
    "eval weight out of range": ("eval --data {ws}/toy --retriever hybrid --fusion weighted --weight 7",
                                 "--weight must be between 0 and 1"),
    "eval weight with rrf": ("eval --data {ws}/toy --retriever hybrid --weight 0.3",
                             "--weight applies to --fusion weighted"),
    "eval fusion on bm25": ("eval --data {ws}/toy --fusion weighted", "apply to --retriever hybrid, not 'bm25'"),
    "index weight on dense": ("index --data {ws}/toy --out {ws}/i --retriever dense --weight 0.4",
                              "apply to --retriever hybrid, not 'dense'"),
    "eval unknown dtype": ("eval --data {ws}/toy --retriever dense --dtype fp8", "--dtype: unknown value 'fp8'"),
    "eval absent cuda device": ("eval --data {ws}/toy --device cuda:99", "CUDA device(s)"),
    "eval unknown device": ("eval --data {ws}/toy --device gpu", "unknown device 'gpu'"),
    "eval out-run onto a folder": ("eval --data {ws}/toy --out-run {ws}/folder", "is a folder"),
    "eval out-run under a file": ("eval --data {ws}/toy --out-run {ws}/plain.txt/r.trec", "which is a file"),
    "eval missing run file": ("eval --data {ws}/toy --run {ws}/missing.trec", "no such file"),
    "fuse missing run file": ("fuse {ws}/missing.trec --out {ws}/f.trec", "no such file"),
    "fuse unknown method": ("fuse {ws}/a.trec {ws}/a.trec --method nope --out {ws}/f.trec", "--method: unknown"),
    "fuse weight count": ("fuse {ws}/a.trec {ws}/a.trec --method weighted --weights 1 --out {ws}/f.trec",
                          "1 weight(s) for 2 run(s)"),
    "fuse negative weight": ("fuse {ws}/a.trec {ws}/a.trec --method weighted --weights 1,-1 --out {ws}/f.trec",
                             "non-negative"),
    "encode unknown backend": ("encode --data {ws}/toy --out {ws}/e --backend nope", "--backend: unknown value"),
    "encode batch size zero": ("encode --data {ws}/toy --out {ws}/e --batch-size 0", "--batch-size must be at least 1"),
    "index unknown retriever": ("index --data {ws}/toy --out {ws}/i --retriever nope", "--retriever: unknown"),
    "index unknown backend": ("index --data {ws}/toy --out {ws}/i --retriever dense --backend nope",
                              "--backend: unknown"),
    "index embeddings from bm25": ("index --embeddings {ws}/bm25 --out {ws}/i --backend flat", "'bm25' index"),
    "serve port out of range": ("serve --index {ws}/bm25 --port 99999", "--port must be between 1 and 65535"),
    "serve-llm batch size zero": ("serve-llm --batch-size 0", "--batch-size must be at least 1"),
    "serve-llm max tokens zero": ("serve-llm --max-tokens 0", "--max-tokens must be at least 1"),
    "train missing config": ("train anchor --config {ws}/missing.yaml", "no such file"),
    "train yaml syntax": ("train anchor --config {ws}/bad-syntax.yaml", "bad-syntax.yaml:2: YAML syntax error"),
    "train wrong type": ("train anchor --config {ws}/wrong-type.yaml", "setting batch_size: expected int"),
    "run missing recipe": ("run {ws}/missing.yaml", "no recipe at"),
    "augment negative top_k": ("augment --strategy crop --data {ws}/toy --out {ws}/aug.jsonl --set top_k=-1",
                               "setting top_k must be at least 1, got -1"),
    "augment zero batch": ("augment --strategy crop --data {ws}/toy --out {ws}/aug.jsonl --set batch_size=0",
                           "setting batch_size must be at least 1"),
    "augment unknown strategy": ("augment --strategy nope --data {ws}/toy --out {ws}/aug.jsonl",
                                 "strategy: unknown value 'nope'"),
    "augment onto another dataset": ("augment --strategy crop --data {ws}/toy --out {ws}/aug-other.jsonl",
                                     "already holds examples made with data 'scifact'"),
    "encode unknown model_type": ("encode --data {ws}/toy --out {ws}/e --model {ws}/badmodel",
                                  "config.json: unknown model_type 'nosuch'"),
    "eval unknown model_type": ("eval --data {ws}/toy --retriever dense --model {ws}/badmodel",
                                "unknown model_type 'nosuch'"),
    "run yaml syntax": ("run {ws}/bad-syntax.yaml", "YAML syntax error"),
}  # fmt: skip


def run_cli(args: list[str]):
    return subprocess.run([sys.executable, "-c", "from irlm.cli import run; run()", *args], capture_output=True,
                          text=True, timeout=600)  # fmt: skip


def assert_one_line(out, words: str) -> None:
    """Non-zero exit, no traceback, and stderr is one line: the error, naming the problem."""
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode != 0, out.stderr
    assert "Traceback" not in out.stderr and len(lines) == 1, out.stderr
    assert lines[0].startswith("error:") and words in lines[0], lines[0]


@pytest.mark.parametrize("case", CASES)
def test_bad_option_is_one_line(ws, case):
    args, words = CASES[case]
    assert_one_line(run_cli(args.format(ws=ws).split()), words)
    assert not (ws / "e").exists() and not (ws / "i").exists() and (ws / "plain.txt").read_text() == "not a folder"
    assert not (ws / "aug.jsonl").exists() and len((ws / "aug-other.jsonl").read_text().splitlines()) == 1


DAMAGED = {  # id -> (index, file, damage, words)
    "dense meta not json": ("exact", "meta.json", truncate, "meta.json: not valid JSON"),
    "dense ids missing": ("exact", "ids.json", remove, "ids.json: missing"),
    "dense ids short": ("exact", "ids.json", lambda p: p.write_text('["d1"]'), "ids.json: 1 ids"),
    "dense vectors truncated": ("exact", "vectors.npy", truncate, "vectors.npy: not a plain .npy"),
    "dense vectors empty": ("exact", "vectors.npy", empty, "vectors.npy: empty file"),
    "dense vectors pickled": ("exact", "vectors.npy", pickled, "vectors.npy:"),
    "dense vectors wrong dim": ("exact", "vectors.npy", wrong_dim, "vectors.npy: shape 5x3, expected 5x4"),
    "hnsw graph altered": ("hnsw", "faiss.npy", flip_byte, "faiss.npy: checksum differs"),
    "hnsw graph empty": ("hnsw", "faiss.npy", empty, "faiss.npy: empty file"),
    "bm25 texts short": ("bm25", "texts.jsonl", drop_last_line, "texts.jsonl: 4 documents"),
    "bm25 texts bad line": ("bm25", "texts.jsonl", bad_json_line, "texts.jsonl:6: not valid JSON"),
    "bm25 array missing": ("bm25", "bm25s/data.csc.index.npy", remove, "data.csc.index.npy: missing"),
    "bm25 params altered": ("bm25", "bm25s/params.index.json", lambda p: p.write_text('{"num_docs": 9}'),
                            "num_docs 9"),
}  # fmt: skip


@pytest.mark.parametrize("case", DAMAGED)
def test_damaged_index_is_one_line(ws, case):
    backend, file, how, words = DAMAGED[case]
    folder = damage(ws, backend, file, how)
    out = run_cli(["search", "--index", str(folder), "-q", "cats"])
    assert_one_line(out, words)
    assert f"index {folder} is damaged:" in out.stderr or "meta.json" in words


RECIPES = {  # id -> (stages, words)
    "stage escapes run_dir": ([{"name": "../victim", "kind": "report"}], "must be letters, digits"),
    "typo in eval stage": ([{"name": "e", "kind": "eval", "retreiver": "dense"}],
                           "unknown key 'retreiver'; did you mean 'retriever'?"),
    "typo in data stage": ([{"name": "d", "kind": "data", "nmaes": ["scifact"]}], "did you mean 'names'?"),
    "typo in index stage": ([{"name": "i", "kind": "index", "modle": "x"}], "did you mean 'model'?"),
    "key in report stage": ([{"name": "r", "kind": "report", "format": "html"}], "unknown key 'format'"),
    "typo in augment stage": ([{"name": "a", "kind": "augment", "top_kk": 3}], "did you mean 'top_k'?"),
    "typo in prune stage": ([{"name": "p", "kind": "prune", "layres": 3}], "did you mean 'layers'?"),
    "typo in pretrain stage": ([{"name": "p", "kind": "pretrain", "stesp": 3}], "did you mean 'steps'?"),
    "unknown train setting": ([{"name": "t", "kind": "train", "method": "anchor", "stpes": 3}], "stpes"),
    "typo in drama train stage": ([{"name": "t", "kind": "train", "method": "drama", "augment_file": []}],
                                  "did you mean 'augment_files'?"),
    "augment stage negative top_k": ([{"name": "a", "kind": "augment", "top_k": -1}],
                                     "setting top_k must be at least 1"),
    "eval stage wrong type": ([{"name": "e", "kind": "eval", "retriever": ["bm25"]}],
                              "setting retriever: expected str, got list"),
    "eval stage unknown retriever": ([{"name": "e", "kind": "eval", "retriever": "nope"}],
                                     "retriever: unknown value 'nope'"),
    "index stage unknown device": ([{"name": "i", "kind": "index", "device": "gpu"}], "unknown device 'gpu'"),
    "a later stage's typo fails first": ([{"name": "e", "kind": "eval", "data": "{ws}/toy"},
                                          {"name": "t", "kind": "train", "method": "anchor", "stpes": 3}], "stpes"),
    "eval stage k zero": ([{"name": "e", "kind": "eval", "data": "{ws}/toy", "k": 0}], "k must be a whole number"),
    "recipe is a list": ("- a\n- b\n", "a recipe is a mapping"),
    "typo in recipe key": ("run_dri: x\nstages: [{name: r, kind: report}]\n", "did you mean 'run_dir'?"),
}  # fmt: skip


@pytest.mark.parametrize("case", RECIPES)
def test_bad_recipe_is_one_line(ws, case):
    stages, words = RECIPES[case]
    if isinstance(stages, str):
        path = ws / f"{case.replace(' ', '-')}.yaml"
        path.write_text(stages)
    else:
        path = recipe(ws, case.replace(" ", "-"), json.loads(json.dumps(stages).replace("{ws}", str(ws))))
    assert_one_line(run_cli(["run", str(path)]), words)
    assert json.loads((ws / "bm25" / "meta.json").read_text())["kind"] == "bm25"
    assert not (ws / f"run-{case.replace(' ', '-')}" / "state.json").exists()  # refused before any stage ran


@pytest.mark.parametrize("command", ["serve --index {ws}/bm25", "serve-llm --model {ws}/badmodel"])
def test_an_empty_api_key_refuses_to_start(ws, command):
    import os

    args = command.format(ws=ws).split()
    env = {**os.environ, "IRLM_API_KEY": "  "}
    out = subprocess.run([sys.executable, "-c", "from irlm.cli import run; run()", *args], capture_output=True,
                         text=True, timeout=120, env=env)  # fmt: skip
    assert_one_line(out, "$IRLM_API_KEY is set but empty")
