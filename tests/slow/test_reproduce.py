"""Real bundled models on real data: the numbers the README promises (opt-in: pytest -m slow)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def irlm_eval(*args: str) -> dict:
    cmd = [sys.executable, "-c", "from irlm.cli import run; run()", "eval", "--json", *args]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])


def test_bm25_scifact_matches_pyserini():
    row = irlm_eval("--data", "scifact", "--split", "test", "--retriever", "bm25")
    assert abs(row["ndcg@10"] - 0.676) <= 0.01, row


def test_minilm_scifact_matches_mteb():
    row = irlm_eval("--data", "scifact", "--split", "test", "--retriever", "dense", "--model", "minilm-l6")
    assert abs(row["ndcg@10"] - 0.645) <= 0.005, row


def test_smollm2_loads_from_cache_and_pads_either_side():
    from irlm.models import LLMEncoder

    texts = ["a short one", "a somewhat longer text about retrieval with decoder language models"]
    right = LLMEncoder.from_pretrained("smollm2-135m", device="cpu", dtype="fp32", padding_side="right")
    left = LLMEncoder.from_pretrained("smollm2-135m", device="cpu", dtype="fp32", padding_side="left")
    a, b = right.encode(texts, progress=False), left.encode(texts, progress=False)
    assert a.shape == (2, 576)
    np.testing.assert_allclose(a, b, atol=2e-4)
    assert getattr(right.model.config, "quantization_config", None) is None  # a plain safetensors cache
