"""irlm: decoder-only LLMs as retrieval systems."""

from irlm.data import load_dataset
from irlm.eval import evaluate
from irlm.index import BM25Index, DenseIndex
from irlm.models import LLMEncoder

__version__ = "0.1.0"
__all__ = ["BM25Index", "DenseIndex", "LLMEncoder", "evaluate", "load_dataset"]
