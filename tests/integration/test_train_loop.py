"""The shared training loop: every parameter moves, exact resume after SIGKILL, 2-process equivalence."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from conftest import torchrun
from safetensors.torch import load_file

SCRIPTS = Path(__file__).parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from tiny import tiny_encoder, toy_examples  # noqa: E402

from irlm.train.contrastive import ContrastiveTask  # noqa: E402
from irlm.train.loop import TrainConfig, Trainer, step_examples  # noqa: E402


def run_script(*args, **kw):
    return subprocess.run([sys.executable, str(SCRIPTS / "train_run.py"), *map(str, args)], check=True,
                          capture_output=True, text=True, timeout=300, **kw)  # fmt: skip


def test_every_trainable_parameter_changes(tmp_path):
    task = ContrastiveTask(tiny_encoder(), n_negatives=1)
    before = {n: p.detach().clone() for n, p in task.named_parameters()}
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=3, batch_size=4, lr=1e-3, precision="fp32", save_every=0)
    history = Trainer(task, toy_examples(8), cfg).fit()
    assert [row["step"] for row in history] == [1, 2, 3]
    unchanged = [n for n, p in task.named_parameters() if torch.equal(before[n], p.detach())]
    assert unchanged == []
    logged = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert [row["step"] for row in logged] == [1, 2, 3] and all("infonce" in row for row in logged)


def test_data_stream_is_a_function_of_step():
    data = list(range(10))
    first = [step_examples(data, s, 4, seed=3) for s in range(5)]
    assert first == [step_examples(data, s, 4, seed=3) for s in range(5)]
    assert sorted(first[0] + first[1] + first[2][:2]) == data  # epoch 0 covers every example once


@pytest.mark.parametrize("extra", [[], ["--cache-layers", "2"]], ids=["full", "cached-activations"])
def test_resume_after_sigkill_matches_uninterrupted(tmp_path, extra):
    straight, killed = tmp_path / "straight", tmp_path / "killed"
    run_script(straight, 10, *extra)
    proc = subprocess.Popen([sys.executable, str(SCRIPTS / "train_run.py"), str(killed), "10", "--sleep", "0.3",
                             *extra], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    deadline = time.time() + 120
    while time.time() < deadline and not list((killed / "checkpoints").glob("step-0000004")):
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (killed / "final").exists(), "the run finished before it could be killed"
    out = run_script(killed, 10, *extra)
    assert "resumed from" in out.stderr
    a = load_file(straight / "final" / "model.safetensors")
    b = load_file(killed / "final" / "model.safetensors")
    assert a.keys() == b.keys() and any(k.startswith("layers.0.") for k in a)  # the whole model, frozen layers too
    for name in a:
        torch.testing.assert_close(a[name], b[name], rtol=0, atol=0, msg=name)
    steps = [json.loads(line)["step"] for line in (killed / "log.jsonl").read_text().splitlines()]
    assert steps == list(range(1, 11))  # no step logged twice, none lost


@pytest.mark.parametrize("cache_chunk", [0, 2])
def test_two_processes_equal_one(tmp_path, cache_chunk):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    run_script(tmp_path / "a", 1, "--grads", one, "--cache-chunk", cache_chunk)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun([SCRIPTS / "train_run.py", tmp_path / "b", "1", "--grads", two, "--cache-chunk", cache_chunk], env)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    # two half-batch sums averaged by all-reduce round differently from one full-batch sum: one element in a
    # million once differed by 2.6e-6. A lost negative or a wrong average moves gradients by orders more.
    torch.testing.assert_close(torch.tensor(b["grads"]), torch.tensor(a["grads"]), rtol=1e-4, atol=1e-5)
