"""A report of one run directory: report.md, report.html, report.json, per_query.csv and PNG charts
(metrics per system, one panel per dataset; training loss parts over steps; reward curves), built from
`state.json`, the stages' run files and their `log.jsonl` files. Every system with a run file is compared
with a baseline (BM25 by default) on the same queries (irlm.eval.significance).

    irlm report runs/quickstart
    irlm report runs/quickstart --baseline minilm-l6
"""

from __future__ import annotations

from pathlib import Path

from irlm.data.beir import iter_jsonl, read_json_file
from irlm.errors import InputError
from irlm.eval.expected import stage_metrics
from irlm.eval.report_html import write_html
from irlm.eval.significance import (
    DEFAULT_BASELINE,
    base_data,
    check_baseline,
    compare_groups,
    row_name,
    versus_cells,
)
from irlm.utils import MARKER, claim_folder, made_by_irlm, write_json

HEADLINE = ("ndcg@10", "mrr@5", "hits@5")  # the first a system has is its table and chart value
NOT_LOSS = {"step", "lr", "grad_norm", "elapsed_s", "reencoded", "clip_fraction"}  # bookkeeping, not losses


def metric_rows(state: dict) -> list[dict]:
    """One row per (system, dataset): a stage's result `metrics` is {dataset: {metric: v}} or {metric: v}."""
    rows = []
    for name, rec in state.items():
        system = (rec.get("result") or {}).get("system", name)
        for data, values in stage_metrics(rec).items():
            rows.append({"system": system, "stage": name, "data": data, **values})
    return rows


def headline(row: dict) -> tuple[str, float] | None:
    for m in HEADLINE:
        if m in row:
            return m, row[m]
    return None


def read_logs(run_dir: Path) -> dict[str, list[dict]]:
    """Every log.jsonl under the run, keyed by its folder relative to the run."""
    logs = {}
    for path in sorted(run_dir.rglob("log.jsonl")):
        rows = [row for _, row in iter_jsonl(path)]  # a torn line is one error naming file:line
        if rows:
            rel = path.parent.relative_to(run_dir)
            logs[run_dir.name if rel == Path(".") else str(rel)] = rows
    return logs


def read_state(run_dir: Path) -> dict:
    """A pipeline's state.json, or a single training run's results.json as a one-stage state."""
    if (run_dir / "state.json").is_file():
        return read_json_file(run_dir / "state.json")
    if (run_dir / "results.json").is_file():
        return {run_dir.name: {"kind": "train", "result": read_json_file(run_dir / "results.json")}}
    raise InputError(f"{run_dir} is neither a run directory (state.json, see `irlm run`) nor a training "
                     "output (results.json)")  # fmt: skip


def recorded_baseline(run_dir: str | Path) -> str | None:
    """The baseline a recipe's report stage named, so `irlm report RUN` compares as the recipe did."""
    state = read_state(Path(run_dir))
    return next((rec["result"].get("baseline") for rec in state.values()
                 if rec.get("kind") == "report" and isinstance(rec.get("result"), dict)), None)  # fmt: skip


def write_report(run_dir: str | Path, out: str | Path | None = None, baseline: str | None = None) -> Path:
    """Write the report into `out` (default RUN_DIR/report); returns report.md's path. `baseline` names the
    system every other is tested against (a named one must exist; by default BM25 where there is one)."""
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    if not made_by_irlm(run_dir):  # a results.json or state.json alone does not make a folder irlm's
        raise InputError(f"{run_dir} is a folder irlm did not make (no {MARKER} marker); irlm report writes only "
                         "into folders irlm made")  # fmt: skip
    rows, logs = metric_rows(state), read_logs(run_dir)
    if baseline:
        check_baseline(rows, baseline)  # before the report folder is claimed (emptied)
    out = claim_folder(out or run_dir / "report", "report", "report folder")
    baseline = baseline or DEFAULT_BASELINE
    groups = compare_groups(rows, state, run_dir, baseline, headline)
    charts = [c for c in (metrics_chart(rows, out), curves_chart(logs, out, "loss"), curves_chart(logs, out, "reward"))
              if c]  # fmt: skip
    write_json(out / "report.json", {"rows": rows, "baseline": baseline, "logs": {k: v[-1] for k, v in logs.items()},
                                     "charts": [c.name for c in charts]})  # fmt: skip
    write_per_query(groups, out / "per_query.csv")
    (out / "report.md").write_text(markdown(run_dir, rows, charts, groups))
    write_html(out / "report.html", f"Report: {run_dir}", rows, charts, groups, headline, explain(groups))
    return out / "report.md"


def table(rows: list[dict]) -> str:
    lines = ["| system | data | metric | value | vs baseline | 95% CI | p rand. (Holm) | p t-test (Holm) | W/T/L |",
             "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        h = headline(r)
        if h:
            lines.append(f"| {r['system']} | {r['data']} | {h[0]} | {h[1]:.4f} | {' | '.join(versus_cells(r))} |")
    return "\n".join(lines)


def explain(groups: list[dict]) -> str:
    if not groups:
        return "No system was compared with a baseline: no run file of the baseline's data set."
    sizes = "; ".join(f"{g['data']} {g['split']}: {len(g['systems']) - 1} against {g['baseline']} on "
                      f"{len(next(iter(g['scores'].values())))} queries ({g['metric']})" for g in groups)  # fmt: skip
    return ("vs baseline: difference of the mean to the baseline on the same queries, with a 95 % bootstrap "
            "interval; * p < 0.05 in a two-sided paired randomization test (10,000 sign flips), p-values "
            f"Holm-corrected over the systems compared on each data set ({sizes}). W/T/L: queries won, tied, lost. "
            "Each query's scores: per_query.csv and report.html.")  # fmt: skip


def markdown(run_dir: Path, rows: list[dict], charts: list[Path], groups: list[dict] = ()) -> str:
    parts = [f"# Report: {run_dir}", "", table(rows), "", explain(groups), ""]
    parts += [f"![{c.stem}]({c.name})" for c in charts]
    return "\n".join(parts) + "\n"


def write_per_query(groups: list[dict], path: Path) -> Path:
    """One line per (data set, query): each system's score and its difference to the baseline."""
    import csv

    systems = list(dict.fromkeys(n for g in groups for n in g["systems"]))
    bases = {g["baseline"] for g in groups}
    base = bases.pop() if len(bases) == 1 else "baseline"
    others = [n for n in systems if all(n != g["baseline"] for g in groups)]
    with open(path, "w", newline="", encoding="utf-8") as f:
        out = csv.writer(f)
        out.writerow(["data", "split", "metric", "query", *systems, *(f"{n} - {base}" for n in others)])
        for g in groups:
            for q, b in g["scores"][g["baseline"]].items():
                scores = [_cell(g["scores"].get(n, {}).get(q)) for n in systems]
                diffs = [_cell(g["scores"][n][q] - b) if n in g["scores"] else "" for n in others]
                out.writerow([g["data"], g["split"], g["metric"], q, *scores, *diffs])
    return path


def _cell(x: float | None) -> str:
    return "" if x is None else f"{x:.6f}"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


COLOURS = {"baseline": "#9e9e9e", "better": "#2e7d32", "worse": "#c62828", "other": "#4c72b0"}
LEGEND = {"baseline": "baseline", "better": "above it, p < 0.05 (Holm)", "worse": "below it, p < 0.05 (Holm)",
          "other": "no significant difference, or not compared"}  # fmt: skip


def bar_kind(row: dict) -> str:
    vs = row.get("vs")
    if row.get("baseline"):
        return "baseline"
    if vs and vs["significant"]:
        return "better" if vs["diff"] > 0 else "worse"
    return "other"


def metrics_chart(rows: list[dict], out: Path) -> Path | None:
    """One panel per data set: a bar per system with its value (* where significantly different from the
    baseline), the baseline as a dashed line, the legend below the panels."""
    from matplotlib.lines import Line2D
    from matplotlib.patches import Patch

    points = [r for r in rows if headline(r)]
    if not points:
        return None
    plt = _pyplot()
    panels = list(dict.fromkeys(base_data(r["data"]) for r in points))
    widths = [1.0 + 0.95 * sum(base_data(r["data"]) == d for r in points) for d in panels]  # inches: ~1 per bar
    cols = len(panels) if len(panels) <= 3 else 3  # more data sets wrap into rows of three equal panels
    if cols < len(panels):
        widths = [max(widths)] * cols
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(sum(widths) + 1, 4.2 * rows_n), squeeze=False,
                             width_ratios=widths, layout="constrained")  # fmt: skip
    kinds = set()
    for ax, data in zip(axes.flat, panels):
        kinds |= metrics_panel(ax, [r for r in points if base_data(r["data"]) == data], data)
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    handles = [Patch(color=COLOURS[k], label=LEGEND[k]) for k in COLOURS if k in kinds]
    if "baseline" in kinds:
        handles.append(Line2D([], [], color="#555", ls="--", label="baseline value"))
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), frameon=False, fontsize="small")
    return _save(fig, plt, out / "metrics.png")


def metrics_panel(ax, rows: list[dict], data: str) -> set[str]:
    """Draw one data set's bars; returns the kinds of bar drawn (baseline, better, worse, other)."""
    values = [headline(r)[1] for r in rows]
    kinds = [bar_kind(r) for r in rows]
    bars = ax.bar(range(len(rows)), values, 0.7, color=[COLOURS[k] for k in kinds])
    marks = ["*" if k in ("better", "worse") else "" for k in kinds]
    ax.bar_label(bars, [f"{v:.3f}{m}" for v, m in zip(values, marks)], padding=2, fontsize="small")
    for r, v in zip(rows, values):
        if r.get("baseline"):
            ax.axhline(v, color="#555", ls="--", lw=1, zorder=0)
    ax.set_xticks(range(len(rows)), [row_name(r) for r in rows], rotation=30, ha="right", fontsize="small")
    ax.set_ylim(0, max(max(values) * 1.15, 0.05))
    ax.set_title(data, fontsize="medium")
    ax.set_ylabel(" / ".join(dict.fromkeys(headline(r)[0] for r in rows)))
    ax.spines[["top", "right"]].set_visible(False)
    return set(kinds)


def curve_panels(logs: dict[str, list[dict]], kind: str) -> dict[str, list[tuple[str, list, list]]]:
    """Per training stage, the (name, steps, values) series to draw: loss parts (every logged number that is
    not bookkeeping, a pruning gate's keep rate or a reward), or rewards."""
    def wanted(key: str) -> bool:
        if kind == "reward":
            return "reward" in key
        return key not in NOT_LOSS and "reward" not in key and not key.startswith("keep_")

    panels = {}
    for run, rows in logs.items():
        for key in dict.fromkeys(k for r in rows for k in r):
            kept = [r for r in rows if key in r]
            if wanted(key) and kept and all(isinstance(r[key], int | float) for r in kept):
                panels.setdefault(run, []).append((key, [r["step"] for r in kept], [r[key] for r in kept]))
    return panels


def curves_chart(logs: dict[str, list[dict]], out: Path, kind: str) -> Path | None:
    """One panel per training stage, since their step counts and scales differ."""
    panels = curve_panels(logs, kind)
    if not panels:
        return None
    plt = _pyplot()
    cols = min(3, len(panels))
    rows_n = -(-len(panels) // cols)
    fig, axes = plt.subplots(rows_n, cols, figsize=(5.6 * cols, 3 * rows_n), squeeze=False, layout="constrained")
    for ax, (run, series) in zip(axes.flat, panels.items()):
        for key, steps, values in series:
            ax.plot(steps, values, label=key)
        ax.set_title(run, fontsize="medium")
        ax.set_xlabel("step")
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.0, 1.0), frameon=False)  # off the curves
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.supylabel(kind)
    return _save(fig, plt, out / f"{kind}.png")


def _save(fig, plt, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
