"""`irlm encode` under torchrun: two CPU processes, one merged index equal to a single-process encode."""

from __future__ import annotations

import os
import subprocess
import sys

import numpy as np
from conftest import torchrun

from irlm.index import DenseIndex
from irlm.index.sharded import shard_bounds


def test_shard_bounds_cover_everything_once():
    for n in (0, 1, 7, 10):
        for world in (1, 2, 3):
            spans = [shard_bounds(n, r, world) for r in range(world)]
            assert spans[0][0] == 0 and spans[-1][1] == n
            assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))


def test_two_process_encode_equals_one(tmp_path, llama_dir, toy_beir):
    common = ["encode", "--data", str(toy_beir), "--model", str(llama_dir), "--dtype", "fp32", "--device", "cpu"]
    entry = ["-c", "from irlm.cli import run; run()"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([sys.executable, *entry, *common, "--out", str(tmp_path / "one")], check=True, env=env,
                   capture_output=True, timeout=300)  # fmt: skip
    script = tmp_path / "entry.py"
    script.write_text("from irlm.cli import run\nrun()\n")
    torchrun([script, *common, "--out", tmp_path / "two"], env)
    one, two = DenseIndex.load(tmp_path / "one"), DenseIndex.load(tmp_path / "two")
    assert two.ids == one.ids and len(one) > 2
    np.testing.assert_allclose(two.vectors, one.vectors, atol=1e-5)
    assert not (tmp_path / ".two.shards").exists()
