"""Small shared helpers: atomic writes and device choice."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    Works for files and folders: a reader never sees a half-written index.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", dir=path.parent)) / path.name
    try:
        yield tmp
        if path.is_dir() and tmp.is_dir():
            old = path.with_name(f".{path.name}.old-{os.getpid()}")
            os.replace(path, old)
            os.replace(tmp, path)
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(tmp, path)
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def write_json(path: str | Path, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")


def cache_dir() -> Path:
    """Where converted models and downloaded datasets live ($IRLM_CACHE, else ~/.cache/irlm)."""
    return Path(os.environ.get("IRLM_CACHE", Path.home() / ".cache" / "irlm"))


def pick_device(device: str | None = None) -> str:
    """`device` if given, else CUDA when present, else CPU."""
    if device and device != "auto":
        return device
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


@cache
def bf16_is_faster(device: str) -> bool:
    """Whether bf16 matmul beats fp32 here; measured once per process because CPUs differ widely."""
    import time

    import torch

    if device.startswith("cuda"):
        return torch.cuda.is_bf16_supported()
    a = torch.randn(512, 512)
    timings = {}
    for dtype in (torch.float32, torch.bfloat16):
        x = a.to(dtype)
        x @ x  # warm-up: first call pays for kernel selection
        start = time.perf_counter()
        for _ in range(8):
            x @ x
        timings[dtype] = time.perf_counter() - start
    return timings[torch.bfloat16] < 0.8 * timings[torch.float32]


def load_config(cls, path: str | Path | None, overrides: list[str] | None = None):
    """A config dataclass from YAML, with `key=value` overrides from the command line winning.

    Unknown keys are an error naming the file, so a typo never silently falls back to a default.
    """
    import dataclasses

    import yaml

    from irlm.errors import InputError

    values = {}
    if path:
        values = yaml.safe_load(Path(path).read_text()) or {}
        if not isinstance(values, dict):
            raise InputError("expected a mapping of settings", str(path))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise InputError(f"override '{item}' is not key=value")
        values[key.strip()] = yaml.safe_load(raw)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known - {"expected"})  # `expected`: the numbers a recipe should reach
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}", str(path) if path else None)
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    return cls(**{k: _as_declared(k, v, types[k], path) for k, v in values.items() if k in known})


def _as_declared(key: str, value, declared: str, path):
    """YAML 1.1 reads `1e-5` (no dot) as a string; a setting declared float or int gets the number."""
    from irlm.errors import InputError

    kind = declared.removesuffix(" | None")
    if not isinstance(value, str) or kind not in ("float", "int"):
        return value
    try:
        return float(value) if kind == "float" else int(value)
    except ValueError:
        raise InputError(f"setting {key}: expected {kind}, got '{value}'", str(path) if path else None) from None
