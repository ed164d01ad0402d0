"""Checks on user-given options, run before any expensive work: a bad `--k` or `--device` should fail in
a second with one line naming it, not after the corpus is encoded (or with a traceback from torch)."""

from __future__ import annotations

import re

from irlm.errors import InputError

DTYPES = ("auto", "bf16", "fp16", "fp32")  # what LLMEncoder and TransformersGenerator accept
FUSIONS = ("rrf", "weighted")
RETRIEVERS = ("bm25", "dense", "reasoning")  # reasoning: --model is a reasoning model folder
BUILT = ("bm25", "dense", "hybrid", "reasoning")  # what irlm.systems.build_retriever makes (hybrid: bm25 + dense)
# kept here rather than imported from irlm.index.dense / irlm.models.pooling, which load torch: checking
# a flag must not cost a BM25 command three seconds (tests/unit/test_options_names.py keeps them in step)
BACKENDS = ("exact", "flat", "hnsw", "int8", "binary")
POOLINGS = ("last", "eos", "mean", "cls", "token")
DEVICE = re.compile(r"(cpu|cuda|mps|auto)(:\d+)?")


def at_least(value: int, least: int, flag: str) -> int:
    """`value` if it is at least `least`; `--k 0` would silently return nothing."""
    if value is not None and value < least:
        raise InputError(f"{flag} must be at least {least}, got {value}")
    return value


def one_of(value: str | None, choices: tuple[str, ...], flag: str) -> str | None:
    if value is not None and value not in choices:
        raise InputError(f"{flag}: unknown value '{value}'; choose {', '.join(choices)}")
    return value


def port(value: int, flag: str = "--port") -> int:
    if not 1 <= value <= 65535:
        raise InputError(f"{flag} must be between 1 and 65535, got {value}")
    return value


def weight(value: float, flag: str = "--weight") -> float:
    """A fusion weight in [0, 1]: the other run gets 1 - weight, which must not turn negative."""
    if not 0 <= value <= 1:
        raise InputError(f"{flag} must be between 0 and 1, got {value}")
    return value


def fusion(retriever: str, method: str | None, dense_weight: float | None) -> tuple[str, float]:
    """(method, weight) for a hybrid; `--fusion`/`--weight` on another retriever, or `--weight` with RRF,
    would be silently ignored, so they are refused."""
    if retriever != "hybrid" and (method is not None or dense_weight is not None):
        raise InputError(f"--fusion and --weight apply to --retriever hybrid, not '{retriever}'")
    one_of(method, FUSIONS, "--fusion")
    if dense_weight is not None and method != "weighted":
        raise InputError("--weight applies to --fusion weighted (RRF takes no weight)")
    return method or "rrf", weight(0.5 if dense_weight is None else dense_weight)


def weights(text: str, n: int, flag: str = "--weights") -> list[float]:
    """One non-negative number per run, not all zero."""
    try:
        values = [float(x) for x in text.split(",")]
    except ValueError:
        raise InputError(f"{flag} '{text}' is not a comma-separated list of numbers") from None
    if len(values) != n:
        raise InputError(f"{flag} gives {len(values)} weight(s) for {n} run(s)")
    if any(v < 0 or v != v for v in values) or not any(values):
        raise InputError(f"{flag} must be non-negative numbers, not all zero; got '{text}'")
    return values


def device(value: str | None, flag: str = "--device") -> str | None:
    """`cpu`, `cuda`, `cuda:N`, `mps` or `auto`; a CUDA device must exist here."""
    if value is None:
        return None
    if not DEVICE.fullmatch(value):
        raise InputError(f"{flag}: unknown device '{value}'; use cpu, cuda, cuda:N or auto")
    if value.startswith("cuda"):
        import torch

        count = torch.cuda.device_count() if torch.cuda.is_available() else 0
        index = int(value.partition(":")[2] or 0)
        if index >= count:
            raise InputError(f"{flag} {value}: this machine has {count} CUDA device(s)")
    return value


def existing_file(path, flag: str):
    """An input file that must be there: one line now rather than a FileNotFoundError later."""
    from pathlib import Path

    if not Path(path).is_file():
        raise InputError(f"{flag} {path}: no such file")
    return path


def existing_dir(path, flag: str):
    """An input folder that must be there, checked before a dataset is loaded."""
    from pathlib import Path

    if not Path(path).is_dir():
        raise InputError(f"{flag} {path}: no such folder")
    return path
