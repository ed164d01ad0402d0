"""Generation throughput: the in-process TransformersGenerator against OpenAIGenerator over `serve_llm`.

Same model, dtype, prompts (chats asking for a search query for scifact passages), greedy decoding
and batch size; the server runs in its own process and micro-batches the client's concurrent
requests. Prints one JSON line; `ratio_http_vs_inproc` < 1 is what HTTP and batching-by-arrival cost.

    python bench/generate.py --model smollm2-135m --prompts 32 --max-new-tokens 32
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]


def passages(folder: Path, n: int, chars: int = 600) -> list[str]:
    """The first n passages of a BEIR corpus, cut to `chars` so prompts stay scifact-sized but bounded."""
    out = []
    with open(folder / "corpus.jsonl", encoding="utf-8") as f:
        for line in f:
            doc = json.loads(line)
            out.append(f"{doc.get('title', '')}. {doc['text']}"[:chars])
            if len(out) == n:
                break
    return out


def chats(texts: list[str]) -> list[list[dict]]:
    ask = "Write one short search query that this passage answers. Reply with the query only.\n\nPassage: "
    return [[{"role": "user", "content": ask + t}] for t in texts]


def timed(gen, prompts, params, warm_params) -> tuple[float, list]:
    gen.generate(prompts[:8], warm_params)  # warm-up: first batches pay for kernel selection and allocation
    start = time.perf_counter()
    out = gen.generate(prompts, params)
    return time.perf_counter() - start, out


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(args, dtype: str, port: int) -> subprocess.Popen:
    code = ("from irlm.models.generator.server import serve_llm; "
            f"serve_llm({args.model!r}, port={port}, api_key_env=None, batch_size={args.batch_size}, "
            f"device={args.device!r}, dtype={dtype!r})")  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    import httpx

    for _ in range(600):  # up to 2 minutes: the first run converts the bundled GGUF
        if proc.poll() is not None:
            raise RuntimeError(f"serve_llm exited with {proc.returncode}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/health", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    proc.terminate()
    raise TimeoutError("serve_llm did not become healthy")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="smollm2-135m")
    ap.add_argument("--data", default=os.path.join(os.environ.get("IRLM_DATA", REPO.parent / "shared" / "data"),
                                                   "scifact"), help="a BEIR folder")  # fmt: skip
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--batch-size", type=int, default=8)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="auto", help="auto is resolved here once, so both sides use the same")
    args = ap.parse_args()

    from irlm.models.generator import SamplingParams
    from irlm.models.generator.http import OpenAIGenerator
    from irlm.models.generator.local import TransformersGenerator
    from irlm.utils import bf16_is_faster

    dtype = args.dtype if args.dtype != "auto" else ("bf16" if bf16_is_faster(args.device) else "fp32")
    prompts = chats(passages(Path(args.data), args.prompts))
    params, warm = SamplingParams(max_new_tokens=args.max_new_tokens), SamplingParams(max_new_tokens=4)

    local = TransformersGenerator(args.model, device=args.device, dtype=dtype, batch_size=args.batch_size)
    local_secs, local_out = timed(local, prompts, params, warm)
    del local  # the server process gets the machine to itself

    port = free_port()
    proc = start_server(args, dtype, port)
    try:
        with OpenAIGenerator(f"http://127.0.0.1:{port}/v1", concurrency=args.concurrency, api_key_env=None) as remote:
            http_secs, http_out = timed(remote, prompts, params, warm)
    finally:
        proc.terminate()
        proc.wait(30)

    local_tokens, http_tokens = (sum(g.completion_tokens for g in out) for out in (local_out, http_out))
    local_rate, http_rate = local_tokens / local_secs, http_tokens / http_secs
    print(json.dumps({
        "bench": "generate", "model": args.model, "data": args.data, "prompts": len(prompts),
        "max_new_tokens": args.max_new_tokens, "batch_size": args.batch_size, "concurrency": args.concurrency,
        "device": args.device, "dtype": dtype, "threads": torch.get_num_threads(),
        "inproc_completion_tokens": local_tokens, "inproc_seconds": round(local_secs, 2),
        "inproc_tokens_per_s": round(local_rate, 1),
        "http_completion_tokens": http_tokens, "http_seconds": round(http_secs, 2),
        "http_tokens_per_s": round(http_rate, 1),
        "ratio_http_vs_inproc": round(http_rate / local_rate, 3),
        # greedy on both sides: texts differ only where padding in different batches shifts bf16 rounding
        "same_texts": sum(a.text == b.text for a, b in zip(local_out, http_out)),
    }))  # fmt: skip


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    main()
