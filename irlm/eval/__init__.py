from irlm.eval.metrics import DEFAULT_METRICS, evaluate
from irlm.eval.runs import read_trec, write_trec

__all__ = ["DEFAULT_METRICS", "evaluate", "read_trec", "write_trec"]
