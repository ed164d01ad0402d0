from irlm.methods.selfretrieval.config import SelfRetrievalConfig
from irlm.methods.selfretrieval.retriever import SelfRetriever

__all__ = ["SelfRetrievalConfig", "SelfRetriever"]
