"""Generation throughput: the in-process TransformersGenerator against OpenAIGenerator over `serve_llm`.

Same model, dtype, prompts (chats asking for a search query for scifact passages), greedy decoding
and batch size; the server runs in its own process and micro-batches the client's concurrent
requests. Prints one JSON line; `ratio_http_vs_inproc` < 1 is what HTTP and batching-by-arrival cost.

    python bench/generate.py --model smollm2-135m --prompts 32 --max-new-tokens 32

On a GPU (pack a of bench/device): the in-process rate at large batches, and the same prompts through plain
`generate` with a static KV cache (compiled on CUDA) on fixed-shape batches, with how many greedy texts
equal the generator's:

    python bench/generate.py --no-http --device cuda --dtype bf16 --prompts 128 --batch-sizes 64,128 --static
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


def fixed_shape_generate(gen, prompts, params, batch_size: int, static: bool) -> tuple[float, float, list]:
    """Plain `generate`, greedy, every batch the same shape: `batch_size` rows (the last batch filled with
    copies) left-padded to one width for all prompts, so a static KV cache is built, and compiled, once.
    Returns (seconds of the first pass, which pays for compilation; seconds of a second pass; generations)."""
    tok = gen.tokenizer
    ids = [tok(gen.render(p), add_special_tokens=False)["input_ids"] for p in prompts]
    width = -(-max(map(len, ids)) // 64) * 64  # one bucket of 64-token steps: one shape, one compiled graph
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    kw = {"cache_implementation": "static"} if static else {}

    def one_pass() -> list:
        out = [None] * len(ids)
        for b in range(0, len(order), batch_size):
            chunk = order[b : b + batch_size]
            rows = [ids[i] for i in chunk] + [ids[chunk[-1]]] * (batch_size - len(chunk))
            batch = tok.pad({"input_ids": rows}, padding="max_length", max_length=width, return_tensors="pt",
                            padding_side="left").to(gen.device)  # fmt: skip
            with torch.inference_mode():
                seqs = gen.model.generate(**batch, max_new_tokens=params.max_new_tokens, do_sample=False,
                                          pad_token_id=tok.pad_token_id, top_k=None, **kw)  # fmt: skip
            for i, row in zip(chunk, seqs):
                out[i] = gen._decode(row[width:], len(ids[i]), params.max_new_tokens, [])
        return out

    start = time.perf_counter()
    one_pass()
    first = time.perf_counter() - start
    start = time.perf_counter()
    out = one_pass()
    return first, time.perf_counter() - start, out


def batch_sweep(args, dtype: str, prompts, params, warm) -> dict:
    """In-process tokens/s at each batch size; with --static, plain and static-cache `generate` on fixed shapes."""
    from irlm.models.generator.local import TransformersGenerator

    sizes = [int(b) for b in args.batch_sizes.split(",")]
    gen = TransformersGenerator(args.model, device=args.device, dtype=dtype, batch_size=sizes[0])
    result, reference = {}, None
    for bs in sizes:
        gen.batch_size = bs
        secs, out = timed(gen, prompts, params, warm)
        reference = reference or out
        tokens = sum(g.completion_tokens for g in out)
        result.update({f"inproc_b{bs}_tokens_per_s": round(tokens / secs, 1), f"inproc_b{bs}_seconds": round(secs, 2),
                       f"inproc_b{bs}_completion_tokens": tokens,
                       f"inproc_b{bs}_same_texts": sum(a.text == b.text for a, b in zip(reference, out))})  # fmt: skip
    if args.static:
        bs = sizes[0]
        for label, static in (("plain", False), ("static", True)):
            first, secs, out = fixed_shape_generate(gen, prompts, params, bs, static)
            tokens = sum(g.completion_tokens for g in out)
            key = f"{label}_b{bs}"
            result.update({f"{key}_tokens_per_s": round(tokens / secs, 1), f"{key}_first_pass_s": round(first, 2),
                           f"{key}_seconds": round(secs, 2),
                           f"{key}_same_texts": sum(a.text == b.text for a, b in zip(reference, out))})  # fmt: skip
    return result


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
    ap.add_argument("--no-http", action="store_true", help="in-process only (the GPU machine has no fastapi)")
    ap.add_argument("--batch-sizes", default="", help="with --no-http: in-process tokens/s at each, e.g. 64,128")
    ap.add_argument(
        "--static",
        action="store_true",
        help="with --batch-sizes: also plain and static-KV-cache "
        "generate on fixed-shape batches of the first size (compiled on CUDA)",
    )
    args = ap.parse_args()

    from irlm.models.generator import SamplingParams
    from irlm.models.generator.local import TransformersGenerator
    from irlm.utils import bf16_is_faster

    dtype = args.dtype if args.dtype != "auto" else ("bf16" if bf16_is_faster(args.device) else "fp32")
    prompts = chats(passages(Path(args.data), args.prompts))
    params, warm = SamplingParams(max_new_tokens=args.max_new_tokens), SamplingParams(max_new_tokens=4)

    if args.no_http:
        sweep = batch_sweep(args, dtype, prompts, params, warm) if args.batch_sizes else {}
        if not args.batch_sizes:
            local = TransformersGenerator(args.model, device=args.device, dtype=dtype, batch_size=args.batch_size)
            secs, out = timed(local, prompts, params, warm)
            tokens = sum(g.completion_tokens for g in out)
            sweep = {"inproc_completion_tokens": tokens, "inproc_seconds": round(secs, 2),
                     "inproc_tokens_per_s": round(tokens / secs, 1)}  # fmt: skip
        print(json.dumps({"bench": "generate", "model": args.model, "prompts": len(prompts),
                          "max_new_tokens": args.max_new_tokens, "device": args.device, "dtype": dtype,
                          "gpu": torch.cuda.get_device_name(0) if args.device == "cuda" else None,
                          "threads": torch.get_num_threads(), **sweep}))  # fmt: skip
        return

    local = TransformersGenerator(args.model, device=args.device, dtype=dtype, batch_size=args.batch_size)
    local_secs, local_out = timed(local, prompts, params, warm)
    del local  # the server process gets the machine to itself

    from irlm.models.generator.http import OpenAIGenerator  # here: --no-http (the GPU machine) needs no openai

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
