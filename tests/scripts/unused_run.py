"""Two Trainer steps under torchrun; the second gives one parameter no gradient. Used by the loop test.

usage: unused_run.py OUT_DIR RESULT_JSON
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch

from irlm.train.loop import TrainConfig, Trainer, init_distributed, world


class TwoParams:
    """Step 0 trains both parameters; later steps only `a` (as pruning's hardening leaves its gates alone)."""

    def __init__(self):
        self.a, self.b = torch.nn.Parameter(torch.ones(2)), torch.nn.Parameter(torch.ones(2))
        self.calls = 0

    def parameters(self):
        return [self.a, self.b]

    def named_parameters(self):
        return [("a", self.a), ("b", self.b)]

    def step(self, examples, scale=1.0, seed=0):
        used = self.a + self.b if self.calls == 0 else self.a
        (used.sum() * scale).backward()
        self.calls += 1
        return {"loss": 0.0}

    def save(self, folder):
        pass


def main() -> None:
    init_distributed()
    task = TwoParams()
    cfg = TrainConfig(output_dir=sys.argv[1], max_steps=2, batch_size=2, lr=0.1, precision="fp32", save_every=0,
                      max_grad_norm=0.0, warmup_ratio=0.0)  # fmt: skip
    trainer = Trainer(task, [0, 1], cfg)
    trainer.train_step()
    after_first = task.b.tolist()
    trainer.train_step()
    if world()[0] == 0:
        Path(sys.argv[2]).write_text(json.dumps({"first": after_first, "second": task.b.tolist()}))


if __name__ == "__main__":
    main()
