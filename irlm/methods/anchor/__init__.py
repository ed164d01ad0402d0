from irlm.methods.anchor.config import AnchorConfig
from irlm.methods.anchor.train import ReconstructionTask, train

__all__ = ["AnchorConfig", "ReconstructionTask", "train"]
