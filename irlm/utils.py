"""Small shared helpers: atomic writes and device choice."""

from __future__ import annotations

import contextlib
import ctypes
import errno
import glob
import json
import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from functools import cache
from pathlib import Path

from irlm.errors import InputError

MARKER = ".irlm.json"  # written into every folder irlm makes: only folders carrying it may be emptied or replaced
# files only irlm writes, so folders made before the marker existed are still recognised as irlm's own
LEGACY_SIGNS = (".stage_hash", "irlm_encoder.json", "selfretrieval.json", "irlm_reasoning.json", "trainer_state.json")


def made_by_irlm(folder: str | Path) -> bool:
    """Whether `folder` carries irlm's marker (or an older irlm folder's own files: stage hash, index meta)."""
    folder = Path(folder)
    if any((folder / name).is_file() for name in (MARKER, *LEGACY_SIGNS)):
        return True
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        return False
    return isinstance(meta, dict) and "kind" in meta  # an index saved before the marker existed


def mark_as_irlm(folder: str | Path) -> None:
    note = {"made_by": "irlm", "note": "irlm made this folder, so a later irlm run may empty or replace it"}
    (Path(folder) / MARKER).write_text(json.dumps(note) + "\n")


def check_replaceable(path: str | Path, flag: str = "output") -> None:
    """Refuse a path irlm may not overwrite: a non-empty folder without irlm's marker, or one under a file.

    Example:
        >>> check_replaceable("/tmp/new-index")  # nothing there yet: fine
    """
    path = Path(path)
    if path.is_symlink() and path.is_dir():
        raise InputError(f"{flag} {path} is a link to a folder; irlm will not replace it, give a plain path")
    if path.is_dir() and any(path.iterdir()) and not made_by_irlm(path):
        raise InputError(f"{flag} {path} is a folder irlm did not make (no {MARKER} marker); it is left "
                         "untouched: give a new or empty folder")  # fmt: skip
    _check_writable(path, flag)


def check_output(path: str | Path, flag: str = "--out", folder: bool = False) -> Path:
    """Validate an output before any expensive work: a file is not a folder, a folder is irlm's or empty,
    and the nearest existing parent is a writable folder."""
    path = Path(path)
    if not folder and path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file path")
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file; give a folder path")
    check_replaceable(path, flag)
    return path


def _check_writable(path: Path, flag: str) -> None:
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise InputError(f"{flag} {path} is under {parent}, which is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise InputError(f"{flag} {path}: cannot write in {parent} (permission denied)")


def clean_stale_temporaries(path: str | Path) -> None:
    """Remove temporary siblings of `path` left by killed processes (their pid is in the name and dead),
    after putting back a folder such a process had moved aside (see `restore_interrupted`). Only folders
    carrying irlm's marker go: a look-alike name that irlm did not make is left alone."""
    path = Path(path)
    if not path.parent.is_dir():
        return
    restore_interrupted(path)
    for sibling in path.parent.iterdir():
        pid = _temporary_pid(sibling.name, path.name)
        if pid is not None and pid != os.getpid() and not _alive(pid) and sibling.is_dir() and made_by_irlm(sibling):
            shutil.rmtree(sibling, ignore_errors=True)


def _temporary_pid(name: str, of: str) -> int | None:
    """`.NAME.tmp-PID-xxxx` and `.NAME.old-PID` -> PID; anything else -> None."""
    for kind in ("tmp-", "old-"):
        rest = name.removeprefix(f".{of}.{kind}")
        if rest != name and rest.split("-")[0].isdigit():
            return int(rest.split("-")[0])
    return None


def restore_interrupted(path: str | Path) -> None:
    """Where the two-rename fallback of `_replace` was killed between its renames, `path` is missing and the
    last committed folder waits beside it as `.NAME.old-PID`: rename it back (only irlm's own, of a dead PID)."""
    path = Path(path)
    if path.exists() or path.is_symlink() or not path.parent.is_dir():
        return
    for sibling in path.parent.glob(f".{glob.escape(path.name)}.old-*"):
        pid = _temporary_pid(sibling.name, path.name)
        if pid is not None and not _alive(pid) and sibling.is_dir() and made_by_irlm(sibling):
            os.replace(sibling, path)
            return


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process: alive
    return True


@contextlib.contextmanager
def atomic_path(path: str | Path) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    Works for files and folders: a reader never sees a half-written index. A folder written so carries
    irlm's marker; an existing folder without it is refused before the block runs, never replaced.
    """
    path = Path(path)
    check_replaceable(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)) / path.name
    mark_as_irlm(tmp.parent)  # so that the next save may remove it if this process is killed
    try:
        yield tmp
        if tmp.is_dir():
            mark_as_irlm(tmp)
        _pause_for_tests()  # a test kills the process here: the last committed folder must still be whole
        _replace(tmp, path)
        _pause_for_tests()  # ... and here, before the old one is removed: the new one must be whole
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def _replace(tmp: Path, path: Path) -> None:
    """Put `tmp` at `path`. A folder replacing a folder is swapped with it in one step where the system can
    (Linux's RENAME_EXCHANGE; the old one then lies in tmp's place, removed with it), so a process killed at
    any moment leaves `path` holding the old folder or the new one. Elsewhere two renames, old aside then
    new in: a kill between them leaves no folder at `path` until `restore_interrupted` puts the old back."""
    if path.is_dir() and not tmp.is_dir():
        raise InputError(f"{path} is a folder; cannot write a file in its place")
    if not path.is_dir():
        os.replace(tmp, path)
    elif not _exchange(tmp, path):
        old = path.with_name(f".{path.name}.old-{os.getpid()}")
        os.replace(path, old)
        os.replace(tmp, path)
        shutil.rmtree(old, ignore_errors=True)


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths atomically with renameat2(RENAME_EXCHANGE); False where the libc, kernel or file system
    lacks it (macOS, Windows, glibc before 2.28, some network file systems)."""
    libc = _libc()
    if libc is None or not hasattr(libc, "renameat2"):
        return False
    at_cwd, exchange = -100, 2  # AT_FDCWD, RENAME_EXCHANGE from <fcntl.h> and <linux/fs.h>
    if libc.renameat2(at_cwd, os.fsencode(a), at_cwd, os.fsencode(b), exchange) == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.EOPNOTSUPP):
        return False
    raise OSError(err, os.strerror(err), str(b))


@cache
def _libc():
    if not sys.platform.startswith("linux"):
        return None
    try:
        return ctypes.CDLL(None, use_errno=True)  # the C library this process already runs on
    except OSError:
        return None


def _pause_for_tests() -> None:
    """Sleep $IRLM_TEST_COMMIT_PAUSE seconds: tests only, to kill -9 a process in the middle of a commit."""
    pause = os.environ.get("IRLM_TEST_COMMIT_PAUSE")
    if pause:
        import time

        time.sleep(float(pause))


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


def lazy_names(package: str, homes: dict[str, str]):
    """A module `__getattr__` resolving each exported name from its home module on first use, so importing
    a package (and every `irlm` command's start) does not pay for torch, bm25s or numba until needed."""
    from importlib import import_module

    def __getattr__(name: str):
        if name not in homes:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        return getattr(import_module(homes[name]), name)

    return __getattr__


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

    values = {}
    if path:
        values = read_yaml(path) or {}
        if not isinstance(values, dict):
            raise InputError("expected a mapping of settings", str(path))
    for item in overrides or []:
        key, sep, raw = item.partition("=")
        if not sep:
            raise InputError(f"override '{item}' is not key=value")
        values[key.strip()] = _yaml_value(raw, item)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - known - {"expected"})  # `expected`: the numbers a recipe should reach
    if unknown:
        raise InputError(f"unknown setting(s) {', '.join(unknown)} for {cls.__name__}{did_you_mean(unknown[0], known)}",
                         str(path) if path else None)  # fmt: skip
    types = {f.name: str(f.type) for f in dataclasses.fields(cls)}
    return cls(**{k: _as_declared(k, v, types[k], path) for k, v in values.items() if k in known})


def read_yaml(path: str | Path):
    """Parse a YAML file; a missing file or a syntax error is one line naming the file and line."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise InputError("no such file", str(path))
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except UnicodeDecodeError as e:
        raise InputError(f"not UTF-8 text ({e.reason} at byte {e.start})", str(path)) from None
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise InputError(f"YAML syntax error: {problem}", str(path), mark.line + 1 if mark else None) from None


def _yaml_value(raw: str, item: str):
    import yaml

    try:
        return yaml.safe_load(raw)
    except yaml.YAMLError:
        raise InputError(f"override '{item}': the value is not valid YAML") from None


def did_you_mean(name: str, known) -> str:
    """'; did you mean 'x'?' for the nearest known name, or nothing when none is close."""
    import difflib

    close = difflib.get_close_matches(name, sorted(known), n=1)
    return f"; did you mean '{close[0]}'?" if close else ""


SIMPLE_TYPES = {"int": (int,), "float": (int, float), "str": (str,), "bool": (bool,)}


def _as_declared(key: str, value, declared: str, path):
    """YAML 1.1 reads `1e-5` (no dot) as a string; a setting declared float or int gets the number.
    A value of the wrong type for a plain int, float, str or bool setting is an error naming it."""
    optional = declared.endswith(" | None")
    kind = declared.removesuffix(" | None")
    where = str(path) if path else None
    if isinstance(value, str) and kind in ("float", "int"):
        try:
            return float(value) if kind == "float" else int(value)
        except ValueError:
            raise InputError(f"setting {key}: expected {kind}, got '{value}'", where) from None
    if kind not in SIMPLE_TYPES or (value is None and optional):
        return value
    wrong_bool = isinstance(value, bool) and kind != "bool"  # YAML `yes` is not a number
    if wrong_bool or not isinstance(value, SIMPLE_TYPES[kind]):
        raise InputError(f"setting {key}: expected {kind}, got {type(value).__name__} {value!r}", where)
    return value
