"""Corpus encoding across processes (torchrun): each rank embeds a contiguous shard, rank 0 merges.

Shards travel through the output folder rather than collective calls, so a corpus larger
than one process's memory budget for communication still merges, and a finished shard is
kept if another rank fails.
"""

from __future__ import annotations

import shutil
from dataclasses import asdict
from pathlib import Path

import torch.distributed as dist

from irlm.index.dense import DenseIndex
from irlm.types import Corpus


def shard_bounds(n: int, rank: int, world: int) -> tuple[int, int]:
    """[start, end) of `rank`'s contiguous share of n items; shares differ by at most one."""
    return rank * n // world, (rank + 1) * n // world


def merge_shards(folders: list[Path], backend: str) -> DenseIndex:
    parts = [DenseIndex.load(f) for f in folders]
    merged = DenseIndex(parts[0].dim, backend, meta=parts[0].meta)
    for part in parts:
        merged.add(part.ids, part.vectors)
    return merged


def encode_sharded(corpus: Corpus, encoder, out: str | Path, backend: str = "exact",
                   batch_size: int | None = None) -> DenseIndex | None:  # fmt: skip
    """Encode `corpus` into the dense index folder `out`, split over the processes of the group.

    Returns the merged index on rank 0 (None elsewhere); works unchanged in a single process.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if dist.is_initialized() else (0, 1)
    out = Path(out)
    start, end = shard_bounds(len(corpus), rank, world)
    docs = corpus.docs[start:end]
    vectors = encoder.encode_corpus([d.full_text() for d in docs], batch_size=batch_size, progress=rank == 0)
    shard = DenseIndex(encoder.dim, "exact", meta={"encoder": asdict(encoder.config)})
    shard.add([d.id for d in docs], vectors)
    shard_dir = out.with_name(f".{out.name}.shards") / f"rank-{rank:03d}"
    shard.save(shard_dir)
    if world > 1:
        dist.barrier()  # every shard is on disk before rank 0 reads them
    if rank != 0:
        return None
    merged = merge_shards([shard_dir.parent / f"rank-{r:03d}" for r in range(world)], backend)
    merged.save(out)
    shutil.rmtree(shard_dir.parent, ignore_errors=True)
    return merged
