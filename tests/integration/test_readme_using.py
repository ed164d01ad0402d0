"""The README's "Using it" block, run as a newcomer would: every command as written, in order, in a fresh
folder. Once on stand-in datasets named like the real ones (all commands, in seconds), and once on the real
data (all but the commands the README marks with their cost, and those that read what they write)."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import DATA, TOY_CORPUS, TOY_QRELS, TOY_QUERIES, write_beir

README = Path(__file__).resolve().parents[2] / "README.md"
# the commands the README marks with their cost (each embeds SciFact's corpus); skipped on the real data only
HEAVY = ("irlm encode --data scifact --model minilm-l6 --out runs/scifact-minilm",
         "irlm index --data scifact --retriever hybrid --model minilm-l6 --fusion weighted --weight 0.35 "
         "--out runs/scifact-hybrid")  # fmt: skip


def section(name: str) -> str:
    text = README.read_text(encoding="utf-8")
    start = text.index(f"## {name}\n")
    return text[start : text.index("\n## ", start + 1)]


def commands() -> list[tuple[str, str]]:
    """(command, its comment) for each command of the section's bash block; `\\` continues a line."""
    block = re.search(r"```bash\n(.*?)```", section("Using it"), re.S).group(1)
    rows = []
    for line in block.replace("\\\n", " ").splitlines():
        code, _, comment = line.partition(" # ")
        rows.append((" ".join(code.split()), comment.strip()))  # spaces normalised, quotes kept for shlex
    return rows


def python_block() -> str:
    return re.search(r"```python\n(.*?)```", section("Using it"), re.S).group(1)


def irlm(command: str, cwd: Path, data: Path) -> subprocess.CompletedProcess:
    args = shlex.split(command)
    assert args[0] == "irlm", command
    env = {**os.environ, "IRLM_DATA": str(data), "IRLM_CACHE": str(cwd / ".cache")}
    exe = Path(sys.executable).with_name("irlm")  # the console script a user runs
    out = subprocess.run([str(exe), *args[1:]], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert out.returncode == 0 and "Traceback" not in out.stderr, f"{command}\n{out.stderr}"
    return out


def outputs(command: str) -> list[str]:
    args = shlex.split(command)
    return [args[n + 1] for n, a in enumerate(args) if a == "--out"]


def test_the_block_marks_exactly_the_heavy_commands_with_their_cost():
    rows = commands()
    assert len(rows) >= 15 and all(c.startswith("irlm ") for c, _ in rows)
    marked = [c for c, comment in rows if comment.startswith("cost:")]
    assert marked == list(HEAVY)
    assert re.match(r"cost: \d+ min on 2 busy cores", dict(rows)[HEAVY[0]])


def test_every_input_is_made_by_an_earlier_command():
    """runs/... paths read by a command were written by an earlier one (no runs/a.trec from nowhere)."""
    made = set()
    for command, _ in commands():
        for arg in shlex.split(command):
            if arg.startswith("runs/") and arg not in outputs(command):
                assert arg in made, f"{command}: nothing earlier writes {arg}"
        made.update(outputs(command))


@pytest.fixture(scope="module")
def stand_in(tmp_path_factory) -> Path:
    """Tiny BEIR folders under the names the README uses, so every command runs in seconds."""
    root = tmp_path_factory.mktemp("stand-in-data")
    for name in ("scifact", "nq-open-oracle"):
        write_beir(root / name, TOY_CORPUS, TOY_QUERIES, TOY_QRELS)
    return root


def test_every_command_runs_in_order_on_stand_in_data(stand_in, tmp_path):
    for command, _ in commands():
        out = irlm(command, tmp_path, stand_in)
        if "--json" in command:
            json.loads(out.stdout.splitlines()[-1])
    for path in {p for c, _ in commands() for p in outputs(c)}:
        assert (tmp_path / path).exists(), path


def test_the_python_example_runs_on_stand_in_data(stand_in, tmp_path):
    code = python_block().replace("print(", "result = (")
    env = {**os.environ, "IRLM_DATA": str(stand_in)}
    script = code + "\nassert set(result) >= {'ndcg@10', 'recall@100'}, result\n"
    out = subprocess.run([sys.executable, "-c", script], cwd=tmp_path, env=env, capture_output=True, text=True,
                         timeout=600)  # fmt: skip
    assert out.returncode == 0, out.stderr


def test_the_cheap_commands_run_on_the_real_data(tmp_path):
    """All but HEAVY and what reads their output; BM25 on SciFact gives the README's number, quietly."""
    skipped = set()
    ran = []
    for command, _ in commands():
        reads = [a for a in shlex.split(command) if a.startswith("runs/") and a not in outputs(command)]
        if command in HEAVY or skipped.intersection(reads):
            skipped.update(outputs(command))
            continue
        out = irlm(command, tmp_path, DATA)
        ran.append(command)
        if command == "irlm eval --data scifact --split test --retriever bm25 --json":
            ndcg = json.loads(out.stdout.splitlines()[-1])["ndcg@10"]
            assert f"| {ndcg:.4f} |" in section("Reproduced numbers (SciFact test, 300 queries, measured on the "
                                                "2-core CPU machine)")  # fmt: skip
            assert "it/s" not in out.stderr and "DEBUG" not in out.stderr  # BM25 quiet by default
    assert len(ran) >= 8 and (tmp_path / "runs" / "bm25.trec").is_file()
