"""Start-up cost of the `irlm` command: `irlm --help` and a BM25 evaluation, each in a fresh process.

With `--against REF`, the same commands run from a checkout of REF (a git worktree made in a temporary
folder, put first on PYTHONPATH) in the same run; `ratio_*` > 1 means this tree starts faster. REF's own
dependencies must be installed (ranx, for commits before the switch to pytrec_eval).

    python bench/startup.py
    python bench/startup.py --against 79525dd --repeat 3
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
COMMANDS = {"help": ["--help"], "eval_bm25": ["eval", "--retriever", "bm25", "--data", "scifact"]}


def timed(args: list[str], tree: Path, repeat: int) -> float:
    """Median wall seconds of `python -m irlm.cli ARGS` with `tree` first on the import path."""
    env = {**os.environ, "PYTHONPATH": str(tree), "HF_HUB_OFFLINE": "1"}
    cmd = [sys.executable, "-c", "import sys; from irlm.cli import run; sys.argv[0] = 'irlm'; run()", *args]
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, env=env, cwd=tree, check=True, capture_output=True)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def measure(tree: Path, repeat: int) -> dict[str, float]:
    return {name: round(timed(args, tree, repeat), 3) for name, args in COMMANDS.items()}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--against", default=None, help="a git ref to compare with, e.g. the last release")
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    result = {"bench": "startup", "repeat": args.repeat, "this": measure(ROOT, args.repeat)}
    if args.against:
        with tempfile.TemporaryDirectory() as tmp:
            tree = Path(tmp) / "ref"
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(tree), args.against],
                           check=True, capture_output=True)  # fmt: skip
            try:
                result["against"] = {"ref": args.against, **measure(tree, args.repeat)}
            finally:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)], check=True)
        for name in COMMANDS:
            result[f"ratio_{name}"] = round(result["against"][name] / result["this"][name], 2)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
