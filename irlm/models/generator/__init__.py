"""Text generators: the in-process transformers backend and an OpenAI-compatible HTTP backend."""

from __future__ import annotations

from irlm.models.generator.base import (
    BudgetExceeded,
    Generation,
    Generator,
    Prompt,
    SamplingParams,
    Usage,
    cut_at_stop,
)


def load_generator(spec: str, device: str | None = None, dtype: str = "auto", batch_size: int = 8,
                   budget: int | None = None) -> Generator:  # fmt: skip
    """`http://host:port/v1[#model]` or `https://...` -> OpenAI-compatible client; anything else is a model
    (bundled name, hub id or folder) run in this process.

    One signature for both, so a caller never needs to know which it gets: for an endpoint, `device` and
    `dtype` are the server's business and ignored, and `batch_size` is the number of requests in flight
    (the server batches concurrent requests itself).

    Example:
        >>> gen = load_generator("http://127.0.0.1:8000/v1", device="cuda", batch_size=16)  # doctest: +SKIP
    """
    if spec.startswith(("http://", "https://")):
        from irlm.models.generator.http import OpenAIGenerator

        base, _, model = spec.partition("#")
        return OpenAIGenerator(base, model=model or None, concurrency=batch_size, budget=budget)
    from irlm.models.generator.local import TransformersGenerator

    return TransformersGenerator(spec, device=device, dtype=dtype, batch_size=batch_size, budget=budget)


__all__ = ["BudgetExceeded", "Generation", "Generator", "Prompt", "SamplingParams", "Usage", "cut_at_stop",
           "load_generator"]  # fmt: skip
