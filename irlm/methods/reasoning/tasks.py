"""Training tasks of the reasoning embedders, run by the shared loop (irlm/train/loop.py).

- ColdStartTask: lambda1 * SFT(reasoning tokens, </think>, <emb>) + lambda2 * InfoNCE (LREM: 0.1 and 1).
- GRPOTask: G sampled reasonings per query, rewards from the embedding each one leads to,
  group-normalised advantages, the clipped policy loss against the sampling-time log-probs over mu
  updates per sampled batch and a k3 KL to a frozen reference (DeepSeekMath), plus gamma2 * InfoNCE (1, 0.1).

trl's GRPOTrainer scores completions with reward functions that see only text; these rewards need
the hidden state at <emb> of each completion and a corpus index that moves with the policy, so the
GRPO step is written on the shared loop instead.
"""

from __future__ import annotations

import copy
import random
from dataclasses import dataclass

import numpy as np
import torch

from irlm.errors import InputError
from irlm.index.trie import common_prefix
from irlm.losses.contrastive import info_nce_from_embeddings
from irlm.losses.grpo import group_advantages, grpo_loss
from irlm.methods.reasoning import rewards as R
from irlm.methods.reasoning.model import ReasoningEmbedder


def info_nce(q: torch.Tensor, d: torch.Tensor, temperature: float) -> torch.Tensor:
    """Query i's positive is document i; every other document of the global batch is a negative: the
    documents of every process are gathered (METHODS.md §0), as the shared contrastive loss does."""
    return info_nce_from_embeddings(q, d, temperature)


def reasoning_sft(logps: list[torch.Tensor]) -> torch.Tensor:
    """Mean NLL over every target token of the batch, from per-row log-probabilities (span_logprobs)."""
    terms = [lp for lp in logps if lp.numel()]
    return -torch.cat(terms).mean() if terms else torch.zeros((), device=logps[0].device)


class ColdStartTask:
    """Examples: dicts with query, reasoning (keywords text), positive (document text).

    `probe` (queries the model never trains on) and `probe_every`: every that many steps, the share of the
    probe's greedy thoughts that close with </think><emb> is measured before the step and logged as `closed`.
    `lambda_sft_early` replaces lambda_sft for the first `early_steps` steps: the format (when to close) is
    learnt first, then InfoNCE leads as in LREM."""

    def __init__(self, emb: ReasoningEmbedder, lambda_sft: float = 0.1, lambda_nce: float = 1.0,
                 temperature: float = 0.05, probe: list[str] = (), probe_every: int = 0,
                 lambda_sft_early: float | None = None, early_steps: int = 0):  # fmt: skip
        self.emb, self.lambda_sft, self.lambda_nce, self.temperature = emb, lambda_sft, lambda_nce, temperature
        self.probe, self.probe_every = list(probe), probe_every
        self.lambda_sft_early, self.early_steps = lambda_sft_early, early_steps
        self.weight, self.closed = lambda_sft, None

    def parameters(self):
        return self.emb.model.parameters()

    def named_parameters(self):
        return self.emb.model.named_parameters()

    def on_step(self, step: int, max_steps: int) -> None:
        early = self.lambda_sft_early is not None and step < self.early_steps
        self.weight = self.lambda_sft_early if early else self.lambda_sft
        probing = self.probe and self.probe_every and step % self.probe_every == 0
        self.closed = closed_share(self.emb, self.probe) if probing else None

    def step(self, examples: list[dict], scale: float = 1.0, seed: int = 0) -> dict[str, float]:
        built = [self.emb.query_ids(ex["query"], ex.get("reasoning")) for ex in examples]
        rows = [r for r, _ in built]
        q, hidden, ids, _ = self.emb.forward(rows, hidden=True)
        # through </think><emb>: a model that never learns to close its reasoning and emit <emb> writes
        # prose until the token budget runs out, and GRPO's format reward stays 0 for every sample
        sft = reasoning_sft(self.emb.span_logprobs(hidden, ids, [(s, len(r)) for r, s in built]))
        loss, parts = self.weight * sft, {"sft": sft.item(), "lambda_sft": self.weight}
        if self.lambda_nce:  # lambda_nce 0: SFT-only steps on the thoughts, without the documents' forward
            d = self.emb.forward([self.emb.doc_ids(ex["positive"]) for ex in examples])[0]
            nce = info_nce(q, d, self.temperature)
            loss, parts["infonce"] = loss + self.lambda_nce * nce, nce.item()
        (loss * scale).backward()
        return {**parts, **({} if self.closed is None else {"closed": self.closed})}

    def save(self, folder) -> None:
        self.emb.save(folder)


def reasoning_length(raw: list[int], end: int) -> int | None:
    """Tokens the sample reasoned for before </think>; None when it never closed its thought, whether it ran
    past its budget or stopped at end-of-text: either way it did not keep to the budgeted format."""
    return raw.index(end) if end in raw else None


def is_closed(raw: list[int], end: int, emb: int, budget: int) -> bool:
    """Whether a sample closed its thought itself within `budget` tokens: </think> then <emb> at once."""
    n = reasoning_length(raw, end)
    return n is not None and n <= budget and raw[n + 1 : n + 2] == [emb]


def closed_share(emb: ReasoningEmbedder, queries: list[str]) -> float:
    """Share of the queries whose greedy thought closes with </think><emb> within the reasoning budget."""
    samples = emb.sample(list(queries), 1, do_sample=False)
    return sum(is_closed(raw, emb.end, emb.emb, emb.reasoning_tokens) for _, raw in samples) / len(samples)


def length_part(n_tokens: int | None) -> float:
    """LREM's length(<= 16) term; a thought that was never closed earns nothing, however short."""
    return 0.0 if n_tokens is None else R.length_reward(n_tokens)


def accuracy_part(rank: int | None, n_docs: int) -> float:
    """LREM's rank accuracy; None (a sample left unranked: it never closed its thought) earns nothing."""
    return 0.0 if rank is None else R.rank_accuracy(rank, n_docs)


def lrem_rewards(texts: list[str], lengths: list[int | None], ranks: list[int | None], n_docs: int) -> list[float]:
    """0.5 format + 0.2 length(<= 16) + 1.0 rank accuracy (LREM)."""
    w = R.PRESETS["lrem"]
    return [R.combine({"format": R.format_reward(t), "length": length_part(n), "accuracy":
                       accuracy_part(r, n_docs)}, w) for t, n, r in zip(texts, lengths, ranks)]  # fmt: skip


def sample_seed(seed: int, queries: list[str]) -> int:
    """The sampling seed of one micro-batch: a function of the step's seed and the micro-batch's own queries,
    so the micro-batches of one step draw different noise and a rerun draws the same."""
    return random.Random(f"{seed}:" + "\x1f".join(queries)).getrandbits(63)


def searchr3_rewards(texts: list[str], lengths: list[int], ranks: list[int | None], n_docs: int) -> list[float]:
    """DCG-scaled: how high the relevant document ranks for the embedding the reasoning leads to; a sample
    left unranked (it never wrote </think><emb>, so it has no embedding of its own) scores 0."""
    return [0.0 if r is None else R.dcg_reward([r]) for r in ranks]


REWARDS = {"lrem": lrem_rewards, "searchr3": searchr3_rewards}


@dataclass
class Rollout:
    """One sampled micro-batch and what the mu updates on it share (DeepSeekMath's GRPO, Algorithm 1): the
    samples, their rewards and advantages, the sampling-time log-probs of their actions (the old policy of
    the clipped ratio) and the frozen reference's. The last four are filled at the first update."""

    examples: list[dict]
    rows: list[list[int]]
    starts: list[int]
    raws: list[list[int]]
    doc_rows: list[list[int]]
    updates: int = 0
    reward: torch.Tensor | None = None
    adv: torch.Tensor | None = None
    old: torch.Tensor | None = None  # (B*G, T) log-probs of each row's actions when it was sampled
    ref: torch.Tensor | None = None  # (B*G, T) the same under the reference model
    closed: float = 0.0
    reencoded: float = 0.0


class GRPOTask:
    """Examples: dicts with query and positive (and positive_id with an env). Each sample is ranked against
    the batch's documents plus `negatives` (a SelectiveIndex of other corpus documents, so that N reaches
    LREM's 256 at a CPU batch size), or, given `env` (a SelectiveIndex, Search-R3's environment), against
    the whole corpus, whose embeddings the env refreshes in part each step.

    Each sampled batch serves `ppo_epochs` (mu) consecutive optimizer steps: the first records the
    sampling-time log-probs, the later ones take the clipped ratio against them, so the clip acts when
    mu > 1. `kl_coef` > 0 adds DeepSeekMath's k3 KL to a frozen copy of the starting model. A sample that
    never closed its thought with </think><emb> is not ranked (no rank or DCG term) unless `pay_unclosed`."""

    def __init__(self, emb: ReasoningEmbedder, preset: str = "lrem", group: int = 8, gamma_grpo: float = 1.0,
                 gamma_nce: float = 0.1, clip: float = 0.2, temperature: float = 0.05, sample_temperature: float = 1.0,
                 env=None, chunk: int = 0, ppo_epochs: int = 1, kl_coef: float = 0.0, negatives=None,
                 pay_unclosed: bool = False):  # fmt: skip
        if ppo_epochs < 1:
            raise InputError(f"ppo_epochs must be at least 1, not {ppo_epochs}", field="ppo_epochs")
        self.emb, self.reward_fn, self.group = emb, REWARDS[preset], group
        self.gamma_grpo, self.gamma_nce, self.clip = gamma_grpo, gamma_nce, clip
        self.temperature, self.sample_temperature, self.env = temperature, sample_temperature, env
        self.chunk = chunk  # samples per forward/backward; 0 = all B*G at once
        self.ppo_epochs, self.kl_coef, self.negatives, self.pay_unclosed = ppo_epochs, kl_coef, negatives, pay_unclosed
        # the reference is the starting (cold-started) model, frozen; full fine-tuning needs a copy of it
        self.reference = copy.deepcopy(emb.model).requires_grad_(False) if kl_coef else None
        self.rollouts: dict[int, Rollout] = {}  # micro-batch index within a step -> its rollout
        self.fresh, self.micro = True, 0
        self.last_rewards: list[float] = []

    def parameters(self):
        return self.emb.model.parameters()

    def named_parameters(self):
        return self.emb.model.named_parameters()

    def on_step(self, step: int, max_steps: int) -> None:
        """Called by the loop before each step: new samples every ppo_epochs steps, else the last ones again
        (the loop's examples of those steps are not used). A run resumed mid-cycle samples afresh."""
        self.fresh, self.micro = step % self.ppo_epochs == 0, 0

    def step(self, examples: list[dict], scale: float = 1.0, seed: int = 0) -> dict[str, float]:
        key, self.micro = self.micro, self.micro + 1
        if self.fresh or key not in self.rollouts:
            self.rollouts[key] = self._rollout(examples, seed)
        ro = self.rollouts[key]
        first = ro.updates == 0
        if self.chunk and self.chunk < len(ro.rows):
            policy, nce, parts = self._chunked_backward(ro, scale, first)
        else:
            policy, nce, parts = self._backward(ro, scale, first)
        ro.updates += 1
        self.last_rewards = ro.reward.tolist()
        extra = {"reencoded": ro.reencoded if first else 0.0} if (self.env or self.negatives) is not None else {}
        return {**extra, "grpo": policy, "infonce": nce, "kl": parts["kl"], "clip_fraction": parts["clip_fraction"],
                "reward_mean": ro.reward.mean().item(), "reward_max": ro.reward.max().item(),
                "closed": ro.closed}  # fmt: skip

    def _rollout(self, examples: list[dict], seed: int) -> Rollout:
        emb, G = self.emb, self.group
        samples = self._sample([ex["query"] for ex in examples], seed)
        rows, starts = [], []
        for i, ex in enumerate(examples):
            for thought, _ in samples[i * G : (i + 1) * G]:
                row, start = emb.query_ids(ex["query"], thought)
                rows.append(row)
                starts.append(start)
        doc_rows = [emb.doc_ids(ex["positive"]) for ex in examples]
        return Rollout(list(examples), rows, starts, [raw for _, raw in samples], doc_rows)

    def _backward(self, ro: Rollout, scale: float, first: bool) -> tuple[float, float, dict]:
        """One pass over all B*G samples: rewards (at the first update), the policy loss and InfoNCE."""
        emb, G = self.emb, self.group
        q, hidden, ids, _ = emb.forward(ro.rows, hidden=True)
        docs = emb.forward(ro.doc_rows)[0]
        if first:
            self._score(ro, q.detach(), docs.detach())
        everything = slice(0, len(ro.rows))
        logp, mask = self._token_logprobs(emb, hidden, ids, ro.starts, ro.rows, ro.raws, self.sample_temperature)
        policy, parts = self._policy_loss(ro, everything, logp, mask, first)
        nce = info_nce(q.view(len(ro.examples), G, -1)[:, 0], docs, self.temperature)  # one sample per query
        ((self.gamma_grpo * policy + self.gamma_nce * nce) * scale).backward()
        return policy.item(), nce.item(), {k: float(v) for k, v in parts.items()}

    def _policy_loss(self, ro: Rollout, part: slice, logp: torch.Tensor, mask: torch.Tensor, first: bool):
        """GRPO's clipped loss of rows `part`, against their sampling-time and reference log-probs."""
        old = self._old_logprobs(ro, part, logp, first)
        ref = self._ref_logprobs(ro, part, first) if self.reference is not None else None
        return grpo_loss(logp, old, ro.adv[part], mask, clip=self.clip, ref_logprobs=ref, kl_coef=self.kl_coef)

    @staticmethod
    def _old_logprobs(ro: Rollout, part: slice, logp: torch.Tensor, first: bool) -> torch.Tensor:
        """At the first update the policy is still the one that sampled, so its log-probs are the sampling-time
        ones: recorded then and kept for the mu - 1 updates after it (the old policy of the ratio)."""
        width = logp.shape[1]
        if first:
            if ro.old is None:
                ro.old = logp.new_zeros(len(ro.rows), max(map(len, ro.rows)))
            ro.old[part, :width] = logp.detach()
        return ro.old[part, :width]

    @torch.no_grad()
    def _ref_logprobs(self, ro: Rollout, part: slice, first: bool) -> torch.Tensor:
        """The frozen reference's log-probs of rows `part`, computed once per rollout (it never changes)."""
        rows = ro.rows[part]
        width = max(map(len, rows))
        if first:
            if ro.ref is None:
                ro.ref = torch.zeros(len(ro.rows), max(map(len, ro.rows)), device=self.emb.device)
            _, hidden, ids, _ = self.emb.forward(rows, hidden=True, model=self.reference)
            lp, _ = self._token_logprobs(self.emb, hidden, ids, ro.starts[part], rows, ro.raws[part],
                                         self.sample_temperature, model=self.reference)  # fmt: skip
            ro.ref[part, :width] = lp
        return ro.ref[part, :width]

    def _sample(self, queries: list[str], seed: int) -> list:
        """G samples per query from a forked RNG: the global state (dropout, other tasks) is left untouched."""
        devices = [self.emb.device] if self.emb.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(sample_seed(seed, queries))
            return self.emb.sample(queries, self.group, temperature=self.sample_temperature)

    def _score(self, ro: Rollout, q: torch.Tensor, docs: torch.Tensor) -> None:
        """Each sample's reward and its group-normalised advantage, from detached embeddings."""
        emb, pool = self.emb, self.env or self.negatives
        encoded_before = pool.encoded if pool is not None else 0
        closed = [is_closed(raw, emb.end, emb.emb, emb.reasoning_tokens) for raw in ro.raws]
        ranks = self._ranks(q, docs, ro.examples)
        # a sample that never closed has no embedding of its own (the row appends </think><emb> for it)
        ranks = [r if ok or self.pay_unclosed else None for r, ok in zip(ranks, closed)]
        texts = [R.THINK_OPEN + emb.tokenizer.decode(raw) for raw in ro.raws]
        lengths = [reasoning_length(raw, emb.end) for raw in ro.raws]
        reward = torch.tensor(self.reward_fn(texts, lengths, ranks, self.n_docs(len(ro.examples))), dtype=torch.float32)
        ro.reward = reward
        ro.adv = group_advantages(reward.view(len(ro.examples), self.group)).flatten().to(q.device)
        ro.closed = sum(closed) / len(closed)
        ro.reencoded = float(pool.encoded - encoded_before) if pool is not None else 0.0

    def n_docs(self, batch: int) -> int:
        """N of the rank reward: the corpus's documents, or the batch's plus the negatives'."""
        if self.env is not None:
            return len(self.env.doc_ids)
        return batch + (len(self.negatives.doc_ids) if self.negatives is not None else 0)

    def _chunked_backward(self, ro: Rollout, scale: float, first: bool) -> tuple[float, float, dict]:
        """The same gradients as one pass, holding one chunk's activations at a time (GradCache's trick):
        no-grad passes embed every sample and document; InfoNCE's gradients with respect to those
        embeddings are taken once, then carried into each chunk as a dot product. Costs one extra forward."""
        emb, G, c = self.emb, self.group, self.chunk
        rows, doc_rows = ro.rows, ro.doc_rows
        q = self._embed_no_grad(rows)
        docs = self._embed_no_grad(doc_rows).requires_grad_()
        if first:
            self._score(ro, q, docs.detach())
        lead_q = q.view(len(ro.examples), G, -1)[:, 0].clone().requires_grad_()
        nce = info_nce(lead_q, docs, self.temperature)
        (self.gamma_nce * nce * scale).backward()  # lead_q.grad and docs.grad only: both are leaves
        for i in range(0, len(doc_rows), c):
            (emb.forward(doc_rows[i : i + c])[0] * docs.grad[i : i + c]).sum().backward()
        policy_sum, sums = 0.0, {"kl": 0.0, "clip_fraction": 0.0}
        for i in range(0, len(rows), c):
            part = slice(i, min(i + c, len(rows)))
            qc, hidden, ids, _ = emb.forward(rows[part], hidden=True)
            logp, mask = self._token_logprobs(emb, hidden, ids, ro.starts[part], rows[part], ro.raws[part],
                                             self.sample_temperature)  # fmt: skip
            policy, parts = self._policy_loss(ro, part, logp, mask, first)
            share = len(qc) / len(rows)  # the loss averages over sequences, so chunk means add up by share
            at = torch.arange(part.start, part.stop, device=qc.device)
            lead = at % G == 0
            carried = (qc[lead] * lead_q.grad[at[lead] // G]).sum()
            (self.gamma_grpo * policy * share * scale + carried).backward()
            policy_sum += policy.item() * share
            for k in sums:
                sums[k] += float(parts[k]) * share
        return policy_sum, nce.item(), sums

    @torch.no_grad()
    def _embed_no_grad(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.cat([self.emb.forward(rows[i : i + self.chunk])[0] for i in range(0, len(rows), self.chunk)])

    def _ranks(self, q: torch.Tensor, docs: torch.Tensor, examples: list[dict]) -> list[int]:
        vectors = q.float().cpu().numpy()
        if self.env is not None:
            positives = [ex["positive_id"] for ex in examples for _ in range(self.group)]
            self.env.refresh(vectors, list(dict.fromkeys(positives)))
            return self.env.ranks(vectors, positives)
        scores = (q @ docs.T).float().cpu().numpy()  # (B*G, B): each sample against the batch's documents
        if self.negatives is not None:  # ... and against every negative, (B*G, B + N_neg)
            self.negatives.refresh(vectors, [])
            scores = np.concatenate([scores, self.negatives.scores(vectors)], axis=1)
        return R.positive_ranks(scores, [i // self.group for i in range(len(q))])

    @staticmethod
    def _token_logprobs(emb, hidden, ids, starts: list[int], rows: list[list[int]], raws: list[list[int]],
                        temperature: float = 1.0, model=None):  # fmt: skip
        """Log-probabilities of the policy's actions: the tokens of each row the model sampled itself, under
        the distribution they were drawn from (logits / sampling temperature, as TRL's GRPO does).
        A row rebuilt from a thought cut to the budget ends with a </think><emb> the model never wrote;
        those are not actions, or a poor sample would be pushed away from closing properly."""
        spans = [(s, s + common_prefix(row[s:], raw)) for s, row, raw in zip(starts, rows, raws)]
        width = max(len(r) for r in rows)
        logp = torch.zeros(len(rows), width, device=hidden.device)
        mask = torch.zeros(len(rows), width, device=hidden.device)
        for r, ((s, e), lp) in enumerate(zip(spans, emb.span_logprobs(hidden, ids, spans, temperature, model))):
            if lp.numel():
                logp[r, s:e], mask[r, s:e] = lp, 1.0
        return logp, mask

    def save(self, folder) -> None:
        self.emb.save(folder)
