"""The command line ends bad input with one line and exit code 2, never a traceback."""

from __future__ import annotations

import subprocess
import sys


def irlm(*args):
    return subprocess.run([sys.executable, "-c", "from irlm.cli import run; run()", *args], capture_output=True,
                          text=True, timeout=120)  # fmt: skip


def test_unknown_option_is_a_usage_error():
    out = irlm("eval", "--data", "scifact", "--bogus")
    assert out.returncode == 2 and "Traceback" not in out.stderr and "bogus" in out.stderr


def test_unknown_dataset_names_what_was_tried(tmp_path):
    out = irlm("eval", "--data", str(tmp_path / "nope"), "--json")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "not found; tried" in out.stderr


def test_bad_corpus_line_is_one_line(tmp_path):
    (tmp_path / "qrels").mkdir()
    (tmp_path / "corpus.jsonl").write_text('{"_id": "1", "text": "ok"}\n{"_id": "2", "text": \n')
    (tmp_path / "queries.jsonl").write_text('{"_id": "q", "text": "x"}\n')
    out = irlm("eval", "--data", str(tmp_path), "--json")
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert "corpus.jsonl:2" in out.stderr.replace("\n", "")
