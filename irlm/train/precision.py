"""`precision: auto` decided by timing the training step itself, once per CPU model and model shape.

A bare matmul micro-benchmark can pick wrong: attention, norms, the optimizer-free backward and the
memory traffic of a real step weigh differently on each CPU (bf16 autocast is ~2x faster on an AMX
Xeon, helps on an AVX-512-BF16 EPYC, and is many times slower on a plain AVX2 machine). So the trainer
times a few real forward + backward passes of the task at hand on a small batch in both precisions and
keeps the verdict in ``$IRLM_CACHE/precision.json``, keyed by the CPU model, the torch version and the
model's shape: later runs on the same kind of machine pay nothing.

    precision = choose_precision(task, batch_examples, "cpu")   # "bf16" or "fp32"
"""

from __future__ import annotations

import json
import platform
import time
from pathlib import Path

import torch

from irlm.utils import atomic_path, cache_dir

MARGIN = 0.9  # bf16 must be at least 10 % faster: rounding costs accuracy, so a tie goes to fp32
PROBE_STEPS = 2  # timed steps per precision, after one untimed warm-up (kernel selection, allocation)


def cpu_name() -> str:
    """The CPU's model name ("AMD EPYC 9B45", "Intel(R) Xeon(R) Platinum 8481C"), else the platform's."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def model_key(task) -> str:
    """What the step's cost depends on: the model class, its parameter count and how much of it trains."""
    params = list(task.parameters())
    total = sum(p.numel() for p in params)
    trained = sum(p.numel() for p in params if p.requires_grad)
    model = getattr(getattr(task, "encoder", None), "model", None)
    return f"{type(model).__name__ if model is not None else type(task).__name__}:{total}:{trained}"


def time_steps(task, examples: list, bf16: bool, steps: int = PROBE_STEPS) -> float:
    """Seconds per forward + backward of `task` on `examples`; gradients and RNG are left as found."""
    device_type = next(iter(task.parameters())).device.type
    with torch.random.fork_rng(devices=[]), torch.autocast(device_type, dtype=torch.bfloat16, enabled=bf16):
        timings = []
        for _ in range(steps + 1):
            start = time.perf_counter()
            task.step(examples, scale=0.0, seed=0)
            timings.append(time.perf_counter() - start)
    for p in task.parameters():
        p.grad = None
    return min(timings[1:])


def _read(path: Path) -> dict:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def choose_precision(task, examples: list, device_type: str, timer=None) -> str:
    """bf16 or fp32 for training `task`: CUDA takes bf16 where supported; a CPU the faster of the two as
    timed on `examples` (a few, the real step's kind), remembered per CPU model, torch and model shape."""
    if device_type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp32"
    if device_type != "cpu":
        return "fp32"
    key = f"{cpu_name()} | torch {torch.__version__} | {model_key(task)}"
    path = cache_dir() / "precision.json"
    known = _read(path)
    if isinstance(known.get(key), dict) and known[key].get("precision") in ("bf16", "fp32"):
        return known[key]["precision"]
    timer = timer or time_steps
    fp32, bf16 = timer(task, examples, False), timer(task, examples, True)
    choice = "bf16" if bf16 < MARGIN * fp32 else "fp32"
    known[key] = {"precision": choice, "fp32_s": round(fp32, 4), "bf16_s": round(bf16, 4)}
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(known, indent=2) + "\n")
    return choice
