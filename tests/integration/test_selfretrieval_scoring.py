"""Self-Retrieval's scores as the paper writes them, on tiny models: the verdict's direction, the title
factor, tau and delta, and a model trained with assessment whose verdict must reorder its own passages."""

from __future__ import annotations

import copy
import logging
import math

import pytest
import torch

from irlm.methods.selfretrieval import decode
from irlm.methods.selfretrieval.config import SelfRetrievalConfig
from irlm.methods.selfretrieval.data import QUERY_PROMPT, Format
from irlm.methods.selfretrieval.decode import Candidate
from irlm.methods.selfretrieval.retriever import SelfRetriever
from irlm.types import Corpus, Document

DOCS = [
    ("p0", "Nile", "The Nile is a river in Africa. It flows north into the sea."),
    ("p1", "Sourdough", "Sourdough bread uses a wild yeast starter. It rises slowly."),
    ("p2", "Qubit", "A qubit is the unit of quantum information. It can be in superposition."),
    ("p3", "Nile", "The Nile delta is wide and green. Farmers grow cotton there."),
    ("p4", "Everest", "Everest is the highest mountain on Earth. It lies in the Himalaya."),
]
DELTA_Q = "what grows in the nile delta"


def corpus() -> Corpus:
    return Corpus([Document(i, text, title) for i, title, text in DOCS])


def biased(model, favour: int, against: int):
    """A copy whose next-token logits are a constant: +3 on `favour`, 0 on `against` and -30 elsewhere."""
    out = copy.deepcopy(model)
    hidden, vocab = out.lm_head.in_features, out.lm_head.out_features
    head = torch.nn.Linear(hidden, vocab, bias=True)
    torch.nn.init.zeros_(head.weight)
    torch.nn.init.constant_(head.bias, -30.0)
    with torch.no_grad():
        head.bias[favour], head.bias[against] = 3.0, 0.0
    out.lm_head = head
    return out


def test_reject_probability_is_that_of_the_no_verdict(model, tok):
    fmt = Format(tok)
    prompts = [fmt.assessment_prompt("which river", fmt.entry("Nile", DOCS[0][2])), [5, 6, 7]]
    says_no = decode.reject_probs(biased(model, fmt.no, fmt.yes), prompts, fmt.yes, fmt.no, fmt.eos)
    says_yes = decode.reject_probs(biased(model, fmt.yes, fmt.no), prompts, fmt.yes, fmt.no, fmt.eos)
    expected = 1 / (1 + math.exp(-3.0))  # normalised over the two verdict tokens only
    assert says_no == pytest.approx([expected] * 2, abs=1e-5) and all(p > 0.5 for p in says_no)
    assert says_yes == pytest.approx([1 - expected] * 2, abs=1e-5) and all(p < 0.5 for p in says_yes)


def cands() -> list[Candidate]:
    """Two titles; under title A, a2 is the less likely passage but the one judged relevant."""
    return [Candidate("a1", [1], math.log(0.5), math.log(0.9), reject=0.8),
            Candidate("a2", [2], math.log(0.5), math.log(0.1), reject=0.1),
            Candidate("b1", [3], math.log(0.2), math.log(0.9), reject=0.5)]  # fmt: skip


def test_paper_scoring_takes_the_title_probability_then_the_verdict():
    tau, delta = 0.1, 0.9  # distinct, so a swap shows
    got = decode.rank(cands(), "paper", tau, delta)
    s_t = torch.softmax(torch.tensor([0.5, 0.5, 0.2], dtype=torch.float64) / tau, 0)  # P(t_i | q) / tau
    s_p = torch.softmax((1 - torch.tensor([0.8, 0.1, 0.5], dtype=torch.float64)) / delta, 0)
    want = dict(zip(["a1", "a2", "b1"], (s_t * s_p).tolist()))
    assert {c.doc_id: c.score for c in got} == pytest.approx(want, abs=1e-12)
    assert [c.doc_id for c in got] == ["a2", "a1", "b1"]  # under one title the verdict orders the passages


def test_joint_scoring_takes_title_and_passage_together():
    got = decode.rank(cands(), "joint", 0.1, 0.9)
    s_tp = torch.softmax(torch.tensor([0.45, 0.05, 0.18], dtype=torch.float64) / 0.1, 0)
    s_p = torch.softmax((1 - torch.tensor([0.8, 0.1, 0.5], dtype=torch.float64)) / 0.9, 0)
    assert {c.doc_id: c.score for c in got} == pytest.approx(dict(zip(["a1", "a2", "b1"], (s_tp * s_p).tolist())))
    assert [c.doc_id for c in got] == ["a1", "b1", "a2"]  # the passage probability outweighs the verdict here


def test_without_verdicts_passages_under_a_title_follow_their_probability():
    plain = cands()
    for c in plain:
        c.reject = None
    got = decode.rank(plain, "paper", 0.4, 0.4)
    assert [c.doc_id for c in got] == ["a1", "a2", "b1"]  # a1, a2 tie on S; P(p | q, t) breaks the tie
    assert got[0].score == got[1].score > got[2].score


def test_unknown_scoring_is_refused():
    from irlm.errors import InputError

    with pytest.raises(InputError, match="scoring: unknown value 'mixed'"):
        SelfRetrievalConfig(scoring="mixed")


@pytest.mark.parametrize("field", ["title_beams", "passage_beams", "max_title_tokens", "max_passage_tokens"])
def test_no_beams_or_tokens_is_refused(field):
    from irlm.errors import InputError

    SelfRetrievalConfig(**{field: 1})
    with pytest.raises(InputError, match=f"{field}: must be at least 1, got 0"):
        SelfRetrievalConfig(**{field: 0})


@pytest.fixture(scope="module")
def trained(lm_dir, tok, tmp_path_factory):
    """The tiny model trained 30 steps: generation prefers p0 for DELTA_Q (the right title, the wrong
    passage); the verdict learnt that p3 answers it and p0 does not."""
    from transformers import AutoModelForCausalLM

    from irlm.train.lm import SFTTask
    from irlm.train.loop import TrainConfig, Trainer

    torch.manual_seed(0)
    lm = AutoModelForCausalLM.from_pretrained(lm_dir, dtype=torch.float32)
    fmt, doc = Format(tok), {i: (title, text) for i, title, text in DOCS}
    examples = [(fmt.prompt(QUERY_PROMPT, DELTA_Q), fmt.entry(*doc["p0"]) + [fmt.eos]),
                (fmt.assessment_prompt(DELTA_Q, fmt.entry(*doc["p3"])), [fmt.yes, fmt.eos]),
                (fmt.assessment_prompt(DELTA_Q, fmt.entry(*doc["p0"])), [fmt.no, fmt.eos])]  # fmt: skip
    tc = TrainConfig(output_dir=str(tmp_path_factory.mktemp("sr-assess")), max_steps=30, lr=3e-3, batch_size=3,
                     save_every=0, seed=0, precision="fp32")  # fmt: skip
    Trainer(SFTTask(lm, tok), examples, tc).fit()
    return lm.eval()


def retriever(model, tok, **cfg) -> SelfRetriever:
    return SelfRetriever(model, tok, corpus(), SelfRetrievalConfig(title_beams=2, passage_beams=3, **cfg))


@pytest.mark.parametrize("scoring", ["paper", "joint"])
def test_the_verdict_lifts_the_relevant_passage_only_the_right_way_round(trained, tok, scoring):
    sr = retriever(trained, tok, scoring=scoring)
    found = sr.generate(DELTA_Q)
    by_id = {c.doc_id: c for c in found}
    assert by_id["p0"].passage_logprob > by_id["p3"].passage_logprob  # generation alone prefers p0
    assert by_id["p3"].reject < 0.5 < by_id["p0"].reject
    assert [c.doc_id for c in sr.candidates(DELTA_Q)][0] == "p3"
    inverted = copy.deepcopy(found)
    for c in inverted:
        c.reject = 1 - c.reject
    assert decode.rank(inverted, scoring, 0.4, 0.4)[0].doc_id == "p0"
    assert retriever(trained, tok, scoring=scoring, assessment=False).candidates(DELTA_Q)[0].doc_id == "p0"


def test_the_retriever_divides_titles_by_tau_and_verdicts_by_delta(trained, tok):
    sr = retriever(trained, tok, tau=0.05, delta=2.0)
    got = sr.candidates(DELTA_Q)
    titles = torch.tensor([c.title_logprob for c in got], dtype=torch.float64).exp()
    accept = 1 - torch.tensor([c.reject for c in got], dtype=torch.float64)
    want = torch.softmax(titles / 0.05, 0) * torch.softmax(accept / 2.0, 0)
    assert [c.score for c in got] == pytest.approx(want.tolist(), abs=1e-12)


def test_search_says_why_it_stops_short_of_k(model, tok, caplog):
    sr = retriever(model, tok)
    assert len(sr) == len(DOCS) and sr.depth == 6
    with caplog.at_level(logging.WARNING):
        run = sr.search({"q": DELTA_Q, "r": "bread"}, k=10)
    assert all(len(docs) <= 6 for docs in run.values())
    assert sum("at most 6 per query" in r.getMessage() for r in caplog.records) == 1  # once, not per query
    caplog.clear()
    sr.search({"q": DELTA_Q}, k=6)
    assert not caplog.records


def test_the_server_counts_self_retrieval_documents_through_len(model, tok):
    from irlm.serve import doc_count

    sr = retriever(model, tok)
    sr.under = {}  # the count must not come from the retriever's private layout
    assert doc_count(sr) == len(sr) == len(DOCS)


def test_rankings_score_each_scoring_with_and_without_the_verdict():
    from irlm.methods.selfretrieval.train import rankings

    cfg = SelfRetrievalConfig(tau=0.4, delta=0.4)
    # two passages under one title: only the verdict separates them; without it P(p | q, t) breaks the tie
    cands = [Candidate("a", [1], title_logprob=-0.1, passage_logprob=-0.5, reject=0.9),
             Candidate("b", [2], title_logprob=-0.1, passage_logprob=-2.0, reject=0.1)]  # fmt: skip
    got = rankings(cands, cfg)
    assert set(got) == {"paper", "joint", "paper-noassess", "joint-noassess"}
    assert max(got["paper"], key=got["paper"].get) == "b"  # the verdict says b is relevant
    assert list(got["paper-noassess"]) == ["a", "b"]  # the first factor alone: tie, broken by P(p | q, t)
    assert got["paper-noassess"]["a"] == got["paper-noassess"]["b"]
    assert cands[1].reject == 0.1  # the candidates keep their verdicts
    assert set(rankings([replace_reject(c) for c in cands], cfg)) == {"paper", "joint"}  # no verdicts: no twins


def replace_reject(c: Candidate) -> Candidate:
    return Candidate(c.doc_id, c.entry, c.title_logprob, c.passage_logprob, None)
