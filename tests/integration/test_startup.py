"""Start-up stays cheap: `irlm --help` and a BM25 evaluation never import torch (about 3 s of a fresh
process on 2 cores). The times themselves are measured by bench/startup.py, not asserted here."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

PROBE = """
import sys
from irlm.cli import run
sys.argv = ["irlm", *sys.argv[1:]]
try:
    run()
except SystemExit as e:
    assert not e.code, e.code
print("torch" in sys.modules, "ranx" in sys.modules)
"""


def _heavy_imports(*args: str) -> str:
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    out = subprocess.run([sys.executable, "-c", PROBE, *args], env=env, capture_output=True, text=True, check=True)
    return out.stdout.strip().splitlines()[-1]


@pytest.mark.parametrize("args", [["--help"], ["eval", "--help"], ["run", "--help"]])
def test_help_loads_no_torch(args):
    assert _heavy_imports(*args) == "False False"


def test_bm25_evaluation_loads_no_torch(toy_beir):
    assert _heavy_imports("eval", "--data", str(toy_beir), "--split", "test", "--retriever", "bm25") == "False False"
