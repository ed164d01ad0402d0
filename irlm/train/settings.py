"""The settings every trainer's config shares: each method's config extends TrainSettings, overriding a
default where the method's own differs (with its reason beside it), and `train.loop.train_config` turns
them into the shared loop's TrainConfig. No torch here: `irlm config show` reads these without it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainSettings:
    model: str = "smollm2-135m"  # backbone: bundled name, hub id or folder
    output_dir: str = "runs/train"  # the trained model, its checkpoints and results.json
    lr: float = 5e-5  # METHODS.md §0: 5e-5 (not 2e-5) got SmolLM2 off the ground on CPU budgets
    batch_size: int = 32  # examples per optimizer step, summed over processes
    precision: str = "auto"  # auto: bf16 autocast where it is faster on this device, else fp32 (TrainConfig)
    save_every: int = 50  # steps between checkpoints (resumable); 0 = only at the end
    weights_every: int = 0  # > 0: keep the trainable weights of every N-th step (weights/), for curves
    seed: int = 42
    device: str | None = None  # cpu, cuda, cuda:N; default: CUDA when present
