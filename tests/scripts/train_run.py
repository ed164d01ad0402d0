"""Train the tiny encoder; used by the resume test (killed and rerun) and the DDP test.

usage: train_run.py OUT_DIR STEPS [--sleep S] [--grads FILE] [--cache-chunk N]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
from tiny import tiny_encoder, toy_examples  # noqa: E402

from irlm.train.cached import cached_encoder  # noqa: E402
from irlm.train.contrastive import ContrastiveTask, batch_texts  # noqa: E402
from irlm.train.loop import TrainConfig, Trainer, init_distributed, seed_everything, world  # noqa: E402


class Slow(ContrastiveTask):
    delay = 0.0

    def step(self, examples, scale=1.0, seed=0):
        time.sleep(self.delay)  # room for the test to kill us mid-run
        return super().step(examples, scale, seed)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("steps", type=int)
    ap.add_argument("--sleep", type=float, default=0.0)
    ap.add_argument("--grads", default=None, help="do one step and dump averaged grads + loss here")
    ap.add_argument("--cache-chunk", type=int, default=0)
    ap.add_argument("--cache-layers", type=int, default=0, help="train a 3-layer model's top on cached states")
    args = ap.parse_args()
    init_distributed()
    seed_everything(0)
    encoder = tiny_encoder()
    if args.cache_layers:
        encoder = tiny_encoder(layers=3)
        encoder = cached_encoder(encoder, args.cache_layers, batch_texts(encoder, toy_examples(16)),
                                 Path(args.out) / "acts", dtype="fp32")  # fmt: skip
    task = Slow(encoder, temperature=0.05, n_negatives=2, cache_chunk=args.cache_chunk)
    task.delay = args.sleep
    cfg = TrainConfig(output_dir=args.out, max_steps=args.steps, batch_size=8, lr=1e-3, precision="fp32",
                      save_every=2, keep_checkpoints=2, max_grad_norm=0.0)
    trainer = Trainer(task, toy_examples(16), cfg)
    if args.grads:
        dump_one_step(trainer, args.grads)
    else:
        trainer.fit()


def dump_one_step(trainer: Trainer, path: str) -> None:
    from irlm.train.loop import step_examples

    rank, size = world()
    batch = step_examples(trainer.examples, 0, trainer.cfg.batch_size, trainer.cfg.seed)[rank::size]
    loss = torch.tensor(trainer.task.step(batch)["infonce"])
    trainer._average_gradients()
    filled = [getattr(trainer.task.encoder, "filled", 0)] * size
    if size > 1:
        torch.distributed.all_reduce(loss)
        loss /= size
        torch.distributed.all_gather_object(filled, filled[rank])
    if rank == 0:
        grads = torch.cat([p.grad.reshape(-1) for p in trainer.params]).tolist()
        Path(path).write_text(json.dumps({"loss": loss.item(), "grads": grads, "filled": filled}))


if __name__ == "__main__":
    main()
