"""Checks an index folder against its own manifest (meta.json) as it loads, so a truncated, missing or
swapped file is one line, "index DIR is damaged: FILE: reason", not a traceback from numpy, bm25s or FAISS."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from irlm.errors import InputError


def damaged(folder: Path, file: str, reason: str) -> InputError:
    return InputError(f"index {folder} is damaged: {file}: {reason}")


def read_meta(folder: Path, kind: str, needs: tuple[str, ...]) -> dict:
    """meta.json as a dict of the `kind` index, with the fields `needs` present."""
    meta = read_json(folder, "meta.json")
    if not isinstance(meta, dict):
        raise damaged(folder, "meta.json", "not a JSON object")
    if meta.get("kind", kind) != kind:
        raise InputError(f"{folder} is a '{meta['kind']}' index, not a {kind} one")
    missing = [k for k in needs if k not in meta]
    if missing:
        raise damaged(folder, "meta.json", f"no '{missing[0]}' field")
    return meta


def write_manifest(folder: Path, kind: str, **fields) -> None:
    """meta.json naming what a saved system is, so `irlm.systems.load_retriever` can open it."""
    (Path(folder) / "meta.json").write_text(json.dumps({"kind": kind, **fields}, indent=2))


def read_json(folder: Path, name: str):
    path = folder / name
    if not path.is_file():
        raise damaged(folder, name, "missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise damaged(folder, name, f"not valid JSON ({e})") from None


def load_array(folder: Path, name: str, shape: tuple | None = None, dtype=None, mmap: bool = False) -> np.ndarray:
    """A .npy without pickle, checked for its expected shape (None: any size on that axis) and kind.

    mmap: open it read-only memory-mapped (pages are read when touched) instead of reading it whole."""
    path = folder / name
    if not path.is_file():
        raise damaged(folder, name, "missing")
    if path.stat().st_size == 0:
        raise damaged(folder, name, "empty file")
    try:
        array = np.load(path, allow_pickle=False, mmap_mode="r" if mmap else None)
    except (ValueError, OSError, EOFError) as e:  # a pickled array is a ValueError with allow_pickle=False
        raise damaged(folder, name, f"not a plain .npy array ({str(e).splitlines()[0]})") from None
    if dtype is not None and array.dtype != dtype:
        raise damaged(folder, name, f"dtype {array.dtype}, expected {np.dtype(dtype)}")
    if shape is not None and (array.ndim != len(shape) or any(s not in (None, a) for s, a in zip(shape, array.shape))):
        want = "x".join("?" if s is None else str(s) for s in shape)
        raise damaged(folder, name, f"shape {'x'.join(map(str, array.shape))}, expected {want}")
    return array


def digest(data: bytes | np.ndarray) -> str:
    """sha256 of a file's bytes: a FAISS graph is checked before FAISS parses it, as a corrupt one can abort
    the process instead of raising."""
    return hashlib.sha256(bytes(data)).hexdigest()


def check_ids(folder: Path, name: str, ids, count: int) -> list[str]:
    if not isinstance(ids, list) or not all(isinstance(i, str) for i in ids):
        raise damaged(folder, name, "not a list of string ids")
    if len(ids) != count:
        raise damaged(folder, name, f"{len(ids)} ids, but meta.json counts {count}")
    return ids
