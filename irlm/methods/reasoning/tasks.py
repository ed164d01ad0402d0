"""Training tasks of the reasoning embedders, run by the shared loop (irlm/train/loop.py).

- ColdStartTask: lambda1 * SFT(reasoning tokens, </think>, <emb>) + lambda2 * InfoNCE (LREM: 0.1 and 1).
- GRPOTask: G sampled reasonings per query, rewards from the embedding each one leads to,
  group-normalised advantages and the clipped policy loss, plus gamma2 * InfoNCE (1 and 0.1).

trl's GRPOTrainer scores completions with reward functions that see only text; these rewards need
the hidden state at <emb> of each completion and a corpus index that moves with the policy, so the
GRPO step is written on the shared loop instead.
"""

from __future__ import annotations

import os
import random

import torch

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
    """Examples: dicts with query, reasoning (keywords text), positive (document text)."""

    def __init__(self, emb: ReasoningEmbedder, lambda_sft: float = 0.1, lambda_nce: float = 1.0,
                 temperature: float = 0.05):  # fmt: skip
        self.emb, self.lambda_sft, self.lambda_nce, self.temperature = emb, lambda_sft, lambda_nce, temperature

    def parameters(self):
        return self.emb.model.parameters()

    def named_parameters(self):
        return self.emb.model.named_parameters()

    def step(self, examples: list[dict], scale: float = 1.0, seed: int = 0) -> dict[str, float]:
        built = [self.emb.query_ids(ex["query"], ex.get("reasoning")) for ex in examples]
        rows = [r for r, _ in built]
        q, hidden, ids, _ = self.emb.forward(rows, hidden=True)
        d = self.emb.forward([self.emb.doc_ids(ex["positive"]) for ex in examples])[0]
        # through </think><emb>: a model that never learns to close its reasoning and emit <emb> writes
        # prose until the token budget runs out, and GRPO's format reward stays 0 for every sample
        sft = reasoning_sft(self.emb.span_logprobs(hidden, ids, [(s, len(r)) for r, s in built]))
        nce = info_nce(q, d, self.temperature)
        ((self.lambda_sft * sft + self.lambda_nce * nce) * scale).backward()
        return {"sft": sft.item(), "infonce": nce.item()}

    def save(self, folder) -> None:
        self.emb.save(folder)


def reasoning_length(raw: list[int], end: int) -> int | None:
    """Tokens the sample reasoned for before </think>; None when it never closed its thought, whether it ran
    past its budget or stopped at end-of-text: either way it did not keep to the budgeted format."""
    return raw.index(end) if end in raw else None


def length_part(n_tokens: int | None) -> float:
    """LREM's length(<= 16) term; a thought that was never closed earns nothing, however short."""
    return 0.0 if n_tokens is None else R.length_reward(n_tokens)


def lrem_rewards(texts: list[str], lengths: list[int | None], ranks: list[int], n_docs: int) -> list[float]:
    """0.5 format + 0.2 length(<= 16) + 1.0 rank accuracy (LREM)."""
    w = R.PRESETS["lrem"]
    return [R.combine({"format": R.format_reward(t), "length": length_part(n), "accuracy":
                       R.rank_accuracy(r, n_docs)}, w) for t, n, r in zip(texts, lengths, ranks)]  # fmt: skip


def sample_seed(seed: int, queries: list[str]) -> int:
    """The sampling seed of one micro-batch: a function of the step's seed and the micro-batch's own queries,
    so the micro-batches of one step draw different noise and a rerun draws the same."""
    return random.Random(f"{seed}:" + "\x1f".join(queries)).getrandbits(63)


def searchr3_rewards(texts: list[str], lengths: list[int], ranks: list[int], n_docs: int) -> list[float]:
    """DCG-scaled: how high the relevant document ranks for the embedding the reasoning leads to; an
    output that never emitted <emb> has no embedding and scores 0."""
    return [R.dcg_reward([r]) if t.rstrip().endswith(R.EMB) else 0.0 for t, r in zip(texts, ranks)]


REWARDS = {"lrem": lrem_rewards, "searchr3": searchr3_rewards}


class GRPOTask:
    """Examples: dicts with query and positive (and positive_id with an env). Each sample is ranked against
    the batch's documents (LREM's "rank among the batch's N documents"), or, given `env` (a SelectiveIndex,
    Search-R3's environment), against the whole corpus, whose embeddings the env refreshes in part each step."""

    def __init__(self, emb: ReasoningEmbedder, preset: str = "lrem", group: int = 8, gamma_grpo: float = 1.0,
                 gamma_nce: float = 0.1, clip: float = 0.2, temperature: float = 0.05, sample_temperature: float = 1.0,
                 env=None, chunk: int = 0):  # fmt: skip
        self.emb, self.reward_fn, self.group = emb, REWARDS[preset], group
        self.gamma_grpo, self.gamma_nce, self.clip = gamma_grpo, gamma_nce, clip
        self.temperature, self.sample_temperature, self.env = temperature, sample_temperature, env
        self.chunk = chunk  # samples per forward/backward; 0 = all B*G at once
        self.last_rewards: list[float] = []

    def parameters(self):
        return self.emb.model.parameters()

    def named_parameters(self):
        return self.emb.model.named_parameters()

    def step(self, examples: list[dict], scale: float = 1.0, seed: int = 0) -> dict[str, float]:
        emb, G = self.emb, self.group
        samples = self._sample([ex["query"] for ex in examples], seed)
        rows, starts = [], []
        for i, ex in enumerate(examples):
            for thought, _ in samples[i * G : (i + 1) * G]:
                row, start = emb.query_ids(ex["query"], thought)
                rows.append(row)
                starts.append(start)
        raws = [raw for _, raw in samples]
        doc_rows = [emb.doc_ids(ex["positive"]) for ex in examples]
        encoded_before = self.env.encoded if self.env is not None else 0
        if self.chunk and self.chunk < len(rows):
            policy, nce, clipped, reward = self._chunked_backward(examples, samples, rows, starts, raws, doc_rows,
                                                                  scale)  # fmt: skip
        else:
            q, hidden, ids, _ = emb.forward(rows, hidden=True)
            docs = emb.forward(doc_rows)[0]
            reward, adv = self._rewards(q.detach(), docs.detach(), examples, samples)
            logp, mask = self._token_logprobs(emb, hidden, ids, starts, rows, raws, self.sample_temperature)
            policy, parts = grpo_loss(logp, logp.detach(), adv, mask, clip=self.clip)
            nce = info_nce(q.view(len(examples), G, -1)[:, 0], docs, self.temperature)  # one sample per query
            ((self.gamma_grpo * policy + self.gamma_nce * nce) * scale).backward()
            policy, nce, clipped = policy.item(), nce.item(), float(parts["clip_fraction"])
        self.last_rewards = reward.tolist()
        extra = {"reencoded": float(self.env.encoded - encoded_before)} if self.env is not None else {}
        return {**extra, "grpo": policy, "infonce": nce, "reward_mean": reward.mean().item(),
                "reward_max": reward.max().item(), "clip_fraction": clipped}  # fmt: skip

    def _sample(self, queries: list[str], seed: int) -> list:
        """G samples per query from a forked RNG: the global state (dropout, other tasks) is left untouched."""
        devices = [self.emb.device] if self.emb.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(sample_seed(seed, queries))
            return self.emb.sample(queries, self.group, temperature=self.sample_temperature)

    def _rewards(self, q: torch.Tensor, docs: torch.Tensor, examples: list[dict], samples) -> tuple:
        """Each sample's reward and its group-normalised advantage, from detached embeddings."""
        ranks = self._ranks(q, docs, examples)
        n_docs = len(self.env.doc_ids) if self.env is not None else len(examples)
        texts = [R.THINK_OPEN + self.emb.tokenizer.decode(raw) for _, raw in samples]
        lengths = [reasoning_length(raw, self.emb.end) for _, raw in samples]
        reward = torch.tensor(self.reward_fn(texts, lengths, ranks, n_docs), dtype=torch.float32)
        return reward, group_advantages(reward.view(len(examples), self.group)).flatten().to(q.device)

    def _chunked_backward(self, examples, samples, rows, starts, raws, doc_rows, scale: float):
        """The same gradients as one pass, holding one chunk's activations at a time (GradCache's trick):
        no-grad passes embed every sample and document; InfoNCE's gradients with respect to those
        embeddings are taken once, then carried into each chunk as a dot product. Costs one extra forward."""
        emb, G, c = self.emb, self.group, self.chunk
        q = self._embed_no_grad(rows)
        docs = self._embed_no_grad(doc_rows).requires_grad_()
        reward, adv = self._rewards(q, docs.detach(), examples, samples)
        first = q.view(len(examples), G, -1)[:, 0].clone().requires_grad_()
        nce = info_nce(first, docs, self.temperature)
        (self.gamma_nce * nce * scale).backward()  # first.grad and docs.grad only: both are leaves
        for i in range(0, len(doc_rows), c):
            (emb.forward(doc_rows[i : i + c])[0] * docs.grad[i : i + c]).sum().backward()
        policy_sum, clipped = 0.0, 0.0
        for i in range(0, len(rows), c):
            part = slice(i, min(i + c, len(rows)))
            qc, hidden, ids, _ = emb.forward(rows[part], hidden=True)
            logp, mask = self._token_logprobs(emb, hidden, ids, starts[part], rows[part], raws[part],
                                             self.sample_temperature)  # fmt: skip
            policy, parts = grpo_loss(logp, logp.detach(), adv[part], mask, clip=self.clip)
            share = len(qc) / len(rows)  # the loss averages over sequences, so chunk means add up by share
            at = torch.arange(part.start, part.stop, device=qc.device)
            lead = at % G == 0
            carried = (qc[lead] * first.grad[at[lead] // G]).sum()
            (self.gamma_grpo * policy * share * scale + carried).backward()
            policy_sum += policy.item() * share
            clipped += float(parts["clip_fraction"]) * share
        return policy_sum, nce.item(), clipped, reward

    @torch.no_grad()
    def _embed_no_grad(self, rows: list[list[int]]) -> torch.Tensor:
        return torch.cat([self.emb.forward(rows[i : i + self.chunk])[0] for i in range(0, len(rows), self.chunk)])

    def _ranks(self, q: torch.Tensor, docs: torch.Tensor, examples: list[dict]) -> list[int]:
        if self.env is not None:
            positives = [ex["positive_id"] for ex in examples for _ in range(self.group)]
            vectors = q.float().cpu().numpy()
            self.env.refresh(vectors, list(dict.fromkeys(positives)))
            return self.env.ranks(vectors, positives)
        scores = q @ docs.T  # (B*G, B): each sample against the batch's documents
        own = scores[torch.arange(len(q)), torch.arange(len(q), device=q.device) // self.group]
        return (1 + (scores > own[:, None]).sum(-1)).tolist()

    @staticmethod
    def _token_logprobs(emb, hidden, ids, starts: list[int], rows: list[list[int]], raws: list[list[int]],
                        temperature: float = 1.0):  # fmt: skip
        """Log-probabilities of the policy's actions: the tokens of each row the model sampled itself, under
        the distribution they were drawn from (logits / sampling temperature, as TRL's GRPO does).
        A row rebuilt from a thought cut to the budget ends with a </think><emb> the model never wrote;
        those are not actions, or a poor sample would be pushed away from closing properly."""
        # commonprefix compares any sequences element-wise, token lists included
        spans = [(s, s + len(os.path.commonprefix([row[s:], raw]))) for s, row, raw in zip(starts, rows, raws)]
        width = max(len(r) for r in rows)
        logp = torch.zeros(len(rows), width, device=hidden.device)
        mask = torch.zeros(len(rows), width, device=hidden.device)
        for r, ((s, e), lp) in enumerate(zip(spans, emb.span_logprobs(hidden, ids, spans, temperature))):
            if lp.numel():
                logp[r, s:e], mask[r, s:e] = lp, 1.0
        return logp, mask

    def save(self, folder) -> None:
        self.emb.save(folder)
