"""Commands over data and retrievers: `irlm data`, encode, index, search, eval and mine."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from irlm import options as opt
from irlm.cli.common import (
    DataOpt,
    DeviceOpt,
    ForceOpt,
    ModelOpt,
    app,
    check_encoder_flags,
    cuda_count,
    encoder_options,
    err,
    home,
    printable,
    refuse_unused,
    split_queries,
)
from irlm.errors import InputError
from irlm.utils import check_output

data_app = typer.Typer(no_args_is_help=True, help="Named datasets.")
app.add_typer(data_app, name="data")


@data_app.command("list")
def data_list() -> None:
    """Registered datasets and where each resolves."""
    from irlm.data.registry import DATASETS, resolve_dataset

    table = Table("name", "splits", "source", "found at")
    for info in DATASETS.values():
        try:
            where = str(resolve_dataset(info.name, download=False))
        except InputError:
            where = "-"
        table.add_row(info.name, ",".join(info.splits), "download" if info.url else "local only", where)
    Console(width=200).print(table)


@data_app.command("show")
def data_show(name: str) -> None:
    """Sizes, splits, URL and checksum of one dataset."""
    from irlm.data.registry import DATASETS, load_dataset

    info = DATASETS.get(name)
    ds = load_dataset(name)
    out = {"name": ds.name, "docs": len(ds.corpus), "queries": len(ds.queries),
           "splits": {s: {"queries": len(q), "judgements": sum(map(len, q.values()))} for s, q in ds.qrels.items()},
           "url": info.url if info else None, "md5": info.md5 if info else None,
           "description": info.description if info else ""}  # fmt: skip
    print(json.dumps(out, indent=2))


@app.command()
def encode(
    data: str = DataOpt,
    out: Path = typer.Option(..., "--out", callback=home, help="Folder for the embeddings (an exact dense index)."),
    model: str = ModelOpt,
    backend: str = typer.Option("exact", help="exact, flat or hnsw."),
    batch_size: int | None = typer.Option(None, help="Texts per forward pass."),
    max_length: int | None = typer.Option(None, help="Tokens per text."),
    pooling: str | None = typer.Option(None, help="last, mean, cls or token."),
    query_prefix: str | None = typer.Option(None, help="Instruction before each query."),
    passage_prefix: str | None = typer.Option(None, help="Text before each passage."),
    dtype: str | None = typer.Option(None, help="auto, bf16 or fp32."),
    device: str | None = DeviceOpt,
    force: bool = ForceOpt,
) -> None:
    """Embed a corpus and save it as a dense index folder (under torchrun: one shard per process)."""
    from irlm.data import load_dataset
    from irlm.index.sharded import encode_sharded
    from irlm.models import LLMEncoder
    from irlm.train.loop import init_distributed, world

    check_encoder_flags(backend, batch_size, dtype, device, pooling)
    opt.at_least(max_length, 1, "--max-length")
    check_output(out, folder=True, kind="index", force=force)
    init_distributed()
    if device is None and world()[1] > 1 and cuda_count():
        device = f"cuda:{world()[0] % cuda_count()}"  # one GPU per process
    opts = encoder_options(max_length=max_length, pooling=pooling, query_prefix=query_prefix,
                            passage_prefix=passage_prefix, dtype=dtype)  # fmt: skip
    encoder = LLMEncoder.from_pretrained(model, device=device, **opts)
    if encode_sharded(load_dataset(data).corpus, encoder, out, backend, batch_size) is not None:
        err.print(f"saved dense index to {out}")


@app.command()
def index(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", callback=home, help="Index folder to write."),
    data: str | None = typer.Option(None, "--data", help="Dataset to index (bm25, dense)."),
    retriever: str = typer.Option("bm25", help="bm25, dense, hybrid (bm25 + dense), or reasoning (--model: a "
                                  "reasoning model folder)."),  # fmt: skip
    model: str = ModelOpt,
    backend: str = typer.Option("exact", help="Dense backend: exact, flat, hnsw, int8, or binary (rescored)."),
    embeddings: Path | None = typer.Option(None, help="Re-index saved embeddings with --backend instead."),
    fusion: str | None = typer.Option(None, help="Hybrid fusion: rrf (default) or weighted."),
    weight: float | None = typer.Option(None, help="Weighted fusion: weight of the dense run, default 0.5 (a "
                                        "trained retriever's results.json: dense_weight of "
                                        "DATA-dev+bm25-weighted)."),  # fmt: skip
    device: str | None = DeviceOpt,
    force: bool = ForceOpt,
) -> None:
    """Build a BM25, dense, hybrid or reasoning index; or convert saved embeddings to a FAISS backend."""
    opt.one_of(retriever, opt.BUILT, "--retriever")
    check_encoder_flags(backend, None, None, device)
    refuse_unused(ctx, *_index_unused(retriever, embeddings))
    fusion, weight = opt.fusion(retriever, fusion, weight)
    check_output(out, folder=True, kind="index", force=force)
    if embeddings:
        from irlm.index import DenseIndex

        src = DenseIndex.load(embeddings)
        dst = DenseIndex(src.dim, backend, meta=src.meta)
        dst.add(src.ids, src.vectors)
        dst.save(out)
    else:
        if not data:
            raise InputError("give --data to index a dataset, or --embeddings to re-index saved vectors")
        from irlm.systems import build_retriever

        build_retriever(retriever, data, model, device, backend, fusion, weight).save(out)
    err.print(f"saved {retriever if not embeddings else backend} index to {out}")


@app.command()
def search(
    index: Path = typer.Option(..., "--index", help="Any saved system: `irlm index`/`encode` folders, model folders."),
    query: str | None = typer.Option(None, "--query", "-q", help="One query; prints the top k."),
    data: str | None = typer.Option(None, "--data", help="Search this dataset's split (model folders: its corpus)."),
    split: str = typer.Option("test", help="Split whose judged queries are searched."),
    k: int = typer.Option(10, help="Results per query."),
    out: Path | None = typer.Option(None, "--out", callback=home, help="TREC run file to write."),
    device: str | None = DeviceOpt,
) -> None:
    """Search any saved system with one query or a dataset's queries."""
    from irlm.systems import load_retriever

    opt.at_least(k, 1, "--k")
    opt.device(device)
    if query is None:
        if not data or not out:
            raise InputError("give --query, or --data and --out to write a run file")
        check_output(out, kind="trec")
    retriever = load_retriever(index, device, data)
    if query is not None:
        for rank, (doc, score) in enumerate(retriever.search({"q": query}, k)["q"].items(), start=1):
            print(f"{rank}\t{printable(doc)}\t{score:.4f}")
        return
    from irlm.eval import write_trec

    write_trec(retriever.search(split_queries(data, split), k), out)
    err.print(f"wrote {out}")


@app.command("eval")
def eval_cmd(
    ctx: typer.Context,
    data: str = DataOpt,
    split: str = typer.Option("test", help="Qrels split."),
    retriever: str = typer.Option("bm25", help="bm25, dense, hybrid (bm25 + dense) or reasoning."),
    model: str = ModelOpt,
    index: Path | None = typer.Option(None, "--index", help="Evaluate any saved system (index or model folder)."),
    run: Path | None = typer.Option(None, "--run", help="Evaluate an existing TREC run file instead."),
    fusion: str | None = typer.Option(None, help="Hybrid fusion: rrf (default) or weighted."),
    weight: float | None = typer.Option(None, help="Weighted fusion: weight of the dense run, default 0.5."),
    k: int = typer.Option(1000, help="Retrieval depth."),
    out_run: Path | None = typer.Option(None, "--out-run", callback=home,
                                        help="Also write the run as a TREC file."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON line of metrics as the last line."),
    dtype: str | None = typer.Option(None, help="Dense encoder precision: auto, bf16 or fp32."),
    device: str | None = DeviceOpt,
    limit: int = typer.Option(0, min=0, help="Score the split's first N queries only (file order; 0 = all)."),
    metrics: str | None = typer.Option(None, help="Comma-separated, e.g. hits@1,mrr@5 (default: the usual set)."),
) -> None:
    """Retrieve for a split's queries and score the run (nDCG@10, Recall@100, MRR@10, MAP, Hits@k)."""
    from irlm.data import load_dataset
    from irlm.eval import DEFAULT_METRICS, evaluate, read_trec, write_trec
    from irlm.eval.metrics import check_metrics

    refuse_unused(ctx, *_eval_unused(retriever, run, index))
    fusion, weight = _check_eval_flags(retriever, fusion, weight, k, dtype, device, out_run, run, index)
    ds = load_dataset(data)
    if split not in ds.qrels:
        raise InputError(f"dataset '{data}' has no split '{split}' (has: {', '.join(ds.qrels)})")
    chosen = [m.strip() for m in metrics.split(",")] if metrics else DEFAULT_METRICS
    check_metrics(chosen)
    queries, qrels = ds.first_queries(split, limit)
    if run:
        result = {q: docs for q, docs in read_trec(run).items() if q in queries}
    else:
        system = _system(retriever, data, model, device, index, fusion, weight, encoder_options(dtype=dtype))
        result = system.search(queries, k)
    if out_run:
        write_trec(result, out_run)
    metrics = evaluate(result, qrels, chosen)
    label = str(run or index or (model if retriever == "dense" else retriever))
    _report({"data": ds.name, "split": split, "system": label, **metrics}, as_json)


def _check_eval_flags(retriever, fusion, weight, k, dtype, device, out_run, run, index) -> tuple[str, float]:
    """The checked (fusion, weight); every flag fails here in one line, before any data is read."""
    opt.one_of(retriever, opt.BUILT, "--retriever")
    if index:
        opt.existing_dir(index, "--index")
    fusion, weight = opt.fusion(retriever, fusion, weight)
    opt.at_least(k, 1, "--k")
    check_encoder_flags("exact", None, dtype, device)
    if run:
        opt.existing_file(run, "--run")
    if out_run:
        if run and Path(run).resolve() == Path(out_run).resolve():
            raise InputError(f"--out-run {out_run} is the --run being evaluated; give another file path")
        check_output(out_run, "--out-run", kind="trec")
    return fusion, weight


def _index_unused(retriever: str, embeddings) -> tuple[tuple[str, ...], str]:
    """The flags `irlm index` would ignore in this mode, and why."""
    if embeddings:
        return ("data", "retriever", "model", "fusion", "weight", "device"), \
            "does not apply with --embeddings: the saved vectors are re-indexed as they are"
    if retriever == "bm25":
        return ("model", "backend", "device"), "does not apply to --retriever bm25, which has no encoder or vectors"
    return (), ""


def _eval_unused(retriever: str, run, index) -> tuple[tuple[str, ...], str]:
    """The flags `irlm eval` would ignore in this mode, and why."""
    if run:
        return ("retriever", "model", "index", "fusion", "weight", "k", "dtype", "device"), \
            "does not apply with --run: the run file is scored as it is"
    if index:
        return ("retriever", "model", "fusion", "weight"), "does not apply with --index: the saved system is " \
            "evaluated as it was saved (--dtype and --device do apply)"
    if retriever == "bm25":
        return ("model", "dtype", "device"), "does not apply to --retriever bm25, which has no encoder"
    if retriever == "reasoning":
        return ("dtype",), "does not apply to --retriever reasoning: its model folder sets the precision"
    return (), ""


def _system(kind, data, model, device, index, fusion, weight, enc_opts):
    from irlm.systems import build_retriever, load_retriever

    if index:
        return load_retriever(index, device, data, **enc_opts)
    return build_retriever(kind, data, model, device, fusion=fusion, weight=weight, **enc_opts)


def _report(row: dict, as_json: bool) -> None:
    if as_json:
        print(json.dumps(row))
        return
    table = Table(*row.keys())
    table.add_row(*(f"{v:.4f}" if isinstance(v, float) else str(v) for v in row.values()))
    Console().print(table)


@app.command()
def mine(
    data: str = DataOpt,
    out: Path = typer.Option(..., "--out", callback=home, help="Training examples JSONL to write."),
    split: str = typer.Option("train", help="Qrels split whose queries become examples."),
    retriever: str = typer.Option("bm25", help="Who mines negatives: bm25, dense or reasoning."),
    model: str = ModelOpt,
    negatives: int = typer.Option(8, help="Hard negatives per query."),
    depth: int = typer.Option(100, help="Ranking depth searched for negatives."),
    margin: float = typer.Option(0.95, help="Drop candidates scoring >= margin x the positive (false negatives)."),
    seed: int = typer.Option(0),
    device: str | None = DeviceOpt,
) -> None:
    """Build (query, positives, negatives) examples from qrels, with mined hard negatives."""
    from irlm.data import load_dataset
    from irlm.data.mining import mine_examples
    from irlm.data.training import write_examples

    opt.one_of(retriever, opt.RETRIEVERS, "--retriever")
    opt.at_least(negatives, 0, "--negatives")
    opt.at_least(depth, 1, "--depth")
    opt.device(device)
    check_output(out, kind="examples")
    ds = load_dataset(data)
    if split not in ds.qrels:
        raise InputError(f"dataset '{data}' has no split '{split}' (has: {', '.join(ds.qrels)})")
    queries = ds.split_queries(split)
    from irlm.systems import build_retriever

    run = build_retriever(retriever, data, model, device).search(queries, depth)
    examples = mine_examples(queries, ds.qrels[split], ds.corpus, run, negatives, margin, seed=seed)
    for ex in examples:
        ex.meta.update({"source": ds.name, "miner": retriever if retriever == "bm25" else model})
    write_examples(out, examples)
    err.print(f"wrote {len(examples)} examples to {out}")
