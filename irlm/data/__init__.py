from irlm.data.beir import load_beir, read_corpus, read_qrels, read_queries, write_beir
from irlm.data.registry import DATASETS, load_dataset, resolve_dataset

__all__ = ["DATASETS", "load_beir", "load_dataset", "read_corpus", "read_qrels", "read_queries", "resolve_dataset",
           "write_beir"]
