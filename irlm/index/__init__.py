from irlm.index.bm25 import BM25Index
from irlm.index.dense import DenseIndex, exact_topk
from irlm.index.fusion import rrf, weighted
from irlm.index.retrievers import BM25Retriever, DenseRetriever, HybridRetriever, load_retriever

__all__ = ["BM25Index", "BM25Retriever", "DenseIndex", "DenseRetriever", "HybridRetriever", "exact_topk",
           "load_retriever", "rrf", "weighted"]
