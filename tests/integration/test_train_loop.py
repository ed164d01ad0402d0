"""The shared training loop: every parameter moves, exact resume after SIGKILL, 2-process equivalence."""

from __future__ import annotations

import json
import math
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


class NoisyTask:
    """One parameter moved each step by a draw from the global torch RNG (as dropout or sampling would be)."""

    def __init__(self):
        self.w = torch.nn.Parameter(torch.zeros(3))

    def parameters(self):
        return [self.w]

    def named_parameters(self):
        return [("w", self.w)]

    def step(self, examples, scale=1.0, seed=0):
        (self.w * torch.rand(3)).sum().mul(scale).backward()
        return {"loss": 0.0}

    def save(self, folder):
        pass


def test_resume_restores_the_global_rng(tmp_path):
    """A resumed run that draws from torch.rand ends where an uninterrupted one does."""
    cfg = {"max_steps": 6, "batch_size": 2, "lr": 0.1, "precision": "fp32", "max_grad_norm": 0.0, "save_every": 3}
    torch.manual_seed(0)
    straight = NoisyTask()
    Trainer(straight, list(range(4)), TrainConfig(output_dir=str(tmp_path / "a"), **cfg)).fit()
    torch.manual_seed(0)
    first = Trainer(NoisyTask(), list(range(4)), TrainConfig(output_dir=str(tmp_path / "b"), **cfg))
    for _ in range(3):
        first.train_step()
    first.save_checkpoint()
    torch.manual_seed(1234)  # a new process starts from a different RNG state
    resumed = NoisyTask()
    Trainer(resumed, list(range(4)), TrainConfig(output_dir=str(tmp_path / "b"), **cfg)).fit()
    torch.testing.assert_close(resumed.w.detach(), straight.w.detach(), rtol=0, atol=0)


def test_neighbouring_seeds_share_no_epoch():
    """Seed 43's first epoch is not seed 42's second (it was, with seed + epoch)."""
    data = list(range(12))
    assert step_examples(data, 0, 12, seed=43) != step_examples(data, 1, 12, seed=42)
    assert sorted(step_examples(data, 1, 12, seed=42)) == data  # each epoch is still a permutation


def test_cosine_schedule_warms_up_then_follows_half_a_cosine():
    from irlm.train.loop import cosine_warmup

    f = cosine_warmup(total=104, warmup_ratio=0.04)  # 4 warm-up steps, then 100 of decay
    assert [f(s) for s in range(4)] == pytest.approx([0.25, 0.5, 0.75, 1.0])
    assert f(54) == pytest.approx(0.5) and f(29) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert f(104) == pytest.approx(0.0)


def test_the_trainer_uses_the_configured_schedule(tmp_path):
    from irlm.errors import InputError

    def rates(schedule):
        cfg = TrainConfig(output_dir=str(tmp_path / schedule), max_steps=10, warmup_ratio=0.1, lr=1.0,
                          batch_size=2, precision="fp32", save_every=0, schedule=schedule)  # fmt: skip
        trainer = Trainer(NoisyTask(), list(range(4)), cfg)
        return [trainer.train_step()["lr"] for _ in range(10)]

    assert rates("cosine")[5] == pytest.approx(0.5 * (1 + math.cos(math.pi * 4 / 9)))
    assert rates("linear")[5] == pytest.approx(5 / 9)
    with pytest.raises(InputError, match="schedule"):
        rates("step")


def test_a_parameter_without_gradient_stays_put_across_processes(tmp_path):
    """With two processes, a parameter no process gave a gradient is not moved by its Adam momentum."""
    torchrun([SCRIPTS / "unused_run.py", tmp_path / "run", tmp_path / "b.json"],
             {**os.environ, "OMP_NUM_THREADS": "1"})  # fmt: skip
    got = json.loads((tmp_path / "b.json").read_text())
    assert got["second"] == got["first"] != [1.0, 1.0]
