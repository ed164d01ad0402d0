"""Real bundled models on real data: the numbers the README promises (opt-in: pytest -m slow)."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
import pytest

pytestmark = pytest.mark.slow


def test_the_reference_recipe_reaches_its_expected_numbers(tmp_path):
    """BM25 (pyserini's 0.679 within bm25s's stemming) and MiniLM (MTEB's 0.645) on SciFact test, through the
    recipe's own `expected:` block: `irlm run --check` fails on any drift beyond its tolerances."""
    from pathlib import Path

    recipe = Path(__file__).parents[2] / "recipes" / "reference-scifact.yaml"
    cmd = [sys.executable, "-c", "from irlm.cli import run; run()", "run", str(recipe), "--check"]
    out = subprocess.run(cmd, capture_output=True, text=True, env=os.environ, cwd=tmp_path)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stderr.count("PASS") == 3 and "FAIL" not in out.stderr


def test_smollm2_loads_from_cache_and_pads_either_side():
    from irlm.models import LLMEncoder

    texts = ["a short one", "a somewhat longer text about retrieval with decoder language models"]
    right = LLMEncoder.from_pretrained("smollm2-135m", device="cpu", dtype="fp32", padding_side="right")
    left = LLMEncoder.from_pretrained("smollm2-135m", device="cpu", dtype="fp32", padding_side="left")
    a, b = right.encode(texts, progress=False), left.encode(texts, progress=False)
    assert a.shape == (2, 576)
    np.testing.assert_allclose(a, b, atol=2e-4)
    assert getattr(right.model.config, "quantization_config", None) is None  # a plain safetensors cache
