from irlm.utils import lazy_names

__all__ = ["BUNDLED", "EncoderConfig", "LLMEncoder", "resolve_model"]
# the generator clients and the CLI import this package without needing torch
__getattr__ = lazy_names(__name__, {"EncoderConfig": "irlm.models.encoder", "LLMEncoder": "irlm.models.encoder",
                                    "BUNDLED": "irlm.models.resolve", "resolve_model": "irlm.models.resolve"})
