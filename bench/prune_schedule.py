"""The export gap on tests/integration/test_prune.py's schedule (tiny random Llama, 200 steps), measured on all
64 test blocks, with hardening (the last 20 %) and without it. Prints one JSON line; seconds on one CPU thread.

    python bench/prune_schedule.py
"""

from __future__ import annotations

import json
import sys
import tempfile
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM

sys.path.insert(0, str(Path(__file__).parents[1] / "tests" / "integration"))
import test_prune as schedule  # noqa: E402  the test's model, blocks and target, so the numbers are the test's

from irlm.methods.drama.prune import PruneTask  # noqa: E402
from irlm.train.loop import TrainConfig, Trainer  # noqa: E402


def one_run(harden: float, ids: torch.Tensor) -> dict:
    out = Path(tempfile.mkdtemp())
    task = PruneTask(schedule.tiny("llama"), None, schedule.TARGET, lr=1e-3, mask_lr=0.1, lambda_lr=0.1,
                     harden=harden)  # fmt: skip
    cfg = TrainConfig(output_dir=str(out), max_steps=200, batch_size=8, precision="fp32", save_every=0,
                      warmup_ratio=0.0)  # fmt: skip
    trainer = Trainer(task, schedule.blocks(), cfg)
    for _ in range(160):
        trainer.train_step()
    between = {k: round(float(((z > 0) & (z < 1)).float().mean()), 2) for k, z in task.masks.gate_values().items()}
    soft = task.lm_loss(ids, fade=0.0)  # where hardening begins
    for _ in range(40):
        trainer.train_step()
    if harden == 0:
        soft = task.lm_loss(ids, fade=0.0)  # no hardening: the soft model at the end
    task.save(out / "final")
    model = AutoModelForCausalLM.from_pretrained(out / "final", dtype=torch.float32).eval()
    with torch.no_grad():
        export = model(ids, labels=ids).loss.item()
    probe = json.loads((out / "final" / "prune_report.json").read_text())["export_gap"]
    return {"gates_between_0_and_1": between, "lm_soft": round(soft, 3), "lm_export": round(export, 3),
            "export_gap": round(export - soft, 3), "probe_export_gap": round(probe, 3)}  # fmt: skip


def main() -> None:
    ids = torch.tensor(schedule.blocks())
    runs = {f"harden_{h}": one_run(h, ids) for h in (0.2, 0.0)}
    print(json.dumps({"bench": "prune-schedule", "blocks": len(ids), **runs}))


if __name__ == "__main__":
    main()
