"""Compact dense indexes against exact float32: nDCG@10 and bytes per document on one dataset split.

Takes the exact index `irlm encode` wrote, re-indexes it with each backend (as `irlm index --embeddings`
does), saves and re-loads it (so int8 / binary search the loaded codes with vectors.npy memory-mapped),
embeds the split's queries once with the index's own encoder, and prints one JSON line.

    irlm encode --data scifact --model minilm-l6 --out runs/compact/minilm
    python bench/compact.py --embeddings runs/compact/minilm --data scifact

index_bytes_per_doc: the vectors search keeps in memory (FAISS code size; 4 * dim for float32).
disk_bytes_per_doc: the whole saved folder over the documents (compact folders keep vectors.npy too,
for edits, re-indexing and binary rescoring).
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np


def folder_bytes(folder: Path) -> int:
    return sum(f.stat().st_size for f in folder.iterdir() if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--embeddings", required=True, help="An exact dense index folder from `irlm encode`.")
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--split", default="test")
    ap.add_argument("--k", type=int, default=100, help="Results per query (as `irlm search --k`).")
    ap.add_argument("--rescore", default="0,4,10", help="Binary rescoring multipliers to try (0: none).")
    ap.add_argument("--device", default="cpu")
    args = ap.parse_args()

    from irlm.data import load_dataset
    from irlm.eval import evaluate
    from irlm.index.dense import DenseIndex
    from irlm.index.retrievers import DenseRetriever

    ds = load_dataset(args.data)
    queries, qrels = ds.split_queries(args.split), ds.qrels[args.split]
    src = DenseRetriever.load(args.embeddings, device=args.device)
    qids = list(queries)
    qvec = np.asarray(src.encoder.encode_queries([queries[q] for q in qids]), dtype=np.float32)

    configs = [("exact", {}), ("int8", {})]
    configs += [(f"binary+rescore{r}" if r else "binary", {"rescore": r}) for r in map(int, args.rescore.split(","))]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, kw in configs:
            backend = name.split("+")[0]
            index = DenseIndex(src.index.dim, backend, meta=src.index.meta, **kw)
            index.add(src.index.ids, src.index.vectors)
            index.save(Path(tmp) / name)
            index = DenseIndex.load(Path(tmp) / name)
            start = time.perf_counter()
            run = index.search_run(qids, qvec, args.k)
            took = time.perf_counter() - start
            metrics = evaluate(run, qrels, ["ndcg@10", "recall@100"])
            rows[name] = {"ndcg@10": round(metrics["ndcg@10"], 4), "recall@100": round(metrics["recall@100"], 4),
                          "index_bytes_per_doc": index.bytes_per_doc(),
                          "disk_bytes_per_doc": round(folder_bytes(Path(tmp) / name) / len(index), 1),
                          "search_ms_per_query": round(1000 * took / len(qids), 3)}  # fmt: skip
    exact = rows["exact"]
    for row in rows.values():
        row["ndcg_vs_exact"] = round(row["ndcg@10"] / exact["ndcg@10"], 4) if exact["ndcg@10"] else None
        row["bytes_vs_exact"] = round(row["index_bytes_per_doc"] / exact["index_bytes_per_doc"], 5)
    out = {"data": args.data, "split": args.split, "queries": len(qids), "docs": len(src.index),
           "dim": src.index.dim, "model": src.index.meta.get("encoder", {}).get("model"), "k": args.k,
           "backends": rows}  # fmt: skip
    print(json.dumps(out))


if __name__ == "__main__":
    main()
