"""Commands over finished runs and models: compare, fuse, export, run (a recipe) and report."""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from irlm import options as opt
from irlm.cli.common import (
    DeviceOpt,
    ForceOpt,
    app,
    err,
    home,
)
from irlm.errors import InputError
from irlm.utils import check_output


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
    limit: int = typer.Option(0, min=0, help="Compare on the split's first N queries only (file order; 0 = all)."),
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
    queries, qrels = ds.first_queries(split, limit)  # runs of `irlm eval --limit N` compare on the same N
    loaded = {str(r): _load_run(r, queries, k, device, data) for r in runs}
    rows = compare_runs(loaded, qrels, chosen, permutations, seed)
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
    out: Path = typer.Option(..., "--out", callback=home, help="Fused TREC run file."),
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
        if r.resolve() == out.resolve():
            raise InputError(f"--out {out} is one of the runs being fused; give another file path")
    check_output(out, kind="trec")
    loaded = [read_trec(r) for r in runs]
    fused = rrf(loaded) if method == "rrf" else weighted(loaded, w)
    write_trec(fused, out, tag=f"fused-{method}")


@app.command("export")
def export_cmd(
    model_dir: str = typer.Argument(..., help="Encoder folder saved by irlm (or any model name irlm loads)."),
    fmt: str = typer.Option("sentence-transformers", "--format",
                            help="sentence-transformers, or onnx (the same folder plus onnx/model.onnx)."),
    out: Path = typer.Option(..., "--out", callback=home,
                             help="A new or empty folder, or an earlier export, to write."),
    force: bool = ForceOpt,
) -> None:
    """Export an encoder that SentenceTransformer(DIR) or onnxruntime loads, encoding to irlm's vectors."""
    from irlm.models.export import export_encoder

    err.print(f"exported {fmt} to {export_encoder(model_dir, out, fmt, force)}")


@app.command("run")
def run_cmd(
    recipe: Path = typer.Argument(..., help="Pipeline recipe YAML with named stages (see recipes/quickstart.yaml)."),
    force: bool = typer.Option(False, "--force", help="Ignore finished stages and run everything again (and "
                               "replace an irlm folder of another kind at run_dir or a stage's folder)."),
    check: bool = typer.Option(False, "--check", help="Exit with status 1 when a number differs from the recipe's "
                               "`expected:` by more than its tolerance (the lines are printed either way)."),
    until: str | None = typer.Option(None, "--until", help="Run the stages through this one only (the later "
                                     "stages and their records are left as they are)."),
) -> None:
    """Run a recipe's stages into one run directory; finished, unchanged stages are skipped. Each number of
    the recipe's `expected:` is then compared with what was measured, one PASS/FAIL line each."""
    from irlm.eval.expected import check_expected, check_line
    from irlm.eval.report import headline, metric_rows
    from irlm.pipeline import expectations, load_recipe, run_pipeline, upto

    expected = expectations(recipe)  # read first: a malformed block fails before any stage runs
    reached = {st["name"] for st in upto(load_recipe(recipe)[1], until)}
    expected = {name: items for name, items in expected.items() if name in reached}
    state = run_pipeline(recipe, force=force, until=until)
    state = {name: rec for name, rec in state.items() if name in reached}  # later records: not this run's
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
