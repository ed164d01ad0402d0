"""Training throughput and memory: irlm's loop against a plain Trainer-style loop.

1. tokens/s of irlm.train.loop.Trainer (ContrastiveTask) against a hand-written loop doing the
   same forward / InfoNCE / backward / AdamW step, same model, batch and examples;
2. peak resident memory of one step at a large batch with and without gradient caching
   (each in a fresh process, read from getrusage).

Prints one JSON line.

    python bench/train.py --model smollm2-135m --steps 4 --batch 16 --big-batch 256

With `--sweep 0,10,20,25` it instead measures training pairs per second when the first F layers are
frozen and read from cached activations (irlm.train.cached), against full fine-tuning (F = 0), same
model, batch and examples, one process; the one-time cost of filling the cache is reported apart.

    python bench/train.py --sweep 0,10,20,25 --batch 32 --max-length 128 --steps 3   # fp32 and bf16 each
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time

import torch


def examples(n: int, negatives: int):
    from irlm.data import load_dataset
    from irlm.data.mining import mine_examples

    ds = load_dataset("scifact")
    queries = ds.split_queries("train")
    ids = ds.corpus.ids
    run = {q: {ids[(i * 7 + j) % len(ids)]: 1.0 / (j + 1) for j in range(10)} for i, q in enumerate(queries)}
    out = mine_examples(queries, ds.qrels["train"], ds.corpus, run, negatives, margin=1.0)
    return (out * (n // len(out) + 1))[:n]


def encoder(model: str, max_length: int):
    from irlm.models import LLMEncoder

    return LLMEncoder.from_pretrained(model, device="cpu", pooling="mean", max_length=max_length, dtype="fp32")


def count_tokens(enc, batch) -> int:
    return int(batch["query"]["attention_mask"].sum() + batch["docs"]["attention_mask"].sum())


def plain_loop(enc, data, steps, batch_size, negatives) -> float:
    """The baseline: what a transformers-Trainer-style script does, nothing more."""
    from irlm.losses.contrastive import info_nce_from_embeddings
    from irlm.train.contrastive import make_batch

    opt = torch.optim.AdamW(enc.model.parameters(), lr=1e-5)
    tokens, start = 0, None
    for step in range(steps + 1):  # step 0 warms up kernels and is not timed
        if step == 1:
            start = time.perf_counter()
        batch = make_batch(enc, data[step * batch_size : (step + 1) * batch_size], negatives)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            q, d = enc.embed(**batch["query"]), enc.embed(**batch["docs"])
            loss = info_nce_from_embeddings(q, d, 0.05, batch["group"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(enc.model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        tokens += count_tokens(enc, batch) if step else 0
    return tokens / (time.perf_counter() - start)


def irlm_loop(enc, data, steps, batch_size, negatives) -> float:
    from irlm.train.contrastive import ContrastiveTask, make_batch
    from irlm.train.loop import TrainConfig, Trainer, step_examples

    with tempfile.TemporaryDirectory() as out:
        cfg = TrainConfig(output_dir=out, max_steps=steps + 1, batch_size=batch_size, save_every=0, lr=1e-5)
        trainer = Trainer(ContrastiveTask(enc, 0.05, negatives), data, cfg)
        trainer.train_step()  # warm-up, as in the baseline
        tokens, start = 0, time.perf_counter()
        for _ in range(steps):
            seed = cfg.seed * 1_000_003 + trainer.step  # the draw the trainer will make this step
            batch = make_batch(enc, step_examples(data, trainer.step, batch_size, cfg.seed), negatives, seed)
            tokens += count_tokens(enc, batch)
            trainer.train_step()
        return tokens / (time.perf_counter() - start)


def timed_pairs_per_s(enc, data, args, precision: str) -> float:
    """Pairs/s of Trainer steps at one precision (one untimed warm-up step first)."""
    from irlm.train.contrastive import ContrastiveTask
    from irlm.train.loop import TrainConfig, Trainer

    with tempfile.TemporaryDirectory() as tmp:
        cfg = TrainConfig(output_dir=f"{tmp}/run", max_steps=args.steps + 1, batch_size=args.batch, save_every=0,
                          precision=precision)  # fmt: skip
        trainer = Trainer(ContrastiveTask(enc, 0.05, args.negatives), data, cfg)
        trainer.train_step()  # warm-up, not timed
        start = time.perf_counter()
        for _ in range(args.steps):
            trainer.train_step()
        return args.steps * args.batch / (time.perf_counter() - start)


def cached_sweep(args) -> dict:
    """Pairs/s of ContrastiveTask steps at each F, in each precision asked for (`both`: fp32 and bf16, and
    what `precision: auto` picks here); F = 0 is the full model, every parameter trained."""
    from irlm.train.cached import CachedEncoder
    from irlm.train.contrastive import ContrastiveTask, batch_texts
    from irlm.train.precision import choose_precision, cpu_name

    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    data = examples(args.batch * (args.steps + 1), args.negatives)
    out = {}
    for layers in [int(x) for x in args.sweep.split(",")]:
        enc, fill_s = encoder(args.model, args.max_length), 0.0
        texts = batch_texts(enc, data)
        with tempfile.TemporaryDirectory() as tmp:
            if layers:
                enc = CachedEncoder.wrap(enc, layers, f"{tmp}/acts")
                start = time.perf_counter()
                enc.fill(texts, progress=False)
                fill_s = time.perf_counter() - start
            row = {f"pairs_per_s_{p}": round(timed_pairs_per_s(enc, data, args, p), 3) for p in precisions}
            task = ContrastiveTask(enc, 0.05, args.negatives)
            row["auto_picks"] = choose_precision(task, data[:4], "cpu")
        row["fill_texts_per_s"] = round(len(set(texts)) / fill_s, 1) if fill_s else None
        out[layers] = row
    base = out.get(0, {})
    for row in out.values():
        for p in precisions:
            key = f"pairs_per_s_{p}"
            row[f"speedup_{p}"] = round(row[key] / base[key], 2) if base.get(key) else None
    return {"bench": "train-cached", "cpu": cpu_name(), "model": args.model, "batch": args.batch,
            "negatives": args.negatives, "max_length": args.max_length, "steps": args.steps,
            "threads": torch.get_num_threads(), "precisions": precisions,
            "baseline": "F=0: full fine-tuning, same loop and precision", "layers": out}  # fmt: skip


def one_big_step(model, max_length, batch, negatives, chunk) -> None:
    from irlm.train.contrastive import ContrastiveTask

    enc = encoder(model, max_length)
    task = ContrastiveTask(enc, 0.05, negatives, cache_chunk=chunk)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        task.step(examples(batch, negatives))
    print(json.dumps({"peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))


def peak_memory(args, chunk: int) -> float:
    cmd = [sys.executable, __file__, "--model", args.model, "--max-length", str(args.big_max_length),
           "--negatives", str(args.negatives), "--one-step", str(args.big_batch), "--chunk", str(chunk)]  # fmt: skip
    out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout
    return json.loads(out.strip().splitlines()[-1])["peak_rss_mb"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--negatives", type=int, default=1)
    ap.add_argument("--max-length", type=int, default=64)
    ap.add_argument("--big-batch", type=int, default=256)
    ap.add_argument("--big-max-length", type=int, default=16, help="kept short so the uncached step fits in RAM")
    ap.add_argument("--cache-chunk", type=int, default=32)
    ap.add_argument("--precision", default="both", help="--sweep: fp32, bf16 or both (each F timed in each, and the "
                    "choice of `precision: auto` on this CPU)")
    ap.add_argument("--sweep", default="", help="comma-separated frozen-layer counts F, e.g. 0,10,20,25")
    ap.add_argument("--one-step", type=int, default=0, help=argparse.SUPPRESS)
    ap.add_argument("--chunk", type=int, default=0, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.one_step:
        return one_big_step(args.model, args.max_length, args.one_step, args.negatives, args.chunk)
    if args.sweep:
        return print(json.dumps(cached_sweep(args)))
    data = examples(args.batch * (args.steps + 1), args.negatives)
    torch.manual_seed(0)
    plain = plain_loop(encoder(args.model, args.max_length), data, args.steps, args.batch, args.negatives)
    torch.manual_seed(0)
    ours = irlm_loop(encoder(args.model, args.max_length), data, args.steps, args.batch, args.negatives)
    mem_plain, mem_cached = peak_memory(args, 0), peak_memory(args, args.cache_chunk)
    print(json.dumps({
        "bench": "train", "model": args.model, "batch": args.batch, "negatives": args.negatives,
        "max_length": args.max_length, "steps": args.steps, "threads": torch.get_num_threads(),
        "plain_tokens_per_s": round(plain, 1), "irlm_tokens_per_s": round(ours, 1), "ratio": round(ours / plain, 3),
        "big_batch": args.big_batch, "big_max_length": args.big_max_length, "cache_chunk": args.cache_chunk,
        "peak_rss_mb_plain": round(mem_plain), "peak_rss_mb_cached": round(mem_cached),
        "memory_ratio": round(mem_cached / mem_plain, 3),
    }))  # fmt: skip


if __name__ == "__main__":
    main()
