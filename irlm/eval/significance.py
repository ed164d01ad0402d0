"""The report's comparison of every system with a baseline.

Each metric row of a run directory is matched with the run file its stage kept (an eval stage's
`run.trec`, a training's `DATA.trec`); rows scored on the same queries (one dataset's split) form a
group, and in each group holding the baseline every system is tested against it on the baseline's
headline metric (irlm.eval.compare: randomization test, Holm over the group's systems). A group also
keeps what the CSV and the HTML report's per-query view show: each query's scores, each system's top 10,
and a snippet of every document in them.
"""

from __future__ import annotations

import logging
from pathlib import Path

from irlm.errors import InputError
from irlm.eval.compare import compare_scores, format_p, judged, per_query

TOP = 10  # documents per query and system in the per-query view
SNIPPET = 200  # characters of each document's text shown there
MAX_QUERIES = 1000  # per group in the per-query view: keeps report.html to a few MB on any test split
DEFAULT_BASELINE = "bm25"
log = logging.getLogger(__name__)


def base_data(data: str) -> str:
    """'scifact+bm25-weighted' -> 'scifact': the dataset whose queries a row's run answers."""
    return data.split("+", 1)[0]


def row_name(row: dict) -> str:
    """The system with the variant its data key names: 'retriever' on 'scifact+bm25' -> 'retriever+bm25'."""
    return f"{row['system']}{row['data'][len(base_data(row['data'])):]}"


def run_file(row: dict, rec: dict, folder: Path) -> Path | None:
    """The TREC file a row was scored from: DATA.trec in the stage's folder, or an eval stage's run.trec."""
    names = [f"{row['data']}.trec"] + (["run.trec"] if rec.get("kind") == "eval" else [])
    return next((folder / n for n in names if (folder / n).is_file()), None)


def is_baseline(row: dict, baseline: str) -> bool:
    return baseline.lower() in (row_name(row).lower(), f"{row['stage']}{row_name(row)[len(row['system']):]}".lower())


def group_rows(rows: list[dict], state: dict, run_dir: Path) -> dict[tuple[str, str], list[tuple[dict, Path]]]:
    """{(dataset, split): [(row, its run file)]} for the rows whose run file is there."""
    single = not (run_dir / "state.json").is_file()  # one training's output: its files are in run_dir itself
    groups: dict[tuple[str, str], list[tuple[dict, Path]]] = {}
    for row in rows:
        rec = state.get(row["stage"], {})
        path = run_file(row, rec, run_dir if single else run_dir / row["stage"])
        if path is not None:
            split = (rec.get("result") or {}).get("split", "test")  # eval stages record it; trainings score test
            groups.setdefault((base_data(row["data"]), split), []).append((row, path))
    return groups


def check_baseline(rows: list[dict], baseline: str) -> None:
    """A baseline named by the user must be one of the report's systems."""
    if not any(is_baseline(r, baseline) for r in rows):
        names = ", ".join(dict.fromkeys(row_name(r) for r in rows)) or "none"
        raise InputError(f"baseline '{baseline}' is none of the report's systems ({names})", field="baseline")


def compare_groups(rows: list[dict], state: dict, run_dir: Path, baseline: str, headline) -> list[dict]:
    """The comparison of each group holding the baseline, on the baseline row's `headline(row)` metric.
    Each compared row of `rows` gains `vs` (its test against the baseline) or `baseline: True`."""
    out = []
    for (data, split), members in group_rows(rows, state, run_dir).items():
        base = next((row for row, _ in members if is_baseline(row, baseline)), None)
        if base is not None:
            metric = headline(base)[0]
            members = [(row, path) for row, path in members if metric in row]
            try:
                out.append(compare_group(data, split, members, base, metric, source(state, members, data)))
            except InputError as e:  # the data set moved since the run: the report still has its means
                log.warning("report: %s %s not compared with %s: %s", data, split, baseline, e)
    return out


def source(state: dict, members: list[tuple[dict, Path]], data: str) -> str:
    """What load_dataset opens for a group: the `source` an eval stage recorded (a name or folder), else
    the dataset's name."""
    for row, _ in members:
        src = (state.get(row["stage"], {}).get("result") or {}).get("source")
        if src:
            return src
    return data


def compare_group(data: str, split: str, members: list[tuple[dict, Path]], base: dict, metric: str,
                  src: str) -> dict:  # fmt: skip
    """Per-query scores, the tests, top 10s and snippets of one group; sets each member row's `vs`."""
    from irlm.data import load_dataset
    from irlm.eval.runs import read_trec

    ds = load_dataset(src)
    if split not in ds.qrels:
        raise InputError(f"dataset '{src}' has no split '{split}' to compare the report's runs on")
    qrels = ds.qrels[split]
    names = unique_names(members)
    runs = {name: read_trec(path) for name, (_, path) in zip(names, members)}
    scores = {name: per_query(run, qrels, metric) for name, run in runs.items()}
    base_name = names[[row for row, _ in members].index(base)]
    tested = {r["system"]: r for r in compare_scores(scores, base_name)}
    for name, (row, _) in zip(names, members):
        row.update({"baseline": True} if name == base_name else {"vs": _vs(tested[name], base_name, metric)})
    rel = judged(qrels)
    qids = list(rel)[:MAX_QUERIES]
    top = {name: {q: top_docs(run.get(q, {})) for q in qids} for name, run in runs.items()}
    shown = {d for per_q in top.values() for docs in per_q.values() for d, _ in docs}
    return {"data": data, "split": split, "metric": metric, "baseline": base_name, "systems": names,
            "scores": scores, "queries": {q: ds.queries.get(q, "") for q in qids},
            "relevant": {q: rel[q] for q in qids}, "top": top, "docs": snippets(ds.corpus, shown)}  # fmt: skip


def _vs(row: dict, baseline: str, metric: str) -> dict:
    """A system's test against the baseline, for its report row."""
    return {"baseline": baseline, "metric": metric, **{k: v for k, v in row.items() if k not in ("system", "mean")}}


def unique_names(members: list[tuple[dict, Path]]) -> list[str]:
    """Row names, with the stage added where two rows of a group share one."""
    names = [row_name(row) for row, _ in members]
    return [n if names.count(n) == 1 else f"{n} ({row['stage']})" for n, (row, _) in zip(names, members)]


def top_docs(docs: dict[str, float], k: int = TOP) -> list[tuple[str, float]]:
    """The first k (doc, score), ties in the run's order as `evaluate` ranks them."""
    return sorted(docs.items(), key=lambda x: -x[1])[:k]


def snippets(corpus, wanted: set[str]) -> dict[str, dict[str, str]]:
    return {d.id: {"title": d.title[:SNIPPET], "text": d.text[:SNIPPET]} for d in corpus.docs if d.id in wanted}


def versus_cells(row: dict) -> list[str]:
    """A report row's comparison as table cells: difference (* where significant), 95 % CI, the randomization
    and t-test p-values after Holm, W/T/L; 'baseline' or '-' and blanks for a row not tested."""
    vs = row.get("vs")
    if not vs:
        return ["baseline" if row.get("baseline") else "-", "", "", "", ""]
    return [f"{vs['diff']:+.4f}{' *' if vs['significant'] else ''}", f"[{vs['ci'][0]:+.4f}, {vs['ci'][1]:+.4f}]",
            format_p(vs["p_randomization_holm"]), format_p(vs["p_ttest_holm"]),
            f"{vs['wins']}/{vs['ties']}/{vs['losses']}"]  # fmt: skip
