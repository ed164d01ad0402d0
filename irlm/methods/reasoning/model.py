"""Think, then embed (LREM and Search-R3; METHODS.md §4-5): one causal LM embeds both sides.

    query:    {query} <think> {keywords} </think><emb>
    document: {document} <emb>

The embedding is the last hidden state at `<emb>`, L2-normalised. The three markers are added to
the tokenizer as special tokens (and the embedding matrix grows to match) when a model lacks them.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from irlm.index.check import write_manifest
from irlm.methods.reasoning.rewards import EMB, THINK_CLOSE, THINK_OPEN

CONFIG_FILE = "irlm_reasoning.json"


class ReasoningEmbedder:
    def __init__(self, model, tokenizer, max_length: int = 128, reasoning_tokens: int = 16):
        self.model, self.tokenizer = model, tokenizer
        self.max_length, self.reasoning_tokens = max_length, reasoning_tokens
        missing = [t for t in (THINK_OPEN, THINK_CLOSE, EMB) if t not in tokenizer.get_vocab()]
        self.grown = bool(missing)  # the weights gain marker rows: reloading the source would not match
        if missing:
            spelled = {t: tokenizer(t, add_special_tokens=False)["input_ids"] for t in missing}  # before they exist
            tokenizer.add_special_tokens({"additional_special_tokens": missing})
            model.resize_token_embeddings(len(tokenizer), mean_resizing=False)  # init_markers sets the rows
            init_markers(model, {tokenizer.convert_tokens_to_ids(t): ids for t, ids in spelled.items()})
        self.think, self.end, self.emb = (tokenizer.convert_tokens_to_ids(t) for t in (THINK_OPEN, THINK_CLOSE, EMB))
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
        self.source: str | None = None  # the folder the weights were loaded from, while they still match it

    @classmethod
    def from_pretrained(cls, name: str, device: str | None = None, **kw) -> ReasoningEmbedder:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from irlm.models.resolve import resolve_model
        from irlm.utils import pick_device

        path = name if Path(name).is_dir() else resolve_model(name)
        saved = Path(path) / CONFIG_FILE
        kw = {**(json.loads(saved.read_text()) if saved.is_file() else {}), **kw}
        model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).to(pick_device(device))
        emb = cls(model, AutoTokenizer.from_pretrained(path), **kw)
        emb.source = None if emb.grown else str(path)  # what a saved index names
        return emb

    def save(self, folder) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        cfg = {"max_length": self.max_length, "reasoning_tokens": self.reasoning_tokens}
        (Path(folder) / CONFIG_FILE).write_text(json.dumps(cfg))
        write_manifest(Path(folder), "reasoning")  # a model folder opens as a system given a corpus

    @property
    def device(self):
        return self.model.device

    def ids(self, text: str) -> list[int]:
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]

    def prompt_ids(self, query: str) -> list[int]:
        """What the policy continues: the query and the opening <think>."""
        room = self.max_length - self.reasoning_tokens - 3
        return self.ids(query)[:room] + [self.think]

    def query_ids(self, query: str, reasoning: str | list[int] | None) -> tuple[list[int], int]:
        """Token ids of the query side and where its reasoning starts; None = direct (no thinking)."""
        if reasoning is None:
            return self.ids(query)[: self.max_length - 1] + [self.emb], -1
        prompt = self.prompt_ids(query)
        if isinstance(reasoning, str):
            thought = self.ids(" " + reasoning) if reasoning else []
        else:
            thought = list(reasoning)
        return prompt + thought[: self.reasoning_tokens] + [self.end, self.emb], len(prompt)

    def doc_ids(self, text: str) -> list[int]:
        return self.ids(text)[: self.max_length - 1] + [self.emb]

    def forward(self, rows: list[list[int]], hidden: bool = False, model=None):
        """Right-padded batch -> (embeddings (B, C) fp32 normalised, last hidden states (B, T, C) or None,
        ids, mask). The LM head does not run here: a caller that scores tokens asks `span_logprobs` for
        the few positions it needs instead of holding (B, T, vocab) logits. `model`: another causal LM with
        the same vocabulary to run instead (GRPO's frozen reference)."""
        ids, mask = self._padded(rows)
        last = (model or self.model).base_model(input_ids=ids, attention_mask=mask).last_hidden_state
        at = torch.tensor([len(r) - 1 for r in rows], device=self.device)  # every row ends with <emb>
        emb = F.normalize(last[torch.arange(len(rows), device=self.device), at].float(), dim=-1)
        return emb, (last if hidden else None), ids, mask

    def span_logprobs(self, hidden: torch.Tensor, ids: torch.Tensor, spans: list[tuple[int, int]],
                      temperature: float = 1.0, model=None):  # fmt: skip
        """Per row, log p(ids[r, t] | ids[r, :t]) for t in [s, e) (fp32; empty where s < 1 or e <= s),
        with the LM head (of `model`, default the embedder's) run only at the positions s-1 .. e-2 that
        predict them; logits / temperature."""
        head = (model or self.model).get_output_embeddings()
        out = []
        for r, (s, e) in enumerate(spans):
            if s < 1 or e <= s:
                out.append(torch.zeros(0, device=hidden.device))
                continue
            logp = torch.log_softmax(head(hidden[r, s - 1 : e - 1]).float() / temperature, dim=-1)
            out.append(logp.gather(-1, ids[r, s:e, None]).squeeze(-1))
        return out

    @torch.inference_mode()
    def sample(self, queries: list[str], n: int, do_sample: bool = True, temperature: float = 1.0,
               batch_size: int = 32):  # fmt: skip
        """n reasoning continuations per query, query-major: (generated ids cut at </think>, raw generated
        ids). Prompts are generated in left-padded batches, so one decode step serves the whole batch."""
        out, stops = [], {self.emb, self.tokenizer.eos_token_id}
        starts = _progress(range(0, len(queries), batch_size), "think", len(queries) * n)
        for i in starts:
            ids, mask = self._padded([self.prompt_ids(q) for q in queries[i : i + batch_size]], left=True)
            gen = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=do_sample,
                                      temperature=temperature if do_sample else None, top_p=None, top_k=None,
                                      num_return_sequences=n, max_new_tokens=self.reasoning_tokens + 2,
                                      eos_token_id=[self.emb, self.tokenizer.eos_token_id],
                                      pad_token_id=self.pad)  # fmt: skip
            for row in gen[:, ids.shape[1] :].tolist():
                raw = _until(row, stops)
                thought = raw[: raw.index(self.end)] if self.end in raw else [t for t in raw if t not in stops]
                out.append((thought[: self.reasoning_tokens], raw))
        return out

    def _padded(self, rows: list[list[int]], left: bool = False) -> tuple[torch.Tensor, torch.Tensor]:
        """(ids, mask) on the model's device; generation pads on the left so every prompt ends together."""
        width = max(map(len, rows))
        ids = torch.full((len(rows), width), self.pad, dtype=torch.long)
        mask = torch.zeros_like(ids)
        for r, row in enumerate(rows):
            at = slice(width - len(row), width) if left else slice(0, len(row))
            ids[r, at], mask[r, at] = torch.tensor(row), 1
        return ids.to(self.device), mask.to(self.device)

    @torch.inference_mode()
    def encode_docs(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        rows = [self.doc_ids(t) for t in texts]
        starts = _progress(range(0, len(rows), batch_size), "encode docs", len(rows))
        return np.concatenate([self.forward(rows[i : i + batch_size])[0].cpu().numpy() for i in starts])

    @torch.inference_mode()
    def encode_queries(self, queries: list[str], reasonings: list | None = None, batch_size: int = 32):
        """reasonings: None = direct embedding; a list of texts / token lists (None entries = direct)."""
        reasonings = reasonings if reasonings is not None else [None] * len(queries)
        rows = [self.query_ids(q, r)[0] for q, r in zip(queries, reasonings)]
        return np.concatenate([self.forward(rows[i : i + batch_size])[0].cpu().numpy()
                               for i in range(0, len(rows), batch_size)])  # fmt: skip


@torch.no_grad()
def init_markers(model, spelled: dict[int, list[int]]) -> None:
    """Each new marker's input (and, when untied, output) row becomes the mean of the rows of the tokens its
    text was spelled with before it existed ("</think>" -> "</", "think", ">"): the model starts out reading
    and predicting it like the text it stands for, not like random noise it has to learn from scratch."""
    tables = [model.get_input_embeddings().weight]
    out = model.get_output_embeddings()
    if out is not None and out.weight.data_ptr() != tables[0].data_ptr():
        tables.append(out.weight)
    for new, ids in spelled.items():
        for table in tables:
            table[new] = table[ids].mean(dim=0)


def _progress(items, desc: str, work: int):
    """A progress bar for evaluation-sized work; GRPO's per-step calls stay quiet."""
    from tqdm.auto import tqdm

    return tqdm(items, desc=desc, disable=work < 256, leave=False)


def _until(row: list[int], stops: set[int]) -> list[int]:
    """The generated ids up to and including the first stop token (the rest is padding)."""
    for i, t in enumerate(row):
        if t in stops:
            return row[: i + 1]
    return row
