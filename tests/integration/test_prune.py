"""Structured pruning on tiny Llama and Qwen2 models: convergence to the targets, gradients, exact export."""

from __future__ import annotations

import json
import random
import subprocess
import sys

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, LlamaForCausalLM, Qwen2Config, Qwen2ForCausalLM

from irlm.methods.drama.export import export_pruned
from irlm.methods.drama.prune import PruneTask, Shape, StructuredMasks
from irlm.train.loop import TrainConfig, Trainer

SMALL = {"vocab_size": 100, "hidden_size": 32, "intermediate_size": 48, "num_hidden_layers": 4,
         "num_attention_heads": 4, "num_key_value_heads": 2, "max_position_embeddings": 64, "initializer_range": 0.2}  # fmt: skip
TARGET = Shape(layers=2, hidden=16, kv_heads=1, intermediate=24)


def tiny(kind: str, tie: bool = True):
    torch.manual_seed(0)
    if kind == "qwen2":
        return Qwen2ForCausalLM(Qwen2Config(**SMALL, tie_word_embeddings=tie))
    return LlamaForCausalLM(LlamaConfig(**SMALL, tie_word_embeddings=tie))


def blocks(n=64, length=16):
    rng = random.Random(0)
    return [[rng.randrange(100) for _ in range(length)] for _ in range(n)]


@pytest.fixture(scope="module")
def pruned(tmp_path_factory):
    """200 steps on the tiny Llama (the last 40 hardening), the soft model's loss on every block just before
    hardening, and the export written by the task's own save."""
    out = tmp_path_factory.mktemp("pruned")
    task = PruneTask(tiny("llama"), None, TARGET, lr=1e-3, mask_lr=0.1, lambda_lr=0.1)
    cfg = TrainConfig(output_dir=str(out), max_steps=200, batch_size=8, precision="fp32", save_every=0,
                      warmup_ratio=0.0)  # fmt: skip
    trainer = Trainer(task, blocks(), cfg)
    history = [trainer.train_step() for _ in range(160)]
    soft = task.lm_loss(torch.tensor(blocks()), fade=0.0)
    history += [trainer.train_step() for _ in range(40)]
    task.save(out / "final")
    return {"task": task, "history": history, "soft": soft, "folder": out / "final"}


def test_expected_sizes_converge_to_the_targets(pruned):
    first, last = pruned["history"][0], pruned["history"][-1]
    assert all(first[f"keep_{k}"] > 0.9 for k in ("layers", "heads", "hidden", "intermediate"))
    for k in ("layers", "heads", "hidden", "intermediate"):
        assert abs(last[f"keep_{k}"] - 0.5) < 0.03, (k, last)
    assert 0.0 < last["keep_params"] < 1.0  # logged; constrained only when asked (constrain_params)


def test_pruning_exports_what_it_trained(pruned):
    """The export's LM loss is within 0.05 nats of the soft-gated model's before hardening, and equals the
    masked model's at the end of training (the gates outside the target have faded to exactly 0)."""
    task, ids = pruned["task"], torch.tensor(blocks())
    small = AutoModelForCausalLM.from_pretrained(pruned["folder"]).eval()
    with torch.no_grad():
        exported = task.loss_fn(small(input_ids=ids).logits, ids).item()
    assert exported - pruned["soft"] <= 0.05, (exported, pruned["soft"])
    assert exported == pytest.approx(task.lm_loss(ids, fade=1.0), abs=1e-4)
    report = json.loads((pruned["folder"] / "prune_report.json").read_text())
    assert set(report) == {"lm_soft", "lm_masked", "lm_export", "export_gap"}
    assert report["lm_export"] == pytest.approx(report["lm_masked"], abs=1e-4)
    assert [row["fade"] for row in pruned["history"][-2:]] == [pytest.approx(39 / 40), 1.0]


@pytest.mark.parametrize("kind, tie", [("llama", True), ("llama", False), ("qwen2", False)])
def test_export_folds_the_kept_gate_values(tmp_path, kind, tie):
    """Kept gates strictly between 0 and 1, dropped ones 0: the export, with the gates folded into its
    weights, computes what the masked model does (the tied head through the final norm)."""
    model = tiny(kind, tie).eval()
    masks = StructuredMasks(model)
    with torch.no_grad():
        for gate in masks.gates.values():
            gate.log_alpha.normal_()
    target = Shape(layers=3, hidden=20, kv_heads=1, intermediate=24)
    keep = masks.keep_masks(target)
    values = {k: 0.2 + 0.8 * torch.rand(v.shape) for k, v in keep.items()}  # (0.2, 1)
    masks.fixed = {k: (values[k] * keep[k]).flatten() for k in keep}
    masks.sample()
    ids = torch.randint(0, 100, (3, 12))
    with torch.no_grad():
        masked = model(input_ids=ids).logits
    small = export_pruned(model, masks.selection(target), target, tmp_path / "small", gates=values)
    with torch.no_grad():
        torch.testing.assert_close(small(input_ids=ids).logits, masked, atol=2e-5, rtol=1e-5)


def run_prune(out, steps: int, harden: float, until: int | None = None) -> PruneTask:
    """A short prune of the tiny Llama in `out`, through Trainer.fit (resuming from `out`'s checkpoints), or
    stopped after `until` steps with a checkpoint, as a kill after a save would leave it."""
    task = PruneTask(tiny("llama"), None, TARGET, lr=1e-3, mask_lr=0.1, lambda_lr=0.1, harden=harden,
                     output_dir=out)  # fmt: skip
    cfg = TrainConfig(output_dir=str(out), max_steps=steps, batch_size=8, precision="fp32", save_every=0,
                      warmup_ratio=0.0)  # fmt: skip
    trainer = Trainer(task, blocks(), cfg)
    if until is None:
        trainer.fit()
    else:
        for _ in range(until):
            trainer.train_step()
        trainer.save_checkpoint()
    return task


def test_every_prune_run_reports_the_export_gap(tmp_path):
    """With hardening, without it (the soft model measured at the end), and resumed inside the hardening
    phase (the soft model's loss read back from prune_probe.json): each run writes the same report."""
    run_prune(tmp_path / "whole", steps=20, harden=0.25)
    whole = json.loads((tmp_path / "whole" / "final" / "prune_report.json").read_text())
    run_prune(tmp_path / "killed", steps=20, harden=0.25, until=17)  # hardening began at step 15
    run_prune(tmp_path / "killed", steps=20, harden=0.25)
    resumed = json.loads((tmp_path / "killed" / "final" / "prune_report.json").read_text())
    assert resumed == pytest.approx(whole, abs=1e-5)
    assert whole["export_gap"] == pytest.approx(whole["lm_export"] - whole["lm_soft"])
    run_prune(tmp_path / "soft", steps=10, harden=0.0)
    soft = json.loads((tmp_path / "soft" / "final" / "prune_report.json").read_text())
    assert set(soft) == {"lm_soft", "lm_masked", "lm_export", "export_gap"}
    assert soft["lm_export"] == pytest.approx(soft["lm_masked"], abs=1e-4)  # the export is the 0/1-masked model


def test_the_prune_config_reaches_the_task(tmp_path, monkeypatch):
    """PruneConfig's harden and constrain_params (and output_dir, where the probe survives a restart)."""
    from transformers import AutoTokenizer

    from irlm.methods.drama import pretrain
    from irlm.methods.drama.config import PruneConfig
    from irlm.models.resolve import resolve_model

    tiny("llama").save_pretrained(tmp_path / "base")
    AutoTokenizer.from_pretrained(resolve_model("smollm2-135m")).save_pretrained(tmp_path / "base")
    seen = {}

    class Built(Exception):
        pass

    def fake(*args, **kwargs):
        seen.update(kwargs)
        raise Built

    monkeypatch.setattr(pretrain, "PruneTask", fake)
    cfg = PruneConfig(model=str(tmp_path / "base"), output_dir=str(tmp_path / "out"), layers=2, hidden=16,
                      kv_heads=1, intermediate=24, text=["unused"], harden=0.5, constrain_params=True)  # fmt: skip
    with pytest.raises(Built):
        pretrain.prune(cfg)
    assert (seen["harden"], seen["constrain_params"], seen["output_dir"]) == (0.5, True, str(tmp_path / "out"))


def test_export_does_not_import_prune():
    """export.py knows shapes and weights; prune.py (the masks) imports it, never the other way."""
    code = ("import sys, irlm.methods.drama.export\n"
            "print('irlm.methods.drama.prune' in sys.modules)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["False"]


def test_the_parameter_count_is_constrained_when_asked():
    task = PruneTask(tiny("llama"), None, TARGET, lr=1e-3, mask_lr=0.1, lambda_lr=0.1, constrain_params=True)
    assert task.final_goal["params"] == pytest.approx(0.125) and "params_1" in task.lambdas
    assert "params" not in PruneTask(tiny("llama"), None, TARGET, lr=1e-3, mask_lr=0.1, lambda_lr=0.1).final_goal


def test_expected_params_multiply_the_kept_fractions():
    masks = StructuredMasks(tiny("llama"), init_keep=0.5)
    expected = masks.expected()
    assert expected["params"].item() == pytest.approx(0.125, rel=1e-5)  # layers x hidden x (heads or intermediate)
    assert masks.params_of(TARGET) / masks.params_of(masks.full) == pytest.approx(0.125)


def test_mask_parameters_receive_gradients():
    task = PruneTask(tiny("llama"), None, TARGET, lr=1e-3, mask_lr=0.1, lambda_lr=0.1)
    task.on_step(5, 10)  # targets at their final values (before hardening), so the penalty has a gradient too
    task.step(blocks(4))
    for name, p in task.named_parameters():
        if name.startswith(("masks.", "lambdas.")):
            assert p.grad is not None and bool(p.grad.abs().sum() > 0), name


@pytest.mark.parametrize("kind, tie", [("llama", True), ("llama", False), ("qwen2", False)])
def test_exported_model_equals_the_masked_model(tmp_path, kind, tie):
    model = tiny(kind, tie).eval()
    masks = StructuredMasks(model)
    with torch.no_grad():
        for gate in masks.gates.values():
            gate.log_alpha.normal_()  # an arbitrary, non-trivial selection
    target = Shape(layers=3, hidden=20, kv_heads=1, intermediate=24)
    sel = masks.fix(target)
    ids = torch.randint(0, 100, (3, 12))
    with torch.no_grad():
        masked = model(input_ids=ids).logits
    export_pruned(model, sel, target, tmp_path / "small")
    small = AutoModelForCausalLM.from_pretrained(tmp_path / "small").eval()
    with torch.no_grad():
        exported = small(input_ids=ids).logits
    torch.testing.assert_close(exported, masked, atol=2e-5, rtol=1e-5)
    cfg = json.loads((tmp_path / "small" / "config.json").read_text())
    assert (cfg["num_hidden_layers"], cfg["hidden_size"], cfg["num_key_value_heads"], cfg["num_attention_heads"],
            cfg["intermediate_size"]) == (3, 20, 1, 2, 24)  # fmt: skip
    assert sum(p.numel() for p in small.parameters()) < sum(p.numel() for p in model.parameters()) / 2


def test_export_loads_without_irlm(tmp_path):
    model = tiny("llama")
    masks = StructuredMasks(model)
    export_pruned(model, masks.selection(TARGET), TARGET, tmp_path / "small")
    code = ("import sys; sys.modules['irlm'] = None\n"  # any import of irlm would now fail
            "from transformers import AutoModelForCausalLM\n"
            f"m = AutoModelForCausalLM.from_pretrained({str(tmp_path / 'small')!r})\n"
            "print(m.config.num_hidden_layers, m.config.hidden_size)")  # fmt: skip
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert out.stdout.split() == ["2", "16"]


def test_prune_and_pretrain_commands(tmp_path, toy_beir):
    """irlm prune, then irlm pretrain on the pruned folder, then the result works as an encoder."""
    from transformers import AutoTokenizer

    from irlm.models import LLMEncoder
    from irlm.models.resolve import resolve_model

    tok = AutoTokenizer.from_pretrained(resolve_model("smollm2-135m"))
    torch.manual_seed(0)
    LlamaForCausalLM(LlamaConfig(**{**SMALL, "vocab_size": len(tok)})).save_pretrained(tmp_path / "base")
    tok.save_pretrained(tmp_path / "base")
    common = ["--set", f"text=[{toy_beir}]", "--set", "block_size=8", "--set", "batch_size=2", "--set", "steps=3",
              "--set", "precision=fp32"]  # fmt: skip
    prune = [sys.executable, "-m", "irlm.cli", "prune", "--set", f"model={tmp_path / 'base'}", "--set",
             f"output_dir={tmp_path / 'pruned'}", "--set", "layers=2", "--set", "hidden=16", "--set", "kv_heads=1",
             "--set", "intermediate=24", "--set", "harden=0.5", "--set", "constrain_params=true", *common]  # fmt: skip
    res = subprocess.run(prune, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads((tmp_path / "pruned" / "summary.json").read_text())
    assert summary["shape"] == {"layers": 2, "hidden": 16, "kv_heads": 1, "intermediate": 24}
    assert summary["ratio"] < 0.3
    # the prune config's hardening and parameter constraint reach the task, and the gap is reported
    assert set(summary["prune_report"]) == {"lm_soft", "lm_masked", "lm_export", "export_gap"}
    assert '"export_gap"' in res.stdout
    log = [json.loads(line) for line in open(tmp_path / "pruned" / "log.jsonl")]
    assert ["fade" in row for row in log] == [False, True, True]  # harden 0.5 of 3 steps: the last 2
    from safetensors import safe_open

    ckpt = next((tmp_path / "pruned" / "checkpoints").glob("step-*")) / "trainable.safetensors"
    with safe_open(ckpt, "pt") as f:
        assert "lambdas.params_1" in f.keys()  # constrain_params: the parameter count has its multipliers
    pretrain = [sys.executable, "-m", "irlm.cli", "pretrain", "--set", f"model={tmp_path / 'pruned' / 'final'}",
                "--set", f"output_dir={tmp_path / 'recovered'}", *common]  # fmt: skip
    res = subprocess.run(pretrain, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    enc = LLMEncoder.from_pretrained(str(tmp_path / "recovered" / "final"), device="cpu", dtype="fp32")
    assert enc.encode_queries(["a query"]).shape == (1, 16)


def test_prune_refuses_a_hidden_size_the_heads_do_not_divide(tmp_path):
    """2 kv groups x 2 query heads kept: hidden 15 would export a config transformers will not load."""
    from irlm.errors import InputError
    from irlm.methods.drama.config import PruneConfig
    from irlm.methods.drama.pretrain import prune

    tiny("llama").save_pretrained(tmp_path / "base")
    cfg = PruneConfig(model=str(tmp_path / "base"), output_dir=str(tmp_path / "out"), layers=2, hidden=15,
                      kv_heads=2, intermediate=24, text=["unused"])  # fmt: skip
    with pytest.raises(InputError, match="hidden 15 is not a multiple of the 4 attention heads"):
        prune(cfg)
    assert not (tmp_path / "out").exists()
