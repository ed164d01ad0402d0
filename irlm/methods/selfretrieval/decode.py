"""Trie-constrained decoding and the scores of Self-Retrieval (METHODS.md §3)."""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from transformers import LogitsProcessor, LogitsProcessorList

from irlm.index.trie import TokenTrie, common_prefix


class TrieConstraint(LogitsProcessor):
    """Masks every token that does not continue an entry of the trie.

    HF beam search hands processors log-probabilities; once a beam's prefix leads to a single entry,
    its next token is forced at log-probability 0, so the rest is copied from the corpus and adds
    nothing to the beam's score (paper: the passage is completed once its prefix is unique).
    """

    def __init__(self, trie: TokenTrie, prompt_len: int, eos_id: int):
        self.trie, self.prompt_len, self.eos_id = trie, prompt_len, eos_id

    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        out = torch.full_like(scores, -math.inf)
        for row, generated in enumerate(input_ids[:, self.prompt_len :].tolist()):
            rest = self.trie.unique_completion(generated)
            if rest:
                out[row, rest[0]] = 0.0
                continue
            allowed = self.trie.allowed(generated) or [self.eos_id]
            out[row, allowed] = scores[row, allowed]
        return out


def left_pad(rows: list[list[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left padding, so every prompt ends at the same column and generation starts after it."""
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros_like(ids)
    for r, row in enumerate(rows):
        ids[r, width - len(row) :] = torch.tensor(row)
        mask[r, width - len(row) :] = 1
    return ids.to(device), mask.to(device)


@torch.inference_mode()
def constrained_beams(model, prompts: list[list[int]], trie: TokenTrie, stop_id: int, beams: int,
                      max_new_tokens: int, pad_id: int) -> list[list[tuple[list[int], float]]]:  # fmt: skip
    """For each prompt, up to `beams` distinct trie entries ending in stop_id with their log-probabilities."""
    ids, mask = left_pad(prompts, pad_id, model.device)
    # one beam is greedy search, which hands processors logits and keeps no sequence scores: log-softmax
    # first, and the sum of the processed scores along the sequence is the beam's score
    procs = ([LogSoftmax()] if beams == 1 else []) + [TrieConstraint(trie, ids.shape[1], stop_id)]
    out = model.generate(input_ids=ids, attention_mask=mask, num_beams=beams, num_return_sequences=beams,
                         do_sample=False, length_penalty=0.0, early_stopping=True, max_new_tokens=max_new_tokens,
                         eos_token_id=stop_id, pad_token_id=pad_id, output_scores=True, return_dict_in_generate=True,
                         logits_processor=LogitsProcessorList(procs))
    results: list[list[tuple[list[int], float]]] = [[] for _ in prompts]
    generated = out.sequences[:, ids.shape[1] :].tolist()
    scores = out.sequences_scores.tolist() if beams > 1 else _greedy_scores(out.scores, generated, stop_id)
    for n, (seq, score) in enumerate(zip(generated, scores)):
        seq = _until(seq, stop_id)
        hits = results[n // beams]
        if math.isfinite(score) and seq and seq[-1] == stop_id and all(seq != s for s, _ in hits):
            hits.append((seq, score))
    return results


class LogSoftmax(LogitsProcessor):
    def __call__(self, input_ids: torch.LongTensor, scores: torch.FloatTensor) -> torch.FloatTensor:
        return torch.log_softmax(scores.float(), dim=-1)


def _greedy_scores(steps: tuple[torch.Tensor, ...], generated: list[list[int]], stop_id: int) -> list[float]:
    """Each row's summed processed log-probabilities up to and including stop_id."""
    out = []
    for row, seq in enumerate(generated):
        seq = _until(seq, stop_id)
        out.append(sum(float(steps[t][row, token]) for t, token in enumerate(seq)))
    return out


def _until(seq: list[int], stop_id: int) -> list[int]:
    return seq[: seq.index(stop_id) + 1] if stop_id in seq else seq


def distinguishing_lengths(passages: list[list[int]]) -> list[int]:
    """Tokens of each passage up to where it differs from all the others: after that it is copied, not scored."""
    out = []
    for i, p in enumerate(passages):
        longest = 0
        for j, q in enumerate(passages):
            if i != j:
                longest = max(longest, common_prefix(p, q))
        out.append(min(len(p), longest + 1))
    return out


@torch.inference_mode()
def sequence_logprobs(model, contexts: list[list[int]], continuations: list[list[int]], pad_id: int) -> list[float]:
    """Sum of log P(continuation | context) for each pair, teacher-forced in one padded batch."""
    rows = [c + t for c, t in zip(contexts, continuations)]
    ids, mask = left_pad(rows, pad_id, model.device)
    logp = torch.log_softmax(model(input_ids=ids, attention_mask=mask).logits.float(), dim=-1)
    width, out = ids.shape[1], []
    for r, tgt in enumerate(continuations):
        start = width - len(tgt)  # target tokens sit at the right end; each is predicted by the position before
        pos = torch.arange(start - 1, width - 1, device=ids.device)
        out.append(logp[r, pos, ids[r, start:]].sum().item() if tgt else 0.0)
    return out


@torch.inference_mode()
def reject_probs(model, prompts: list[list[int]], yes_id: int, no_id: int, pad_id: int) -> list[float]:
    """P(" no" | query, title, passage, "Relevant:"), normalised over the two verdict tokens."""
    ids, mask = left_pad(prompts, pad_id, model.device)
    last = model(input_ids=ids, attention_mask=mask).logits[:, -1, [yes_id, no_id]].float()
    return torch.softmax(last, dim=-1)[:, 1].tolist()


def combine(first_logprobs: list[float], reject: list[float] | None, tau: float, delta: float) -> list[float]:
    """S_i = softmax_i(P_i / tau) * softmax_i((1 - P(reject_i)) / delta) (paper, tau = delta = 0.4).

    P_i = exp(first_logprobs[i]): the title probability P(t_i | q) under the paper's scoring (the passages
    under one title share it, so the verdict orders them), P(t_i, p_i | q) under the joint one. The paper
    takes softmax over probabilities, not log-probabilities. Without verdicts, the first factor alone.

    Example:
        >>> [round(s, 3) for s in combine([math.log(0.6), math.log(0.3)], [0.9, 0.1], tau=0.4, delta=0.4)]
        [0.081, 0.283]
    """
    if not first_logprobs:
        return []
    probs = torch.tensor(first_logprobs, dtype=torch.float64).exp()
    scores = torch.softmax(probs / tau, dim=0)
    if reject is not None:
        scores = scores * torch.softmax((1 - torch.tensor(reject, dtype=torch.float64)) / delta, dim=0)
    return scores.tolist()


@dataclass
class Candidate:
    doc_id: str
    entry: list[int]  # the generated tokens: title, separator, passage (or the passage alone)
    title_logprob: float  # log P(t | q); without titles, log P(p | q)
    passage_logprob: float = 0.0  # log P(p | q, t), copied tokens excluded; 0 without titles
    reject: float | None = None
    score: float = 0.0

    @property
    def logprob(self) -> float:
        """log P(t, p | q)."""
        return self.title_logprob + self.passage_logprob


def rank(cands: list[Candidate], scoring: str, tau: float = 0.4, delta: float = 0.4) -> list[Candidate]:
    """Sets each candidate's score S (see `combine`) and sorts by it, P(p | q, t) breaking ties.

    scoring "paper": the first factor is P(t | q); "joint": P(t, p | q). Verdicts are used where every
    candidate has one.
    """
    first = [c.title_logprob for c in cands] if scoring == "paper" else [c.logprob for c in cands]
    rejects = [c.reject for c in cands] if cands and all(c.reject is not None for c in cands) else None
    for c, s in zip(cands, combine(first, rejects, tau, delta)):
        c.score = s
    return sorted(cands, key=lambda c: (-c.score, -c.passage_logprob))
