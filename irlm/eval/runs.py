"""TREC run files: `qid Q0 docid rank score tag`, one line per retrieved document."""

from __future__ import annotations

from pathlib import Path

from irlm.data.beir import read_lines, validate_ids
from irlm.errors import InputError
from irlm.types import Run
from irlm.utils import atomic_path


def write_trec(run: Run, path: str | Path, tag: str = "irlm") -> None:
    """Write `run` ranked by score. Ids are checked first: one holding whitespace would shift the columns (a
    newline in it could even forge a line for another query), and a lone surrogate has no UTF-8."""
    validate_ids(run, "query id")
    validate_ids({doc for docs in run.values() for doc in docs})
    validate_ids([tag], "run tag")
    with atomic_path(path) as tmp, open(tmp, "w", encoding="utf-8") as f:
        for qid, docs in run.items():
            ranked = sorted(docs.items(), key=lambda x: -x[1])
            for rank, (doc, score) in enumerate(ranked, start=1):
                f.write(f"{qid} Q0 {doc} {rank} {score:.6f} {tag}\n")


def read_trec(path: str | Path) -> Run:
    run: Run = {}
    for lineno, line in read_lines(path):  # a byte that is not UTF-8 is one error naming its line
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
