"""Pack d: Self-Retrieval on nq-open-oracle, and BM25 and a dense retriever on the same questions."""

from __future__ import annotations

from .common import Row, Scale, drama_row


def pack_d(s: Scale) -> list[Row]:
    """Self-Retrieval on nq-open-oracle for many epochs (1500 steps at batch 64: ~96k examples drawn from a
    mix of ~6k), then BM25 and the dense SmolLM2 retriever scored on the same first 300 test questions."""
    limit = 300
    return [
        Row(
            "selfretrieval",
            "train",
            {
                "method": "selfretrieval",
                "config": "recipes/selfretrieval-nq-tiny.yaml",
                "model": s.model,
                "steps": 1500,
                "batch_size": 64,
                "precision": s.precision,
                "save_every": 100000,
                "eval_limit": limit,
                "batch_queries": 32,
            },
            270,
            330,
        ),  # fmt: skip
        Row("bm25", "py", {"fn": "score_nq", "system": "bm25", "limit": limit}, 10, 60),
        drama_row("dense", s, 70, data="nq-open-oracle", eval_data=["nq-open-oracle"]),
        Row(
            "dense-same-questions",
            "py",
            {"fn": "score_nq", "system": "${dense}/final", "limit": limit},
            15,
            60,
            ("dense",),
        ),  # fmt: skip
    ]
