"""Corpus-encoding throughput: irlm's LLMEncoder against sentence-transformers.

Same model folder, same texts, same max length, same batch size, one process. Prints one JSON
line; `ratio_*` > 1 means irlm is faster.

    python bench/encode.py --model minilm-l6 --docs 1000
    python bench/encode.py --model runs/pruned/final --against smollm2-135m   # a pruned model vs its parent
    python bench/encode.py --model shape:20,384,2,1024 --against smollm2-135m  # a pruning target, before pruning
    python bench/encode.py --model minilm-l6 --docs 200 --onnx  # the ONNX export (onnxruntime, CPU) vs irlm
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time

import torch


def timed(fn, texts):
    fn(texts[:32])  # warm-up: first batches pay for kernel selection and allocation
    start = time.perf_counter()
    fn(texts)
    return time.perf_counter() - start


def st_model(path: str, pooling: str, max_length: int, dtype):
    from sentence_transformers import SentenceTransformer, models

    word = models.Transformer(path, max_seq_length=max_length, model_args={"dtype": dtype})
    mode = "lasttoken" if pooling == "last" else pooling
    pool = models.Pooling(word.get_word_embedding_dimension(), pooling_mode=mode)
    return SentenceTransformer(modules=[word, pool, models.Normalize()], device="cpu")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default="minilm-l6")
    ap.add_argument("--data", default="scifact")
    ap.add_argument("--docs", type=int, default=1000)
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--max-length", type=int, default=None)
    ap.add_argument("--against", default=None, help="Second model, also through irlm: ratio = model / against.")
    ap.add_argument("--dtype", default="bf16", help="With --against: the dtype both models run in.")
    ap.add_argument("--device", default="cpu", help="With --against: cpu or cuda.")
    ap.add_argument("--onnx", action="store_true", help="Export the model to ONNX and time onnxruntime against irlm.")
    args = ap.parse_args()
    if args.against:
        return compare(args)
    if args.onnx:
        return onnx_row(args)

    from irlm.data import load_dataset
    from irlm.models import LLMEncoder
    from irlm.models.resolve import resolve_model

    texts = load_dataset(args.data).corpus.texts()[: args.docs]
    result = {"bench": "encode", "model": args.model, "data": args.data, "docs": len(texts),
              "batch_size": args.batch_size, "threads": torch.get_num_threads()}  # fmt: skip
    for dtype_name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        enc = LLMEncoder.from_pretrained(args.model, device="cpu", dtype=dtype_name, max_length=args.max_length)
        tokens = sum(len(r) for r in enc.tokenize(texts))
        secs = timed(lambda t: enc.encode_corpus(t, batch_size=args.batch_size, progress=False), texts)
        st = st_model(resolve_model(args.model), enc.config.pooling, enc.config.max_length, dtype)
        st_secs = timed(lambda t: st.encode(t, batch_size=args.batch_size, show_progress_bar=False), texts)
        result.update({
            "max_length": enc.config.max_length, "tokens": tokens,
            f"irlm_{dtype_name}_docs_per_s": round(len(texts) / secs, 2),
            f"irlm_{dtype_name}_tokens_per_s": round(tokens / secs, 1),
            f"st_{dtype_name}_docs_per_s": round(len(texts) / st_secs, 2),
            f"st_{dtype_name}_tokens_per_s": round(tokens / st_secs, 1),
            f"ratio_{dtype_name}": round(st_secs / secs, 3),
        })  # fmt: skip
    # irlm's default (dtype=auto) against sentence-transformers' default (fp32)
    auto = "bf16" if LLMEncoder.from_pretrained(args.model, device="cpu").model.dtype == torch.bfloat16 else "fp32"
    result["ratio_defaults"] = round(result[f"irlm_{auto}_docs_per_s"] / result["st_fp32_docs_per_s"], 3)
    result["irlm_default_dtype"] = auto
    print(json.dumps(result))


def compare(args) -> None:
    """Two models through irlm on the same texts and settings, alternated twice to even out machine noise."""
    from irlm.data import load_dataset
    from irlm.models import LLMEncoder

    texts = load_dataset(args.data).corpus.texts()[: args.docs]
    label = args.model
    opts = {"device": args.device, "dtype": args.dtype, "max_length": args.max_length or 128, "pooling": "mean"}
    with tempfile.TemporaryDirectory(prefix="shape-") as scratch:  # a shape's random weights, gone once loaded
        if args.model.startswith("shape:"):
            args.model = shaped(args.against, args.model[len("shape:") :], scratch)
        encs = {name: LLMEncoder.from_pretrained(name, **opts) for name in (args.model, args.against)}
    secs = dict.fromkeys(encs, 0.0)
    for _ in range(2):
        for name, enc in encs.items():
            secs[name] += timed(lambda t: enc.encode_corpus(t, batch_size=args.batch_size, progress=False), texts)
    params = {n: sum(p.numel() for p in e.model.parameters()) for n, e in encs.items()}
    print(json.dumps({"bench": "encode-compare", "model": label, "against": args.against, "data": args.data,
                      "docs": len(texts), "device": args.device, "dtype": args.dtype, "max_length": opts["max_length"],
                      "threads": torch.get_num_threads(), "model_params": params[args.model],
                      "against_params": params[args.against],
                      "model_docs_per_s": round(2 * len(texts) / secs[args.model], 2),
                      "against_docs_per_s": round(2 * len(texts) / secs[args.against], 2),
                      "ratio": round(secs[args.against] / secs[args.model], 3)}))  # fmt: skip


def onnx_row(args) -> None:
    """irlm (fp32, torch) against its ONNX export run by onnxruntime on the CPU: same texts, threads and batch
    size, alternated twice; `ratio_onnx` > 1 means onnxruntime is faster."""
    from irlm.data import load_dataset
    from irlm.models import LLMEncoder
    from irlm.models.export import OnnxEncoder, export_encoder

    texts = load_dataset(args.data).corpus.texts()[: args.docs]
    enc = LLMEncoder.from_pretrained(args.model, device="cpu", dtype="fp32", max_length=args.max_length)
    with tempfile.TemporaryDirectory(prefix="onnx-") as scratch:
        source = args.model if args.max_length is None else _saved(enc, scratch)
        start = time.perf_counter()
        folder = export_encoder(source, f"{scratch}/out", "onnx")
        export_s = time.perf_counter() - start
        onnx = OnnxEncoder(folder, threads=torch.get_num_threads())
        runs = {"irlm": lambda t: enc.encode_corpus(t, batch_size=args.batch_size, progress=False),
                "onnx": lambda t: onnx.encode_corpus(t, batch_size=args.batch_size)}  # fmt: skip
        secs = dict.fromkeys(runs, 0.0)
        for _ in range(2):
            for name, fn in runs.items():
                secs[name] += timed(fn, texts)
        diff = float(abs(runs["onnx"](texts[:64]) - runs["irlm"](texts[:64])).max())
    print(json.dumps({"bench": "encode-onnx", "model": args.model, "data": args.data, "docs": len(texts),
                      "batch_size": args.batch_size, "max_length": enc.config.max_length,
                      "threads": torch.get_num_threads(), "export_s": round(export_s, 1),
                      "irlm_fp32_docs_per_s": round(2 * len(texts) / secs["irlm"], 2),
                      "onnx_fp32_docs_per_s": round(2 * len(texts) / secs["onnx"], 2),
                      "ratio_onnx": round(secs["irlm"] / secs["onnx"], 3),
                      "max_abs_diff": round(diff, 7)}))  # fmt: skip


def _saved(enc, scratch: str) -> str:
    enc.save(f"{scratch}/model")  # --max-length: export the encoder with that setting
    return f"{scratch}/model"


def shaped(parent: str, shape: str, folder: str) -> str:
    """A random-weight copy of `parent` at layers,hidden,kv_heads,intermediate: speed depends on the
    shape alone, so a pruning target can be timed before any pruning is done."""
    from transformers import AutoConfig, AutoModel, AutoTokenizer

    from irlm.models.resolve import resolve_model

    layers, hidden, kv, inter = (int(x) for x in shape.split(","))
    path = resolve_model(parent)
    cfg = AutoConfig.from_pretrained(path)
    group = cfg.num_attention_heads // cfg.num_key_value_heads
    cfg.head_dim = getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads
    cfg.num_hidden_layers, cfg.hidden_size, cfg.intermediate_size = layers, hidden, inter
    cfg.num_key_value_heads, cfg.num_attention_heads = kv, kv * group
    AutoModel.from_config(cfg).save_pretrained(folder)
    AutoTokenizer.from_pretrained(path).save_pretrained(folder)
    return folder


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    main()
