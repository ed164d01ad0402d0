"""Self-Retrieval's cached search path against the reference path (transformers' generate, one pass per
title, one verdict pass) on a tiny random model: the same candidates, log-probabilities and verdicts."""

from __future__ import annotations

import pytest

from irlm.index.trie import TokenTrie
from irlm.methods.selfretrieval import decode, fast
from irlm.methods.selfretrieval.config import SelfRetrievalConfig
from irlm.methods.selfretrieval.data import QUERY_PROMPT, Format
from irlm.methods.selfretrieval.retriever import SelfRetriever
from irlm.types import Corpus, Document

# titles that share first tokens (Nile / Nile river, Sour / Sourdough) and one title over three passages
DOCS = [
    ("p0", "Nile", "The Nile is a river in Africa. It flows north into the sea."),
    ("p1", "Sourdough", "Sourdough bread uses a wild yeast starter. It rises slowly."),
    ("p2", "Qubit", "A qubit is the unit of quantum information. It can be in superposition."),
    ("p3", "Nile", "The Nile delta is wide and green. Farmers grow cotton there."),
    ("p4", "Nile river", "The Nile river is long."),
    ("p5", "Quantum bit", "A quantum bit."),
    ("p6", "Sour", "Sour things."),
    ("p7", "Nile", "The Nile delta floods."),
]
QUERIES = ["which river", "bread starter yeast", "x", "the nile delta farming cotton green wide"]


def corpus() -> Corpus:
    return Corpus([Document(i, text, title) for i, title, text in DOCS])


def summary(cands) -> list[tuple]:
    return [(c.doc_id, c.entry, c.title_logprob, c.passage_logprob, c.reject) for c in cands]


def assert_same(got, want):
    assert [c[:2] for c in got] == [c[:2] for c in want]  # the same passages, in the same order
    for g, w in zip(got, want):
        assert g[2:4] == pytest.approx(w[2:4], abs=1e-4)
        assert (g[4] is None) == (w[4] is None) and (g[4] is None or g[4] == pytest.approx(w[4], abs=1e-5))


@pytest.mark.skipif(not fast.SUPPORTED, reason="the cached path replays transformers 5's beam search")
@pytest.mark.parametrize("titles,assessment", [(True, True), (True, False), (False, True)])
@pytest.mark.parametrize("beams", [1, 2, 3, 6])
def test_cached_search_equals_the_reference(model, tok, titles, assessment, beams):
    cfg = SelfRetrievalConfig(title_beams=beams, passage_beams=2, titles=titles, assessment=assessment,
                              max_title_tokens=6, max_passage_tokens=12)  # fmt: skip
    sr = SelfRetriever(model, tok, corpus(), cfg)
    for query in QUERIES:
        sr.reference = True
        want = summary(sr.generate(query))
        sr.reference = False
        got = summary(sr.generate(query))
        assert want, "the reference found nothing: the comparison would be empty"
        assert_same(got, want)


@pytest.mark.skipif(not fast.SUPPORTED, reason="the cached path replays transformers 5's beam search")
def test_a_beam_the_trie_identifies_costs_no_model_call(model, tok, monkeypatch):
    """One title: after the query's own pass every token is forced, so no other forward pass runs."""
    fmt = Format(tok)
    only = fmt.title("Sourdough bread") + [fmt.sep]
    calls = []
    real = fast._forward
    monkeypatch.setattr(fast, "_forward", lambda *a, **k: calls.append(a[1].shape) or real(*a, **k))
    prompt = fmt.prompt(QUERY_PROMPT, "x")
    found, _ = fast.beam_search(model, prompt, TokenTrie.build([only]), fmt.sep, beams=2, max_new_tokens=12)
    assert found == [(only, 0.0)] and calls == []
    assert decode.constrained_beams(model, [prompt], TokenTrie.build([only]), fmt.sep, 2, 12, fmt.eos)[0] == found


def test_without_verdicts_rows_are_cut_after_their_last_scored_token(model, tok, monkeypatch):
    """A passage is scored only up to where it differs from its siblings (a title's only passage: its
    first token); without verdicts the rest of it is not run, with them the whole passage is."""
    fmt = Format(tok)
    prompt_kv = fast.prefill(model, fmt.prompt(QUERY_PROMPT, "x"))[1]
    titles = [fmt.title("Qubit") + [fmt.sep], fmt.title("Nile") + [fmt.sep]]
    passages = [[fmt.ids(" A qubit is the unit of quantum information.")],
                [fmt.ids(" The Nile delta is wide and green."), fmt.ids(" The Nile delta floods the fields.")]]
    cut = max(len(t) + n for t, docs in zip(titles, passages) for n in decode.distinguishing_lengths(docs))
    whole = max(len(t) + len(p) for t, docs in zip(titles, passages) for p in docs) + len(fmt.assess)
    shapes = []
    real = fast._forward
    monkeypatch.setattr(fast, "_forward", lambda *a, **k: shapes.append(tuple(a[1].shape)) or real(*a, **k))
    scores, rejects = fast.passages_and_verdicts(model, prompt_kv, titles, passages, None, fmt.yes, fmt.no, fmt.eos)
    assert shapes == [(3, cut)] and cut < whole - len(fmt.assess)
    assert all(s < 0 for s in scores) and rejects == [None] * 3
    with_verdicts, rejects = fast.passages_and_verdicts(model, prompt_kv, titles, passages, fmt.assess, fmt.yes,
                                                        fmt.no, fmt.eos)  # fmt: skip
    assert shapes[1] == (3, whole) and all(0 < r < 1 for r in rejects)
    assert with_verdicts == pytest.approx(scores, abs=1e-4)
    shapes.clear()
    assert fast.passages_and_verdicts(model, prompt_kv, titles, [[], []], None, fmt.yes, fmt.no, fmt.eos) == ([], [])
    assert shapes == []


@pytest.mark.skipif(not fast.SUPPORTED, reason="the cached path replays transformers 5's beam search")
@pytest.mark.parametrize("query", QUERIES)
def test_one_beam_scores_the_stop_after_a_title_that_begins_another(model, tok, query):
    """With "Nile" and "Nile river" both titles, the separator after "Nile" is a choice, so its
    log-probability is part of the score; greedy search (one beam) must count it as beam search does."""
    fmt = Format(tok)
    trie = TokenTrie.build([fmt.title(t) + [fmt.sep] for t in ("Nile", "Nile river")])
    prompt = fmt.prompt(QUERY_PROMPT, query)
    found, _ = fast.beam_search(model, prompt, trie, fmt.sep, beams=1, max_new_tokens=8)
    want = decode.constrained_beams(model, [prompt], trie, fmt.sep, 1, 8, fmt.eos)[0]
    assert [s for s, _ in found] == [s for s, _ in want] and len(found) == 1
    assert found[0][1] == pytest.approx(want[0][1], abs=1e-4) and found[0][1] < 0


def test_greedy_scores_sum_each_step_up_to_and_including_the_stop():
    import torch

    steps = tuple(torch.tensor([[-1.0, -2.0, -4.0, -8.0]]) * (t + 1) for t in range(4))  # step t: token k -> -(t+1) 2^k
    # tokens 1, 0, then the stop (3); what follows the stop is padding and is not scored
    assert decode._greedy_scores(steps, [[1, 0, 3, 2]], stop_id=3) == [-2.0 - 2.0 - 24.0]
    assert decode._greedy_scores(steps, [[2, 2, 2, 2]], stop_id=3) == [-4.0 - 8.0 - 12.0 - 16.0]
