"""Pack a: DRAMA (augmentation strategies, the CPU recipe at GPU scale, the teacher-speed bench)."""

from __future__ import annotations

from .common import Row, Scale, drama_row


def pack_a(s: Scale) -> list[Row]:
    """DRAMA at 300 steps, batch 64: FT, + crop, the CPU issue's recipe at GPU scale, the teacher-speed bench,
    then + qgen, + rerank and all three. The H100 already gave FT 0.688 / + crop 0.722 / + rerank 0.684: FT
    and + crop come first so this card's numbers sit beside those, then what was never measured."""
    crop, qgen, rerank = "${crop}/examples.jsonl", "${qgen}/examples.jsonl", "${rerank}/examples.jsonl"
    return [
        Row("bm25-scifact", "eval", {"data": "scifact", "retriever": "bm25", "k": 100}, 10, 60),
        Row("bm25-cranfield", "eval", {"data": "cranfield", "retriever": "bm25", "k": 100}, 5, 60),
        Row("crop", "augment", {"strategy": "crop", "data": "scifact", "n": 2000}, 15, 60),
        drama_row("ft", s),
        drama_row("ft-crop", s, needs=["crop"], augment_files=[crop]),
        # recipes/retriever-scifact-cpu.yaml (top 10 layers on cached layer-20 states, crops of every
        # document, 100 dev queries held out, hybrid) at the GPU recipe's scale: 300 steps, batch 64, bf16
        Row("crop-all", "augment", {"strategy": "crop", "data": "scifact", "n": 5183}, 20, 60),
        Row(
            "cpu-recipe-gpu",
            "train",
            {
                "method": "drama",
                "model": s.model,
                "data": "scifact",
                "train_split": "train",
                "dev_queries": 100,
                "augment_files": ["${crop-all}/examples.jsonl"],  # all 5,183 crops, as the CPU recipe
                "eval_data": ["scifact", "cranfield"],
                "hybrid": True,
                "steps": 300,
                "batch_size": 64,
                "n_negatives": 1,
                "pooling": "mean",
                "max_length": 128,
                "temperature": 0.05,
                "lr": 1.0e-4,
                "precision": s.precision,
                "save_every": 300,
                "cache_layers": 20,
                "seed": 42,
            },
            90,
            180,
            needs=("crop-all",),
        ),  # fmt: skip
        # issue item 3: completion tokens/s of the in-process teacher at batch 64 and 128, against plain
        # generate with a static KV cache (+ compile) on the same length-bucketed batches
        Row(
            "generate-bench",
            "bench",
            {
                "script": "bench/generate.py",
                "args": [
                    "--model",
                    s.model,
                    "--no-http",
                    "--device",
                    "cuda",
                    "--dtype",
                    "bf16",
                    "--prompts",
                    "128",
                    "--max-new-tokens",
                    "48",
                    "--batch-sizes",
                    "64,128",
                    "--static",
                ],
            },
            120,
            150,
        ),  # fmt: skip
        Row(
            "qgen",
            "augment",
            {"strategy": "qgen", "data": "scifact", "n": 1000, "batch_size": 128, "teacher": s.model},
            90,
            120,
            partial_ok=True,
        ),  # fmt: skip
        drama_row("ft-qgen", s, needs=["qgen"], augment_files=[qgen]),
        Row(
            "rerank",
            "augment",
            {
                "strategy": "rerank",
                "data": "scifact",
                "n": 500,
                "batch_size": 64,
                "queries_from": qgen,
                "teacher": s.model,
            },
            90,
            120,
            ("qgen",),
            True,
        ),  # fmt: skip
        drama_row("ft-rerank", s, needs=["rerank"], augment_files=[rerank]),
        drama_row("ft-all", s, needs=["crop", "qgen", "rerank"], augment_files=[crop, qgen, rerank]),
    ]
