"""A generator behind an OpenAI-compatible HTTP endpoint (vLLM, `irlm serve-llm`, a hosted API).

One request per prompt, `concurrency` in flight at once: the server batches concurrent requests
itself, so many small requests keep it busy without this side knowing its batch size.
Connection errors, timeouts, 429 and 5xx are retried with exponential backoff; any other 4xx
fails at once with one line naming the URL, the status and the server's message.

Example:
    >>> gen = OpenAIGenerator("http://127.0.0.1:8000/v1")  # doctest: +SKIP
    >>> gen.generate(["The capital of France is"], SamplingParams(max_new_tokens=4))[0].text  # doctest: +SKIP
"""

from __future__ import annotations

import logging
import os
import random
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import httpx

from irlm.errors import InputError
from irlm.models.generator.base import BudgetExceeded, Generation, Prompt, SamplingParams, Usage, cut_at_stop

log = logging.getLogger(__name__)

DEFAULT_CONTEXT = 4096  # when neither the caller nor /models says: a common size for today's small LLMs
MAX_DELAY = 30.0  # seconds; caps the exponential backoff and a server's Retry-After


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
                 concurrency: int = 8, timeout: float = 60.0, max_retries: int = 4, backoff: float = 0.5,
                 budget: int | None = None, context_length: int | None = None):  # fmt: skip
        self.base_url = base_url.rstrip("/")
        self.api_key_env, self.max_retries, self.backoff = api_key_env, max_retries, backoff
        self.usage = Usage(budget=budget)
        key = os.environ.get(api_key_env) if api_key_env else None
        limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
        self._client = httpx.Client(headers={"Authorization": f"Bearer {key}"} if key else {},
                                    timeout=timeout, limits=limits)  # fmt: skip
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

    def __enter__(self) -> OpenAIGenerator:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _generate_one(self, prompt: Prompt, params: SamplingParams) -> Generation:
        body = {"model": self.name, "max_tokens": params.max_new_tokens, "temperature": params.temperature,
                "top_p": params.top_p}  # fmt: skip
        # stop and seed only when set: some servers reject null where they expect a list or an int
        body.update({k: v for k, v in (("stop", params.stop), ("seed", params.seed)) if v})
        if isinstance(prompt, str):
            out = self._request("POST", "/completions", {**body, "prompt": prompt})
            text = out["choices"][0]["text"]
        else:
            out = self._request("POST", "/chat/completions", {**body, "messages": prompt})
            text = out["choices"][0]["message"]["content"] or ""
        return to_generation(text, out, params.stop)

    def _model_entry(self, model: str | None) -> dict:
        """The /models entry for `model` (or the first one when None); {} when a named model is not listed."""
        try:
            entries = self._request("GET", "/models").get("data") or []
        except RequestRefused as e:
            if model is None or e.status not in (404, 405):
                raise
            return {}  # a server without /models is fine when the caller named the model
        if model is None and not entries:
            raise InputError(f"GET {self.base_url}/models lists no model; name one with {self.base_url}#MODEL")
        return next((e for e in entries if model is None or e.get("id") == model), {})

    def _request(self, method: str, path: str, body: dict | None = None) -> dict:
        url = f"{self.base_url}{path}"
        for attempt in range(self.max_retries + 1):
            try:
                r = self._client.request(method, url, json=body)
            except httpx.TransportError as e:  # refused, reset, timed out: worth another try
                problem, wait = f"{type(e).__name__}: {e}", None
            else:
                if r.status_code < 400:
                    return r.json()
                problem, wait = self._refusal(method, url, r), retry_after(r)
            if attempt < self.max_retries:
                delay = backoff_delay(attempt, self.backoff, wait)
                log.warning("%s %s failed (%s); retry %d/%d in %.2fs", method, url, problem, attempt + 1,
                            self.max_retries, delay)  # fmt: skip
                time.sleep(delay)
        raise EndpointError(f"{method} {url} failed after {self.max_retries + 1} attempts: {problem}")

    def _refusal(self, method: str, url: str, r: httpx.Response) -> str:
        """The problem as one line if worth retrying (429, 5xx); raises at once for every other status."""
        message, code = error_message(r)
        problem = f"HTTP {r.status_code}: {message}"
        if code == "insufficient_quota":  # the server's own budget: waiting does not refill it
            raise BudgetExceeded(f"{method} {url}: {problem}")
        if r.status_code == 429 or r.status_code >= 500:
            return problem
        hint = f" (is ${self.api_key_env} set to the server's key?)" if r.status_code in (401, 403) else ""
        raise RequestRefused(f"{method} {url} failed with {problem}{hint}", r.status_code)

    def _tokenize(self, prompt: Prompt) -> int | None:
        """Exact count from `{root}/tokenize`; None (and no more asking after a 4xx) when the server has none."""
        root = self.base_url.removesuffix("/v1")
        body = {"model": self.name, **({"prompt": prompt} if isinstance(prompt, str) else {"messages": prompt})}
        try:
            r = self._client.post(f"{root}/tokenize", json=body)
        except httpx.TransportError:
            return None
        with self._tokenize_lock:
            if r.status_code == 200 and isinstance(r.json().get("count"), int):
                self._can_tokenize = True
                return r.json()["count"]
            if 400 <= r.status_code < 500 and self._can_tokenize is None:
                self._can_tokenize = False
        return None


def to_generation(text: str, response: dict, stop: list[str]) -> Generation:
    """A Generation from an OpenAI response: stop strings cut again (harmless if the server did), text
    stripped like the in-process backend's, token counts from the response's `usage`."""
    text, _ = cut_at_stop(text, stop)
    usage = response.get("usage") or {}
    reason = "length" if response["choices"][0].get("finish_reason") == "length" else "stop"
    return Generation(text.strip(), int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0)), reason)


def error_message(r: httpx.Response) -> tuple[str, str | None]:
    """(message, code) from an OpenAI-style `{"error": {...}}` body, else the body's first 200 characters."""
    try:
        err = r.json().get("error")
    except (ValueError, AttributeError):
        err = None
    if isinstance(err, dict):
        return str(err.get("message", "")).replace("\n", " "), err.get("code")
    if isinstance(err, str):
        return err, None
    return (r.text[:200].replace("\n", " ") or r.reason_phrase), None


def retry_after(r: httpx.Response) -> float | None:
    """A server's Retry-After in seconds (the delta-seconds form only), if it sent one."""
    try:
        return float(r.headers["retry-after"])
    except (KeyError, ValueError):
        return None


def backoff_delay(attempt: int, backoff: float, wait: float | None = None) -> float:
    """`backoff * 2**attempt`, times a jitter in [0.5, 1.5) so that many clients do not retry in step.

    Example:
        >>> 0.5 <= backoff_delay(0, 1.0) < 1.5
        True
    """
    if wait is not None:
        return min(wait, MAX_DELAY)
    return min(backoff * 2**attempt * random.uniform(0.5, 1.5), MAX_DELAY)
