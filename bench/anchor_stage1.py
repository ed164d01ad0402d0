"""Anchor Stage I's step on a real model: peak memory and seconds with each layer's activations kept (the
baseline) and recomputed in backward (`gradient_checkpointing`, the default). Each variant runs in its own
process, so its peak resident memory is its own; both take the same SciFact train pairs, in bf16 autocast
(`precision: auto` chose it on the EPYC this was written on; --fp32 times fp32). Prints one JSON line.

    python bench/anchor_stage1.py --target 256 --batch 32 --steps 2
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time


def one(args) -> dict:
    import torch

    from irlm.methods.anchor.config import AnchorConfig
    from irlm.methods.anchor.train import ReconstructionTask, checkpointing, training_examples
    from irlm.models import LLMEncoder

    examples = training_examples(AnchorConfig(model=args.model, data="scifact", n_negatives=1))[: args.batch]
    enc = LLMEncoder.from_pretrained(args.model, device="cpu", with_lm_head=True, pooling="mean",
                                     max_length=args.max_length, dtype="fp32", lowercase=True)  # fmt: skip
    checkpointing(enc.model, args.recompute)
    task = ReconstructionTask(enc, 0.2, args.target, "embedding")  # the prefix's scale: one multiply, no cost
    seconds, loss = [], None
    for _ in range(args.steps + 1):  # the first step warms up (allocation, kernel choice) and is not timed
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.bf16):
            loss = task.step(examples)["stage1"]
        enc.model.zero_grad(set_to_none=True)
        seconds.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB -> GiB
    return {"seconds": round(min(seconds[1:]), 1), "peak_gib": round(peak, 2), "loss": round(loss, 4)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--target", type=int, default=256, help="target_max_length")
    ap.add_argument("--max-length", type=int, default=128, help="tokens of the encoded texts")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--steps", type=int, default=2, help="timed steps after one warm-up")
    ap.add_argument("--fp32", dest="bf16", action="store_false", help="no bf16 autocast")
    ap.add_argument("--recompute", type=int, choices=(0, 1), default=None, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.recompute is not None:
        args.recompute = bool(args.recompute)
        print(json.dumps(one(args)))
        return
    runs = {}
    for name, flag in (("kept", 0), ("recomputed", 1)):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--recompute", str(flag)]
        res = subprocess.run(cmd, capture_output=True, text=True)
        if res.returncode:  # killed for memory, most often: say so rather than fail without a word
            sys.exit(f"the {name} variant exited with {res.returncode}: {res.stderr.strip()[-2000:]}")
        runs[name] = json.loads(res.stdout.strip().splitlines()[-1])
    from irlm.train.precision import cpu_name

    ratio = {"memory": round(runs["recomputed"]["peak_gib"] / runs["kept"]["peak_gib"], 3),
             "seconds": round(runs["recomputed"]["seconds"] / runs["kept"]["seconds"], 3)}  # fmt: skip
    print(json.dumps({"bench": "anchor_stage1", "cpu": cpu_name(), "target": args.target, "batch": args.batch,
                      "bf16": args.bf16, "baseline": "kept", **runs, "recomputed_over_kept": ratio}))


if __name__ == "__main__":
    main()
