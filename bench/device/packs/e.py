"""Pack e: pruning, recovery pre-training, DRAMA on the pruned and the full model, their encoding speeds."""

from __future__ import annotations

from .common import Row, Scale, drama_row


def pack_e(s: Scale) -> list[Row]:
    """Pruning to the one-third shape (recipes/drama-prune-gpu.yaml), 500 recovery steps of 16 x 512 tokens
    (4.1M tokens), the DRAMA GPU recipe on the pruned and on the full model, and their encoding speeds."""
    return [
        Row(
            "prune",
            "prune",
            {
                "config": "recipes/drama-prune-gpu.yaml",
                "model": s.model,
                "precision": s.precision,
                "save_every": 100000,
            },
            70,
            140,
        ),  # fmt: skip
        Row(
            "pretrain",
            "pretrain",
            {
                "config": "recipes/drama-pretrain-gpu.yaml",
                "model": "${prune}/final",
                "precision": s.precision,
                "save_every": 100000,
            },
            60,
            140,
            ("prune",),
        ),  # fmt: skip
        drama_row("ft-pruned", s, 60, ["pretrain"], model="${pretrain}/final"),
        drama_row("ft-full", s),
        Row(
            "encode-speed",
            "bench",
            {
                "script": "bench/encode.py",
                "args": [
                    "--model",
                    "${ft-pruned}/final",
                    "--against",
                    "${ft-full}/final",
                    "--device",
                    "cuda",
                    "--dtype",
                    "bf16",
                    "--docs",
                    "2000",
                    "--batch-size",
                    "128",
                ],
            },
            30,
            90,
            ("ft-pruned", "ft-full"),
        ),  # fmt: skip
    ]
