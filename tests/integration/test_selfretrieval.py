"""Self-Retrieval on a tiny random causal LM: formats, constrained decoding, scores, training, CLI."""

from __future__ import annotations

import json
import math
import subprocess
import sys

import pytest
import torch
from conftest import write_beir, write_jsonl

from irlm.index.trie import TokenTrie, common_prefix
from irlm.methods.selfretrieval import decode
from irlm.methods.selfretrieval.config import SelfRetrievalConfig
from irlm.methods.selfretrieval.data import (
    Format,
    assessment_examples,
    hard_negatives,
    indexing_examples,
    retrieval_examples,
    sentences,
)
from irlm.types import Corpus, Document

DOCS = [
    {"_id": "p0", "title": "Nile", "text": "The Nile is a river in Africa. It flows north into the sea."},
    {"_id": "p1", "title": "Sourdough", "text": "Sourdough bread uses a wild yeast starter. It rises slowly."},
    {"_id": "p2", "title": "Qubit", "text": "A qubit is the unit of quantum information. It can be in superposition."},
    {"_id": "p3", "title": "Nile", "text": "The Nile delta is wide and green. Farmers grow cotton there."},
]
QUERIES = [{"_id": "q0", "text": "which river flows north in africa"}, {"_id": "q1", "text": "what makes bread rise"},
           {"_id": "q2", "text": "unit of quantum information"}, {"_id": "q3", "text": "what grows in the nile delta"}]
QRELS = {"train": [("q0", "p0", 1), ("q1", "p1", 1)], "test": [("q2", "p2", 1), ("q3", "p3", 1)]}
ANSWERS = [{"_id": "q0", "answers": ["Nile"]}, {"_id": "q1", "answers": ["a starter"]},
           {"_id": "q2", "answers": ["qubit"]}, {"_id": "q3", "answers": ["cotton"]}]


@pytest.fixture
def beir(tmp_path):
    folder = write_beir(tmp_path / "wiki", DOCS, QUERIES, QRELS)
    write_jsonl(folder / "answers.jsonl", ANSWERS)
    return folder


def corpus() -> Corpus:
    return Corpus([Document(d["_id"], d["text"], d["title"]) for d in DOCS])


def test_entries_are_separately_tokenised_pieces(tok):
    fmt = Format(tok, max_passage_tokens=5)
    entry = fmt.entry("Nile", DOCS[0]["text"])
    assert entry == fmt.ids(" Nile") + [fmt.sep] + fmt.ids(" " + DOCS[0]["text"])[:5]
    assert Format(tok, 5, titles=False).entry("Nile", DOCS[0]["text"]) == entry[len(fmt.ids(" Nile")) + 1 :]
    prompt = fmt.prompt("Question: {}\nSource:", "word " * 200)
    assert len(prompt) == 64 and tok.decode(prompt).endswith("Source:")  # the end survives truncation


def test_training_example_builders(tok):
    fmt = Format(tok)
    assert sentences("Short. The Nile is long. Yes it is long.") == ["Short. The Nile is long.", "Yes it is long."]
    idx = indexing_examples(corpus(), fmt, per_passage=2, seed=0)
    assert len(idx) == 8 and all(t[-1] == fmt.eos for _, t in idx)
    assert idx[0][1] == fmt.entry("Nile", DOCS[0]["text"]) + [fmt.eos]
    queries = {q["_id"]: q["text"] for q in QUERIES}
    qrels = {"q0": {"p0": 1}, "q1": {"p1": 1}}
    ret = retrieval_examples(queries, qrels, corpus(), fmt)
    assert [tok.decode(p).startswith("Question: which river") for p, _ in ret] == [True, False]
    negs = hard_negatives({"q0": {"p0": 3.0, "p3": 2.0, "p2": 1.0}, "q1": {"p2": 2.0, "p1": 1.0}}, qrels, 1)
    assert negs == {"q0": ["p3"], "q1": ["p2"]}
    answers = {"q0": ["Nile"]}
    ass = assessment_examples(queries, qrels, corpus(), fmt, negs, answers)
    verdicts = [(t[0], tok.decode(t[1:-1])) for _, t in ass]
    assert verdicts == [(fmt.yes, "\nAnswer: Nile"), (fmt.no, ""), (fmt.yes, ""), (fmt.no, "")]
    assert all(p[-len(fmt.assess) :] == fmt.assess for p, _ in ass)


def test_constrained_beams_return_only_trie_entries(model, tok):
    fmt = Format(tok)
    titles = [fmt.title(t) + [fmt.sep] for t in ("Nile river", "Nile delta", "Sourdough", "Quantum bit")]
    trie = TokenTrie.build(titles)
    prompts = [fmt.prompt("Question: {}\nSource:", q) for q in ("river", "bread starter yeast")]
    found = decode.constrained_beams(model, prompts, trie, fmt.sep, beams=3, max_new_tokens=12, pad_id=fmt.eos)
    for hits in found:
        assert 1 <= len(hits) <= 3
        assert all(seq in titles for seq, _ in hits)
        assert len({tuple(s) for s, _ in hits}) == len(hits)
        assert all(math.isfinite(s) and s <= 0 for _, s in hits)
    # the reference: an unconstrained teacher-forced log-probability of each returned title,
    # where tokens after the prefix became unique are copied (log-probability 0, not scored)
    seq, score = found[0][0]
    shared = max(common_prefix(seq, t) for t in titles if t != seq)
    scored = seq[: shared + 1]
    ref = decode.sequence_logprobs(model, [prompts[0]], [scored], fmt.eos)[0]
    assert score == pytest.approx(ref, abs=1e-4)


def test_single_entry_is_copied_at_no_cost(model, tok):
    fmt = Format(tok)
    only = fmt.title("Sourdough bread") + [fmt.sep]
    found = decode.constrained_beams(model, [fmt.prompt("Question: {}\nSource:", "x")], TokenTrie.build([only]),
                                     fmt.sep, beams=2, max_new_tokens=12, pad_id=fmt.eos)  # fmt: skip
    assert found == [[(only, 0.0)]]


def test_sequence_logprobs_match_an_unpadded_reference(model, tok):
    contexts, conts = [[5, 6, 7, 8, 9], [11, 12]], [[20, 21], [30, 31, 32]]
    got = decode.sequence_logprobs(model, contexts, conts, tok.eos_token_id)
    for ctx, cont, value in zip(contexts, conts, got):
        ids = torch.tensor([ctx + cont])
        logp = torch.log_softmax(model(input_ids=ids).logits.float(), -1)[0]
        ref = sum(logp[len(ctx) - 1 + i, t].item() for i, t in enumerate(cont))
        assert value == pytest.approx(ref, abs=1e-4)


def test_scores_follow_the_paper_formula():
    assert decode.distinguishing_lengths([[1, 2, 3], [1, 2, 4], [5, 6]]) == [3, 3, 1]
    logp, reject = [math.log(0.6), math.log(0.3)], [0.9, 0.1]
    got = decode.combine(logp, reject, 0.4, 0.4)
    a = torch.softmax(torch.tensor([0.6, 0.3]) / 0.4, 0)
    b = torch.softmax(torch.tensor([0.1, 0.9]) / 0.4, 0)
    assert got == pytest.approx((a * b).tolist(), abs=1e-6)
    assert got[1] > got[0]  # the judged-relevant candidate overtakes the likelier title
    assert decode.combine(logp, None, 0.4, 0.4) == pytest.approx(a.tolist(), abs=1e-6)


def test_train_search_answer_end_to_end(lm_dir, beir, tmp_path):
    from irlm.methods.selfretrieval.train import train

    out = tmp_path / "sr"
    cfg = SelfRetrievalConfig(model=str(lm_dir), data=str(beir), output_dir=str(out), steps=3, batch_size=4,
                              save_every=0, title_beams=2, passage_beams=2, device="cpu")  # fmt: skip
    res = train(cfg)
    assert res["examples"] == {"retrieval": 2, "indexing": 8, "assessment": 4}
    assert set(res["metrics"]) == {"hits@1", "hits@5", "mrr@5", "answer_em"} and res["eval_queries"] == 2
    saved = json.loads((out / "results.json").read_text())
    assert saved["metrics"] == res["metrics"]
    # the kept run re-scores to the same numbers; the answers file holds one row per answered question
    from irlm.data import load_dataset
    from irlm.eval import evaluate
    from irlm.eval.runs import read_trec

    qrels = load_dataset(str(beir)).qrels["test"]
    rescored = evaluate(read_trec(out / "test.trec"), qrels, ("hits@1", "hits@5", "mrr@5"))
    assert {m: round(v, 4) for m, v in rescored.items()} == {m: res["metrics"][m] for m in rescored}
    answers = [json.loads(line) for line in (out / "answers.jsonl").read_text().splitlines()]
    assert len(answers) == 2 and {"qid", "answer", "gold", "em"} <= set(answers[0])
    assert sum(a["em"] for a in answers) / 2 == res["metrics"]["answer_em"]
    cmd = [sys.executable, "-c", "from irlm.cli import run; run()", "selfretrieval", "search",
           "--model", str(out / "final"), "--data", str(beir), "-q", "nile delta farming", "--k", "3"]  # fmt: skip
    lines = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.strip().splitlines()
    assert 1 <= len(lines) <= 3
    ids = [line.split("\t")[1] for line in lines]
    assert set(ids) <= {"p0", "p1", "p2", "p3"} and len(set(ids)) == len(ids)
    scores = [float(line.split("\t")[2]) for line in lines]
    assert scores == sorted(scores, reverse=True)


def test_memorised_titles_are_retrieved(lm_dir, beir, tmp_path):
    """Trained long enough on retrieval pairs, the tiny model retrieves the gold passage for them."""
    from irlm.data import load_dataset
    from irlm.methods.selfretrieval.retriever import SelfRetriever
    from irlm.methods.selfretrieval.train import train

    cfg = SelfRetrievalConfig(model=str(lm_dir), data=str(beir), output_dir=str(tmp_path / "m"), steps=60,
                              batch_size=8, lr=3e-3, save_every=0, indexing=False, assessment=False,
                              train_split="train", eval_split="train", title_beams=3, device="cpu")  # fmt: skip
    res = train(cfg)
    assert res["metrics"]["hits@1"] == 1.0
    sr = SelfRetriever.load(tmp_path / "m" / "final", load_dataset(str(beir)).corpus)
    assert next(iter(sr.search({"q": QUERIES[1]["text"]}, k=1)["q"])) == "p1"


def test_tau_scales_retrieval_and_delta_the_assessment():
    """Distinct temperatures, so a swap between them shows: tau divides the retrieval probabilities, delta
    the acceptance probabilities."""
    logp, reject = [math.log(0.6), math.log(0.3), math.log(0.1)], [0.8, 0.2, 0.5]
    got = decode.combine(logp, reject, tau=0.1, delta=0.9)
    a = torch.softmax(torch.tensor([0.6, 0.3, 0.1], dtype=torch.float64) / 0.1, 0)
    b = torch.softmax(torch.tensor([0.2, 0.8, 0.5], dtype=torch.float64) / 0.9, 0)
    assert got == pytest.approx((a * b).tolist(), abs=1e-9)
    assert decode.combine(logp, reject, 0.1, 0.9) == got  # positional order is (tau, delta)


def test_dev_questions_are_held_out_of_training_and_score_every_scoring(lm_dir, beir, tmp_path):
    from irlm.data import load_dataset
    from irlm.methods.selfretrieval.train import build_examples, dev_choice, dev_qids, train

    cfg = SelfRetrievalConfig(model=str(lm_dir), data=str(beir), output_dir=str(tmp_path / "d"), steps=0,
                              dev_queries=1, title_beams=2, passage_beams=2, device="cpu")  # fmt: skip
    ds = load_dataset(str(beir))
    held = dev_qids(cfg, ds)
    assert len(held) == 1 and held <= {"q0", "q1"} and held == dev_qids(cfg, ds)  # one fixed draw
    from irlm.data.training import held_out_qids

    assert held == held_out_qids(str(beir), "train", 1)  # DRAMA's: a dense baseline holds out the same
    from transformers import AutoTokenizer

    fmt = Format(AutoTokenizer.from_pretrained(lm_dir))
    examples, counts = build_examples(cfg, ds, fmt, held)
    dev_text = QUERIES[int(next(iter(held))[1])]["text"]
    assert counts["retrieval"] == 1 and not any(dev_text in fmt.tokenizer.decode(p) for p, _ in examples)
    res = train(cfg)
    assert set(res["dev"]) == {"paper", "joint", "paper-noassess", "joint-noassess"} and res["dev_queries"] == 1
    assert set(res["rankings"]) == set(res["dev"]) and all(
        res["rankings"]["paper"][m] == res["metrics"][m] for m in ("hits@1", "hits@5", "mrr@5"))
    assert (tmp_path / "d" / "test-paper-noassess.trec").exists()
    assert set(res["dev"]["paper"]) == {"hits@1", "hits@5", "mrr@5"}
    assert res["dev_best"] == dev_choice(res["dev"], cfg.scoring)


def test_dev_choice_takes_the_best_dev_ranking_and_the_configured_one_on_ties():
    from irlm.methods.selfretrieval.train import dev_choice

    dev = {"paper": {"mrr@5": 0.30, "hits@1": 0.2}, "paper-noassess": {"mrr@5": 0.35, "hits@1": 0.2},
           "joint": {"mrr@5": 0.35, "hits@1": 0.1}}  # fmt: skip
    assert dev_choice(dev, "paper") == "paper-noassess"  # MRR@5 first, then Hits@1
    tied = {"paper": {"mrr@5": 0.3, "hits@1": 0.2}, "joint": {"mrr@5": 0.3, "hits@1": 0.2}}
    assert dev_choice(tied, "joint") == "joint" and dev_choice(tied, "paper") == "paper"


def test_kept_weights_give_a_dev_curve_and_the_model_keeps_its_own(lm_dir, beir, tmp_path):
    """weights_every keeps every N-th step's trainable weights; the curve scores dev at each of them, and
    the step-2 weights are not the final ones, while the retriever ends with its final weights again."""
    from safetensors.torch import load_file

    from irlm.data import load_dataset
    from irlm.methods.selfretrieval.retriever import SelfRetriever
    from irlm.methods.selfretrieval.train import dev_curve, train

    cfg = SelfRetrievalConfig(model=str(lm_dir), data=str(beir), output_dir=str(tmp_path / "c"), steps=4,
                              batch_size=2, lr=1e-2, save_every=0, weights_every=2, dev_queries=1, title_beams=2,
                              passage_beams=2, device="cpu", precision="fp32")  # fmt: skip
    train(cfg)
    kept = sorted((tmp_path / "c" / "weights").glob("*.safetensors"))
    assert [f.name for f in kept] == ["step-0000002.safetensors", "step-0000004.safetensors"]
    retriever = SelfRetriever.load(tmp_path / "c" / "final", load_dataset(str(beir)).corpus)
    final = {n: p.detach().clone() for n, p in retriever.model.named_parameters()}
    at2 = load_file(kept[0])
    assert any(not torch.equal(at2[n], final[n]) for n in at2)
    assert all(torch.equal(load_file(kept[1])[n], final[n]) for n in at2)  # the last step is the final model
    import irlm.methods.selfretrieval.train as sr_train

    name = next(iter(at2))
    seen, real = [], sr_train.evaluate_dev

    def spy(r, *args):  # the weights the model holds while each step is scored
        seen.append(dict(r.model.named_parameters())[name].detach().clone())
        return real(r, *args)

    sr_train.evaluate_dev = spy
    try:
        rows = list(dev_curve(retriever, tmp_path / "c"))
    finally:
        sr_train.evaluate_dev = real
    assert [r["step"] for r in rows] == [2, 4] and set(rows[0]["dev"]) >= {"paper", "paper-noassess"}
    assert torch.equal(seen[0], at2[name]) and torch.equal(seen[1], final[name])
    assert all(torch.equal(p, final[n]) for n, p in retriever.model.named_parameters())
    from typer.testing import CliRunner

    from irlm.cli import app

    out = CliRunner().invoke(app, ["selfretrieval", "curve", "--model", str(tmp_path / "c" / "final"), "--device", "cpu"])
    assert out.exit_code == 0, out.output
    lines = [json.loads(ln) for ln in out.stdout.splitlines() if ln.startswith("{")]
    assert [r["step"] for r in lines] == [2, 4] and lines[1]["dev"] == rows[1]["dev"]
