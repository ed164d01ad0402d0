"""Training commands: `irlm train METHOD` (one per configs.TRAINERS entry), augment, prune, pretrain,
`irlm selfretrieval` and `irlm config`."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from irlm import options as opt
from irlm.cli import common
from irlm.cli.common import DataOpt, DeviceOpt, ForceOpt, SetOpt, app, checked_output, err, home
from irlm.configs import TRAINERS
from irlm.errors import InputError
from irlm.utils import check_output

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


RUNS = {  # settings name (configs.config_class) -> the function its command runs
    **{method: f"{module}:train" for method, (_, _, module) in TRAINERS.items()},
    "prune": "irlm.methods.drama.pretrain:prune",
    "pretrain": "irlm.methods.drama.pretrain:pretrain",
}
HELP = {  # the `irlm train METHOD` commands are made from configs.TRAINERS below, prune and pretrain beside them
    "anchor": "Anchor embeddings: Stage I reconstruction, then Stage II InfoNCE; stage1_steps=0 is the baseline.",
    "drama": "A retriever trained with InfoNCE on the original pairs plus `augment_files` (from `irlm augment`).",
    "reasoning": "Think-then-embed (LREM / Search-R3): teacher reasoning data, cold start, then GRPO (preset "
                 "lrem|searchr3).",
    "selfretrieval": "Indexing + retrieval + self-assessment training, then Hits@1/5, MRR@5 and answer EM on "
                     "eval_split.",
    "prune": "Structured L0 pruning of a Llama-family LLM to a target shape; writes a smaller transformers folder.",
    "pretrain": "Continued next-token pretraining (recovery after pruning) on dataset corpora or text folders.",
}  # fmt: skip
STAGED = {"reasoning"}  # methods trained one stage at a time: --stage sets the config's `stage`
ConfigOpt = typer.Option(None, "--config", help="Recipe YAML (see recipes/).")
StageOpt = typer.Option(None, "--stage", help="data | coldstart | grpo [default: the config's].")


def run_settings(name: str, config: Path | None, overrides: list[str], force: bool) -> None:
    """Fill NAME's config from the recipe YAML and the overrides, check its output_dir, and run it."""
    import importlib

    from irlm.config_files import load_config
    from irlm.configs import config_class

    cfg = load_config(config_class(name), config, overrides)
    module, function = RUNS[name].split(":")
    run = getattr(importlib.import_module(module), function)
    if name in STAGED and cfg.stage == "data":  # the data stage writes reasoning_file only
        run(cfg)
    else:
        run(checked_output(cfg, force))


def settings_command(name: str):
    """A command that runs NAME's settings: --config, --set and --force (and --stage for a staged method)."""

    def command(config: Path | None = ConfigOpt, overrides: list[str] | None = SetOpt, force: bool = ForceOpt):
        run_settings(name, config, list(overrides or []), force)

    def staged(stage: str | None = StageOpt, config: Path | None = ConfigOpt, overrides: list[str] | None = SetOpt,
               force: bool = ForceOpt):  # fmt: skip
        flags = [f"stage={json.dumps(stage)}"] if stage else []
        run_settings(name, config, flags + list(overrides or []), force)

    return staged if name in STAGED else command


for _name in TRAINERS:
    train_app.command(_name, help=HELP[_name])(settings_command(_name))


@app.command()
def augment(
    strategy: str = typer.Option(..., "--strategy", help="crop | qgen | rerank | triplet (DRAMA, METHODS.md §2)."),
    data: str = DataOpt,
    out: Path = typer.Option(..., "--out", callback=home, help="Training JSONL; appended to, so a rerun resumes."),
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
    check_output(out, kind="examples")
    given = {"strategy": strategy, "data": data, "out": str(out), "teacher": teacher, "retriever": retriever, "n": n}
    flags = [f"{k}={json.dumps(v)}" for k, v in given.items() if v is not None]  # JSON: YAML-safe quoting
    cfg = load_config(AugmentConfig, config, flags + list(overrides or []))
    cfg.device = device or cfg.device
    stats = run_augment(cfg)
    rate = stats["this_run"].get("completion_tokens_per_s")
    err.print(f"{stats['examples']} examples in {out}, {stats['skipped']} skipped, "
              f"{stats['invalid_generations']} invalid generations" + (f", {rate} tokens/s" if rate else ""))
    print(json.dumps({k: v for k, v in stats.items() if k != "config"}))


for _name in ("prune", "pretrain"):
    app.command(_name, help=HELP[_name])(settings_command(_name))


sr_app = typer.Typer(no_args_is_help=True,
                     help="Self-Retrieval: one LLM memorises the corpus, retrieves, judges and answers.")
app.add_typer(sr_app, name="selfretrieval")


sr_app.command("train", help=HELP["selfretrieval"])(settings_command("selfretrieval"))


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
    out: Path | None = typer.Option(None, "--out", callback=home,
                                    help="TREC run file to write for all queries of --split."),
    device: str | None = DeviceOpt,
) -> None:
    """Trie-constrained retrieval with self-assessment scores."""
    opt.at_least(k, 1, "--k")
    if query is None and out:
        check_output(out, kind="trec")
    retriever, data = _self_retriever(model, data, device)
    if query is not None:
        for rank, c in enumerate(retriever.candidates(query)[:k], start=1):
            print(f"{rank}\t{common.printable(c.doc_id)}\t{c.score:.4f}\t{retriever.tokenizer.decode(c.entry)[:80]!r}")
        return
    if not out:
        raise InputError("give --query, or --out to write a run file")
    from irlm.eval import write_trec

    write_trec(retriever.search(common.split_queries(data, split), k), out)
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


@sr_app.command("curve")
def sr_curve(
    model: Path = typer.Option(..., "--model", help="output_dir/final of a `irlm selfretrieval train` run that kept "
                                                    "its weights (weights_every) and held out dev_queries."),
    limit: int = typer.Option(0, min=0, help="Score the first N dev questions only (0 = all)."),
    device: str | None = DeviceOpt,
) -> None:
    """Dev Hits@1, Hits@5 and MRR@5 of every ranking at each kept step: the memorisation curve. One JSON
    line per step."""
    from irlm.methods.selfretrieval.train import dev_curve

    retriever, _ = _self_retriever(model, None, device)
    for row in dev_curve(retriever, model.parent, limit):
        print(json.dumps(row))
