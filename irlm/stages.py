"""The stage kinds of a recipe (`irlm run`): each gets its settings, its own folder and the run folder, and
returns a JSON-able result that state.json records. The runner (ordering, hashing, resuming) is pipeline.py."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

from irlm.configs import CONFIGS, TRAINERS
from irlm.errors import InputError

STAGE_OUTPUT = {"train": "model", "prune": "model", "pretrain": "model", "index": "index", "report": "report"}


def _config(cls, settings: dict, **forced):
    from irlm.config_files import load_config

    base = settings.pop("config", None)
    overrides = [f"{k}={json.dumps(v)}" for k, v in {**settings, **forced}.items()]
    return load_config(cls, base, overrides)


def stage_data(s: dict, folder: Path, run_dir: Path) -> dict:
    from irlm.data import load_dataset

    out = {}
    for name in s.get("names", [s.get("data", "scifact")]):
        ds = load_dataset(name)
        splits = {k: len(v) for k, v in ds.qrels.items()}
        out[ds.name] = {"docs": len(ds.corpus), "queries": len(ds.queries), "splits": splits}
    return out


def stage_augment(s: dict, folder: Path, run_dir: Path) -> dict:
    from irlm.methods.drama.augment import run_augment
    from irlm.methods.drama.config import AugmentConfig

    stats = run_augment(_config(AugmentConfig, s, out=str(folder / "examples.jsonl")))
    return {k: v for k, v in stats.items() if k != "config"}


def stage_prune(s: dict, folder: Path, run_dir: Path) -> dict:
    from irlm.methods.drama.config import PruneConfig
    from irlm.methods.drama.pretrain import prune

    return _brief(prune(_config(PruneConfig, s, output_dir=str(folder))))


def stage_pretrain(s: dict, folder: Path, run_dir: Path) -> dict:
    from irlm.methods.drama.config import PretrainConfig
    from irlm.methods.drama.pretrain import pretrain

    return _brief(pretrain(_config(PretrainConfig, s, output_dir=str(folder))))


def config_class(kind: str, settings: dict):
    """The config dataclass a stage's settings fill (None for the built-in kinds), and its output field."""
    import importlib

    if kind == "train":
        method = settings.get("method")
        if method not in TRAINERS:
            raise InputError(f"train stage: unknown method '{method}' ({', '.join(TRAINERS)})")
        module, name, _ = TRAINERS[method]
        out = "output_dir"
    elif kind in CONFIGS:
        module, name, out = CONFIGS[kind]
    else:
        return None, None
    return getattr(importlib.import_module(module), name), out


def stage_train(s: dict, folder: Path, run_dir: Path) -> dict:
    import importlib

    cls, _ = config_class("train", s)
    train_module = TRAINERS[s.pop("method")][2]
    return _brief(importlib.import_module(train_module).train(_config(cls, s, output_dir=str(folder))))


def stage_index(s: dict, folder: Path, run_dir: Path) -> dict:
    from irlm.systems import build_retriever

    kind, data = s.get("retriever", "bm25"), s.get("data", "scifact")
    build_retriever(kind, data, s.get("model", "minilm-l6"), s.get("device")).save(folder)
    return {"index": str(folder), "retriever": kind, "data": data}


def stage_eval(s: dict, folder: Path, run_dir: Path) -> dict:
    from irlm.data import load_dataset
    from irlm.eval import evaluate, write_trec
    from irlm.systems import build_retriever, load_retriever

    data, split = s.get("data", "scifact"), s.get("split", "test")
    k, limit = eval_depth_and_limit(s)
    ds = load_dataset(data)
    if split not in ds.qrels:
        raise InputError(f"eval stage: dataset '{data}' has no split '{split}' (has: {', '.join(ds.qrels)})")
    if s.get("index"):
        system = load_retriever(s["index"], s.get("device"), data)
    else:
        system = build_retriever(s.get("retriever", "bm25"), data, s.get("model", "minilm-l6"), s.get("device"))
    queries, qrels = ds.first_queries(split, limit)
    run = system.search(queries, k)
    folder.mkdir(parents=True, exist_ok=True)
    write_trec(run, folder / "run.trec")  # the report's per-query comparisons read it
    source = str(Path(data).resolve()) if Path(data).is_dir() else data  # what the report opens again
    return {"system": eval_label(s), "metrics": {ds.name: evaluate(run, qrels)}, "split": split,
            "source": source}  # fmt: skip


def eval_label(s: dict) -> str:
    """An eval stage's system name: its label, else the dense model's name or the retriever kind."""
    kind = s.get("retriever", "bm25")
    return s.get("label") or (s.get("model", "minilm-l6") if kind == "dense" else kind)


def eval_depth_and_limit(s: dict) -> tuple[int, int]:
    """An eval stage's k (at least 1: k 0 would score an empty run) and limit (0 = every query)."""
    return _whole(s, "k", 1000, least=1), _whole(s, "limit", 0, least=0)


def _whole(s: dict, key: str, default: int, least: int) -> int:
    """An eval stage's whole-number setting (k, limit), at least `least`."""
    value = s.get(key, default)
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise InputError(f"eval stage: {key} must be a whole number of at least {least}, got {value!r}")
    return value


def stage_report(s: dict, folder: Path, run_dir: Path) -> dict:
    from irlm.eval.report import write_report

    return {"report": str(write_report(run_dir, folder, s.get("baseline"))), "baseline": s.get("baseline")}


def check_baseline(stage: dict, stages: list[dict]) -> None:
    """A report's `baseline` names a stage or an eval stage's system (or one's variant, `retriever+bm25`):
    checked before any stage runs, not when the report is written after them."""
    baseline = stage.get("baseline")
    if baseline is None:
        return
    names = {st["name"] for st in stages} | {eval_label(st) for st in stages if st["kind"] == "eval"}
    if not any(baseline.lower() == n.lower() or baseline.lower().startswith(f"{n.lower()}+") for n in names):
        raise InputError(f"stage '{stage['name']}' setting baseline: '{baseline}' names no stage or system "
                         f"(stages and systems: {', '.join(sorted(names))})")  # fmt: skip


def _brief(result: dict) -> dict:
    """What the report needs from a method's results: metrics and counts, not the whole config."""
    return {k: v for k, v in (result or {}).items() if k != "config"}


STAGE_TYPES = {  # the built-in stages' settings; k and limit are checked by _whole
    "names": list, "data": str, "retriever": str, "model": str, "device": str, "split": str, "index": str,
    "label": str, "baseline": str,
}  # fmt: skip
STAGE_KEYS = {  # the settings each built-in stage reads (see its function above)
    "data": {"names", "data"},
    "index": {"retriever", "data", "model", "device"},
    "eval": {"data", "split", "index", "retriever", "model", "device", "k", "label", "limit"},
    "report": {"baseline"},  # the system every other is tested against (default: bm25 where there is one)
}
STAGES: dict[str, Callable[[dict, Path, Path], dict]] = {
    "data": stage_data, "augment": stage_augment, "prune": stage_prune, "pretrain": stage_pretrain,
    "train": stage_train, "index": stage_index, "eval": stage_eval, "report": stage_report,
}  # fmt: skip
