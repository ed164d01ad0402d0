"""Every command and number in the markdown files must run from a fresh clone: no machine-local paths."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
# a path under a home, a scratch or a workplace folder names one machine's files, not the clone's
LOCAL = re.compile(r"(?<![\w.~-])/(?:work|home|Users|root|tmp|mnt|scratch)/[\w.-]")


def markdown_files() -> list[Path]:
    skip = {".venv", ".git", "node_modules", "runs"}
    return [p for p in ROOT.rglob("*.md") if not skip & set(p.relative_to(ROOT).parts)]


def local_paths(path: Path) -> list[str]:
    rel = path.relative_to(ROOT).as_posix()
    found = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        found += [f"{rel}:{n}: {m.group(0)}" for m in LOCAL.finditer(line)]
    return found


def test_the_scan_finds_a_machine_local_path(tmp_path):
    assert LOCAL.search("irlm train drama --config /work/runs/exp/b.yaml")
    assert LOCAL.search("see /home/me/model") and LOCAL.search("out to /tmp/smoke")
    assert not LOCAL.search("irlm index --out runs/scifact-bm25 and ../shared/data and https://x.org/work/a")


def test_no_markdown_file_names_a_machine_local_path():
    files = markdown_files()
    assert len(files) > 5  # the scan sees the READMEs
    found = [hit for p in files for hit in local_paths(p)]
    assert not found, "machine-local paths in markdown:\n" + "\n".join(found)
