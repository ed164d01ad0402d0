"""GRPO step memory: one pass over all B*G samples (the baseline) against chunked forward/backward
(`grpo_chunk`), same model, batch, samples and seed. Each setting runs in a fresh process so its peak
resident memory is its own. Prints one JSON line: peak RSS above the loaded model, seconds per step,
and the ratios chunked / one pass.

    python bench/grpo_memory.py --model smollm2-135m --batch 16 --group 4 --chunk 16 --steps 2
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def rss_mb() -> float:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20


def one_setting(args) -> dict:
    """Load, run `steps` GRPO steps under bf16 autocast, report peak RSS over the loaded state."""
    import torch

    from irlm.methods.reasoning.model import ReasoningEmbedder
    from irlm.methods.reasoning.tasks import GRPOTask
    from irlm.methods.reasoning.train import pairs

    torch.manual_seed(0)
    emb = ReasoningEmbedder.from_pretrained(args.model, "cpu", max_length=128, reasoning_tokens=16)
    examples = pairs(args.data, "train")[: args.batch * args.steps]
    task = GRPOTask(emb, preset="lrem", group=args.group, chunk=args.run_chunk)
    loaded = rss_mb()
    start = time.perf_counter()
    for s in range(args.steps):
        with torch.autocast("cpu", dtype=torch.bfloat16):
            task.step(examples[s * args.batch : (s + 1) * args.batch], seed=s)
        emb.model.zero_grad(set_to_none=True)
    secs = (time.perf_counter() - start) / args.steps
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    return {"loaded_mb": round(loaded), "peak_over_loaded_mb": round(peak - loaded), "s_per_step": round(secs, 2)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--group", type=int, default=4)
    ap.add_argument("--chunk", type=int, default=16)
    ap.add_argument("--steps", type=int, default=2)
    ap.add_argument("--run-chunk", type=int, default=None, help=argparse.SUPPRESS)  # the child process
    args = ap.parse_args()
    if args.run_chunk is not None:
        print(json.dumps(one_setting(args)))
        return
    out = {"bench": "grpo_memory", "model": args.model, "batch": args.batch, "group": args.group,
           "chunk": args.chunk, "steps": args.steps}  # fmt: skip
    for name, chunk in (("one_pass", 0), ("chunked", args.chunk)):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--run-chunk", str(chunk)]
        child = json.loads(subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()[-1])
        out.update({f"{name}_{k}": v for k, v in child.items()})
    out["memory_ratio"] = round(out["chunked_peak_over_loaded_mb"] / out["one_pass_peak_over_loaded_mb"], 3)
    out["time_ratio"] = round(out["chunked_s_per_step"] / out["one_pass_s_per_step"], 3)
    print(json.dumps(out))


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
