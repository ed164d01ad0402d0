"""What every pack is made of: a Row (an `irlm run` stage, a bench script or a function of runner.py, with
its expected seconds and its cap), the Scale the rows are built at (the device's or the smoke's), and the
DRAMA row three packs share."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parents[1]  # bench/device
REPO = HERE.parents[1]
RESULTS = HERE / "results"
ORDER = "abcde"
BASE = "smollm2-135m"


@dataclass
class Row:
    name: str
    kind: str  # an irlm pipeline stage kind, "bench" (a script under bench/) or "py" (a function in PY_ROWS)
    settings: dict
    est: int  # expected seconds on one H200, loading and evaluation included
    cap: int  # the most seconds it may run (its alarm)
    needs: tuple[str, ...] = ()  # rows whose output it reads: it is skipped when one of them failed
    partial_ok: bool = False  # cut by its alarm, what it wrote is still usable (append-only augmentation files)


@dataclass
class Scale:
    smoke: bool
    model: str = BASE  # the backbone and teacher: SmolLM2-135M on the device, a tiny random Llama in smoke
    precision: str = "bf16"


def drama_row(name: str, s: Scale, est: int = 75, needs=(), **kw) -> Row:
    """recipes/drama-scifact-gpu.yaml (300 steps, batch 64, lr 5e-5): the H100 rows' recipe, one save."""
    settings = {"method": "drama", "config": "recipes/drama-scifact-gpu.yaml", "model": s.model,
                "precision": s.precision, "save_every": 300, **kw}  # fmt: skip
    return Row(name, "train", settings, est, cap=2 * est, needs=tuple(needs))
