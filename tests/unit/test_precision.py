"""`precision: auto` times the real training step in both precisions and remembers the verdict per CPU."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from tiny import tiny_encoder, toy_examples  # noqa: E402

from irlm.train import precision  # noqa: E402
from irlm.train.contrastive import ContrastiveTask  # noqa: E402
from irlm.train.loop import TrainConfig, Trainer  # noqa: E402


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IRLM_CACHE", str(tmp_path))
    return tmp_path / "precision.json"


def fake_timer(fp32: float, bf16: float, calls: list):
    def timer(task, examples, use_bf16):
        calls.append(use_bf16)
        return bf16 if use_bf16 else fp32
    return timer


def test_the_faster_precision_is_chosen_and_remembered_per_cpu(cache):
    task, calls = ContrastiveTask(tiny_encoder()), []
    assert precision.choose_precision(task, [], "cpu", fake_timer(2.0, 1.0, calls)) == "bf16"
    assert sorted(calls) == [False, True]
    saved = json.loads(cache.read_text())
    (key,) = saved
    assert precision.cpu_name() in key and saved[key] == {"precision": "bf16", "fp32_s": 2.0, "bf16_s": 1.0}

    def no_timing(*a):
        raise AssertionError("a remembered verdict is not timed again")

    assert precision.choose_precision(task, [], "cpu", no_timing) == "bf16"


def test_a_tie_or_a_slower_bf16_keeps_fp32(cache):
    task = ContrastiveTask(tiny_encoder())
    assert precision.choose_precision(task, [], "cpu", fake_timer(1.0, 0.95, [])) == "fp32"  # within the margin
    other = ContrastiveTask(tiny_encoder(layers=3))  # another shape is timed on its own
    assert precision.choose_precision(other, [], "cpu", fake_timer(1.0, 20.0, [])) == "fp32"
    assert len(json.loads(cache.read_text())) == 2


def test_a_probe_step_leaves_gradients_and_the_rng_as_found():
    task = ContrastiveTask(tiny_encoder(), n_negatives=1)
    state = torch.get_rng_state()
    seconds = precision.time_steps(task, toy_examples(2, negatives=1), bf16=False, steps=1)
    assert seconds > 0
    assert all(p.grad is None for p in task.parameters())
    assert torch.equal(state, torch.get_rng_state())


@pytest.mark.parametrize("fp32, bf16, expect", [(1.0, 10.0, False), (10.0, 1.0, True)])
def test_the_trainer_autocasts_as_the_probe_decided(cache, tmp_path, monkeypatch, fp32, bf16, expect):
    monkeypatch.setattr(precision, "time_steps", fake_timer(fp32, bf16, []))
    task = ContrastiveTask(tiny_encoder(), n_negatives=1)
    seen, step = [], task.step
    monkeypatch.setattr(task, "step", lambda *a, **kw: seen.append(torch.is_autocast_enabled("cpu")) or step(*a, **kw))
    cfg = TrainConfig(output_dir=str(tmp_path / "out"), max_steps=1, batch_size=2, precision="auto", save_every=0)
    Trainer(task, toy_examples(4, negatives=1), cfg).train_step()
    assert seen == [expect]


def test_another_cpu_model_is_timed_again(cache, monkeypatch):
    task, calls = ContrastiveTask(tiny_encoder()), []
    precision.choose_precision(task, [], "cpu", fake_timer(2.0, 1.0, calls))
    monkeypatch.setattr(precision, "cpu_name", lambda: "Some Other CPU")
    assert precision.choose_precision(task, [], "cpu", fake_timer(1.0, 5.0, calls)) == "fp32"
    assert len(calls) == 4
