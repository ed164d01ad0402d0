"""One registry opens every saved system: core indexes, Self-Retrieval and reasoning models, hybrids of them."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest
import torch
from conftest import cli, same_run

from irlm.data import load_beir
from irlm.errors import InputError
from irlm.index import BM25Retriever, HybridRetriever
from irlm.methods.reasoning.model import ReasoningEmbedder
from irlm.methods.reasoning.retriever import ReasoningRetriever
from irlm.systems import build_retriever, load_retriever, system_kind


@pytest.fixture
def dataset(toy_beir):
    return load_beir(toy_beir)


@pytest.fixture
def reasoning_model(lm_dir, tmp_path):
    """A reasoning model folder: the tiny LM with its <think>/<emb> markers saved, so reloading matches."""
    torch.manual_seed(0)
    grown = ReasoningEmbedder.from_pretrained(str(lm_dir), device="cpu", max_length=48, reasoning_tokens=4)
    assert grown.source is None  # fresh marker rows are random: the base folder would not reproduce them
    grown.save(tmp_path / "reasoner")
    return tmp_path / "reasoner"


def test_a_reasoning_index_saves_and_reopens_through_the_registry(reasoning_model, toy_beir, dataset, tmp_path):
    emb = ReasoningEmbedder.from_pretrained(str(reasoning_model), device="cpu")
    system = ReasoningRetriever.build(dataset.corpus, emb)
    queries = dataset.split_queries("test")
    before = system.search(queries, k=5)
    system.save(tmp_path / "idx")
    assert system_kind(tmp_path / "idx") == "reasoning"
    loaded = load_retriever(tmp_path / "idx", device="cpu")
    assert isinstance(loaded, ReasoningRetriever) and loaded.thinking == "self"
    same_run(loaded.search(queries, k=5), before)
    # the model folder itself opens too, given the corpus to embed, and ranks the same way
    same_run(load_retriever(reasoning_model, "cpu", str(toy_beir)).search(queries, k=5), before)
    with pytest.raises(InputError, match="--data"):
        load_retriever(reasoning_model, "cpu")


def test_thinking_changes_the_query_side_only(reasoning_model, dataset):
    emb = ReasoningEmbedder.from_pretrained(str(reasoning_model), device="cpu")
    thinking, direct = ReasoningRetriever.build(dataset.corpus, emb), ReasoningRetriever.build(dataset.corpus, emb, "none")
    assert direct.think(dataset.split_queries("test")) is None
    assert thinking.index.vectors.tobytes() == direct.index.vectors.tobytes()
    q = dataset.split_queries("test")
    assert thinking.search(q, 5) != direct.search(q, 5)  # greedy thoughts move the query embeddings


def test_an_unsaved_trained_model_cannot_be_named_by_an_index(lm_dir, dataset, tmp_path):
    grown = ReasoningEmbedder.from_pretrained(str(lm_dir), device="cpu", max_length=48, reasoning_tokens=4)
    with pytest.raises(InputError, match="save the reasoning model first"):
        ReasoningRetriever.build(dataset.corpus, grown).save(tmp_path / "idx")
    assert not (tmp_path / "idx").exists()


def test_a_selfretrieval_folder_opens_with_the_corpus_it_memorised(lm_dir, toy_beir, dataset, tmp_path):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from irlm.methods.selfretrieval.config import SelfRetrievalConfig
    from irlm.methods.selfretrieval.retriever import SelfRetriever

    cfg = SelfRetrievalConfig(model=str(lm_dir), data=str(toy_beir), titles=False, assessment=False, passage_beams=2)
    model = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    sr = SelfRetriever(model, AutoTokenizer.from_pretrained(lm_dir), dataset.corpus, cfg)
    sr.save(tmp_path / "sr")
    queries = dataset.split_queries("test")
    before = sr.search(queries, k=3)
    assert json.loads((tmp_path / "sr" / "meta.json").read_text()) == {"kind": "selfretrieval", "data": str(toy_beir)}
    same_run(load_retriever(tmp_path / "sr", "cpu").search(queries, k=3), before)
    (tmp_path / "sr" / "meta.json").unlink()  # a folder saved before manifests: known by selfretrieval.json
    assert system_kind(tmp_path / "sr") == "selfretrieval"
    same_run(load_retriever(tmp_path / "sr", "cpu").search(queries, k=3), before)


def test_a_hybrid_part_may_be_any_saved_system(reasoning_model, dataset, tmp_path):
    from irlm.index import load_retriever as load_core_index

    emb = ReasoningEmbedder.from_pretrained(str(reasoning_model), device="cpu")
    hybrid = HybridRetriever([BM25Retriever.build(dataset.corpus), ReasoningRetriever.build(dataset.corpus, emb)])
    queries = dataset.split_queries("test")
    before = hybrid.search(queries, k=5)
    hybrid.save(tmp_path / "hy")
    loaded = load_retriever(tmp_path / "hy", "cpu")
    assert [type(p) for p in loaded.parts] == [BM25Retriever, ReasoningRetriever]
    same_run(loaded.search(queries, k=5), before)
    with pytest.raises(InputError, match="reasoning"):
        load_core_index(tmp_path / "hy")  # the core alone knows only its own kinds


def test_unknown_and_missing_systems_fail_in_one_line(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        system_kind(tmp_path / "nothing")
    with pytest.raises(InputError, match="no meta.json"):
        system_kind(tmp_path)
    (tmp_path / "meta.json").write_text('{"kind": "colbert"}')
    with pytest.raises(InputError, match="unknown system kind 'colbert'.*selfretrieval"):
        load_retriever(tmp_path)
    with pytest.raises(InputError, match="choose bm25, dense, hybrid, reasoning"):
        build_retriever("colbert", "scifact")


def test_build_retriever_gives_a_reasoning_index_the_backend_asked_for(reasoning_model, toy_beir, tmp_path):
    system = build_retriever("reasoning", str(toy_beir), str(reasoning_model), "cpu", backend="int8")
    assert system.index.backend == "int8"
    system.save(tmp_path / "idx")
    assert load_retriever(tmp_path / "idx", "cpu").index.backend == "int8"


def test_build_retriever_hybrid_fuses_bm25_and_the_dense_model(llama_dir, toy_beir):
    hybrid = build_retriever("hybrid", str(toy_beir), str(llama_dir), "cpu", fusion="weighted", weight=0.7)
    assert [p.kind for p in hybrid.parts] == ["bm25", "dense"] and hybrid.weights == [pytest.approx(0.3), 0.7]



def test_irlm_index_saves_a_weighted_hybrid_that_reopens_with_its_weight(llama_dir, toy_beir, tmp_path):
    """The dev-tuned weight of a trained retriever's hybrid carries into a served index."""
    args = ("index", "--data", toy_beir, "--retriever", "hybrid", "--model", llama_dir, "--fusion", "weighted",
            "--weight", "0.35", "--device", "cpu", "--out", tmp_path / "hy")  # fmt: skip
    subprocess.run(cli(*args), capture_output=True, text=True, check=True)
    hybrid = load_retriever(tmp_path / "hy", "cpu")
    assert hybrid.method == "weighted" and hybrid.weights == [pytest.approx(0.65), 0.35]  # BM25 first, then dense
    assert [p.kind for p in hybrid.parts] == ["bm25", "dense"]
    bad = subprocess.run(cli(*args[:-2], "--weight", "1.5", "--out", tmp_path / "bad"), capture_output=True, text=True)
    assert bad.returncode != 0 and "--weight must be between 0 and 1" in bad.stderr

def test_irlm_eval_scores_a_saved_reasoning_index(reasoning_model, toy_beir, dataset, tmp_path):
    """`irlm eval --index` gives what the method's own evaluation gives, through the shared loader."""
    from irlm.methods.reasoning.train import evaluate_reasoner

    emb = ReasoningEmbedder.from_pretrained(str(reasoning_model), device="cpu")
    own = evaluate_reasoner(emb, [str(toy_beir)])[str(toy_beir)]
    ReasoningRetriever.build(dataset.corpus, emb).save(tmp_path / "idx")
    out = subprocess.run(cli("eval", "--data", toy_beir, "--index", tmp_path / "idx", "--device", "cpu", "--json"),
                         capture_output=True, text=True, check=True).stdout  # fmt: skip
    row = json.loads(out.strip().splitlines()[-1])
    assert row["ndcg@10"] == pytest.approx(own["ndcg@10"], abs=1e-6)
    assert row["recall@100"] == pytest.approx(own["recall@100"], abs=1e-6)


def test_the_reasoning_system_is_an_encoder_that_thinks_first(reasoning_model, dataset):
    emb = ReasoningEmbedder.from_pretrained(str(reasoning_model), device="cpu")
    system = ReasoningRetriever.build(dataset.corpus, emb)
    texts = list(dataset.split_queries("test").values())
    thoughts = [t for t, _ in emb.sample(texts, 1, do_sample=False)]
    got = system.encoder.encode_queries(texts)
    assert got.tobytes() == emb.encode_queries(texts, thoughts).tobytes()
    assert got.tobytes() != emb.encode_queries(texts).tobytes()  # not the direct embedding
    assert system.encoder.encode_corpus(["a b"]).shape == (1, system.encoder.dim)


def test_a_reasoning_system_is_served_like_any_dense_one(reasoning_model, dataset):
    from fastapi.testclient import TestClient

    from irlm.serve import build_app

    emb = ReasoningEmbedder.from_pretrained(str(reasoning_model), device="cpu")
    system = ReasoningRetriever.build(dataset.corpus, emb)
    query = dataset.split_queries("test")["q1"]
    with TestClient(build_app(system, api_key_env=None)) as http:
        hits = http.post("/search", json={"query": query, "k": 3}).json()["results"]
        assert [h["id"] for h in hits] == list(system.search({"q": query}, 3)["q"])
        got = http.post("/encode", json={"texts": [query]}).json()["embeddings"]
        np.testing.assert_allclose(got, system.encoder.encode_queries([query]), atol=1e-5)
        model = http.get("/v1/models").json()["data"][0]
        assert model["dimensions"] == system.encoder.dim and model["id"] == str(reasoning_model)
