"""Search-service latency and throughput: `irlm.serve` over HTTP against calling the retriever in-process.

Each retriever is built once on the corpus, saved, and served by a separate uvicorn process; the same
queries then run through the library (sequential `retriever.search`, one query per call) and through
the server at each concurrency. Prints one JSON line; `ratio` = server QPS / library QPS.

With `--fast-path both` a BM25 index is served twice, through the micro-batcher and on the fast path, and
`--baseline DIR` first serves it from another checkout (a folder holding `irlm/`, e.g. a `git worktree` of
the previous commit): before and after in one run, under the same load on the machine.

    python bench/serve.py --retrievers bm25,dense --queries 200
    python bench/serve.py --retrievers dense --docs 1000   # a smaller corpus, for a quick look
    python bench/serve.py --retrievers bm25 --fast-path both --baseline ../before
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
SERVER = "import json, sys; from irlm.serve import serve; serve(sys.argv[1], port=int(sys.argv[2]), api_key_env=None, batch_size=int(sys.argv[3]), **json.loads(sys.argv[4]))"  # noqa: E501


def build(kind: str, corpus, model: str):
    from irlm.index import BM25Retriever, DenseRetriever
    from irlm.models import LLMEncoder

    if kind == "bm25":
        return BM25Retriever.build(corpus)
    return DenseRetriever.build(corpus, LLMEncoder.from_pretrained(model, device="cpu"))


def summary(latencies: list[float], seconds: float) -> dict:
    ms = np.array(latencies) * 1000
    return {"p50_ms": round(float(np.percentile(ms, 50)), 2), "p99_ms": round(float(np.percentile(ms, 99)), 2),
            "qps": round(len(latencies) / seconds, 1)}  # fmt: skip


def library(retriever, queries: list[str], k: int) -> dict:
    retriever.search({"warm": queries[0]}, k)  # first calls pay for lazy indexing and kernel selection
    latencies, start = [], time.perf_counter()
    for n, text in enumerate(queries):
        t = time.perf_counter()
        retriever.search({str(n): text}, k)
        latencies.append(time.perf_counter() - t)
    return summary(latencies, time.perf_counter() - start)


class StdlibClient:
    """A keep-alive connection through http.client: about 0.3 ms of client work per request here, where
    httpx spends about 1 ms, which on 2 shared cores is time the server does not get."""

    def __init__(self, url: str):
        host, port = url.removeprefix("http://").split(":")
        self.conn = http.client.HTTPConnection(host, int(port), timeout=120)

    def search(self, text: str, k: int) -> None:
        self.conn.request("POST", "/search", json.dumps({"query": text, "k": k}), {"Content-Type": "application/json"})
        answer = self.conn.getresponse()
        body = answer.read()
        if answer.status != 200:
            raise RuntimeError(f"/search answered {answer.status}: {body[:200]!r}")

    def close(self) -> None:
        self.conn.close()


class HttpxClient:
    def __init__(self, url: str):
        self.http = httpx.Client(base_url=url, timeout=120)

    def search(self, text: str, k: int) -> None:
        self.http.post("/search", json={"query": text, "k": k}).raise_for_status()

    def close(self) -> None:
        self.http.close()


CLIENTS = {"stdlib": StdlibClient, "httpx": HttpxClient}


def over_http(url: str, queries: list[str], k: int, concurrency: int, client: str = "stdlib") -> dict:
    """Every query once, spread over `concurrency` clients that each send one request at a time."""
    # clients made before the clock starts: building one (its SSL context) costs milliseconds
    clients = [CLIENTS[client](url) for _ in range(concurrency)]

    def run(http, part: list[str]) -> list[float]:
        out = []
        for text in part:
            t = time.perf_counter()
            http.search(text, k)
            out.append(time.perf_counter() - t)
        return out

    parts = [queries[c::concurrency] for c in range(concurrency)]
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(lambda _: None, range(concurrency)))  # threads started before the clock too
        start = time.perf_counter()
        latencies = [x for part in pool.map(run, clients, parts) for x in part]
        seconds = time.perf_counter() - start
    for one in clients:
        one.close()
    return summary(latencies, seconds)


def start_server(folder: Path, batch_size: int, options: dict, source: Path = ROOT) -> tuple[subprocess.Popen, str]:
    """`serve` in a process of its own, importing irlm from `source` (`python -c` puts its cwd first on the path)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", SERVER, str(folder), str(port), str(batch_size), json.dumps(options)]
    proc = subprocess.Popen(cmd, cwd=source, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(600):
        if proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=1).status_code == 200:
                return proc, url
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise TimeoutError(f"{url} not healthy after 120 s")


def variants(kind: str, args) -> list[tuple[str, Path, dict]]:
    """(label, source, serve options) for each server to measure, one after the other."""
    fast, batched = ("fast", {"fast_path": True}), ("batched", {"fast_path": False})
    modes = {"auto": [("server", {})], "on": [fast], "off": [batched], "both": [batched, fast]}[args.fast_path]
    if kind != "bm25":  # the fast path is for cheap retrievers: other kinds are served as they would be
        modes = [("server", {})]
    baseline = [("baseline", Path(args.baseline).resolve(), {})] if args.baseline else []
    return baseline + [(label, ROOT, options) for label, options in modes]


def bench_one(kind: str, corpus, queries: list[str], args) -> dict:
    retriever = build(kind, corpus, args.model)
    lib = library(retriever, queries, args.k)
    result = {"library": lib}
    servers = variants(kind, args)
    with tempfile.TemporaryDirectory() as tmp:
        retriever.save(Path(tmp) / "index")
        del retriever  # the server holds its own copy; two would compete for memory
        for label, source, options in servers:
            proc, url = start_server(Path(tmp) / "index", args.batch_size, options, source)
            rows = result if len(servers) == 1 else result.setdefault(label, {})  # one server: the old layout
            try:
                over_http(url, queries[:8], args.k, 4, args.client)  # warm-up: lazy indexing, thread pool
                for c in args.concurrency:
                    srv = over_http(url, queries, args.k, c, args.client)
                    rows[f"c{c}"] = {**srv, "ratio": round(srv["qps"] / lib["qps"], 3)}
            finally:
                proc.terminate()
                proc.wait(30)
    return result


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--retrievers", default="bm25,dense", help="Comma-separated: bm25, dense.")
    ap.add_argument("--model", default="minilm-l6", help="The dense retriever's encoder.")
    ap.add_argument("--queries", type=int, default=200)
    ap.add_argument("--docs", type=int, default=0, help="Cap the corpus at N documents (0 = all).")
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--concurrency", default="1,8,32")
    ap.add_argument("--batch-size", type=int, default=16, help="The server's micro-batch size.")
    ap.add_argument("--fast-path", default="auto", choices=["auto", "on", "off", "both"],
                    help="BM25 only: serve with the fast path (on), through the batcher (off), the server's default "
                         "(auto) or both, one after the other.")  # fmt: skip
    ap.add_argument("--baseline", default=None, help="A folder holding an older irlm/, served first.")
    ap.add_argument("--client", default="stdlib", choices=sorted(CLIENTS),
                    help="HTTP client of the load generator: stdlib (http.client, keep-alive) or httpx.")  # fmt: skip
    args = ap.parse_args()
    args.concurrency = [int(c) for c in args.concurrency.split(",")]
    os.environ.setdefault("IRLM_DATA", str(ROOT.parent / "shared" / "data"))

    from irlm.data import load_dataset
    from irlm.types import Corpus

    ds = load_dataset(args.data)
    corpus = Corpus(ds.corpus.docs[: args.docs]) if args.docs else ds.corpus
    texts = list(ds.queries.values())
    queries = [texts[n % len(texts)] for n in range(args.queries)]  # cycles when asked for more than there are
    result = {"bench": "serve", "client": args.client, "data": args.data, "docs": len(corpus),
              "queries": len(queries), "k": args.k, "batch_size": args.batch_size,
              "threads": torch.get_num_threads()}  # fmt: skip
    for kind in args.retrievers.split(","):
        result[kind] = bench_one(kind, corpus, queries, args)
    if "dense" in result:
        result["dense"]["model"] = args.model
    print(json.dumps(result))


if __name__ == "__main__":
    main()
