"""Reasoning embedders on a tiny random causal LM: the format, the <emb> state, cold start and GRPO steps."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from irlm.methods.reasoning import tasks
from irlm.methods.reasoning.model import ReasoningEmbedder

EXAMPLES = [{"query": "drink more refreshing than tea", "reasoning": "cold, lemonade, iced, fizzy",
             "positive": "Lemonade is a cold sweet drink."},
            {"query": "quantum bits", "reasoning": "qubit, superposition",
             "positive": "A qubit is the unit of quantum information."}]  # fmt: skip


@pytest.fixture
def emb(lm_dir):
    torch.manual_seed(0)
    return ReasoningEmbedder.from_pretrained(str(lm_dir), device="cpu", max_length=48, reasoning_tokens=6)


def test_format_and_the_emb_state(emb):
    tok = emb.tokenizer
    assert {"<think>", "</think>", "<emb>"} <= set(tok.get_vocab())
    assert emb.model.get_input_embeddings().weight.shape[0] == len(tok)
    row, start = emb.query_ids("tea", "cold, iced lemonade and more words beyond six tokens")
    assert row[start - 1] == emb.think and row[-2:] == [emb.end, emb.emb] and len(row) - 2 - start == 6
    assert emb.query_ids("tea", None) == (emb.ids("tea") + [emb.emb], -1)
    assert emb.doc_ids("a b c")[-1] == emb.emb
    vecs, _, ids, mask = emb.forward([row, emb.doc_ids("a b c")])
    hidden = emb.model(input_ids=torch.tensor([row]), output_hidden_states=True).hidden_states[-1][0, -1]
    assert torch.allclose(vecs[0], torch.nn.functional.normalize(hidden, dim=-1), atol=1e-5)
    assert torch.allclose(vecs.norm(dim=-1), torch.ones(2), atol=1e-5)


def test_cold_start_loss_parts(emb):
    task = tasks.ColdStartTask(emb)
    parts = task.step(EXAMPLES)
    assert set(parts) == {"sft", "infonce", "lambda_sft"} and all(v > 0 for v in parts.values())
    grad = emb.model.get_input_embeddings().weight.grad
    assert grad[emb.think].abs().sum() > 0 and grad[emb.emb].abs().sum() > 0  # the new tokens learn
    row, start = emb.query_ids(EXAMPLES[0]["query"], EXAMPLES[0]["reasoning"])
    logp = torch.log_softmax(emb.model(input_ids=torch.tensor([row])).logits[0].float(), -1)
    ref = -torch.stack([logp[i - 1, row[i]] for i in range(start, len(row))]).mean()  # through </think><emb>
    hidden = emb.forward([row], hidden=True)[1]
    got = tasks.reasoning_sft(emb.span_logprobs(hidden, torch.tensor([row]), [(start, len(row))]))
    assert got.item() == pytest.approx(ref.item(), rel=1e-4)


def test_grpo_step(emb):
    task = tasks.GRPOTask(emb, preset="lrem", group=4)
    parts = task.step(EXAMPLES, seed=3)
    assert len(task.last_rewards) == 8 and all(0.0 <= r <= 1.7 for r in task.last_rewards)
    assert all(torch.isfinite(torch.tensor(v)) for v in parts.values())
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in emb.model.parameters())


def _grads(model) -> dict[str, torch.Tensor]:
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("chunk", [5, 1])
def test_chunked_grpo_step_gives_the_same_gradients(emb, chunk):
    """Chunks hold a few samples' activations at a time; the losses and the gradients stay those of one pass."""
    three = EXAMPLES + [{"query": "capital of france", "positive": "Paris is the capital of France."}]
    whole = tasks.GRPOTask(emb, preset="lrem", group=4, gamma_nce=0.5)
    want = whole.step(three, seed=7)
    ref = _grads(emb.model)
    emb.model.zero_grad(set_to_none=True)
    parts = tasks.GRPOTask(emb, preset="lrem", group=4, gamma_nce=0.5, chunk=chunk).step(three, seed=7)
    got = _grads(emb.model)
    assert set(got) == set(ref)
    for name, g in ref.items():
        # summation order differs between chunked and whole passes: the noise scales with the largest gradient
        # (5e-4 against a maximum of 629 on an AVX2 CPU), while a dropped term moves gradients by their own size
        tol = 1e-5 + 1e-6 * g.abs().max().item()
        assert torch.allclose(got[name], g, atol=tol, rtol=1e-4), name
    assert parts["reward_mean"] == want["reward_mean"] and parts["grpo"] == pytest.approx(want["grpo"], abs=1e-6)
    assert parts["infonce"] == pytest.approx(want["infonce"], rel=1e-5)


def test_equal_rewards_give_no_policy_gradient(emb, monkeypatch):
    monkeypatch.setitem(tasks.REWARDS, "lrem", lambda texts, lengths, ranks, n: [0.5] * len(texts))
    task = tasks.GRPOTask(emb, preset="lrem", group=4, gamma_nce=0.0)
    parts = task.step(EXAMPLES, seed=1)
    assert parts["grpo"] == 0.0 and parts["reward_mean"] == 0.5


def test_in_batch_ranks():
    task = tasks.GRPOTask.__new__(tasks.GRPOTask)
    task.group, task.env, task.negatives = 2, None, None
    docs = torch.eye(2)
    q = torch.tensor([[1.0, 0.0], [0.2, 0.9], [0.0, 1.0], [0.9, 0.1]])  # samples 0-1: query 0; 2-3: query 1
    assert task._ranks(q, docs, [{}, {}]) == [1, 2, 1, 2]
    tied = torch.tensor([[0.5, 0.5], [0.5, 0.5], [0.5, 0.5], [0.5, 0.5]])  # a collapsed policy: all scores equal
    assert task._ranks(tied, docs, [{}, {}]) == [2, 2, 2, 2]  # ties count against the positive


def test_batch_ranks_reach_rank_docs_through_the_negatives():
    """rank_against batch with a negative pool: N = the batch's documents + the pool's, and a negative that
    scores above the positive pushes it down."""
    from irlm.methods.reasoning.env import SelectiveIndex

    pool = {"n0": [0.0, 0.0, 1.0], "n1": [0.6, 0.8, 0.0], "n2": [0.0, -1.0, 0.0]}
    task = tasks.GRPOTask.__new__(tasks.GRPOTask)
    task.group, task.env = 1, None
    task.negatives = SelectiveIndex(list(pool), lambda ids: np.array([pool[i] for i in ids], dtype=np.float32))
    docs = torch.tensor([[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]])
    q = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.7, 0.71]])
    assert task.n_docs(2) == 5
    assert task._ranks(q, docs, [{}, {}]) == [1, 2]  # query 1's positive (0.7) is below n0 (0.71) only


def test_grpo_ranks_against_the_corpus_through_the_environment(emb):
    """With an env, ranks are over the whole corpus (reward n = corpus size) and each step re-encodes the
    positives, the samples' top-k neighbours and a rolling slice, not the corpus."""
    from irlm.methods.reasoning.env import SelectiveIndex

    docs = {f"d{i}": f"document number {i} about topic {i % 5}" for i in range(40)}
    docs.update({"p0": EXAMPLES[0]["positive"], "p1": EXAMPLES[1]["positive"]})
    env = SelectiveIndex(list(docs), lambda ids: emb.encode_docs([docs[i] for i in ids]), top_k=3, slice_size=5)
    seen = []
    task = tasks.GRPOTask(emb, preset="lrem", group=2, env=env)
    real_reward = task.reward_fn
    task.reward_fn = lambda texts, lengths, ranks, n: seen.append((list(ranks), n)) or real_reward(texts, lengths,
                                                                                                  ranks, n)
    examples = [{**ex, "positive_id": f"p{i}"} for i, ex in enumerate(EXAMPLES)]
    before = env.encoded
    parts = task.step(examples, seed=2)
    ranks, n = seen[0]
    assert n == 42 and len(ranks) == 4 and all(r is None or 1 <= r <= 42 for r in ranks)
    assert parts["reencoded"] == env.encoded - before and 2 + 5 <= parts["reencoded"] <= 2 + 4 * 3 + 5


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_environment_encodes_in_the_training_precision(emb, toy_beir, precision):
    """The corpus index is built before the trainer's autocast: it must embed as training does."""
    from irlm.data import load_dataset
    from irlm.methods.reasoning.config import ReasoningConfig
    from irlm.methods.reasoning.train import environment

    cfg = ReasoningConfig(data=str(toy_beir), rank_against="corpus", precision=precision)
    env = environment(emb, cfg, [])
    texts = [d.full_text() for d in load_dataset(str(toy_beir)).corpus.docs]
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
        want = emb.encode_docs(texts)
    assert env.doc_ids == [d.id for d in load_dataset(str(toy_beir)).corpus.docs]
    assert torch.equal(torch.from_numpy(env.index.vectors), torch.from_numpy(want))
    other = emb.encode_docs(texts) if precision == "bf16" else None
    assert other is None or not torch.equal(torch.from_numpy(other), torch.from_numpy(want))


def test_reasoning_length_counts_what_was_written_not_what_was_kept():
    assert tasks.reasoning_length([5, 6, 7, 99, 100], end=99) == 3
    assert tasks.reasoning_length([5] * 18, end=99) is None  # never closed: ran past its budget
    assert tasks.reasoning_length([99, 100], end=99) == 0


def test_a_thought_stopped_at_end_of_text_earns_no_length_reward(emb):
    """Two tokens then end-of-text: short, but never closed with </think>, so neither format nor length pays."""
    eos = emb.tokenizer.eos_token_id
    raw = [7, 8, eos]
    text = tasks.R.THINK_OPEN + emb.tokenizer.decode(raw)
    assert tasks.lrem_rewards([text], [tasks.reasoning_length(raw, emb.end)], [1], 8) == [pytest.approx(1.0)]


def test_rewards_presets():
    assert tasks.lrem_rewards(["<think>a</think><emb>"], [1], [1], 8) == [pytest.approx(1.7)]
    assert tasks.lrem_rewards(["no format"], [40], [8], 8) == [pytest.approx(0.0)]
    assert tasks.searchr3_rewards(["<think>a</think><emb>", "<think>a"], [1, 1], [1, None], 4) == [1.0, 0.0]


def test_data_coldstart_grpo_end_to_end(lm_dir, toy_beir, tmp_path):
    from irlm.methods.reasoning.config import ReasoningConfig
    from irlm.methods.reasoning.train import train

    common = {"data": str(toy_beir), "train_split": "test", "eval_data": [str(toy_beir)], "teacher": str(lm_dir),
              "reasoning_file": str(tmp_path / "r.jsonl"), "max_length": 48, "reasoning_tokens": 4,
              "batch_size": 2, "precision": "fp32", "save_every": 0, "device": "cpu"}  # fmt: skip
    capped = train(ReasoningConfig(stage="data", max_queries=2, **common))
    assert capped["examples"] == capped["this_run"] == 2  # the first two queries only
    made = train(ReasoningConfig(stage="data", **common))
    assert made["this_run"] == 1  # the cap lifted: only the third query is new
    rows = [json.loads(line) for line in open(tmp_path / "r.jsonl")]
    assert made["examples"] == len(rows) == 3 and {"raw", "reasoning", "teacher", "prompt_version"} <= set(rows[0])
    assert train(ReasoningConfig(stage="data", **common))["this_run"] == 0  # resumed: nothing left to do
    cold = train(ReasoningConfig(stage="coldstart", model=str(lm_dir), output_dir=str(tmp_path / "cold"), steps=2,
                                 **common))  # fmt: skip
    assert cold["examples"] == 3 and set(cold["final"]) >= {"sft", "infonce"}
    grpo = train(ReasoningConfig(stage="grpo", model=str(tmp_path / "cold" / "final"), group=2,
                                 output_dir=str(tmp_path / "grpo"), steps=1, rank_against="corpus", env_slice=2,
                                 **common))  # fmt: skip
    assert grpo["final"]["reencoded"] >= 2 and "reward_mean" in grpo["final"] and 0.0 <= grpo["metrics"][str(toy_beir)]["ndcg@10"] <= 1.0
    log = [json.loads(line) for line in open(tmp_path / "grpo" / "log.jsonl")]
    assert "reward_mean" in log[-1]
    # the test run is kept as DATA.trec (what `irlm compare` and the report test per query): it scores as reported
    from irlm.data import load_dataset
    from irlm.eval import evaluate, read_trec

    ds = load_dataset(str(toy_beir))
    kept = evaluate(read_trec(tmp_path / "grpo" / f"{ds.name}.trec"), ds.qrels["test"])
    assert kept["ndcg@10"] == pytest.approx(grpo["metrics"][str(toy_beir)]["ndcg@10"])


def test_held_out_dev_queries_and_negatives_in_training(lm_dir, toy_beir, tmp_path):
    """dev_queries leaves queries out of training and reports their closed share; rank_against batch ranks
    among the batch's documents plus unjudged corpus documents, up to rank_docs."""
    from irlm.errors import InputError
    from irlm.methods.reasoning.config import ReasoningConfig
    from irlm.methods.reasoning.train import dev_queries, train

    common = {"data": str(toy_beir), "train_split": "test", "eval_data": [], "teacher": "prf-positive",
              "reasoning_file": str(tmp_path / "r.jsonl"), "max_length": 48, "reasoning_tokens": 4, "batch_size": 2,
              "precision": "fp32", "save_every": 0, "device": "cpu", "dev_queries": 1, "probe_every": 1}  # fmt: skip
    train(ReasoningConfig(stage="data", **common))
    held = dev_queries(ReasoningConfig(**common))
    assert len(held) == 1 and held == dev_queries(ReasoningConfig(**common, seed=7))  # the same for every seed
    cold = train(ReasoningConfig(stage="coldstart", model=str(lm_dir), output_dir=str(tmp_path / "cold"), steps=2,
                                 **common))  # fmt: skip
    assert cold["examples"] == 2 and 0.0 <= cold["metrics"][f"{toy_beir}-dev"]["closed"] <= 1.0
    log = [json.loads(line) for line in open(tmp_path / "cold" / "log.jsonl")]
    assert all("closed" in row for row in log)
    grpo = ReasoningConfig(stage="grpo", model=str(tmp_path / "cold" / "final"), group=2, steps=1,
                           output_dir=str(tmp_path / "grpo"), rank_docs=4, **common)  # fmt: skip
    assert train(grpo)["final"]["reencoded"] == 2  # the two unjudged documents, the whole pool
    with pytest.raises(InputError, match="rank_docs"):
        train(ReasoningConfig(**{**grpo.__dict__, "rank_docs": 8, "output_dir": str(tmp_path / "g2")}))


def test_reasoning_ablations_replace_what_fills_think():
    from irlm.errors import InputError
    from irlm.methods.reasoning.train import replace_reasoning

    rows = [{"query_id": "a", "query": "tea", "reasoning": "cold, iced, lemonade"},
            {"query_id": "a", "query": "tea", "reasoning": "cold, iced, lemonade"},
            {"query_id": "b", "query": "qubits", "reasoning": "superposition, spin"}]  # fmt: skip
    assert replace_reasoning(rows, "teacher") == rows
    assert [r["reasoning"] for r in replace_reasoning(rows, "nothing")] == ["", "", ""]
    assert [r["reasoning"] for r in replace_reasoning(rows, "query")] == ["tea", "tea", "qubits"]
    assert [r["reasoning"] for r in replace_reasoning(rows, "none")] == [None, None, None]
    rand = [r["reasoning"].split(", ") for r in replace_reasoning(rows, "random", seed=1)]
    pool = {"cold", "iced", "lemonade", "superposition", "spin"}
    assert [len(r) for r in rand] == [3, 3, 2] and rand[0] == rand[1] and set(sum(rand, [])) <= pool
    assert rand == [r["reasoning"].split(", ") for r in replace_reasoning(rows, "random", seed=1)]
    with pytest.raises(InputError, match="reasoning must be one of"):
        replace_reasoning(rows, "shuffled")


def test_empty_reasoning_is_an_empty_think_block(emb):
    row, start = emb.query_ids("tea", "")
    assert row[start - 1 :] == [emb.think, emb.end, emb.emb]


def test_batched_thinking_equals_one_query_at_a_time(emb):
    """Left-padded batches must not change what greedy decoding writes (positions follow the mask)."""
    queries = ["tea", "a much longer query about quantum bits", "drink", "capital of france"]
    alone = [emb.sample([q], 1, do_sample=False)[0] for q in queries]
    assert emb.sample(queries, 1, do_sample=False, batch_size=4) == alone
    groups = emb.sample(queries[:2], 3, temperature=1.0, batch_size=2)
    assert len(groups) == 6 and all(len(t) <= emb.reasoning_tokens for t, _ in groups)


def test_grpo_actions_are_only_the_tokens_the_model_sampled(emb):
    """A closed sample's actions run through </think><emb>; one cut at the budget keeps its thought only."""
    closed = [7, 8, emb.end, emb.emb]
    cut = [9] * (emb.reasoning_tokens + 2)
    rows, starts = [], []
    for thought in ([7, 8], cut[: emb.reasoning_tokens]):
        row, start = emb.query_ids("tea", thought)
        rows.append(row)
        starts.append(start)
    _, hidden, ids, _ = emb.forward(rows, hidden=True)
    logp, mask = tasks.GRPOTask._token_logprobs(emb, hidden, ids, starts, rows, [closed, cut])
    full = torch.log_softmax(emb.model(input_ids=torch.tensor([rows[0]])).logits[0].float(), -1)
    want = torch.stack([full[t - 1, rows[0][t]] for t in range(starts[0], starts[0] + 4)])
    assert torch.allclose(logp[0, starts[0] : starts[0] + 4], want, atol=1e-5)  # head at 4 positions only
    assert mask[0].sum() == 4 and mask[0, starts[0] : starts[0] + 4].all()
    assert mask[1].sum() == emb.reasoning_tokens and mask[1, len(rows[1]) - 2 :].sum() == 0


def test_ablation_filler_gives_test_queries_the_training_form():
    from irlm.errors import InputError
    from irlm.methods.reasoning.train import ablation_filler

    rows = [{"query_id": "a", "query": "tea", "reasoning": "cold, iced, lemonade, fizzy"},
            {"query_id": "b", "query": "qubits", "reasoning": "superposition, spin"}]  # fmt: skip
    assert ablation_filler("nothing", rows)("t1", "coffee") == ""
    assert ablation_filler("query", rows)("t1", "coffee") == "coffee"
    words = ablation_filler("random", rows, seed=3)("t1", "coffee").split(", ")
    assert len(words) == 3 and set(words) <= {"cold", "iced", "lemonade", "fizzy", "superposition", "spin"}
    assert ablation_filler("random", rows, seed=3)("t1", "x") == ", ".join(words)  # fixed per query id
    with pytest.raises(InputError, match="eval_reasoning source"):
        ablation_filler("teacher", rows)


# ---- GRPO goes the right way: a fixed group of thoughts per query, rewards chosen by the test


def _fixed_group(emb, n_queries: int, group: int):
    """Query-major (thought, raw) samples: sample k of every group repeats its own token and closes properly."""
    return [([100 + k] * 3, [100 + k] * 3 + [emb.end, emb.emb]) for _ in range(n_queries) for k in range(group)]


def _action_logprobs(emb, query: str, samples) -> torch.Tensor:
    """Summed log-probability of each sample's actions (its thought and </think><emb>) under the model now."""
    rows, starts = zip(*(emb.query_ids(query, thought) for thought, _ in samples))
    with torch.no_grad():
        _, hidden, ids, _ = emb.forward(list(rows), hidden=True)
        logp, mask = tasks.GRPOTask._token_logprobs(emb, hidden, ids, list(starts), list(rows), [r for _, r in samples])
    return (logp * mask).sum(-1)


def test_one_grpo_step_raises_the_better_samples_probability(emb, monkeypatch):
    """Sample 0 of the group earns reward 1, the others 0: one small step up the policy gradient must make
    sample 0 likelier against the rest of its group (a flipped advantage does the opposite). The claim is
    relative: on this sharp random model every sample's gradient shares a large common part."""
    G, query = 4, EXAMPLES[:1]
    samples = _fixed_group(emb, 1, G)
    monkeypatch.setattr(emb, "sample", lambda queries, n, **kw: samples)
    task = tasks.GRPOTask(emb, preset="lrem", group=G, gamma_nce=0.0)
    task.reward_fn = lambda texts, lengths, ranks, n: [1.0, 0.0, 0.0, 0.0]
    before = _action_logprobs(emb, query[0]["query"], samples)
    emb.model.zero_grad(set_to_none=True)
    task.step(query, seed=0)
    with torch.no_grad():
        for p in emb.model.parameters():
            if p.grad is not None:
                p -= 1e-3 * p.grad
    change = _action_logprobs(emb, query[0]["query"], samples) - before
    assert change[0] > change[1:].mean() + 0.1, change


def test_rewards_are_normalised_within_each_querys_group(emb, monkeypatch):
    """Query 0's best sample is its first, query 1's its last: each is the only one above its own group's mean."""
    G = 4
    monkeypatch.setattr(emb, "sample", lambda queries, n, **kw: _fixed_group(emb, len(queries), G))
    seen = []
    real_loss = tasks.grpo_loss
    monkeypatch.setattr(tasks, "grpo_loss", lambda lp, old, adv, mask, **kw: seen.append(adv) or real_loss(
        lp, old, adv, mask, **kw))  # fmt: skip
    task = tasks.GRPOTask(emb, preset="lrem", group=G, gamma_nce=0.0)
    task.reward_fn = lambda texts, lengths, ranks, n: [1.0, 0, 0, 0, 0, 0, 0, 1.0]
    task.step(EXAMPLES, seed=0)
    high, low = 3 / math.sqrt(3), -1 / math.sqrt(3)  # (1 - 1/4) / sqrt(3/16) and (0 - 1/4) / sqrt(3/16)
    want = torch.tensor([high, low, low, low, low, low, low, high])
    assert torch.allclose(seen[0], want, atol=1e-4), seen[0]


def test_grpo_logprobs_are_those_of_the_sampling_distribution(emb, monkeypatch):
    """Samples drawn at temperature 2 are actions of softmax(logits / 2): the policy loss must score them so."""
    monkeypatch.setattr(emb, "sample", lambda queries, n, **kw: _fixed_group(emb, len(queries), 2))
    seen = []
    real_loss = tasks.grpo_loss
    monkeypatch.setattr(tasks, "grpo_loss", lambda lp, old, adv, mask, **kw: seen.append((lp, mask)) or real_loss(
        lp, old, adv, mask, **kw))  # fmt: skip
    tasks.GRPOTask(emb, preset="lrem", group=2, sample_temperature=2.0).step(EXAMPLES, seed=0)
    thought, _ = _fixed_group(emb, 1, 2)[0]
    row, start = emb.query_ids(EXAMPLES[0]["query"], thought)
    with torch.no_grad():
        logits = emb.model(input_ids=torch.tensor([row])).logits[0].float()
    full = torch.log_softmax(logits / 2.0, -1)
    want = torch.stack([full[t - 1, row[t]] for t in range(start, len(row))])
    lp, mask = seen[0]
    assert torch.allclose(lp[0][mask[0].bool()], want, atol=1e-5)


def test_grpo_sampling_leaves_the_global_rng_alone(emb):
    """Sampling draws from its own seeded generator: the global state (dropout, the next micro-batch) is as
    before, the same seed and queries sample the same, and micro-batches of one step seed differently."""
    torch.manual_seed(11)
    state = torch.get_rng_state()
    task = tasks.GRPOTask(emb, preset="lrem", group=2)
    first = task._sample([ex["query"] for ex in EXAMPLES], seed=5)
    task.step(EXAMPLES, seed=5)
    assert torch.equal(torch.get_rng_state(), state)
    assert task._sample([ex["query"] for ex in EXAMPLES], seed=5) == first
    assert tasks.sample_seed(5, ["a", "b"]) != tasks.sample_seed(5, ["c", "d"])
    assert tasks.sample_seed(5, ["a", "b"]) != tasks.sample_seed(6, ["a", "b"])


def test_a_torn_last_line_of_the_reasoning_file_is_redone(lm_dir, toy_beir, tmp_path):
    """A kill mid-write leaves half a row: the resumed data stage drops it and reasons about its query again."""
    from irlm.methods.reasoning.config import ReasoningConfig
    from irlm.methods.reasoning.train import train

    path = tmp_path / "r.jsonl"
    common = {"data": str(toy_beir), "train_split": "test", "teacher": str(lm_dir), "reasoning_file": str(path),
              "device": "cpu"}  # fmt: skip
    train(ReasoningConfig(stage="data", max_queries=2, **common))
    whole = path.read_text()
    path.write_text(whole[: len(whole) - 20])  # the second row loses its end and its newline
    made = train(ReasoningConfig(stage="data", **common))
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert made["this_run"] == 2 and sorted(r["query_id"] for r in rows) == ["q1", "q2", "q3"]


def test_reasoning_infonce_sees_every_processs_documents(tmp_path):
    """Two processes, two queries each: each query's denominator holds all four documents, as in one process."""
    from conftest import torchrun

    script = Path(__file__).parents[1] / "scripts" / "reasoning_nce.py"
    sys.path.insert(0, str(script.parent))
    from reasoning_nce import batch

    torchrun([script, tmp_path / "two.json"], {**os.environ, "OMP_NUM_THREADS": "1"})
    q, d = batch()
    logits = q @ d.T / 0.1  # (4, 4): every query against every document
    want = [torch.nn.functional.cross_entropy(logits[i : i + 2], torch.arange(i, i + 2)).item() for i in (0, 2)]
    assert json.loads((tmp_path / "two.json").read_text()) == pytest.approx(want, rel=1e-5)


# ---- rewards that cannot be gamed: a sample that never closed its thought is not ranked


def _mixed_group(emb):
    """Query-major samples of one query: two closed with </think><emb>, one cut at the budget, one stopped at
    end-of-text, one that wrote text between </think> and <emb>."""
    eos, budget = emb.tokenizer.eos_token_id, emb.reasoning_tokens
    raws = [[101, 102, emb.end, emb.emb], [103, emb.end, emb.emb], [104] * (budget + 2), [105, eos],
            [106, emb.end, 107, emb.emb]]  # fmt: skip
    return [(raw[: raw.index(emb.end)] if emb.end in raw else [t for t in raw if t != eos][:budget], raw)
            for raw in raws]  # fmt: skip


@pytest.mark.parametrize("pay", [False, True])
def test_an_unclosed_sample_is_not_ranked_unless_asked(emb, monkeypatch, pay):
    samples = _mixed_group(emb)
    monkeypatch.setattr(emb, "sample", lambda queries, n, **kw: samples * len(queries))
    seen = []
    task = tasks.GRPOTask(emb, preset="lrem", group=5, pay_unclosed=pay)
    real = task.reward_fn
    task.reward_fn = lambda texts, lengths, ranks, n: seen.append(list(ranks)) or real(texts, lengths, ranks, n)
    parts = task.step(EXAMPLES, seed=0)
    ranked = [r is not None for r in seen[0]]
    assert ranked == ([True] * 10 if pay else [True, True, False, False, False] * 2)
    assert parts["closed"] == pytest.approx(2 / 5)
    if not pay:  # unformatted and unranked: the cut sample earns nothing at all, not 1.0 of the 1.7
        assert task.last_rewards[2] == 0.0 and task.last_rewards[3] == 0.0


def test_an_unranked_sample_earns_no_accuracy_or_dcg():
    assert tasks.lrem_rewards(["<think>a</think><emb>"], [1], [None], 8) == [pytest.approx(0.7)]
    assert tasks.searchr3_rewards(["<think>a</think><emb>"], [1], [None], 8) == [0.0]


def test_is_closed_needs_think_then_emb_within_the_budget():
    end, e = 99, 100
    assert tasks.is_closed([7, 8, end, e], end, e, budget=4)
    assert not tasks.is_closed([7, 8, end, 9, e], end, e, budget=4)  # text between </think> and <emb>
    assert not tasks.is_closed([7, 8, 2], end, e, budget=4)  # end-of-text
    assert not tasks.is_closed([7] * 5 + [end, e], end, e, budget=4)  # closed, but past the budget
    assert tasks.is_closed([7] * 4 + [end, e], end, e, budget=4)


# ---- GRPO as DeepSeekMath runs it: sampling-time log-probs, mu updates per sampled batch, KL to a reference


def _sgd(model, lr: float) -> None:
    with torch.no_grad():
        for p in model.parameters():
            if p.grad is not None:
                p -= lr * p.grad
    model.zero_grad(set_to_none=True)


def _toy_task(emb, monkeypatch, rewards, **kw):
    """A GRPO task on fixed samples (sample k repeats its own token) with rewards chosen by the test; counts
    how often it sampled and keeps every (log-probs, old log-probs) pair the loss saw."""
    G = len(rewards)
    calls, seen = [], []
    monkeypatch.setattr(emb, "sample", lambda queries, n, **k: calls.append(1) or _fixed_group(emb, len(queries), G))
    real_loss = tasks.grpo_loss
    monkeypatch.setattr(tasks, "grpo_loss", lambda lp, old, adv, mask, **k: seen.append((lp.detach(), old, mask)) or
                        real_loss(lp, old, adv, mask, **k))  # fmt: skip
    task = tasks.GRPOTask(emb, preset="lrem", group=G, gamma_nce=0.0, **kw)
    task.reward_fn = lambda texts, lengths, ranks, n: list(rewards)
    return task, calls, seen


def test_two_updates_per_sampled_batch_make_the_clip_act(emb, monkeypatch):
    """mu = 2: the second step reuses the first's samples and takes the ratio against their sampling-time
    log-probs, so after a large step the ratio leaves [0.8, 1.2] and the clip acts."""
    task, calls, seen = _toy_task(emb, monkeypatch, [1.0, 0.0, 0.0, 0.0], ppo_epochs=2)
    task.on_step(0, 4)
    first = task.step(EXAMPLES[:1], seed=0)
    _sgd(emb.model, 5e-2)
    task.on_step(1, 4)
    second = task.step(EXAMPLES[1:], seed=1)  # the loop's new examples are not used: the samples are reused
    assert len(calls) == 1 and first["clip_fraction"] == 0.0
    assert second["clip_fraction"] > 0.0
    (lp0, old0, _), (lp1, old1, mask) = seen
    assert torch.equal(old1, old0) and torch.equal(old0, lp0)  # the old policy is the one that sampled
    assert not torch.allclose(lp1[mask.bool()], old1[mask.bool()])
    task.on_step(2, 4)
    task.step(EXAMPLES[:1], seed=2)
    assert len(calls) == 2  # a new sampled batch every mu steps


def test_one_update_per_sampled_batch_keeps_the_ratio_at_one(emb, monkeypatch):
    task, calls, seen = _toy_task(emb, monkeypatch, [1.0, 0.0, 0.0, 0.0], ppo_epochs=1)
    for step in range(2):
        task.on_step(step, 2)
        parts = task.step(EXAMPLES[:1], seed=step)
        _sgd(emb.model, 5e-2)
        assert parts["clip_fraction"] == 0.0
    assert len(calls) == 2
    assert all(torch.equal(lp, old) for lp, old, _ in seen)


def test_kl_to_the_reference_is_zero_before_the_first_update_and_pulls_back_after(emb, monkeypatch):
    """The reference is the starting model: KL 0 at the first update, > 0 once the policy moved, and a step on
    the KL term alone (equal rewards: no policy gradient) brings the policy back towards it."""
    rewards = [1.0, 0.0, 0.0, 0.0]
    task, _, _ = _toy_task(emb, monkeypatch, rewards, ppo_epochs=1, kl_coef=1.0)
    task.on_step(0, 3)
    assert task.step(EXAMPLES[:1], seed=0)["kl"] == pytest.approx(0.0, abs=1e-9)
    _sgd(emb.model, 5e-2)
    rewards[:] = [0.5] * 4
    task.on_step(1, 3)
    moved = task.step(EXAMPLES[:1], seed=1)["kl"]
    assert moved > 1e-4
    _sgd(emb.model, 1e-2)
    task.on_step(2, 3)
    assert task.step(EXAMPLES[:1], seed=2)["kl"] < moved


def test_the_reference_is_frozen_and_only_kept_with_a_kl_term(emb):
    assert tasks.GRPOTask(emb, group=2).reference is None
    ref = tasks.GRPOTask(emb, group=2, kl_coef=0.04).reference
    assert ref is not emb.model and not any(p.requires_grad for p in ref.parameters())


# ---- a cold start that can learn the format


def test_new_markers_start_as_the_mean_of_their_spelled_out_tokens(lm_dir):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    original = AutoModelForCausalLM.from_pretrained(lm_dir)
    tok = AutoTokenizer.from_pretrained(lm_dir)
    emb = ReasoningEmbedder.from_pretrained(str(lm_dir), device="cpu")
    tables = [(original.get_input_embeddings().weight, emb.model.get_input_embeddings().weight),
              (original.get_output_embeddings().weight, emb.model.get_output_embeddings().weight)]  # untied
    for text, new in (("<think>", emb.think), ("</think>", emb.end), ("<emb>", emb.emb)):
        spelled = tok(text, add_special_tokens=False)["input_ids"]
        assert len(spelled) > 1
        for before, after in tables:
            assert torch.allclose(after[new], before[spelled].mean(0), atol=1e-6), text
    n = original.get_input_embeddings().weight.shape[0]
    assert torch.equal(emb.model.get_input_embeddings().weight[:n], original.get_input_embeddings().weight)


def test_the_cold_start_logs_the_closed_share_of_its_probe(emb, monkeypatch):
    probe = ["tea", "quantum bits", "capital of france"]
    task = tasks.ColdStartTask(emb, probe=probe, probe_every=2, lambda_sft_early=5.0, early_steps=1)
    closes = [[101, emb.end, emb.emb], [101, 102], [emb.end, emb.emb]]
    monkeypatch.setattr(emb, "sample", lambda queries, n, **kw: [([], r) for r in closes[: len(queries)]])
    assert tasks.closed_share(emb, probe) == pytest.approx(2 / 3)
    task.on_step(0, 4)
    parts = task.step(EXAMPLES)
    assert parts["closed"] == pytest.approx(2 / 3) and parts["lambda_sft"] == 5.0
    task.on_step(1, 4)
    parts = task.step(EXAMPLES)
    assert "closed" not in parts and parts["lambda_sft"] == 0.1


def test_reasoning_lr_follows_a_cosine_after_warm_up(tmp_path):
    """The learning rate the trainer uses at each step: warm-up, then half a cosine to 0 (LREM), not a line."""
    from irlm.methods.reasoning.config import ReasoningConfig
    from irlm.methods.reasoning.train import train_config
    from irlm.train.loop import Trainer

    class Toy:
        def __init__(self):
            self.w = torch.nn.Parameter(torch.zeros(1))

        def parameters(self):
            return [self.w]

        def named_parameters(self):
            return [("w", self.w)]

        def step(self, examples, scale=1.0, seed=0):
            (self.w.sum() * scale).backward()
            return {"loss": 0.0}

        def save(self, folder):
            pass

    cfg = ReasoningConfig(steps=40, batch_size=1, lr=1.0, save_every=0, output_dir=str(tmp_path))
    history = Trainer(Toy(), [0], train_config(cfg)).fit()
    warm = 1  # 3 % of 40 steps, at least one
    want = [0.5 * (1 + math.cos(math.pi * (s - warm) / (40 - warm))) if s >= warm else (s + 1) / warm
            for s in range(40)]  # fmt: skip
    assert [row["lr"] for row in history] == pytest.approx(want, abs=1e-9)


def test_teacher_keywords_are_cut_to_whole_keywords_within_the_budget(emb):
    from irlm.methods.reasoning.train import fit_budget

    ex = {"query": "tea", "reasoning": "cold, lemonade, iced, fizzy, sparkling water, citrus, mint"}
    cut = fit_budget(ex, emb)["reasoning"]
    assert ex["reasoning"].startswith(cut) and cut.split(", ") == ex["reasoning"].split(", ")[: len(cut.split(", "))]
    assert len(emb.ids(" " + cut)) <= emb.reasoning_tokens  # 6 here
    longer = ", ".join(ex["reasoning"].split(", ")[: len(cut.split(", ")) + 1])
    assert len(emb.ids(" " + longer)) > emb.reasoning_tokens  # as many whole keywords as fit, not fewer
    assert fit_budget({"query": "q", "reasoning": "q"}, emb)["reasoning"] == "q"  # the query ablation passes
    assert fit_budget({"query": "q", "reasoning": None}, emb)["reasoning"] is None


def test_sft_only_cold_start_steps_skip_the_documents(emb, monkeypatch):
    task = tasks.ColdStartTask(emb, lambda_sft=1.0, lambda_nce=0.0)
    widths = []
    real = emb.forward
    monkeypatch.setattr(emb, "forward", lambda rows, **kw: widths.append(len(rows)) or real(rows, **kw))
    parts = task.step(EXAMPLES)
    assert widths == [2] and "infonce" not in parts and parts["sft"] > 0  # the queries' forward only
    assert emb.model.get_input_embeddings().weight.grad[emb.end].abs().sum() > 0


def test_the_cold_start_teaches_thoughts_cut_to_thought_tokens_not_the_budget(lm_dir, toy_beir, tmp_path, monkeypatch):
    """thought_tokens cuts the teacher's thoughts below the generation budget (reasoning_tokens), so a greedy
    thought a token or two longer than the ones it was taught still closes within the budget."""
    from irlm.errors import InputError
    from irlm.methods.reasoning import train as T
    from irlm.methods.reasoning.config import ReasoningConfig

    keywords = "superposition, entanglement, decoherence, interference, measurement, amplitude"
    rows = [{"query_id": q, "reasoning": keywords, "teacher": "t"} for q in ("q1", "q2", "q3")]
    (tmp_path / "r.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    seen = []

    class Recorder:  # the examples the cold start trains on, without training
        def __init__(self, task, examples, config):
            seen.extend(examples)

        def fit(self):
            return []

    monkeypatch.setattr(T, "Trainer", Recorder)
    common = {"data": str(toy_beir), "train_split": "test", "eval_data": [], "reasoning_file": str(tmp_path / "r.jsonl"),
              "max_length": 48, "reasoning_tokens": 12, "precision": "fp32", "device": "cpu", "steps": 1}  # fmt: skip
    T.train(ReasoningConfig(model=str(lm_dir), thought_tokens=6, output_dir=str(tmp_path / "cold"), **common))
    emb = ReasoningEmbedder.from_pretrained(str(lm_dir), device="cpu", reasoning_tokens=12)
    at_budget = T.fit_budget({"reasoning": keywords}, emb)["reasoning"]
    assert len(emb.ids(" " + at_budget)) > 6  # the budget alone would keep longer thoughts
    assert len(seen) == 3 and all(0 < len(emb.ids(" " + ex["reasoning"])) <= 6 for ex in seen)
    assert T.thought_budget(ReasoningConfig(**common)) == 12  # 0: the teacher's thoughts fill the budget
    with pytest.raises(InputError, match="thought_tokens"):
        T.train(ReasoningConfig(model=str(lm_dir), thought_tokens=13, output_dir=str(tmp_path / "c2"), **common))


def test_the_early_sft_weight_holds_for_exactly_the_first_sft_early_steps(lm_dir, toy_beir, tmp_path):
    from irlm.methods.reasoning.config import ReasoningConfig
    from irlm.methods.reasoning.train import train

    common = {"data": str(toy_beir), "train_split": "test", "eval_data": [], "teacher": "prf-positive",
              "reasoning_file": str(tmp_path / "r.jsonl"), "max_length": 48, "reasoning_tokens": 4, "batch_size": 2,
              "precision": "fp32", "save_every": 0, "device": "cpu"}  # fmt: skip
    train(ReasoningConfig(stage="data", **common))
    train(ReasoningConfig(model=str(lm_dir), output_dir=str(tmp_path / "cold"), steps=4, lambda_sft=0.5,
                          lambda_sft_early=3.0, sft_early_steps=2, **common))  # fmt: skip
    log = [json.loads(line) for line in open(tmp_path / "cold" / "log.jsonl")]
    assert [row["lambda_sft"] for row in log] == [3.0, 3.0, 0.5, 0.5]
