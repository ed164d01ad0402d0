"""The cached search of Self-Retrieval: the reference path's results (decode.py: transformers' beam
search under TrieConstraint, one teacher-forced pass per title, one verdict pass) for a fraction of
the model calls.

- The query is run once; its key/value cache starts every later call.
- The title beam search is transformers' own (batch of one, length_penalty 0, early stopping),
  replayed step by step, but the model runs only on the beams whose next token is open: a beam
  whose prefix the trie already identifies has one allowed token at log-probability 0, so its
  row is written, not computed.
- Each candidate's passage probability and verdict come from one forward pass over
  title + passage + "Relevant:" on top of the query's cache, with the output layer applied only
  at the positions that are read.
"""

from __future__ import annotations

import torch
import transformers
from transformers import DynamicCache

from irlm.index.trie import TokenTrie
from irlm.methods.selfretrieval.decode import distinguishing_lengths

# the beam search replayed here, the `cache=` argument and `Cache.layers` are transformers 5's; on older
# versions the retriever takes the reference path
SUPPORTED = int(transformers.__version__.split(".")[0]) >= 5
NEG = -1.0e9  # transformers' beam search marks finished and unusable beams with it (float32 arithmetic kept)

KV = list[tuple[torch.Tensor, torch.Tensor]]  # per layer: keys, values (rows, heads, length, dim)


def _forward(model, ids: torch.Tensor, past: KV, rows: torch.Tensor, mask=None) -> tuple[torch.Tensor, KV]:
    """Final hidden states of `ids` (n, L) after the cached rows `rows` of `past`, and the grown cache."""
    cache = DynamicCache(ddp_cache_data=[(k[rows], v[rows]) for k, v in past])
    out = model.base_model(input_ids=ids, cache=cache, attention_mask=mask, use_cache=True)
    grown = [(layer.keys, layer.values) for layer in out.cache.layers]
    return out.last_hidden_state, grown


def _logprobs(model, hidden: torch.Tensor) -> torch.Tensor:
    """log-softmax of the output layer at the given final hidden states (..., H) -> (..., V), float32."""
    return torch.log_softmax(model.get_output_embeddings()(hidden).float(), dim=-1)


@torch.inference_mode()
def prefill(model, prompt: list[int]) -> tuple[torch.Tensor, KV]:
    """log P(next | prompt) (V,) and the prompt's cache (one row)."""
    out = model.base_model(input_ids=torch.tensor([prompt], device=model.device), use_cache=True)
    kv = [(layer.keys, layer.values) for layer in out.cache.layers]
    return _logprobs(model, out.last_hidden_state[0, -1]), kv


class _Beams:
    """The rows the model must compute at each step: a beam whose next token is forced, or whose score
    is already -inf, needs none. Cached rows carry the query plus the beam's tokens so far."""

    def __init__(self, model, trie: TokenTrie, stop_id: int, prompt: list[int]):
        self.model, self.trie, self.stop_id, self.prompt = model, trie, stop_id, prompt
        self.nodes: dict[tuple, object] = {(): trie.node([])}
        first, self.prompt_kv = prefill(model, prompt)
        self.vocab = first.shape[-1]
        self.first = first

    def node(self, seq: tuple):
        if seq not in self.nodes:
            parent = self.node(seq[:-1])
            self.nodes[seq] = None if parent is None else self.trie.child(parent, seq[-1])
        return self.nodes[seq]

    def constrain(self, seq: tuple, logp: torch.Tensor | None) -> torch.Tensor:
        """TrieConstraint's row for one beam: the forced token at 0, else the allowed tokens' log-probabilities."""
        out = torch.full((self.vocab,), -torch.inf)
        n = self.node(seq)
        rest = self.trie.completion(n) if n is not None else None
        if rest:
            out[rest[0]] = 0.0
            return out
        allowed = (self.trie.children(n) if n is not None else []) or [self.stop_id]
        out[allowed] = logp[allowed]
        return out

    def row(self, seq: tuple, logp: torch.Tensor | None) -> torch.Tensor:
        """The constrained row; without the model's log-probabilities the beam is forced, or its score is
        -inf, and then every continuation stays -inf whatever the row holds."""
        if logp is not None or self.forced(seq):
            return self.constrain(seq, logp)
        return torch.full((self.vocab,), -torch.inf)

    def forced(self, seq: tuple) -> bool:
        n = self.node(seq)
        return n is not None and bool(self.trie.completion(n))

    def needs_model(self, seq: tuple, score: float) -> bool:
        return score != -torch.inf and not self.forced(seq)

    def rows(self, seqs: list[tuple], scores: torch.Tensor, parents: list[int], kv, kv_row: list[int | None]):
        """(beams, V) constrained log-probabilities for the running beams, the new cache and each beam's row in it."""
        need = [j for j, s in enumerate(seqs) if self.needs_model(s, float(scores[j]))]
        grow = [j for j in need if kv_row[parents[j]] is not None]  # parent cached: feed one token
        fresh = [j for j in need if kv_row[parents[j]] is None]  # parent never run (rare): feed the beam whole
        hidden, parts = {}, []
        if grow:
            ids = torch.tensor([[seqs[j][-1]] for j in grow], device=self.model.device)
            h, grown = _forward(self.model, ids, kv, torch.tensor([kv_row[parents[j]] for j in grow]))
            hidden.update({j: h[r, -1] for r, j in enumerate(grow)})
            parts.append(grown)
        if fresh:
            ids = torch.tensor([list(seqs[j]) for j in fresh], device=self.model.device)
            h, grown = _forward(self.model, ids, self.prompt_kv, torch.zeros(len(fresh), dtype=torch.long))
            hidden.update({j: h[r, -1] for r, j in enumerate(fresh)})
            parts.append(grown)
        order = grow + fresh
        logp = _logprobs(self.model, torch.stack([hidden[j] for j in order])) if order else None
        by_beam = {j: logp[r] for r, j in enumerate(order)}
        out = torch.stack([self.row(s, by_beam.get(j)) for j, s in enumerate(seqs)])
        new_kv = [(torch.cat([p[i][0] for p in parts]), torch.cat([p[i][1] for p in parts]))
                  for i in range(len(parts[0]))] if parts else kv  # fmt: skip
        rows = [None] * len(seqs)
        for r, j in enumerate(order):
            rows[j] = r
        return out, new_kv, rows


@torch.inference_mode()
def beam_search(model, prompt: list[int], trie: TokenTrie, stop_id: int, beams: int,
                max_new_tokens: int) -> tuple[list[tuple[list[int], float]], KV]:  # fmt: skip
    """What decode.constrained_beams returns for one prompt, and the prompt's cache for later calls.

    The steps are transformers' `_beam_search` (v5) for a batch of one with length_penalty 0 and
    early_stopping True: keep the 2 x beams best continuations; those ending in stop_id (or at the
    length limit) among the first `beams` join the finished set, the best `beams` others run on;
    stop once `beams` have finished.
    """
    state = _Beams(model, trie, stop_id, prompt)
    seqs: list[tuple] = [()] * beams
    scores = torch.full((beams,), NEG)
    scores[0] = 0.0  # the other copies of the prompt start at NEG, so step one draws from beam 0 only
    logp = torch.stack([state.constrain((), state.first)] * beams)
    kv, kv_row = state.prompt_kv, [0] * beams
    done_seqs: list[tuple] = [()] * beams
    done_scores = torch.full((beams,), NEG)
    done = torch.zeros(beams, dtype=torch.bool)
    improvable = True
    top_mask = torch.arange(2 * beams) < beams
    for step in range(max_new_tokens):
        top, idx = torch.topk((logp + scores[:, None]).reshape(-1), 2 * beams)
        parent, token = (idx // state.vocab).tolist(), (idx % state.vocab).tolist()
        cand = [seqs[p] + (t,) for p, t in zip(parent, token)]
        hits = torch.tensor([t == stop_id or step + 1 == max_new_tokens for t in token])
        running = top + hits.to(torch.float32) * NEG
        keep = torch.topk(running, beams).indices.tolist()
        finished = top / 1.0  # length_penalty 0: (length ** 0) == 1
        finished = finished + float(bool(done.all())) * NEG
        finished = finished + float(not improvable) * NEG
        finished = finished + (~(hits & top_mask)).to(torch.float32) * NEG
        merged = torch.cat([done_scores, finished])
        best = torch.topk(merged, beams).indices.tolist()
        pool = done_seqs + cand
        done_seqs, done_scores = [pool[i] for i in best], merged[best]
        done = torch.cat([done, hits & top_mask])[best]
        seqs, scores = [cand[i] for i in keep], running[keep]
        worst = torch.where(done, done_scores.min(), torch.tensor(NEG))
        improvable = improvable and bool((scores[0] > worst).any())
        if not (improvable and not bool(done.all()) and not bool(hits.all())):
            break
        logp, kv, kv_row = state.rows(seqs, scores, [parent[i] for i in keep], kv, kv_row)
    return _results(done_seqs, done_scores.tolist(), stop_id), state.prompt_kv


def _results(seqs: list[tuple], scores: list[float], stop_id: int) -> list[tuple[list[int], float]]:
    """decode.constrained_beams' filter: finite scores, entries ending in stop_id, each once."""
    hits: list[tuple[list[int], float]] = []
    for seq, score in zip(seqs, scores):
        seq = list(seq[: seq.index(stop_id) + 1]) if stop_id in seq else list(seq)
        if score > -float("inf") and seq and seq[-1] == stop_id and all(seq != s for s, _ in hits):
            hits.append((seq, score))
    return hits


def _suffix_hidden(model, prompt_kv: KV, rows: list[list[int]], pad_id: int) -> torch.Tensor:
    """Final hidden states (n, L, H) of each row after the query; right padding keeps every row's positions."""
    width, past = max(map(len, rows)), prompt_kv[0][0].shape[2]
    ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    mask = torch.zeros((len(rows), past + width), dtype=torch.long)
    mask[:, :past] = 1
    for r, row in enumerate(rows):
        ids[r, : len(row)] = torch.tensor(row)
        mask[r, past : past + len(row)] = 1
    hidden, _ = _forward(model, ids.to(model.device), prompt_kv, torch.zeros(len(rows), dtype=torch.long),
                         mask.to(model.device))  # fmt: skip
    return hidden


def _reject(model, hidden: torch.Tensor, rows: list[list[int]], yes_id: int, no_id: int) -> list[float]:
    """decode.reject_probs at each row's last token."""
    last = hidden[torch.arange(len(rows)), torch.tensor([len(row) - 1 for row in rows])]
    verdict = model.get_output_embeddings()(last)[:, [yes_id, no_id]].float()
    return torch.softmax(verdict, dim=-1)[:, 1].tolist()


@torch.inference_mode()
def verdicts(model, prompt_kv: KV, entries: list[list[int]], assess: list[int], yes_id: int, no_id: int,
             pad_id: int) -> list[float]:  # fmt: skip
    """P(no) after query + entry + `assess` for each entry, in one pass on the query's cache."""
    if not entries:
        return []
    rows = [e + assess for e in entries]
    return _reject(model, _suffix_hidden(model, prompt_kv, rows, pad_id), rows, yes_id, no_id)


@torch.inference_mode()
def passages_and_verdicts(model, prompt_kv: KV, titles: list[list[int]], passages: list[list[list[int]]],
                          assess: list[int] | None, yes_id: int, no_id: int, pad_id: int):  # fmt: skip
    """For each title and each of its passages: log P(passage | query, title) up to where it differs from
    its siblings (decode.distinguishing_lengths), and P(no) after title + passage + `assess` (None: no
    verdicts). One forward pass over every row, on the query's cache; without verdicts each row is cut
    after its last scored token (a title's only passage: its first), as nothing after it is read."""
    rows, reads = [], []  # reads: (first scored position, scored length)
    for title, docs in zip(titles, passages):
        for p, n in zip(docs, distinguishing_lengths(docs)):
            rows.append(title + p + assess if assess else title + p[:n])
            reads.append((len(title), n))
    if not rows:
        return [], []
    hidden = _suffix_hidden(model, prompt_kv, rows, pad_id)
    at = [(r, start - 1 + i) for r, (start, n) in enumerate(reads) for i in range(n)]  # predicts token start + i
    logp = _logprobs(model, hidden[[r for r, _ in at], [i for _, i in at]])
    targets = torch.tensor([rows[r][i + 1] for r, i in at], dtype=torch.long, device=logp.device)
    picked = logp[torch.arange(len(at)), targets].tolist()
    passage_logp, first = [], 0
    for _, n in reads:
        passage_logp.append(sum(picked[first : first + n]))
        first += n
    rejects = _reject(model, hidden, rows, yes_id, no_id) if assess else [None] * len(rows)
    return passage_logp, rejects
