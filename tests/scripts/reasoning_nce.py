"""The reasoning tasks' InfoNCE on fixed embeddings, one half of the batch per process; used by the gather test.

usage: reasoning_nce.py OUT_JSON   (under torchrun, or alone for one process holding the whole batch)
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from irlm.methods.reasoning.tasks import info_nce
from irlm.train.loop import init_distributed, world


def batch() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return F.normalize(torch.randn(4, 8, generator=g), dim=-1), F.normalize(torch.randn(4, 8, generator=g), dim=-1)


def main() -> None:
    init_distributed()
    rank, size = world()
    q, d = batch()
    share = slice(rank * 4 // size, (rank + 1) * 4 // size)
    loss = info_nce(q[share], d[share], 0.1)
    losses = [torch.zeros(()) for _ in range(size)]
    if size > 1:
        torch.distributed.all_gather(losses, loss.detach())
    else:
        losses = [loss.detach()]
    if rank == 0:
        Path(sys.argv[1]).write_text(json.dumps([v.item() for v in losses]))


if __name__ == "__main__":
    main()
