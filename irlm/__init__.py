"""irlm: decoder-only LLMs as retrieval systems."""

from importlib import import_module

__version__ = "0.1.0"
__all__ = ["BM25Index", "DenseIndex", "LLMEncoder", "evaluate", "load_dataset"]

# names resolve on first use, so `import irlm` (and every `irlm` command's start) does not pay for
# torch, bm25s and numba until a command needs them
_HOME = {"BM25Index": "irlm.index", "DenseIndex": "irlm.index", "LLMEncoder": "irlm.models",
         "evaluate": "irlm.eval", "load_dataset": "irlm.data"}  # fmt: skip


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'irlm' has no attribute {name!r}")
    return getattr(import_module(_HOME[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
