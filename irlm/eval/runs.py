"""TREC run files: `qid Q0 docid rank score tag`, one line per retrieved document."""

from __future__ import annotations

from pathlib import Path

from irlm.errors import InputError
from irlm.types import Run
from irlm.utils import atomic_path


def write_trec(run: Run, path: str | Path, tag: str = "irlm") -> None:
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda x: -x[1])
            for rank, (doc, score) in enumerate(ranked, start=1):
                f.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")


def read_trec(path: str | Path) -> Run:
    run: Run = {}
    with open(path, encoding="utf-8", newline=None) as f:
        for lineno, line in enumerate(f, start=1):
            parts = line.split()
            if not parts:
                continue
            if len(parts) != 6:
                raise InputError(f"expected 6 columns (qid Q0 docid rank score tag), got {len(parts)}", path, lineno)
            try:
                score = float(parts[4])
            except ValueError:
                raise InputError(f"not a number: '{parts[4]}'", path, lineno, "score") from None
            run.setdefault(parts[0], {})[parts[2]] = score
    return run
