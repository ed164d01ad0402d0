"""A generator behind an OpenAI-compatible HTTP endpoint (vLLM, `irlm serve-llm`, a hosted API), through
the official `openai` client: it retries connection errors, timeouts, 429 and 5xx with exponential backoff
(honouring Retry-After); this adapter turns what is left into irlm's errors, one line naming the URL, the
status and the server's message.

One request per prompt, `concurrency` in flight at once: the server batches concurrent requests
itself, so many small requests keep it busy without this side knowing its batch size.

Example:
    >>> gen = OpenAIGenerator("http://127.0.0.1:8000/v1")  # doctest: +SKIP
    >>> gen.generate(["The capital of France is"], SamplingParams(max_new_tokens=4))[0].text  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai

from irlm.errors import InputError
from irlm.models.generator.base import BudgetExceeded, Generation, Prompt, SamplingParams, Usage, cut_at_stop

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 4096  # when neither the caller nor /models says: a common size for today's small LLMs


class EndpointError(RuntimeError):
    """The endpoint stayed unreachable or failing (connection, timeout, 429, 5xx) through every retry."""


class RequestRefused(InputError):
    """The endpoint answered a 4xx other than 429: the request, key or model name is wrong; retrying cannot help."""

    def __init__(self, message: str, status: int):
        super().__init__(message)
        self.status = status


class OpenAIGenerator:
    """The Generator protocol over `POST {base_url}/completions` (str prompts) and `/chat/completions` (chats).

    The API key is read from the environment variable `api_key_env`, never passed as an argument,
    so it stays out of shell history and process listings.

    Example:
        >>> gen = OpenAIGenerator("http://127.0.0.1:8000/v1", concurrency=8, budget=100_000)  # doctest: +SKIP
        >>> gen.name, gen.context_length  # doctest: +SKIP
        ('HuggingFaceTB/SmolLM2-135M-Instruct', 8192)
    """

    def __init__(self, base_url: str, model: str | None = None, api_key_env: str | None = "OPENAI_API_KEY",
                 concurrency: int = 8, timeout: float = 60.0, max_retries: int = 4, backoff: float | None = None,
                 budget: int | None = None, context_length: int | None = None):  # fmt: skip
        """`backoff` is accepted from older callers and unused: the openai client's own backoff applies
        (0.5 s doubling, at most 8 s, or the server's Retry-After)."""
        self.base_url = base_url.rstrip("/")
        self.api_key_env, self.max_retries = api_key_env, max_retries
        self.usage = Usage(budget=budget)
        key = os.environ.get(api_key_env) if api_key_env else None
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._http = httpx.Client(headers={"Authorization": f"Bearer {key}"} if key else {}, timeout=timeout,
                                  limits=limits)  # fmt: skip
        # a server without a key ignores the placeholder; the client refuses to start without any
        self._client = openai.OpenAI(base_url=self.base_url, api_key=key or "none", timeout=timeout,
                                     max_retries=max_retries, http_client=self._http)  # fmt: skip
        self._pool = ThreadPoolExecutor(concurrency, thread_name_prefix="irlm-http")
        self._can_tokenize: bool | None = None  # unknown until the first count_tokens asks the server
        self._tokenize_lock = threading.Lock()
        try:
            entry = self._model_entry(model) if model is None or context_length is None else {}
        except BaseException:
            self.close()
            raise
        self.name: str = model or entry["id"]
        listed = entry.get("context_length") or entry.get("max_model_len")  # irlm's field, vLLM's field
        self.context_length: int = context_length or int(listed or DEFAULT_CONTEXT)

    def generate(self, prompts: list[Prompt], params: SamplingParams | None = None) -> list[Generation]:
        """One request per prompt, `concurrency` at a time; generations come back in the order of `prompts`."""
        params = params or SamplingParams()
        self.usage.check()
        start = time.perf_counter()
        gens = list(self._pool.map(lambda p: self._generate_one(p, params), prompts))
        self.usage.add(gens, time.perf_counter() - start)
        return gens

    def count_tokens(self, prompt: Prompt) -> int:
        """Exact when the server has vLLM's `POST /tokenize` (as `irlm serve-llm` does); otherwise an
        estimate of len(text) // 4 + 1, about right for English with BPE vocabularies."""
        if self._can_tokenize is not False:
            n = self._tokenize(prompt)
            if n is not None:
                return n
        text = prompt if isinstance(prompt, str) else "\n".join(str(m.get("content", "")) for m in prompt)
        return len(text) // 4 + 1

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
        self._client.close()
        self._http.close()

    def __enter__(self) -> OpenAIGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _generate_one(self, prompt: Prompt, params: SamplingParams) -> Generation:
        # stop and seed only when set: some servers reject null where they expect a list or an int
        unset = openai.NOT_GIVEN
        body = {"model": self.name, "max_tokens": params.max_new_tokens, "temperature": params.temperature,
                "top_p": params.top_p, "stop": params.stop or unset, "seed": params.seed or unset}  # fmt: skip
        if isinstance(prompt, str):
            out = self._call("POST", "/completions", lambda: self._client.completions.create(prompt=prompt, **body))
            text = out.choices[0].text
        else:
            out = self._call("POST", "/chat/completions",
                             lambda: self._client.chat.completions.create(messages=prompt, **body))  # fmt: skip
            text = out.choices[0].message.content or ""
        return to_generation(text, out, params.stop)

    def _model_entry(self, model: str | None) -> dict:
        """The /models entry for `model` (or the first one when None); {} when a named model is not listed."""
        try:
            entries = [m.model_dump() for m in self._call("GET", "/models", self._client.models.list).data]
        except RequestRefused as e:
            if model is None or e.status not in (404, 405):
                raise
            return {}  # a server without /models is fine when the caller named the model
        if model is None and not entries:
            raise InputError(f"GET {self.base_url}/models lists no model; name one with {self.base_url}#MODEL")
        return next((e for e in entries if model is None or e.get("id") == model), {})

    def _call(self, method: str, path: str, request):
        """`request()` (the client retries what is worth retrying); what still fails, as irlm's errors."""
        url = f"{self.base_url}{path}"
        try:
            return request()
        except openai.APIConnectionError as e:  # refused, reset, timed out through every retry
            cause = e.__cause__ or e
            raise EndpointError(f"{method} {url} failed after {self.max_retries + 1} attempts: "
                                f"{type(cause).__name__}: {cause}") from None  # fmt: skip
        except openai.APIStatusError as e:
            raise self._refusal(method, url, e) from None

    def _refusal(self, method: str, url: str, e: openai.APIStatusError) -> Exception:
        """The error to raise for a status the client gave up on or does not retry."""
        message, code = error_message(e)
        problem = f"HTTP {e.status_code}: {message}"
        if code == "insufficient_quota":  # the server's own budget: waiting does not refill it
            return BudgetExceeded(f"{method} {url}: {problem}")
        if e.status_code in (408, 409, 429) or e.status_code >= 500:  # retried by the client, still failing
            return EndpointError(f"{method} {url} failed after {self.max_retries + 1} attempts: {problem}")
        hint = f" (is ${self.api_key_env} set to the server's key?)" if e.status_code in (401, 403) else ""
        return RequestRefused(f"{method} {url} failed with {problem}{hint}", e.status_code)

    def _tokenize(self, prompt: Prompt) -> int | None:
        """Exact count from `{root}/tokenize`; None (and no more asking after a 4xx) when the server has none."""
        root = self.base_url.removesuffix("/v1")
        body = {"model": self.name, **({"prompt": prompt} if isinstance(prompt, str) else {"messages": prompt})}
        try:
            r = self._http.post(f"{root}/tokenize", json=body)  # vLLM's route, outside the OpenAI API
        except httpx.TransportError:
            return None
        with self._tokenize_lock:
            if r.status_code == 200 and isinstance(r.json().get("count"), int):
                self._can_tokenize = True
                return r.json()["count"]
            if 400 <= r.status_code < 500 and self._can_tokenize is None:
                self._can_tokenize = False
        return None


def to_generation(text: str, response, stop: list[str]) -> Generation:
    """A Generation from an OpenAI response: stop strings cut again (harmless if the server did), text
    stripped like the in-process backend's, token counts from the response's `usage`."""
    text, _ = cut_at_stop(text, stop)
    usage = response.usage
    reason = "length" if response.choices[0].finish_reason == "length" else "stop"
    prompt_tokens, completion_tokens = (usage.prompt_tokens, usage.completion_tokens) if usage else (0, 0)
    return Generation(text.strip(), int(prompt_tokens or 0), int(completion_tokens or 0), reason)


def error_message(e: openai.APIStatusError) -> tuple[str, str | None]:
    """(message, code) from an OpenAI-style error body (the client unwraps `{"error": ...}`), else the
    response's first 200 characters."""
    body = e.body
    if isinstance(body, dict):
        return str(body.get("message", "")).replace("\n", " "), body.get("code")
    if isinstance(body, str):
        return body, None
    return (e.response.text[:200].replace("\n", " ") or e.response.reason_phrase), None
