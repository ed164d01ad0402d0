"""Running a pack: rows in order, each under its own alarm (`cap`) and the pack's deadline; a row whose
needs failed, or that would start with less time than it expects, is skipped. Rows that are no irlm stage
(bench scripts, score_nq) run here too."""

from __future__ import annotations

import contextlib
import copy
import datetime as dt
import gc
import io
import json
import runpy
import signal
import sys
import time
import traceback
from pathlib import Path

from .a import pack_a
from .b import pack_b
from .c import pack_c
from .common import BASE, REPO, Row, Scale
from .d import pack_d
from .e import pack_e
from .results import commit, hardware, headline, write_json
from .smoke import shrink, tiny_model

PACKS = {"a": pack_a, "b": pack_b, "c": pack_c, "d": pack_d, "e": pack_e}


def score_nq(st: dict, folder: Path) -> dict:
    """BM25 or a dense folder on the first `limit` nq-open-oracle test questions: the questions the
    Self-Retrieval row answered (its eval_limit), with its metrics (Hits@1/5, MRR@5)."""
    from irlm.data import load_dataset
    from irlm.eval import evaluate, write_trec
    from irlm.index import BM25Retriever, DenseRetriever
    from irlm.models import LLMEncoder

    ds = load_dataset("nq-open-oracle")
    queries = dict(list(ds.split_queries("test").items())[: st["limit"]])
    if st["system"] == "bm25":
        system = BM25Retriever.build(ds.corpus)
    else:
        system = DenseRetriever.build(ds.corpus, LLMEncoder.from_pretrained(st["system"]))
    run = system.search(queries, 10)
    write_trec(run, folder / "test.trec")
    qrels = {q: ds.qrels["test"][q] for q in queries}
    metrics = evaluate(run, qrels, ("hits@1", "hits@5", "mrr@5"))
    return {"system": st["system"], "questions": len(queries), "metrics": {k: round(v, 4) for k, v in metrics.items()}}


PY_ROWS = {"score_nq": score_nq}


class RowTimeout(BaseException):  # BaseException: no `except Exception` inside a trainer swallows it
    pass


def _alarm(signum, frame):
    raise RowTimeout()


def run_bench(st: dict, folder: Path) -> dict:
    """A bench script in this process (its JSON line is its result); its stdout also goes to the log."""
    buf, argv = io.StringIO(), sys.argv
    sys.argv = [st["script"], *map(str, st["args"])]
    try:
        with contextlib.redirect_stdout(buf):
            runpy.run_path(str(REPO / st["script"]), run_name="__main__")
    finally:
        sys.argv = argv
        print(buf.getvalue(), end="", flush=True)
    lines = [ln for ln in buf.getvalue().splitlines() if ln.startswith("{")]
    if not lines:
        raise RuntimeError(f"{st['script']} printed no JSON line")
    (folder / "bench.json").write_text(lines[-1] + "\n")
    return json.loads(lines[-1])


def run_row(row: Row, folder: Path, work: Path, folders: dict) -> dict:
    from irlm import pipeline

    st = pipeline.resolve_refs(copy.deepcopy(row.settings), folders)
    pipeline.claim(folder, "device-" + row.name, pipeline.STAGE_OUTPUT.get(row.kind, "stage"), fresh=True)
    if row.kind == "bench":
        return run_bench(st, folder)
    if row.kind == "py":
        return PY_ROWS[st.pop("fn")](st, folder)
    return pipeline.STAGES[row.kind](st, folder, work)


def select(rows: list[Row], only: list[str] | None) -> list[Row]:
    """`only` and every row they need, transitively, in pack order."""
    if not only:
        return rows
    by_name = {r.name: r for r in rows}
    unknown = [n for n in only if n not in by_name]
    if unknown:
        raise SystemExit(f"unknown row(s) {', '.join(unknown)}; rows: {', '.join(by_name)}")
    wanted, todo = set(), list(only)
    while todo:
        name = todo.pop()
        if name not in wanted:
            wanted.add(name)
            todo += list(by_name[name].needs)
    return [r for r in rows if r.name in wanted]


def run_pack(pack: str, out: Path, work: Path, budget: float, smoke: bool, only=None) -> dict:
    from irlm import pipeline

    start = time.monotonic()
    deadline = start + budget
    scale = Scale(smoke=smoke)
    if smoke:
        scale = Scale(smoke=True, model=tiny_model(work.parent / "tiny-lm"), precision="fp32")
    rows = select(PACKS[pack](scale), only)
    if smoke:
        rows = [shrink(r) for r in rows]
        leaked = [r.name for r in rows if BASE in json.dumps(r.settings)]
        assert not leaked, f"smoke rows still name {BASE}: {leaked}"
    date = dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%d")
    stem = f"{'smoke-' if smoke else ''}{pack}-{date}"
    stages = [{"name": r.name, "kind": r.kind, **r.settings} for r in rows if r.kind in pipeline.STAGES]
    pipeline.check_settings(stages, work)  # a typo in the last row fails now, not after the first rows ran
    pipeline.claim_run_dir(work)
    (out / f"{pack}-recipe.yaml").write_text(_yaml({"run_dir": str(work), "stages": stages}))
    record = {"pack": pack, "date": date, "smoke": smoke, **commit(), "hardware": hardware(), "budget_s": budget,
              "doc": (PACKS[pack].__doc__ or "").split("\n\n")[0].strip(), "rows": []}  # fmt: skip
    path = out / f"{stem}.json"
    status, folders = {}, {r.name: work / r.name for r in rows}
    for row in rows:
        entry = {"name": row.name, "kind": row.kind, "est_s": row.est, "cap_s": row.cap, "settings": row.settings}
        record["rows"].append(entry)
        left = deadline - time.monotonic()
        failed = [n for n in row.needs if status.get(n) not in ("ok", "partial")]
        if failed:
            entry.update(status="skipped", reason=f"needs {', '.join(failed)}")
        elif left < (0 if smoke else min(row.est, row.cap) * 0.8):
            entry.update(status="skipped", reason=f"time: {left:.0f}s left, row expects {row.est}s")
        else:
            entry.update(_timed_row(row, folders[row.name], work, folders, cap=max(1, int(min(row.cap, left)))))
        status[row.name] = entry["status"]
        record["elapsed_s"] = round(time.monotonic() - start, 1)
        record["summary"] = {e["name"]: e.get("headline", e.get("status")) for e in record["rows"]}
        write_json(path, record)
        print(f"[pack {pack}] {row.name}: {entry['status']} {entry.get('seconds', '')}s "
              f"{entry.get('reason', '')}", flush=True)  # fmt: skip
    return record


def _timed_row(row: Row, folder: Path, work: Path, folders: dict, cap: int) -> dict:
    import torch

    t0 = time.monotonic()
    signal.signal(signal.SIGALRM, _alarm)
    signal.alarm(cap)
    try:
        result = run_row(row, folder, work, folders)
        entry = {"status": "ok", "result": result, "headline": headline(result)}
    except RowTimeout:
        written = folder / "examples.jsonl"
        usable = row.partial_ok and written.is_file() and written.stat().st_size > 0
        entry = {"status": "partial" if usable else "timeout", "reason": f"cut at its cap of {cap}s"}
        if usable:
            entry["examples_written"] = sum(1 for _ in open(written, encoding="utf-8"))
    except Exception as e:  # noqa: BLE001 - a broken row is recorded; the next rows still run
        entry = {"status": "error", "reason": f"{type(e).__name__}: {e}"[:2000], "traceback": traceback.format_exc()}
        print(entry["traceback"], file=sys.stderr, flush=True)
    finally:
        signal.alarm(0)
    entry["seconds"] = round(time.monotonic() - t0, 1)
    gc.collect()
    if torch.cuda.is_available():
        entry["max_gpu_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    return entry


def _yaml(data) -> str:
    import yaml

    return yaml.safe_dump(data, sort_keys=False, width=120)


def imported_distributions() -> dict[str, list[str]]:
    """Installed distribution -> the top-level modules this process imported from it (the smoke test's wheel
    check). Where two distributions ship the same top-level name, the one whose files hold the module wins."""
    import importlib.metadata as md

    candidates = md.packages_distributions()
    found: dict[str, set[str]] = {}
    for name, module in list(sys.modules.items()):
        if "." in name or not getattr(module, "__file__", None) or name not in candidates:
            continue
        dists = candidates[name]
        if len(dists) > 1:
            rel = Path(module.__file__).resolve()
            owns = [d for d in dists if any(Path(md.distribution(d).locate_file(f)).resolve() == rel
                                            for f in md.distribution(d).files or () if f.parts[0] == name
                                            or f.name.startswith(name))]  # fmt: skip
            dists = owns or dists
        for d in dists:
            found.setdefault(d, set()).add(name)
    return {d: sorted(m) for d, m in sorted(found.items())}
