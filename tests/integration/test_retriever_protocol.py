"""Every kind in the registry (irlm.systems) implements the Retriever protocol of irlm.types: `kind`, len()
and `encoder` (None where there is none), so the service, the registry and the CLI never probe private
attributes. A tiny system of each kind is built, saved and reopened through load_retriever."""

from __future__ import annotations

import pytest
import torch

from irlm.data import load_beir
from irlm.index import BM25Retriever, DenseRetriever, HybridRetriever
from irlm.systems import LOADERS, load_retriever
from irlm.types import Retriever


def bm25(corpus, encoder, lm_dir, toy_beir):
    return BM25Retriever.build(corpus)


def dense(corpus, encoder, lm_dir, toy_beir):
    return DenseRetriever.build(corpus, encoder)


def hybrid(corpus, encoder, lm_dir, toy_beir):
    return HybridRetriever([bm25(corpus, encoder, lm_dir, toy_beir), dense(corpus, encoder, lm_dir, toy_beir)])


def selfretrieval(corpus, encoder, lm_dir, toy_beir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from irlm.methods.selfretrieval.config import SelfRetrievalConfig
    from irlm.methods.selfretrieval.retriever import SelfRetriever

    cfg = SelfRetrievalConfig(model=str(lm_dir), data=str(toy_beir), titles=False, assessment=False, passage_beams=2)
    model = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    return SelfRetriever(model, AutoTokenizer.from_pretrained(lm_dir), corpus, cfg)


def reasoning(corpus, encoder, lm_dir, toy_beir, folder=None):
    from irlm.methods.reasoning.model import ReasoningEmbedder
    from irlm.methods.reasoning.retriever import ReasoningRetriever

    torch.manual_seed(0)
    grown = ReasoningEmbedder.from_pretrained(str(lm_dir), device="cpu", max_length=48, reasoning_tokens=4)
    grown.save(folder)  # a reasoning index names its model folder
    return ReasoningRetriever.build(corpus, ReasoningEmbedder.from_pretrained(str(folder), device="cpu"))


BUILDERS = {"bm25": bm25, "dense": dense, "hybrid": hybrid, "selfretrieval": selfretrieval, "reasoning": reasoning}
HAS_ENCODER = {"dense", "hybrid", "reasoning"}


def test_every_registered_kind_has_a_builder_here():
    assert set(BUILDERS) == set(LOADERS)  # a new kind in the registry must join this test


@pytest.mark.parametrize("kind", sorted(LOADERS))
def test_each_kind_implements_the_retriever_protocol(kind, toy_beir, lm_dir, llama_encoder, tmp_path):
    corpus = load_beir(toy_beir).corpus
    extra = {"folder": tmp_path / "model"} if kind == "reasoning" else {}
    built = BUILDERS[kind](corpus, llama_encoder, lm_dir, toy_beir, **extra)
    built.save(tmp_path / kind)
    for system in (built, load_retriever(tmp_path / kind, "cpu")):
        assert isinstance(system, Retriever)
        assert system.kind == kind and len(system) == len(corpus)
        if kind not in HAS_ENCODER:
            assert system.encoder is None
            continue
        vectors = system.encoder.encode_queries(["cats"])
        assert vectors.shape == (1, system.encoder.dim)


def test_a_hybrid_embeds_with_its_dense_part(toy_beir, lm_dir, llama_encoder):
    corpus = load_beir(toy_beir).corpus
    lexical, semantic = BM25Retriever.build(corpus), DenseRetriever.build(corpus, llama_encoder)
    assert HybridRetriever([lexical, semantic]).encoder is llama_encoder
    assert HybridRetriever([lexical, lexical]).encoder is None
    nested = HybridRetriever([lexical, HybridRetriever([lexical, semantic])])
    assert nested.encoder is llama_encoder and len(nested) == len(corpus)
