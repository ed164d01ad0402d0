from irlm.utils import lazy_names

__all__ = ["BM25Index", "BM25Retriever", "DenseIndex", "DenseRetriever", "HybridRetriever", "exact_topk",
           "load_retriever", "rrf", "weighted"]  # fmt: skip
# a BM25 command never imports torch (about 3 s of a fresh process)
_HOME = {"BM25Index": "bm25", "DenseIndex": "dense", "exact_topk": "dense", "rrf": "fusion", "weighted": "fusion",
         "BM25Retriever": "retrievers", "DenseRetriever": "retrievers", "HybridRetriever": "retrievers",
         "load_retriever": "retrievers"}  # fmt: skip
__getattr__ = lazy_names(__name__, {name: f"irlm.index.{home}" for name, home in _HOME.items()})
