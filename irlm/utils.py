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
# the kinds of folder irlm writes, recorded in the marker; a command replaces only a folder of its own kind
# ("unknown": written by a caller that named no kind; replaced only by another such write, or with --force)
KINDS = ("index", "model", "run", "report", "export", "stage", "checkpoint", "data", "cache", "temporary", "unknown")
# a marker written before kinds were recorded holds none: the folder's own files tell which kind it is.
# These files never count alone, without the marker (a Hugging Face checkpoint has trainer_state.json)
LEGACY_KINDS = (("state.json", "run"), (".stage_hash", "stage"), ("modules.json", "export"), ("report.md", "report"),
                ("irlm_encoder.json", "model"), ("selfretrieval.json", "model"), ("irlm_reasoning.json", "model"),
                ("trainer_state.json", "checkpoint"), ("meta.json", "index"))  # fmt: skip
_forced: set[Path] = set()  # folders this process may replace whatever their kind (`--force`, see check_output)


def read_marker(folder: str | Path) -> dict | None:
    """The note in `folder`'s marker ({} where it is not a JSON object); None where there is no marker."""
    marker = Path(folder) / MARKER
    if not marker.is_file():
        return None
    try:
        note = json.loads(marker.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return note if isinstance(note, dict) else {}


def folder_kind(folder: str | Path) -> str | None:
    """The kind of output irlm's marker records in `folder` (index, model, run, ...); None where irlm did not
    make it. 'unknown' for a marker that records no kind and a folder whose files do not tell it."""
    note = read_marker(folder)
    if note is None:
        return None
    if note.get("kind") in KINDS:
        return note["kind"]
    return next((kind for name, kind in LEGACY_KINDS if (Path(folder) / name).exists()), "unknown")


def made_by_irlm(folder: str | Path) -> bool:
    """Whether `folder` carries irlm's marker (files irlm also writes, such as a stage hash, are not enough)."""
    return read_marker(folder) is not None


def mark_as_irlm(folder: str | Path, kind: str, **extra) -> None:
    """Write irlm's marker into `folder`, recording the `kind` of output it holds."""
    if kind not in KINDS:
        raise ValueError(f"unknown folder kind {kind!r}")
    why = f"irlm made this folder ({kind}), so a later irlm command writing a {kind} may replace it"
    note = {"made_by": "irlm", "kind": kind, **extra, "note": why}
    (Path(folder) / MARKER).write_text(json.dumps(note) + "\n")


def check_replaceable(path: str | Path, flag: str = "output", kind: str | None = None, force: bool = False) -> None:
    """Refuse a path irlm may not overwrite: a non-empty folder without irlm's marker, one of another kind than
    `kind` (unless `force`, or `check_output` was forced on it; never a run directory), or one under a file.

    Example:
        >>> check_replaceable("/tmp/new-index", "--out", "index")  # nothing there yet: fine
    """
    path = Path(path)
    if path.is_symlink() and path.is_dir():
        raise InputError(f"{flag} {path} is a link to a folder; irlm will not replace it, give a plain path")
    if path.is_dir() and any(path.iterdir()):
        _check_kind(path, flag, kind, force or path.resolve() in _forced)
    _check_writable(path, flag)


def _check_kind(path: Path, flag: str, kind: str | None, force: bool) -> None:
    found = folder_kind(path)
    if found is None:
        raise InputError(f"{flag} {path} is a folder irlm did not make (no {MARKER} marker); it is left "
                         "untouched (--force does not change that): give a new or empty folder")  # fmt: skip
    if kind is None or found == kind:
        return
    if found == "run":
        raise InputError(f"{flag} {path} is an irlm run directory (its state, stages and models); only `irlm run` "
                         "may replace it, --force or not: give another folder")  # fmt: skip
    if not force:
        raise InputError(f"{flag} {path} is an irlm folder of kind '{found}', not '{kind}'; it is left untouched: "
                         "give another folder, or --force to replace it")  # fmt: skip


def _first_line(raw: bytes) -> str:
    return raw.decode("utf-8-sig", errors="replace").strip()  # a BOM read as `read_lines` does


def _looks_trec(raw: bytes) -> bool:
    parts = _first_line(raw).split()
    try:
        int(parts[3]), float(parts[4])
    except (ValueError, IndexError):
        return False
    return len(parts) == 6


def _looks_examples(raw: bytes) -> bool:
    text = _first_line(raw)
    if not raw.endswith(b"\n") and text.startswith("{"):
        return True  # the only line, cut off by a kill: augment repairs it on resume
    try:
        obj = json.loads(text)
    except ValueError:
        return False
    return isinstance(obj, dict) and "query" in obj and "positives" in obj


# what an existing output file's first line must already be for irlm to write over it (or append to it)
FILE_KINDS = {"trec": ("a TREC run", _looks_trec),
              "examples": ("a JSONL of training examples (query, positives)", _looks_examples)}


def _check_file_kind(path: Path, flag: str, kind: str) -> None:
    """Refuse an existing, non-empty file whose first line is not of `kind`: irlm writes over its own outputs
    only. Lines split at b"\n" alone (JSON keeps U+2028 raw) and are read whole, however long."""
    name, looks = FILE_KINDS[kind]
    with open(path, "rb") as f:
        first = next((raw for raw in f if raw.strip()), None)
    if first is not None and not looks(first):
        raise InputError(f"{flag} {path} exists and is not {name}; irlm will not overwrite it: give a new file path")


def check_output(path: str | Path, flag: str = "--out", folder: bool = False, kind: str | None = None,
                 force: bool = False) -> Path:  # fmt: skip
    """Validate an output before any expensive work: a file is not a folder, an existing file is of `kind`
    (`FILE_KINDS`), a folder is new, empty, or irlm's of `kind` (with `force`: of any kind but a run
    directory), and the nearest existing parent is a writable folder. A forced folder may then be replaced by
    this process's later writes of `kind`."""
    path = Path(path)
    if not folder and path.is_dir():
        raise InputError(f"{flag} {path} is a folder; give a file path")
    if folder and path.exists() and not path.is_dir():
        raise InputError(f"{flag} {path} is a file; give a folder path")
    if not folder and kind in FILE_KINDS and path.is_file():
        _check_file_kind(path, flag, kind)
    check_replaceable(path, flag, kind, force)
    if force and folder:
        _forced.add(path.resolve())
    return path


def claim_folder(path: str | Path, kind: str, flag: str = "output_dir") -> Path:
    """Make `path` a folder of `kind` to write into: new, empty, or irlm's of that kind (its files stay: a
    training run resumes from its checkpoints). One of another kind that `--force` allowed is emptied first."""
    path = Path(path)
    check_replaceable(path, flag, kind)
    found = folder_kind(path) if path.is_dir() else None
    if found not in (None, kind):
        shutil.rmtree(path)  # forced: replaced, not mixed with the other kind's files
    path.mkdir(parents=True, exist_ok=True)
    if found != kind:
        mark_as_irlm(path, kind)
    return path


class WriterLock:
    """An exclusive fcntl lock held for as long as one process writes the folder `path` (`irlm serve --writable`).

    It lives in `.NAME.lock` beside the folder, not inside it: every save swaps the folder for a new one, and a
    lock inside would stay with the old. The kernel drops it when its holder dies, even by kill -9.

    Example:
        >>> lock = WriterLock("runs/scifact-bm25")  # doctest: +SKIP
        >>> lock.release()  # doctest: +SKIP
    """

    def __init__(self, path: str | Path, flag: str = "--writable index"):
        import fcntl

        path = Path(path)
        if not path.parent.is_dir():
            raise InputError(f"{flag} {path}: no such folder")
        self.file = path.with_name(f".{path.name}.lock")
        while True:
            fd = os.open(self.file, os.O_RDWR | os.O_CREAT, 0o644)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                holder = _read_pid(self.file)
                raise InputError(f"{flag} {path} is already written by process {holder or '(unknown)'} (lock "
                                 f"{self.file}); one writer per index: stop it, or serve this one read-only") from None
            if _same_file(fd, self.file):  # not a file its last holder removed between our open and lock
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self.fd = fd

    def release(self) -> None:
        """Remove the lock file while still holding it (so no waiter holds a lock on a removed file), then unlock."""
        if self.fd is None:
            return
        with contextlib.suppress(FileNotFoundError):
            self.file.unlink()
        os.close(self.fd)
        self.fd = None


def _read_pid(path: Path) -> str | None:
    with contextlib.suppress(OSError):
        text = path.read_text().strip()
        return text if text.isdigit() else None
    return None


def _same_file(fd: int, path: Path) -> bool:
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return False
    return (st.st_dev, st.st_ino) == (os.fstat(fd).st_dev, os.fstat(fd).st_ino)


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
def atomic_path(path: str | Path, kind: str | None = None) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it into place only if the block succeeds.

    Works for files and folders: a reader never sees a half-written index. A folder written so carries
    irlm's marker with its `kind` (None: an index, told by the meta.json the block wrote); an existing
    folder without the marker, or of another kind, is refused before the block runs, never replaced.
    """
    path = Path(path)
    check_replaceable(path, kind=kind)
    path.parent.mkdir(parents=True, exist_ok=True)
    clean_stale_temporaries(path)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent)) / path.name
    mark_as_irlm(tmp.parent, "temporary")  # so that the next save may remove it if this process is killed
    try:
        yield tmp
        if tmp.is_dir():
            written = kind or _written_kind(tmp)
            if kind is None:
                check_replaceable(path, kind=written)  # the kind is known only now
            mark_as_irlm(tmp, written)
        _pause_for_tests()  # a test kills the process here: the last committed folder must still be whole
        _replace(tmp, path)
        _pause_for_tests()  # ... and here, before the old one is removed: the new one must be whole
    finally:
        shutil.rmtree(tmp.parent, ignore_errors=True)


def _written_kind(folder: Path) -> str:
    """The kind of a folder a caller wrote without naming it: an index has the meta.json of its kind."""
    try:
        meta = json.loads((folder / "meta.json").read_text())
    except (OSError, ValueError):
        meta = None
    return "index" if isinstance(meta, dict) and "kind" in meta else "unknown"


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
