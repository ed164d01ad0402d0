from irlm.models.encoder import EncoderConfig, LLMEncoder
from irlm.models.resolve import BUNDLED, resolve_model

__all__ = ["BUNDLED", "EncoderConfig", "LLMEncoder", "resolve_model"]
