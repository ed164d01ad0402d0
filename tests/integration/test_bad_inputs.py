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
    from irlm.index.retrievers import BM25Retriever, HybridRetriever

    HybridRetriever([BM25Retriever(bm25), BM25Retriever(bm25)], "weighted", [0.5, 0.5]).save(root / "hybrid")
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


def edit_json(**fields):
    """A damage that sets `fields` in a JSON file; named after them, so each case gets its own damaged copy."""

    def edit(p: Path):
        p.write_text(json.dumps({**json.loads(p.read_text()), **fields}))

    edit.__name__ = "set-" + "-".join(f"{k}={v}" for k, v in fields.items())
    return edit


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
    "eval absent cuda device": ("eval --data {ws}/toy --retriever dense --device cuda:99", "CUDA device(s)"),
    "eval unknown device": ("eval --data {ws}/toy --retriever dense --device gpu", "unknown device 'gpu'"),
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
    # flags the chosen mode would ignore: refused, not silently dropped
    "eval dtype on a bm25 index": ("eval --data {ws}/toy --index {ws}/bm25 --dtype fp32",
                                   "bm25 system without a dense encoder, so dtype cannot apply"),
    "eval dtype on a hybrid of bm25": ("eval --data {ws}/toy --index {ws}/hybrid --dtype fp32",
                                       "hybrid system without a dense encoder"),
    "eval retriever with index": ("eval --data {ws}/toy --index {ws}/bm25 --retriever dense",
                                  "--retriever does not apply with --index"),
    "eval model with index": ("eval --data {ws}/toy --index {ws}/bm25 --model x", "--model does not apply with --index"),
    "eval k with run": ("eval --data {ws}/toy --run {ws}/a.trec --k 5", "--k does not apply with --run"),
    "eval dtype with run": ("eval --data {ws}/toy --run {ws}/a.trec --dtype fp32", "--dtype does not apply with --run"),
    "eval dtype on bm25": ("eval --data {ws}/toy --dtype fp32", "--dtype does not apply to --retriever bm25"),
    "eval model on bm25": ("eval --data {ws}/toy --model minilm-l6", "--model does not apply to --retriever bm25"),
    "eval dtype on reasoning": ("eval --data {ws}/toy --retriever reasoning --dtype fp32",
                                "--dtype does not apply to --retriever reasoning"),
    "index backend on bm25": ("index --data {ws}/toy --out {ws}/i --retriever bm25 --backend int8",
                              "--backend does not apply to --retriever bm25"),
    "index model on bm25": ("index --data {ws}/toy --out {ws}/i --model minilm-l6",
                            "--model does not apply to --retriever bm25"),
    "index data with embeddings": ("index --embeddings {ws}/exact --data {ws}/toy --out {ws}/i --backend flat",
                                   "--data does not apply with --embeddings"),
    "encode max length negative": ("encode --data {ws}/toy --out {ws}/e --max-length -1",
                                   "--max-length must be at least 1, got -1"),
    "encode max length zero": ("encode --data {ws}/toy --out {ws}/e --max-length 0",
                               "--max-length must be at least 1, got 0"),
    "encode pooling token without a pool token": ("encode --data {ws}/toy --out {ws}/e --pooling token",
                                                  "pooling 'token' needs pool_token"),
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
    "hybrid parts zero": ("hybrid", "meta.json", edit_json(parts=0),
                          "meta.json: 'parts' must be a whole number of at least 1, got 0"),
    "hybrid parts a string": ("hybrid", "meta.json", edit_json(parts="2"), "got '2'"),
    "hybrid weights short": ("hybrid", "meta.json", edit_json(weights=[1.0]),
                             "'weights' must be a list of 2 numbers"),
    "hybrid depth a string": ("hybrid", "meta.json", edit_json(depth="all"), "'depth' must be"),
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


BAD_LINES = {  # id -> (file, the line added to a copy of the toy dataset, command, words of the error)
    "lone surrogate in a document id": ("corpus.jsonl", '{"_id": "d\\ud800", "text": "x"}', "index",
                                        "corpus.jsonl:6: field '_id' must be non-empty"),
    "lone surrogate in a text": ("corpus.jsonl", '{"_id": "d9", "text": "x \\udc80"}', "index",
                                 "corpus.jsonl:6: field 'text' has a lone surrogate"),
    "lone surrogate in a title": ("corpus.jsonl", '{"_id": "d9", "title": "\\ud800", "text": "x"}', "index",
                                  "corpus.jsonl:6: field 'title' has a lone surrogate"),
    "lone surrogate in a query id": ("queries.jsonl", '{"_id": "q\\ud800", "text": "x"}', "search",
                                     "queries.jsonl:4: field '_id'"),
    "lone surrogate in a query": ("queries.jsonl", '{"_id": "q9", "text": "dogs \\ud800"}', "search",
                                  "queries.jsonl:4: field 'text' has a lone surrogate"),
    "escape sequence in an id": ("corpus.jsonl", '{"_id": "d\\u001b[2J", "text": "x"}', "index",
                                 "has a control character"),
    "newline in a query id": ("queries.jsonl", '{"_id": "q1 Q0 d1 1 9 forged\\nq2", "text": "x"}', "search",
                              "has whitespace"),
    "JSON nested 100,000 deep": ("corpus.jsonl", "[" * 100_000 + "]" * 100_000, "index",
                                 "corpus.jsonl:6: malformed JSON (nested too deeply)"),
}  # fmt: skip
COMMANDS = {"index": "index --data {data} --out {ws}/i", "search": "search --index {ws}/bm25 --data {data} --out {ws}/r.trec"}


@pytest.mark.parametrize("case", BAD_LINES)
def test_a_bad_line_in_a_dataset_is_one_line_and_writes_nothing(ws, case):
    import shutil

    file, line, command, words = BAD_LINES[case]
    data = ws / f"data-{case.replace(' ', '-')}"
    if not data.exists():
        shutil.copytree(ws / "toy", data)
        with open(data / file, "a", encoding="utf-8") as f:
            f.write(line + "\n")
    assert_one_line(run_cli(COMMANDS[command].format(ws=ws, data=data).split()), words)
    assert not (ws / "i").exists() and not (ws / "r.trec").exists()


def test_search_escapes_control_characters_in_the_ids_it_prints(ws, tmp_path):
    """An index from before the id rule may hold an id with an escape sequence: printed escaped, not sent."""
    import shutil

    folder = tmp_path / "old-index"
    shutil.copytree(ws / "bm25", folder)
    texts = folder / "texts.jsonl"
    texts.write_text(texts.read_text().replace('"d2"', '"d2\\u001b[2J\\u0007"'))
    out = run_cli(["search", "--index", str(folder), "-q", "dogs bark"])
    assert out.returncode == 0, out.stderr
    assert "\x1b" not in out.stdout and "\x07" not in out.stdout
    assert out.stdout.splitlines()[0] == "1\td2\\x1b[2J\\x07\t" + out.stdout.splitlines()[0].split("\t")[2]


def test_a_quoted_tilde_in_out_is_the_home_folder_not_a_folder_named_tilde(ws, tmp_path):
    import os

    home = tmp_path / "home"
    home.mkdir()
    args = ["index", "--data", str(ws / "toy"), "--out", "~/bm25-here"]
    out = subprocess.run([sys.executable, "-c", "from irlm.cli import run; run()", *args], capture_output=True,
                         text=True, timeout=300, cwd=tmp_path, env={**os.environ, "HOME": str(home)})  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (home / "bm25-here" / "meta.json").is_file() and not (tmp_path / "~").exists()


def test_bm25_is_quiet_unless_verbose(ws, tmp_path):
    """bm25s' seven progress bars and its DEBUG line only with -v: a default run prints its own line alone."""
    out = run_cli(["index", "--data", str(ws / "toy"), "--out", str(tmp_path / "quiet")])
    # rich may wrap the line at 80 columns: compared word by word
    assert out.returncode == 0 and out.stderr.split() == ["saved", "bm25", "index", "to", str(tmp_path / "quiet")]
    loud = run_cli(["-v", "index", "--data", str(ws / "toy"), "--out", str(tmp_path / "loud")])
    assert loud.returncode == 0 and "Building index from tokens" in loud.stderr and "BM25S" in loud.stderr


def test_dtype_applies_to_a_saved_dense_system(ws, bert_dir, tmp_path):
    """`irlm eval --index X --dtype fp32` loads X's encoder in fp32, not in the dtype it was saved with."""
    import torch
    from conftest import TOY_CORPUS

    from irlm.index.retrievers import DenseRetriever
    from irlm.models.encoder import LLMEncoder
    from irlm.systems import load_retriever
    from irlm.types import Corpus, Document

    corpus = Corpus([Document(d["_id"], d["text"]) for d in TOY_CORPUS])
    DenseRetriever.build(corpus, LLMEncoder.from_pretrained(str(bert_dir), dtype="bf16")).save(tmp_path / "dense")
    dtype = lambda system: next(system.encoder.model.parameters()).dtype  # noqa: E731
    assert dtype(load_retriever(tmp_path / "dense")) == torch.bfloat16
    assert dtype(load_retriever(tmp_path / "dense", dtype="fp32")) == torch.float32
    out = run_cli(["eval", "--data", str(ws / "toy"), "--index", str(tmp_path / "dense"), "--dtype", "fp32", "--json"])
    assert out.returncode == 0 and json.loads(out.stdout.splitlines()[-1])["system"] == str(tmp_path / "dense")


BAD_IDS = {"space": "a b", "newline": "d1\nq2", "escape": "d\x1b[2J", "nul": "d\x00", "lone surrogate": "d\ud800",
           "empty": ""}  # fmt: skip


@pytest.mark.parametrize("bad", BAD_IDS.values(), ids=BAD_IDS)
def test_post_documents_refuses_the_ids_the_reader_refuses(ws, tmp_path, bad):
    """The BEIR reader's id rule at the server's door: a 422 naming the field, and the index left as it was."""
    import shutil

    from fastapi.testclient import TestClient

    from irlm.data.beir import ID_RULE
    from irlm.index.retrievers import BM25Retriever
    from irlm.serve import build_app

    folder = tmp_path / "served"
    shutil.copytree(ws / "bm25", folder)
    app = build_app(BM25Retriever.load(folder), api_key_env=None, writable=True, folder=folder)
    before = (folder / "texts.jsonl").read_bytes()
    with TestClient(app) as http:
        body = json.dumps({"documents": [{"id": "fine", "text": "x"}, {"id": bad, "text": "y"}]})  # \ud800 escaped
        r = http.post("/documents", content=body, headers={"content-type": "application/json"})
        assert r.status_code == 422 and r.json()["error"].startswith(f"documents.1.id: {ID_RULE}"), r.text
        r = http.post("/documents", json={"documents": [{"id": "fine", "text": "x"}, {"id": "é/1", "text": "y"}]})
        assert r.status_code == 200 and r.json()["added"] == 2
    assert (folder / "texts.jsonl").read_bytes() != before  # the good request was saved; the bad one was not


def test_post_documents_refuses_a_text_it_could_not_save(ws, tmp_path):
    import shutil

    from fastapi.testclient import TestClient

    from irlm.index.retrievers import BM25Retriever
    from irlm.serve import build_app

    folder = tmp_path / "served"
    shutil.copytree(ws / "bm25", folder)
    app = build_app(BM25Retriever.load(folder), api_key_env=None, writable=True, folder=folder)
    with TestClient(app) as http:
        for doc, field in (({"id": "a", "text": "x \ud800"}, "text"), ({"id": "a", "text": "x", "title": "\udc80"},
                                                                      "title")):  # fmt: skip
            r = http.post("/documents", content=json.dumps({"documents": [doc]}),
                          headers={"content-type": "application/json"})  # fmt: skip
            assert r.status_code == 422 and r.json()["error"].startswith(f"documents.0.{field}:"), r.text
        assert http.get("/health").json()["docs"] == 5


RUN_FILES = {  # id -> (file in an irlm-made run directory, its damaged content, command, words)
    "truncated state.json, report": ("state.json", '{"d": ', "report", "state.json:1: malformed JSON"),
    "truncated state.json, run": ("state.json", '{"d": ', "run", "state.json:1: malformed JSON"),
    "state.json a list, report": ("state.json", "[1, 2]", "report", "state.json: expected a JSON object, got list"),
    "state.json a list, run": ("state.json", "[1, 2]", "run", "state.json: expected a JSON object, got list"),
    "torn line in a stage's log.jsonl": ("d/log.jsonl", '{"step": 1, "loss": 1.0}\n{"step": 2, "lo', "report",
                                         "log.jsonl:2: malformed JSON"),
}  # fmt: skip
@pytest.mark.parametrize("case", list(RUN_FILES))
def test_a_damaged_run_directory_is_one_line(ws, tmp_path, case):
    file, content, command, words = RUN_FILES[case]
    path = tmp_path / "cheap.yaml"
    path.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": [
        {"name": "d", "kind": "data", "names": [str(ws / "toy")]}, {"name": "r", "kind": "report"}]}))  # fmt: skip
    assert run_cli(["run", str(path)]).returncode == 0
    (tmp_path / "run" / file).write_text(content)
    args = ["report", str(tmp_path / "run")] if command == "report" else ["run", str(path)]
    assert_one_line(run_cli(args), words)


def test_a_max_length_with_no_room_for_text_is_refused(ws, llama_dir):
    """A decoder appends EOS: --max-length 1 would leave the tokenizer 0 tokens, which it reads as no limit."""
    out = run_cli(["encode", "--data", str(ws / "toy"), "--out", str(ws / "e"), "--model", str(llama_dir),
                   "--max-length", "1"])  # fmt: skip
    # known only once the tokenizer is loaded, after transformers' own "Loading weights" bar: the last line
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert out.stderr.splitlines()[-1] == ("error: encoder setting max_length 1 leaves no room for text after the "
                                           "1 end token(s); give at least 2")  # fmt: skip
    assert not (ws / "e").exists()
