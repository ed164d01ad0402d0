"""Self-Retrieval training speed: today's full fine-tuning against the top trained on cached lower-layer states.

Examples per second of the shared loop's steps on the same real nq-open-oracle training examples (drawn from the
whole mix: indexing, retrieval and assessment), same model, batch and precision, all in one process:
  full          SFTTask, every weight trained (cache_layers: 0, the baseline);
  full_targets  the same full model, with logits only where a target token is predicted (how much of the gain
                is not the cache);
  cached F      CachedSFTTask: embeddings and the first F layers frozen and read from the activation cache.
The variants take their timed steps in turns (one step each per round), so a load that comes and goes on a
shared machine weighs on all of them alike. Filling the cache is paid once per run and reported apart, with
what it and one epoch over the whole mix would take at the measured rates. Prints one JSON line.

    python bench/selfretrieval_train.py --layers 20,24,26 --steps 3 --batch 16
"""

from __future__ import annotations

import argparse
import json
import os
import random
import tempfile
import time

import torch

from irlm.train.cached_lm import target_loss
from irlm.train.lm import SFTTask


def training_mix(args):
    """The whole training mix (Self-Retrieval's defaults unless told), its tokenizer, and the examples the bench
    steps on (a seeded draw from the mix)."""
    from irlm.data import load_dataset
    from irlm.methods.selfretrieval import data
    from irlm.methods.selfretrieval.config import SelfRetrievalConfig
    from irlm.methods.selfretrieval.train import build_examples, dev_qids, load_model

    cfg = SelfRetrievalConfig(model=args.model, data="nq-open-oracle", index_sentences=args.index_sentences,
                              max_passage_tokens=args.max_passage_tokens, dev_queries=args.dev_queries)  # fmt: skip
    ds = load_dataset(cfg.data)
    _, tok = load_model(args.model, "cpu")
    fmt = data.Format(tok, cfg.max_passage_tokens, cfg.max_prompt_tokens, cfg.titles)
    mix, counts = build_examples(cfg, ds, fmt, dev_qids(cfg, ds))
    sample = random.Random(0).sample(mix, args.batch * (args.steps + 1))
    return mix, counts, tok, sample


class TargetLogitsSFT(SFTTask):
    """SFTTask's step on the full model, projecting through the head only the states that predict a target."""

    def step(self, examples, scale: float = 1.0, seed: int = 0) -> dict[str, float]:
        ids, attention, target = self.batch(examples)
        hidden = self.model.model(input_ids=ids, attention_mask=attention).last_hidden_state  # (B, T, C)
        loss = target_loss(hidden, self.model.get_output_embeddings(), ids, target)
        (loss * scale).backward()
        return {"lm": loss.item()}


def variants(args, tok, sample, tmp: str) -> tuple[dict, dict]:
    """name -> task, and each cached variant's fill of the sample: seconds, tokens per wall and per CPU second."""
    from irlm.methods.selfretrieval.train import load_model
    from irlm.train.cached_lm import CachedCausalLM, CachedSFTTask

    tasks = {"full": SFTTask(load_model(args.model, "cpu")[0], tok),
             "full_targets": TargetLogitsSFT(load_model(args.model, "cpu")[0], tok)}  # fmt: skip
    fills, rows = {}, [p + t for p, t in sample]
    for layers in args.layers:
        lm = CachedCausalLM.wrap(load_model(args.model, "cpu")[0], layers, f"{tmp}/acts-{layers}")
        start, start_cpu = time.perf_counter(), time.process_time()
        lm.fill(rows, batch_size=args.batch, progress=False)
        seconds, cpu = time.perf_counter() - start, time.process_time() - start_cpu
        tokens = sum(map(len, rows))
        fills[layers] = {"fill_s": round(seconds, 2), "fill_tokens_per_s": round(tokens / seconds, 1),
                         "fill_tokens_per_cpu_s": round(tokens / cpu, 1)}  # fmt: skip
        tasks[f"cached_{layers}"] = CachedSFTTask(lm, tok)
    return tasks, fills


def timed(tasks: dict, sample: list, args, tmp: str) -> dict[str, tuple[float, float]]:
    """(examples per wall second, per CPU second of this process) of each task's Trainer steps: one untimed warm-up
    step each, then steps in turns. CPU seconds count what this process ran, so they move less than wall seconds
    when other jobs share the cores (but still include the threads' spinning while they wait on each other)."""
    from irlm.train.loop import TrainConfig, Trainer

    trainers = {}
    for name, task in tasks.items():
        cfg = TrainConfig(output_dir=f"{tmp}/{name}", max_steps=args.steps + 1, batch_size=args.batch, lr=1e-4,
                          precision=args.precision, save_every=0)  # fmt: skip
        trainers[name] = Trainer(task, sample, cfg)
        trainers[name].train_step()  # warm-up: kernels, allocation
    wall, cpu = dict.fromkeys(trainers, 0.0), dict.fromkeys(trainers, 0.0)
    for _ in range(args.steps):
        for name, trainer in trainers.items():
            start, start_cpu = time.perf_counter(), time.process_time()
            trainer.train_step()
            wall[name] += time.perf_counter() - start
            cpu[name] += time.process_time() - start_cpu
    n = args.steps * args.batch
    return {name: (n / wall[name], n / cpu[name]) for name in trainers}


def main() -> None:
    from irlm.train.loop import resolve_precision
    from irlm.train.precision import cpu_name

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--layers", default="24", help="comma-separated frozen-layer counts F, e.g. 20,24")
    ap.add_argument("--steps", type=int, default=3, help="timed steps per variant (after one warm-up step)")
    ap.add_argument("--batch", type=int, default=16, help="examples per step (the recipe's batch_size)")
    ap.add_argument("--precision", default=resolve_precision("auto", "cpu"), help="bf16 or fp32; default: auto's")
    ap.add_argument("--index-sentences", type=int, default=2)
    ap.add_argument("--max-passage-tokens", type=int, default=64)
    ap.add_argument("--dev-queries", type=int, default=200)
    args = ap.parse_args()
    args.layers = [int(x) for x in args.layers.split(",")]
    load_before = os.getloadavg()[0]
    mix, counts, tok, sample = training_mix(args)
    with tempfile.TemporaryDirectory() as tmp:
        tasks, fills = variants(args, tok, sample, tmp)
        speed = timed(tasks, sample, args, tmp)
    mix_tokens = sum(len(p) + len(t) for p, t in mix)
    (full, full_cpu), (targets, _) = speed["full"], speed["full_targets"]
    cached = {}
    for layers in args.layers:
        wall, cpu = speed[f"cached_{layers}"]
        cached[layers] = {"examples_per_s": round(wall, 3), "ratio": round(wall / full, 2),
                          "examples_per_cpu_s": round(cpu, 3), "cpu_ratio": round(cpu / full_cpu, 2), **fills[layers],
                          "mix_fill_s": round(mix_tokens / fills[layers]["fill_tokens_per_s"]),
                          "epoch_s": round(len(mix) / wall)}  # fmt: skip
    print(json.dumps({
        "bench": "selfretrieval-train", "cpu": cpu_name(), "threads": torch.get_num_threads(),
        "load_avg": [round(load_before, 2), round(os.getloadavg()[0], 2)], "model": args.model,
        "precision": args.precision, "batch": args.batch, "steps": args.steps, "mix": counts,
        "mix_examples": len(mix), "mix_tokens": mix_tokens, "sample_tokens_per_example":
        round(sum(len(p) + len(t) for p, t in sample) / len(sample), 1),
        "baseline": "full: SFTTask, every weight trained (cache_layers 0), same examples, batch and precision",
        "full_examples_per_s": round(full, 3), "full_examples_per_cpu_s": round(full_cpu, 3),
        "full_epoch_s": round(len(mix) / full), "full_targets_ratio": round(targets / full, 2), "cached": cached,
    }))  # fmt: skip


if __name__ == "__main__":
    main()
