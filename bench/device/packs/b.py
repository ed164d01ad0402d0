"""Pack b: the reasoning embedders (cold start, GRPO and its control, for the LREM and Search-R3 presets)."""

from __future__ import annotations

from .common import Row, Scale


def reasoning_row(name: str, s: Scale, est: int, cap: int, needs=(), **kw) -> Row:
    settings = {"method": "reasoning", "config": "recipes/reasoning-scifact-tiny.yaml", "model": s.model,
                "teacher": s.model, "reasoning_file": "${teacher}/reasoning.jsonl", "precision": s.precision,
                "save_every": 1000, **kw}  # fmt: skip
    return Row(name, "train", settings, est, cap, tuple(needs))


def pack_b(s: Scale) -> list[Row]:
    """Reasoning embedders: a cold start long enough to close its thoughts (300 steps, batch 64, lambda_sft 1:
    with LREM's 0.1 no CPU thought ever closed), then GRPO against its control without the policy gradient
    (gamma_grpo 0), for the LREM preset (ranked against the batch) and Search-R3 (against the corpus)."""
    cold = "${coldstart}/final"
    grpo = {"stage": "grpo", "model": cold, "steps": 60, "batch_size": 16, "group": 8, "lr": 2.0e-5}
    sr3 = {"preset": "searchr3", "rank_against": "corpus"}
    return [
        reasoning_row("teacher", s, 40, 90, stage="data", max_queries=0),
        reasoning_row("coldstart", s, 70, 150, ["teacher"], lambda_sft=1.0, steps=300, batch_size=64),
        reasoning_row("grpo-lrem", s, 90, 130, ["coldstart"], **grpo),
        reasoning_row("control-lrem", s, 90, 130, ["coldstart"], **grpo, gamma_grpo=0.0),
        reasoning_row("direct", s, 50, 100, ["teacher"], reasoning="none", steps=300, batch_size=64),
        reasoning_row("grpo-searchr3", s, 100, 140, ["coldstart"], **grpo, **sr3),
        reasoning_row("control-searchr3", s, 100, 140, ["coldstart"], **grpo, **sr3, gamma_grpo=0.0),
    ]
