"""irlm: decoder-only LLMs as retrieval systems."""

from irlm.utils import lazy_names

__version__ = "0.1.0"
__all__ = ["BM25Index", "DenseIndex", "LLMEncoder", "evaluate", "load_dataset"]
__getattr__ = lazy_names(__name__, {"BM25Index": "irlm.index", "DenseIndex": "irlm.index",
                                    "LLMEncoder": "irlm.models", "evaluate": "irlm.eval",
                                    "load_dataset": "irlm.data"})  # fmt: skip


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
