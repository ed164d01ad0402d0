from importlib import import_module

__all__ = ["BUNDLED", "EncoderConfig", "LLMEncoder", "resolve_model"]

# resolved on first use: the generator clients and the CLI import this package without needing torch
_HOME = {"EncoderConfig": "irlm.models.encoder", "LLMEncoder": "irlm.models.encoder",
         "BUNDLED": "irlm.models.resolve", "resolve_model": "irlm.models.resolve"}  # fmt: skip


def __getattr__(name: str):
    if name not in _HOME:
        raise AttributeError(f"module 'irlm.models' has no attribute {name!r}")
    return getattr(import_module(_HOME[name]), name)
