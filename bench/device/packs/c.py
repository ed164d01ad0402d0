"""Pack c: Anchor (Stage I + Stage II against Stage II alone)."""

from __future__ import annotations

from .common import Row, Scale


def pack_c(s: Scale) -> list[Row]:
    """Anchor: recipes/anchor-scifact-full.yaml (the paper's lr 4e-5, 3 epochs, max length 512, 7 negatives),
    Stage I 90 + Stage II 90 against Stage II alone for the same 180 steps, then against Stage II's 90 alone."""

    def anchor(name, stage1, stage2, est):
        return Row(name, "train", {"method": "anchor", "config": "recipes/anchor-scifact-full.yaml", "model": s.model,
                                   "stage1_steps": stage1, "stage2_steps": stage2, "precision": s.precision,
                                   "save_every": 1000}, est, 2 * est)  # fmt: skip

    return [anchor("stage1-then-2", 90, 90, 110), anchor("stage2-equal", 0, 180, 130), anchor("stage2-only", 0, 90, 80)]
