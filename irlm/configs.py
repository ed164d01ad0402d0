"""Every settings dataclass a user fills (a method's trainer, a pipeline stage), by name, and a readable
description of its fields: type, default and the comment beside the field in the source, which is where
each default's reason lives (`irlm config show NAME`)."""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import io
import re
import tokenize

from irlm.config_files import did_you_mean
from irlm.errors import InputError

TRAINERS = {  # method -> (config module, config class, train module)
    "anchor": ("irlm.methods.anchor.config", "AnchorConfig", "irlm.methods.anchor.train"),
    "drama": ("irlm.methods.drama.config", "RetrieverConfig", "irlm.methods.drama.train"),
    "selfretrieval": ("irlm.methods.selfretrieval.config", "SelfRetrievalConfig", "irlm.methods.selfretrieval.train"),
    "reasoning": ("irlm.methods.reasoning.config", "ReasoningConfig", "irlm.methods.reasoning.train"),
}
CONFIGS = {  # stage kind -> (config module, config class, the field that names the stage's output)
    "augment": ("irlm.methods.drama.config", "AugmentConfig", "out"),
    "prune": ("irlm.methods.drama.config", "PruneConfig", "output_dir"),
    "pretrain": ("irlm.methods.drama.config", "PretrainConfig", "output_dir"),
}
NAMES = (*TRAINERS, *CONFIGS, "train-loop")


def config_class(name: str) -> type:
    """The dataclass behind a method or stage name (`train-loop`: the shared loop's TrainConfig)."""
    if name == "train-loop":
        module, cls = "irlm.train.loop", "TrainConfig"
    elif name in TRAINERS or name in CONFIGS:
        module, cls = (TRAINERS.get(name) or CONFIGS[name])[:2]
    else:
        raise InputError(f"no settings named '{name}'{did_you_mean(name, NAMES)} (known: {', '.join(NAMES)})")
    return getattr(importlib.import_module(module), cls)


def _comments(cls) -> dict[int, str]:
    """{line number in the class source: its comment text}."""
    source = inspect.getsource(cls)
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    return {t.start[0]: t.string.lstrip("# ").strip() for t in tokens if t.type == tokenize.COMMENT}, source


def _help(name: str, lines: list[str], comments: dict[int, str]) -> str:
    """The comment on the field's line, or else the comment lines directly above it."""
    decl = re.compile(rf"\s*{re.escape(name)}\s*:")
    at = next((i + 1 for i, line in enumerate(lines) if decl.match(line)), None)
    if at is None:
        return ""
    if at in comments and not lines[at - 1].lstrip().startswith("#"):
        return comments[at]
    above = []
    while at - 1 - len(above) >= 1 and lines[at - 2 - len(above)].lstrip().startswith("#"):
        above.insert(0, comments[at - 1 - len(above)])
    return " ".join(above)


def describe(cls) -> list[dict]:
    """One row per field: name, type, default (a factory's value) and help, read from the class that declares
    the field last (a method's config where it overrides a default, else TrainSettings)."""
    sources = {}
    rows = []
    for f in dataclasses.fields(cls):
        owner = next(c for c in cls.__mro__ if f.name in c.__dict__.get("__annotations__", {}))
        if owner not in sources:
            comments, source = _comments(owner)
            sources[owner] = source.splitlines(), comments
        default = f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default
        default = "(required)" if default is dataclasses.MISSING else default
        rows.append({"name": f.name, "type": str(f.type), "default": default,
                     "help": _help(f.name, *sources[owner])})  # fmt: skip
    return rows
