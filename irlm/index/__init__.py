from importlib import import_module

__all__ = ["BM25Index", "BM25Retriever", "DenseIndex", "DenseRetriever", "HybridRetriever", "exact_topk",
           "load_retriever", "rrf", "weighted"]  # fmt: skip

# resolved on first use, so a BM25 command never imports torch (about 3 s of a fresh process)
_HOME = {"BM25Index": "bm25", "DenseIndex": "dense", "exact_topk": "dense", "rrf": "fusion",
         "weighted": "fusion", "BM25Retriever": "retrievers", "DenseRetriever": "retrievers",
         "HybridRetriever": "retrievers", "load_retriever": "retrievers"}  # fmt: skip


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'irlm.index' has no attribute {name!r}")
    return getattr(import_module(f"irlm.index.{_HOME[name]}"), name)
