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


def load_generator(spec: str, **kw) -> Generator:
    """`http://host:port/v1[#model]` or `https://...` -> OpenAI-compatible client; anything else is a model
    (bundled name, hub id or folder) run in this process."""
    if spec.startswith(("http://", "https://")):
        from irlm.models.generator.http import OpenAIGenerator

        base, _, model = spec.partition("#")
        return OpenAIGenerator(base, model=model or None, **kw)
    from irlm.models.generator.local import TransformersGenerator

    return TransformersGenerator(spec, **kw)


__all__ = ["BudgetExceeded", "Generation", "Generator", "Prompt", "SamplingParams", "Usage", "cut_at_stop",
           "load_generator"]  # fmt: skip
