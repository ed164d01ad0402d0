"""A report of one run directory: report.md, report.json and PNG charts (metrics per system per
dataset, training loss parts over steps, reward curves), built from `state.json` and the stages'
`log.jsonl` files.

    irlm report runs/quickstart
"""

from __future__ import annotations

import json
from pathlib import Path

from irlm.errors import InputError
from irlm.utils import MARKER, claim_folder, made_by_irlm, write_json

HEADLINE = ("ndcg@10", "mrr@5", "hits@5")  # the first a system has is its table and chart value
NOT_LOSS = {"step", "lr", "grad_norm", "elapsed_s", "reencoded", "clip_fraction"}  # bookkeeping, not losses


def metric_rows(state: dict) -> list[dict]:
    """One row per (system, dataset): a stage's result `metrics` is {dataset: {metric: v}} or {metric: v}."""
    rows = []
    for name, rec in state.items():
        result = rec.get("result") or {}
        metrics = result.get("metrics")
        if not metrics:
            continue
        per_data = metrics if all(isinstance(v, dict) for v in metrics.values()) else {"-": metrics}
        for data, values in per_data.items():
            rows.append({"system": result.get("system", name), "stage": name, "data": data, **values})
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
        rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
        if rows:
            rel = path.parent.relative_to(run_dir)
            logs[run_dir.name if rel == Path(".") else str(rel)] = rows
    return logs


def read_state(run_dir: Path) -> dict:
    """A pipeline's state.json, or a single training run's results.json as a one-stage state."""
    if (run_dir / "state.json").is_file():
        return json.loads((run_dir / "state.json").read_text())
    if (run_dir / "results.json").is_file():
        return {run_dir.name: {"kind": "train", "result": json.loads((run_dir / "results.json").read_text())}}
    raise InputError(f"{run_dir} is neither a run directory (state.json, see `irlm run`) nor a training "
                     "output (results.json)")  # fmt: skip


def write_report(run_dir: str | Path, out: str | Path | None = None) -> Path:
    run_dir = Path(run_dir)
    state = read_state(run_dir)
    if not made_by_irlm(run_dir):  # a results.json or state.json alone does not make a folder irlm's
        raise InputError(f"{run_dir} is a folder irlm did not make (no {MARKER} marker); irlm report writes only "
                         "into folders irlm made")  # fmt: skip
    out = claim_folder(out or run_dir / "report", "report", "report folder")
    rows, logs = metric_rows(state), read_logs(run_dir)
    charts = [c for c in (metrics_chart(rows, out), curves_chart(logs, out, "loss"), curves_chart(logs, out, "reward"))
              if c]  # fmt: skip
    write_json(out / "report.json", {"rows": rows, "logs": {k: v[-1] for k, v in logs.items()},
                                     "charts": [c.name for c in charts]})  # fmt: skip
    (out / "report.md").write_text(markdown(run_dir, rows, charts))
    return out / "report.md"


def table(rows: list[dict]) -> str:
    lines = ["| system | data | metric | value |", "|---|---|---|---|"]
    for r in rows:
        h = headline(r)
        if h:
            lines.append(f"| {r['system']} | {r['data']} | {h[0]} | {h[1]:.4f} |")
    return "\n".join(lines)


def markdown(run_dir: Path, rows: list[dict], charts: list[Path]) -> str:
    parts = [f"# Report: {run_dir}", "", table(rows), ""]
    parts += [f"![{c.stem}]({c.name})" for c in charts]
    return "\n".join(parts) + "\n"


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on servers
    import matplotlib.pyplot as plt

    return plt


def metrics_chart(rows: list[dict], out: Path) -> Path | None:
    points = [(r["system"], r["data"], *headline(r)) for r in rows if headline(r)]
    if not points:
        return None
    plt = _pyplot()
    systems = list(dict.fromkeys(p[0] for p in points))
    datasets = list(dict.fromkeys(p[1] for p in points))
    width = 0.8 / len(datasets)
    fig, ax = plt.subplots(figsize=(max(5, 1.4 * len(systems)), 3.5))
    for d, data in enumerate(datasets):
        xs = [systems.index(p[0]) + d * width for p in points if p[1] == data]
        ax.bar(xs, [p[3] for p in points if p[1] == data], width, label=data)
    ax.set_xticks([i + width * (len(datasets) - 1) / 2 for i in range(len(systems))], systems, rotation=20)
    ax.set_ylabel(" / ".join(dict.fromkeys(p[2] for p in points)))
    ax.legend()
    fig.tight_layout()
    return _save(fig, plt, out / "metrics.png")


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
    fig, axes = plt.subplots(rows_n, cols, figsize=(4.2 * cols, 3 * rows_n), squeeze=False)
    for ax, (run, series) in zip(axes.flat, panels.items()):
        for key, steps, values in series:
            ax.plot(steps, values, label=key)
        ax.set_title(run, fontsize="medium")
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
    for ax in list(axes.flat)[len(panels) :]:
        ax.set_visible(False)
    fig.supylabel(kind)
    fig.tight_layout()
    return _save(fig, plt, out / f"{kind}.png")


def _save(fig, plt, path: Path) -> Path:
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path
