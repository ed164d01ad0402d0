"""The `irlm` command: each subcommand only wires arguments to library calls."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import typer
from rich.console import Console
from rich.logging import RichHandler
from rich.table import Table

from irlm import options as opt
from irlm.errors import InputError
from irlm.utils import check_output

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Decoder-only LLMs as retrieval systems.")
data_app = typer.Typer(no_args_is_help=True, help="Named datasets.")
app.add_typer(data_app, name="data")
err = Console(stderr=True)

DataOpt = typer.Option(..., "--data", help="Dataset name (see `irlm data list`) or BEIR folder.")
ModelOpt = typer.Option("minilm-l6", "--model", help="Bundled name (minilm-l6, smollm2-135m), hub id or folder.")
DeviceOpt = typer.Option(None, "--device", help="cuda, cpu, cuda:1 ...; default: CUDA when present.")
ForceOpt = typer.Option(False, "--force", help="Replace an irlm folder of another kind at the output (never a run "
                        "directory, nor a folder irlm did not make).")  # fmt: skip


@app.callback()
def main(verbose: bool = typer.Option(False, "--verbose", "-v", help="Debug logging.")) -> None:
    logging.basicConfig(level=logging.DEBUG if verbose else logging.INFO, format="%(message)s",
                        handlers=[RichHandler(console=err, show_path=False)])  # fmt: skip
    for noisy in ("httpx", "urllib3", "numba", "faiss"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def _home(path: Path | None) -> Path | None:
    """An output path with `~` expanded as the shell would: a quoted "~/runs/x" must not make a folder named ~."""
    return path.expanduser() if path is not None else None


def _encoder_options(**kw) -> dict:
    return {k: v for k, v in kw.items() if v is not None}


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
    out: Path = typer.Option(..., "--out", callback=_home, help="Folder for the embeddings (an exact dense index)."),
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

    _check_encoder_flags(backend, batch_size, dtype, device, pooling)
    opt.at_least(max_length, 1, "--max-length")
    check_output(out, folder=True, kind="index", force=force)
    init_distributed()
    if device is None and world()[1] > 1 and _cuda():
        device = f"cuda:{world()[0] % _cuda()}"  # one GPU per process
    opts = _encoder_options(max_length=max_length, pooling=pooling, query_prefix=query_prefix,
                            passage_prefix=passage_prefix, dtype=dtype)  # fmt: skip
    encoder = LLMEncoder.from_pretrained(model, device=device, **opts)
    if encode_sharded(load_dataset(data).corpus, encoder, out, backend, batch_size) is not None:
        err.print(f"saved dense index to {out}")


def _check_encoder_flags(backend: str, batch_size: int | None, dtype: str | None, device: str | None,
                         pooling: str | None = None) -> None:  # fmt: skip
    opt.one_of(backend, opt.BACKENDS, "--backend")
    opt.at_least(batch_size, 1, "--batch-size")
    opt.one_of(dtype, opt.DTYPES, "--dtype")
    opt.one_of(pooling, opt.POOLINGS, "--pooling")
    opt.device(device)


def _cuda() -> int:
    import torch

    return torch.cuda.device_count()


@app.command()
def index(
    ctx: typer.Context,
    out: Path = typer.Option(..., "--out", callback=_home, help="Index folder to write."),
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
    _check_encoder_flags(backend, None, None, device)
    _refuse_unused(ctx, *_index_unused(retriever, embeddings))
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
    out: Path | None = typer.Option(None, "--out", callback=_home, help="TREC run file to write."),
    device: str | None = DeviceOpt,
) -> None:
    """Search any saved system with one query or a dataset's queries."""
    from irlm.systems import load_retriever

    opt.at_least(k, 1, "--k")
    opt.device(device)
    if query is None:
        if not data or not out:
            raise InputError("give --query, or --data and --out to write a run file")
        check_output(out)
    retriever = load_retriever(index, device, data)
    if query is not None:
        for rank, (doc, score) in enumerate(retriever.search({"q": query}, k)["q"].items(), start=1):
            print(f"{rank}\t{printable(doc)}\t{score:.4f}")
        return
    from irlm.eval import write_trec

    write_trec(retriever.search(_split_queries(data, split), k), out)
    err.print(f"wrote {out}")


def printable(text: str) -> str:
    """`text` for a terminal: control characters (an escape sequence in an id from an older index) and lone
    surrogates shown as Python escapes, not sent as they are."""
    return text if text.isprintable() else repr(text)[1:-1]


def _split_queries(data: str, split: str):
    from irlm.data import load_dataset

    ds = load_dataset(data)
    if split not in ds.qrels:
        raise InputError(f"dataset '{data}' has no split '{split}' (has: {', '.join(ds.qrels)})")
    return ds.split_queries(split)


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
    out_run: Path | None = typer.Option(None, "--out-run", callback=_home,
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

    _refuse_unused(ctx, *_eval_unused(retriever, run, index))
    fusion, weight = _check_eval_flags(retriever, fusion, weight, k, dtype, device, out_run, run, index)
    ds = load_dataset(data)
    if split not in ds.qrels:
        raise InputError(f"dataset '{data}' has no split '{split}' (has: {', '.join(ds.qrels)})")
    chosen = [m.strip() for m in metrics.split(",")] if metrics else DEFAULT_METRICS
    check_metrics(chosen)
    queries = dict(list(ds.split_queries(split).items())[: limit or None])
    if run:
        result = {q: docs for q, docs in read_trec(run).items() if q in queries}
    else:
        system = _system(retriever, data, model, device, index, fusion, weight, _encoder_options(dtype=dtype))
        result = system.search(queries, k)
    if out_run:
        write_trec(result, out_run)
    qrels = {q: judged for q, judged in ds.qrels[split].items() if q in queries} if limit else ds.qrels[split]
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
    _check_encoder_flags("exact", None, dtype, device)
    if run:
        opt.existing_file(run, "--run")
    if out_run:
        check_output(out_run, "--out-run")
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


def _refuse_unused(ctx: typer.Context, names: tuple[str, ...], why: str) -> None:
    """Refuse a flag given on the command line that this mode would ignore: a silently ignored --dtype or
    --backend reports numbers of another system than the command line names."""
    for param in ctx.command.params:
        source = ctx.get_parameter_source(param.name)  # by name: typer's click and click's own are two enums
        if param.name in names and source is not None and source.name != "DEFAULT":
            raise InputError(f"{param.opts[0]} {why}")


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
def compare(
    runs: list[Path] = typer.Argument(..., help="TREC run files or saved systems; the first is the baseline."),
    data: str = typer.Option(..., "--data", help="Dataset whose qrels score the runs (and saved systems search)."),
    split: str = typer.Option("test", help="Qrels split."),
    metrics: str | None = typer.Option(None, help="Comma-separated metrics besides nDCG@10, e.g. recall@100,mrr@10."),
    k: int = typer.Option(1000, help="Retrieval depth of saved systems."),
    permutations: int = typer.Option(10_000, help="Sign patterns of the randomization test (and bootstrap samples)."),
    seed: int = typer.Option(42, help="Seed of the randomization test and the bootstrap."),
    as_json: bool = typer.Option(False, "--json", help="Print one JSON line instead of the table."),
    device: str | None = DeviceOpt,
) -> None:
    """Compare runs with the first, query by query: mean, difference with 95 % bootstrap CI, paired
    randomization and t-test p-values (Holm-corrected over the systems), wins/ties/losses."""
    from irlm.data import load_dataset
    from irlm.eval.compare import compare_runs
    from irlm.eval.metrics import check_metrics

    listed = [m.strip() for m in (metrics or "").split(",") if m.strip()]
    chosen = check_metrics(list(dict.fromkeys(["ndcg@10", *listed])))
    opt.at_least(k, 1, "--k")
    opt.at_least(permutations, 100, "--permutations")
    opt.device(device)
    if len(runs) < 2 or len(set(runs)) < len(runs):
        raise InputError("give at least two different runs: the baseline first, then the systems to compare with it")
    for r in runs:
        if not r.is_dir():
            opt.existing_file(r, "run")
    ds = load_dataset(data)
    if split not in ds.qrels:
        raise InputError(f"dataset '{data}' has no split '{split}' (has: {', '.join(ds.qrels)})")
    queries = ds.split_queries(split)
    loaded = {str(r): _load_run(r, queries, k, device, data) for r in runs}
    rows = compare_runs(loaded, ds.qrels[split], chosen, permutations, seed)
    if as_json:
        print(json.dumps({"data": data, "split": split, "baseline": str(runs[0]), "rows": rows}))
        return
    Console(width=200).print(_compare_table(rows, str(runs[0])))


def _load_run(path: Path, queries: dict, k: int, device: str | None, data: str):
    from irlm.eval import read_trec
    from irlm.systems import load_retriever

    if path.is_dir():
        return load_retriever(path, device, data).search(queries, k)
    return {q: docs for q, docs in read_trec(path).items() if q in queries}


def _compare_table(rows: list[dict], baseline: str) -> Table:
    from irlm.eval.compare import format_p

    table = Table("system", "metric", "mean", "diff", "95% CI", "p rand. (Holm)", "p t-test (Holm)", "W/T/L",
                  caption=f"against {baseline} on {rows[0]['queries']} queries; * p < 0.05 (randomization, Holm)")
    for r in rows:
        if "diff" not in r:
            table.add_row(r["system"], r["metric"], f"{r['mean']:.4f}", "baseline", "", "", "", "")
            continue
        mark = " *" if r["significant"] else ""
        table.add_row(r["system"], r["metric"], f"{r['mean']:.4f}", f"{r['diff']:+.4f}",
                      f"[{r['ci'][0]:+.4f}, {r['ci'][1]:+.4f}]", f"{format_p(r['p_randomization_holm'])}{mark}",
                      format_p(r["p_ttest_holm"]), f"{r['wins']}/{r['ties']}/{r['losses']}")  # fmt: skip
    return table


@app.command()
def fuse(
    runs: list[Path] = typer.Argument(..., help="TREC run files."),
    out: Path = typer.Option(..., "--out", callback=_home, help="Fused TREC run file."),
    method: str = typer.Option("rrf", help="rrf or weighted."),
    weights: str | None = typer.Option(None, help="Comma-separated weights for weighted fusion."),
) -> None:
    """Fuse TREC runs by reciprocal rank or weighted normalised scores."""
    from irlm.eval import read_trec, write_trec
    from irlm.index import rrf, weighted

    opt.one_of(method, opt.FUSIONS, "--method")
    w = opt.weights(weights, len(runs)) if weights else [1 / len(runs)] * len(runs)
    for r in runs:
        opt.existing_file(r, "run file")
    check_output(out)
    loaded = [read_trec(r) for r in runs]
    fused = rrf(loaded) if method == "rrf" else weighted(loaded, w)
    write_trec(fused, out, tag=f"fused-{method}")


@app.command("export")
def export_cmd(
    model_dir: str = typer.Argument(..., help="Encoder folder saved by irlm (or any model name irlm loads)."),
    fmt: str = typer.Option("sentence-transformers", "--format",
                            help="sentence-transformers, or onnx (the same folder plus onnx/model.onnx)."),
    out: Path = typer.Option(..., "--out", callback=_home,
                             help="A new or empty folder, or an earlier export, to write."),
    force: bool = ForceOpt,
) -> None:
    """Export an encoder that SentenceTransformer(DIR) or onnxruntime loads, encoding to irlm's vectors."""
    from irlm.models.export import export_encoder

    err.print(f"exported {fmt} to {export_encoder(model_dir, out, fmt, force)}")


config_app = typer.Typer(no_args_is_help=True, help="The settings of each method and stage.")
app.add_typer(config_app, name="config")


@config_app.command("list")
def config_list() -> None:
    """Names whose settings `irlm config show NAME` describes."""
    from irlm.configs import NAMES

    print("\n".join(NAMES))


@config_app.command("show")
def config_show(
    name: str = typer.Argument(..., help="A method or stage: see `irlm config list`."),
    as_json: bool = typer.Option(False, "--json", help="One JSON object per setting."),
) -> None:
    """Every setting of NAME: type, default and why (a recipe YAML or `--set key=value` fills them)."""
    from irlm.configs import config_class, describe

    rows = describe(config_class(name))
    if as_json:
        print("\n".join(json.dumps(r, default=str) for r in rows))
        return
    table = Table("setting", "type", "default", "help")
    for r in rows:
        table.add_row(r["name"], r["type"], repr(r["default"]), r["help"])
    Console(width=160).print(table)


TRAIN_HELP = "Train retrievers (one shared loop, many methods); `irlm config show METHOD` lists every setting."
train_app = typer.Typer(no_args_is_help=True, help=TRAIN_HELP)
app.add_typer(train_app, name="train")
SetOpt = typer.Option(None, "--set", help="Override a config field: --set stage2_steps=10 (repeatable).")


def _output_dir(cfg, force: bool):
    """`cfg`, its output_dir checked before any model loads: new, empty, or an earlier training output (with
    --force also an irlm folder of another kind, which is then replaced)."""
    check_output(cfg.output_dir, "output_dir", folder=True, kind="model", force=force)
    return cfg


@train_app.command("anchor")
def train_anchor(
    config: Path | None = typer.Option(None, "--config", help="Recipe YAML (see recipes/)."),
    overrides: list[str] | None = SetOpt,
    force: bool = ForceOpt,
) -> None:
    """Anchor embeddings: Stage I reconstruction, then Stage II InfoNCE; stage1_steps=0 is the baseline."""
    from irlm.config_files import load_config
    from irlm.methods.anchor import AnchorConfig, train

    train(_output_dir(load_config(AnchorConfig, config, overrides), force))


@train_app.command("drama")
def train_drama(
    config: Path | None = typer.Option(None, "--config", help="Recipe YAML (see recipes/)."),
    overrides: list[str] | None = SetOpt,
    force: bool = ForceOpt,
) -> None:
    """A retriever trained with InfoNCE on the original pairs plus `augment_files` (from `irlm augment`)."""
    from irlm.config_files import load_config
    from irlm.methods.drama.config import RetrieverConfig
    from irlm.methods.drama.train import train

    train(_output_dir(load_config(RetrieverConfig, config, overrides), force))


@train_app.command("reasoning")
def train_reasoning(
    stage: str | None = typer.Option(None, "--stage", help="data | coldstart | grpo [default: the config's]."),
    config: Path | None = typer.Option(None, "--config", help="Recipe YAML (see recipes/)."),
    overrides: list[str] | None = SetOpt,
    force: bool = ForceOpt,
) -> None:
    """Think-then-embed (LREM / Search-R3): teacher reasoning data, cold start, then GRPO (preset lrem|searchr3)."""
    from irlm.config_files import load_config
    from irlm.methods.reasoning.config import ReasoningConfig
    from irlm.methods.reasoning.train import train

    flags = [f"stage={json.dumps(stage)}"] if stage else []
    cfg = load_config(ReasoningConfig, config, flags + list(overrides or []))
    train(cfg if cfg.stage == "data" else _output_dir(cfg, force))  # the data stage writes reasoning_file only


@app.command()
def augment(
    strategy: str = typer.Option(..., "--strategy", help="crop | qgen | rerank | triplet (DRAMA, METHODS.md §2)."),
    data: str = DataOpt,
    out: Path = typer.Option(..., "--out", callback=_home, help="Training JSONL; appended to, so a rerun resumes."),
    teacher: str | None = typer.Option(None, help="Model name/folder, or http://host:port/v1[#model] "
                                                  "[default: smollm2-135m]."),
    retriever: str | None = typer.Option(None, help="bm25, dense:<model> or an index folder [default: bm25]."),
    n: int | None = typer.Option(None, help="Documents (queries for rerank) to process [default: 500]."),
    config: Path | None = typer.Option(None, "--config", help="YAML of AugmentConfig fields; flags override it."),
    overrides: list[str] | None = SetOpt,
    device: str | None = DeviceOpt,
) -> None:
    """Make (query, positives, hard negatives) examples with an LLM teacher; counts invalid generations."""
    from irlm.config_files import load_config
    from irlm.methods.drama.augment import run_augment
    from irlm.methods.drama.config import AugmentConfig

    opt.device(device)
    opt.at_least(n, 1, "--n")
    check_output(out)
    given = {"strategy": strategy, "data": data, "out": str(out), "teacher": teacher, "retriever": retriever, "n": n}
    flags = [f"{k}={json.dumps(v)}" for k, v in given.items() if v is not None]  # JSON: YAML-safe quoting
    cfg = load_config(AugmentConfig, config, flags + list(overrides or []))
    cfg.device = device or cfg.device
    stats = run_augment(cfg)
    rate = stats["this_run"].get("completion_tokens_per_s")
    err.print(f"{stats['examples']} examples in {out}, {stats['skipped']} skipped, "
              f"{stats['invalid_generations']} invalid generations" + (f", {rate} tokens/s" if rate else ""))
    print(json.dumps({k: v for k, v in stats.items() if k != "config"}))


@app.command()
def prune(
    config: Path | None = typer.Option(None, "--config", help="YAML of PruneConfig fields (see recipes/)."),
    overrides: list[str] | None = SetOpt,
    force: bool = ForceOpt,
) -> None:
    """Structured L0 pruning of a Llama-family LLM to a target shape; writes a smaller transformers folder."""
    from irlm.config_files import load_config
    from irlm.methods.drama.config import PruneConfig
    from irlm.methods.drama.pretrain import prune as run_prune

    run_prune(_output_dir(load_config(PruneConfig, config, overrides), force))


@app.command()
def pretrain(
    config: Path | None = typer.Option(None, "--config", help="YAML of PretrainConfig fields."),
    overrides: list[str] | None = SetOpt,
    force: bool = ForceOpt,
) -> None:
    """Continued next-token pretraining (recovery after pruning) on dataset corpora or text folders."""
    from irlm.config_files import load_config
    from irlm.methods.drama.config import PretrainConfig
    from irlm.methods.drama.pretrain import pretrain as run_pretrain

    run_pretrain(_output_dir(load_config(PretrainConfig, config, overrides), force))


@app.command("serve-llm")
def serve_llm_cmd(
    model: str = typer.Option("smollm2-135m", "--model", help="Bundled name, hub id or folder to serve."),
    host: str = typer.Option("127.0.0.1", help="Bind address; anything but loopback should set an API key."),
    port: int = typer.Option(8000),
    api_key_env: str = typer.Option("IRLM_API_KEY", help="Environment variable holding the key clients must send."),
    batch_size: int = typer.Option(8, help="Concurrent requests micro-batched into one generate call."),
    max_tokens: int = typer.Option(1024, help="The most new tokens one request may ask for (bounds others' wait)."),
    dtype: str = typer.Option("auto", help="auto, bf16, fp16 or fp32."),
    device: str | None = DeviceOpt,
) -> None:
    """Serve a model behind the OpenAI completions and chat API (for `--teacher http://host:port/v1`)."""
    from irlm.models.generator.server import serve_llm

    _check_server_flags(port, batch_size, device)
    opt.at_least(max_tokens, 1, "--max-tokens")
    opt.one_of(dtype, opt.DTYPES, "--dtype")
    serve_llm(model=model, host=host, port=port, api_key_env=api_key_env, batch_size=batch_size, device=device,
              dtype=dtype, max_tokens=max_tokens)  # fmt: skip


@app.command("serve")
def serve_cmd(
    index: str = typer.Option(..., "--index", help="An index folder (irlm index) or a Self-Retrieval model folder."),
    host: str = typer.Option("127.0.0.1", help="Bind address; anything but loopback should set an API key."),
    port: int = typer.Option(8001),
    api_key_env: str = typer.Option("IRLM_API_KEY", help="Environment variable holding the key clients must send."),
    batch_size: int = typer.Option(16, help="Concurrent requests micro-batched into one search or encode call."),
    data: str | None = typer.Option(None, help="Self-Retrieval only: the corpus the model memorised."),
    device: str | None = DeviceOpt,
    model_name: str | None = typer.Option(None, "--model-name",
                                          help="The model id /v1/models lists and /v1/embeddings expects "
                                               "(default: the encoder's model name or path)."),  # fmt: skip
    writable: bool = typer.Option(False, "--writable",
                                  help="Accept POST /documents and DELETE /documents/{id} (BM25, dense, hybrid), "
                                       "each saved to the index folder before it is answered."),  # fmt: skip
) -> None:
    """Serve a retriever: POST /search, POST /encode, POST /v1/embeddings, GET /v1/models, GET /health, GET /metrics;
    with --writable also POST /documents and DELETE /documents/{id}."""
    from irlm.serve import serve

    _check_server_flags(port, batch_size, device)
    serve(index, host=host, port=port, api_key_env=api_key_env, batch_size=batch_size, device=device, data=data,
          model_name=model_name, writable=writable)  # fmt: skip


def _check_server_flags(port: int, batch_size: int, device: str | None) -> None:
    opt.port(port)
    opt.at_least(batch_size, 1, "--batch-size")
    opt.device(device)


sr_app = typer.Typer(no_args_is_help=True,
                     help="Self-Retrieval: one LLM memorises the corpus, retrieves, judges and answers.")
app.add_typer(sr_app, name="selfretrieval")


@sr_app.command("train")
def sr_train(
    config: Path | None = typer.Option(None, "--config", help="Recipe YAML (see recipes/)."),
    overrides: list[str] | None = SetOpt,
    force: bool = ForceOpt,
) -> None:
    """Indexing + retrieval + self-assessment training, then Hits@1/5, MRR@5 and answer EM on eval_split."""
    from irlm.config_files import load_config
    from irlm.methods.selfretrieval.config import SelfRetrievalConfig
    from irlm.methods.selfretrieval.train import train

    train(_output_dir(load_config(SelfRetrievalConfig, config, overrides), force))


def _self_retriever(model: Path, data: str | None, device: str | None):
    from irlm.systems import load_retriever, system_kind

    try:
        kind = system_kind(model)
    except InputError:
        kind = None
    if kind != "selfretrieval":
        raise InputError(f"{model} is not a Self-Retrieval model folder (see `irlm selfretrieval train`)")
    retriever = load_retriever(model, device, data)
    return retriever, data or retriever.cfg.data


@sr_app.command("search")
def sr_search(
    model: Path = typer.Option(..., "--model", help="output_dir/final of `irlm selfretrieval train`."),
    query: str | None = typer.Option(None, "--query", "-q", help="One query; prints the ranked passages."),
    data: str | None = typer.Option(None, "--data", help="Corpus [default: the one it was trained on]."),
    split: str = typer.Option("test", help="With --out: the split whose judged queries are searched."),
    k: int = typer.Option(10, help="Results per query."),
    out: Path | None = typer.Option(None, "--out", callback=_home,
                                    help="TREC run file to write for all queries of --split."),
    device: str | None = DeviceOpt,
) -> None:
    """Trie-constrained retrieval with self-assessment scores."""
    opt.at_least(k, 1, "--k")
    if query is None and out:
        check_output(out)
    retriever, data = _self_retriever(model, data, device)
    if query is not None:
        for rank, c in enumerate(retriever.candidates(query)[:k], start=1):
            print(f"{rank}\t{printable(c.doc_id)}\t{c.score:.4f}\t{retriever.tokenizer.decode(c.entry)[:80]!r}")
        return
    if not out:
        raise InputError("give --query, or --out to write a run file")
    from irlm.eval import write_trec

    write_trec(retriever.search(_split_queries(data, split), k), out)
    err.print(f"wrote {out}")


@sr_app.command("answer")
def sr_answer(
    model: Path = typer.Option(..., "--model", help="output_dir/final of `irlm selfretrieval train`."),
    query: str = typer.Option(..., "--query", "-q"),
    data: str | None = typer.Option(None, "--data", help="Corpus [default: the one it was trained on]."),
    device: str | None = DeviceOpt,
) -> None:
    """Retrieve, judge, then answer from the top passage; prints JSON."""
    retriever, _ = _self_retriever(model, data, device)
    cands = retriever.candidates(query)
    if not cands:
        raise InputError("no passage was retrieved")
    top = cands[0]
    print(json.dumps({"query": query, "answer": retriever.answer(query, top), "doc_id": top.doc_id,
                      "score": round(top.score, 4), "reject": top.reject}))  # fmt: skip


@app.command()
def mine(
    data: str = DataOpt,
    out: Path = typer.Option(..., "--out", callback=_home, help="Training examples JSONL to write."),
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
    check_output(out)
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


@app.command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="Pipeline recipe YAML with named stages (see recipes/quickstart.yaml)."),
    force: bool = typer.Option(False, "--force", help="Ignore finished stages and run everything again (and "
                               "replace an irlm folder of another kind at run_dir or a stage's folder)."),
    check: bool = typer.Option(False, "--check", help="Exit with status 1 when a number differs from the recipe's "
                               "`expected:` by more than its tolerance (the lines are printed either way)."),
) -> None:
    """Run a recipe's stages into one run directory; finished, unchanged stages are skipped. Each number of
    the recipe's `expected:` is then compared with what was measured, one PASS/FAIL line each."""
    from irlm.eval.expected import check_expected, check_line
    from irlm.eval.report import headline, metric_rows
    from irlm.pipeline import expectations, run_pipeline

    expected = expectations(recipe)  # read first: a malformed block fails before any stage runs
    state = run_pipeline(recipe, force=force)
    table = Table("system", "data", "metric", "value")
    for row in metric_rows(state):
        if headline(row):
            name, value = headline(row)
            table.add_row(str(row["system"]), row["data"], name, f"{value:.4f}")
    err.print(table)
    for rec in state.values():
        if rec["kind"] == "report":
            print(rec["result"]["report"])
    rows = check_expected(expected, state)
    for row in rows:
        err.print(check_line(row), markup=False, highlight=False)
    if check and not all(row["ok"] for row in rows):
        raise typer.Exit(1)


@app.command("report")
def report_cmd(
    run_dir: Path = typer.Argument(..., help="A run directory (`irlm run`) or a training output."),
    baseline: str | None = typer.Option(None, help="System the others are tested against (default: the recipe's "
                                        "report `baseline`, else bm25 where there is one)."),  # fmt: skip
) -> None:
    """Write report.md, report.html, report.json, per_query.csv and PNG charts; prints report.md's path."""
    from irlm.eval.report import recorded_baseline, write_report

    print(write_report(run_dir, baseline=baseline or recorded_baseline(run_dir)))


def run() -> None:
    """Entry point: bad input ends with one line on stderr and exit code 2, not a traceback.

    Usage errors are click's own (standalone mode, exit 2); InputError from the library is ours.
    """
    try:
        app()
    except InputError as e:
        _fail(e, 2)
    except RuntimeError as e:  # a teacher endpoint that stays down, or a spent budget
        from irlm.models.generator import BudgetExceeded  # imported only now: httpx costs every start 0.2 s
        from irlm.models.generator.http import EndpointError

        if not isinstance(e, (EndpointError, BudgetExceeded)):
            raise
        _fail(e, 1)
    except OSError as e:  # the file system said no (permissions, a full disk): its message names the path
        _fail(e, 1)


def _fail(e: Exception, code: int) -> None:
    from rich.markup import escape

    # escaped: a path or value such as "[1, 2]" must print as given, not be read as rich markup
    err.print(f"[red]error:[/red] {escape(str(e))}", highlight=False, soft_wrap=True)
    sys.exit(code)


if __name__ == "__main__":
    run()
