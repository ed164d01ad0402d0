"""In-process generation with transformers: batched, left-padded, greedy or sampled, with stop strings."""

from __future__ import annotations

import threading
import time

import torch
from transformers import StoppingCriteria

from irlm.errors import InputError
from irlm.models.generator.base import Generation, Prompt, SamplingParams, Usage, cut_at_stop
from irlm.models.resolve import resolve_model
from irlm.utils import bf16_is_faster, pick_device


class Cancelled(StoppingCriteria):
    """Stops every sequence of a running `generate` once `event` is set, and row i once `rows[i]` is set
    (a server's client that went away: the other rows of its batch go on)."""

    def __init__(self, event: threading.Event, rows: list[threading.Event] | None = None):
        self.event, self.rows = event, rows

    def __call__(self, input_ids: torch.Tensor, scores, **kw) -> torch.Tensor:
        n = input_ids.shape[0]
        gone = [self.event.is_set() or bool(self.rows and self.rows[i].is_set()) for i in range(n)]
        return torch.tensor(gone, dtype=torch.bool, device=input_ids.device)


class TransformersGenerator:
    """A causal LM run in this process; `name` is what provenance records as the teacher.

    Example:
        >>> gen = TransformersGenerator("smollm2-135m", batch_size=8)  # doctest: +SKIP
    """

    def __init__(self, name: str = "smollm2-135m", device: str | None = None, dtype: str = "auto",
                 batch_size: int = 8, budget: int | None = None, model=None, tokenizer=None):  # fmt: skip
        from transformers import AutoModelForCausalLM, AutoTokenizer

        self.name, self.device, self.batch_size = name, pick_device(device), batch_size
        path = None if model is not None else resolve_model(name)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(path)
        if self.tokenizer.pad_token is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        use_bf16 = dtype == "bf16" or (dtype == "auto" and bf16_is_faster(self.device))
        self.model = model or AutoModelForCausalLM.from_pretrained(
            path, dtype=torch.bfloat16 if use_bf16 else torch.float32)
        self.model.to(self.device).eval()
        self.context_length = int(getattr(self.model.config, "max_position_embeddings", 2048))
        self.usage = Usage(budget=budget)
        self._lock = threading.Lock()  # one forward at a time: the server calls from worker threads
        self.cancel = threading.Event()  # set (by a server shutting down): running generations stop at the next token

    def render(self, prompt: Prompt) -> str:
        """Plain text as is; a chat through the model's template. A chat ending with an assistant message
        is a prefill: the reply continues that text (small teachers follow a format far better so)."""
        if isinstance(prompt, str):
            return prompt
        prefill = prompt[-1]["content"] if prompt and prompt[-1].get("role") == "assistant" else None
        turns = prompt[:-1] if prefill is not None else prompt
        if not self.tokenizer.chat_template:
            text = "\n".join(m["content"] for m in turns) + "\n"
        else:
            text = self.tokenizer.apply_chat_template(turns, tokenize=False, add_generation_prompt=True)
        return text + (prefill or "")

    def count_tokens(self, prompt: Prompt) -> int:
        return len(self.tokenizer(self.render(prompt), add_special_tokens=False)["input_ids"])

    def generate(self, prompts: list[Prompt], params: SamplingParams | None = None,
                 cancelled: list[threading.Event] | None = None) -> list[Generation]:  # fmt: skip
        """`cancelled[i]`, once set, stops prompt i at its next token (a chunk of only such prompts is skipped)."""
        params = params or SamplingParams()
        self.usage.check()
        ids = [self.tokenizer(self.render(p), add_special_tokens=False)["input_ids"] for p in prompts]
        for n in map(len, ids):
            if n + 1 > self.context_length:
                raise InputError(f"prompt of {n} tokens does not fit the context of {self.context_length}")
        order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))  # similar lengths share a batch
        out: list[Generation | None] = [None] * len(ids)
        start = time.perf_counter()
        with self._lock, torch.inference_mode():
            for b in range(0, len(order), self.batch_size):
                chunk = order[b : b + self.batch_size]
                rows = [cancelled[i] for i in chunk] if cancelled else None
                if rows and all(e.is_set() for e in rows):
                    gens = [Generation("", len(ids[i]), 0, "cancelled") for i in chunk]
                else:
                    gens = self._batch([ids[i] for i in chunk], params, rows)
                for i, g in zip(chunk, gens):
                    out[i] = g
        self.usage.add(out, time.perf_counter() - start)
        return out

    def _batch(self, ids: list[list[int]], params: SamplingParams,
               rows: list[threading.Event] | None = None) -> list[Generation]:  # fmt: skip
        tok = self.tokenizer
        batch = tok.pad({"input_ids": ids}, padding=True, return_tensors="pt", padding_side="left").to(self.device)
        width = batch["input_ids"].shape[1]
        max_new = max(1, min(params.max_new_tokens, self.context_length - width))
        if params.seed is not None:
            torch.manual_seed(params.seed)
        sample = params.temperature > 0
        kw = {"temperature": params.temperature, "top_p": params.top_p} if sample else {}
        if params.stop:
            kw.update(stop_strings=params.stop, tokenizer=tok)
        seqs = self.model.generate(**batch, max_new_tokens=max_new, do_sample=sample, pad_token_id=tok.pad_token_id,
                                   top_k=None, stopping_criteria=[Cancelled(self.cancel, rows)], **kw)  # fmt: skip
        return [self._decode(row[width:], len(p), max_new, params.stop) for row, p in zip(seqs, ids)]

    def _decode(self, new: torch.Tensor, n_prompt: int, max_new: int, stop: list[str]) -> Generation:
        ends = (new == self.tokenizer.eos_token_id) | (new == self.tokenizer.pad_token_id)
        n = int(ends.nonzero()[0, 0]) + 1 if ends.any() else len(new)  # the EOS counts as generated
        text, stopped = cut_at_stop(self.tokenizer.decode(new[:n], skip_special_tokens=True), stop)
        reason = "length" if n >= max_new and not stopped and not ends.any() else "stop"
        return Generation(text.strip(), n_prompt, n, reason)
