"""`irlm run RECIPE`: named stages into one run directory, cached by config hash and resumable.

A recipe lists stages in order; each has a `name`, a `kind` (data, augment, prune, pretrain,
train, index, eval, report) and its settings. `${name}` in a setting is the folder of an earlier
stage, so `model: ${prune}/final` feeds one stage's output to the next:

    run_dir: runs/quickstart
    stages:
      - {name: bm25, kind: eval, data: scifact, retriever: bm25}
      - {name: anchor, kind: train, method: anchor, config: recipes/anchor-scifact-tiny.yaml}
      - {name: report, kind: report}

Each stage's hash covers its settings, the config file it names, the size and time of every file
it reads by path (in its settings or that config file), and the hashes of the stages it references
through `${name}` (a report: of every stage before it). So a changed stage re-runs with the stages that
use it, and no others. A stage is recorded in `state.json` only when it finishes; a
killed run starts again at the first unrecorded stage, and stages that keep checkpoints in their
folder (training, augmentation) resume inside it.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import shutil
import time
from pathlib import Path

from irlm.config_files import Expected, did_you_mean, parse_expected, read_yaml, yaml_loader
from irlm.data.beir import read_json_file
from irlm.errors import InputError
from irlm.stages import (
    STAGE_KEYS,
    STAGE_OUTPUT,
    STAGE_TYPES,
    STAGES,
    _config,
    check_baseline,
    config_class,
    eval_depth_and_limit,
)
from irlm.utils import (
    check_output,
    claim_folder,
    clean_stale_temporaries,
    folder_kind,
    mark_as_irlm,
    read_marker,
    write_json,
)

log = logging.getLogger(__name__)
STATE = "state.json"
REF = re.compile(r"\$\{([A-Za-z0-9_-]+)\}")
# a stage's folder is run_dir/NAME: a plain name (no '/', '.', '..', nothing absolute) never leaves run_dir
STAGE_NAME = re.compile(r"[A-Za-z0-9_-]+")


def stage_hash(stage: dict, upstream: dict[str, str]) -> str:
    """The stage's settings, the text of the config file it names, the size and modification time of the
    files it reads by path, and `upstream`: {name: hash} of the stages it depends on."""
    config = Path(str(stage.get("config", "")))
    text = config.read_text() if config.is_file() else ""
    stamps = [[str(p), p.stat().st_size, p.stat().st_mtime_ns] for p in read_files(stage, text)]
    parts = [json.dumps(stage, sort_keys=True), text, json.dumps(stamps), json.dumps(upstream, sort_keys=True)]
    return hashlib.sha256("\n".join(parts).encode()).hexdigest()[:16]


def _strings(value) -> list[str]:
    if isinstance(value, str):
        return [value]
    items = value.values() if isinstance(value, dict) else value if isinstance(value, list) else []
    return [s for item in items for s in _strings(item)]


def read_files(stage: dict, config_text: str = "") -> list[Path]:
    """Files named by path in the stage's settings or its config file (augment_files, a data file)."""
    import yaml

    try:
        config = yaml.load(config_text, Loader=yaml_loader()) if config_text else None
    except yaml.YAMLError:
        config = None  # load_config reports it with its line when the stage runs
    names = [s for s in _strings([stage, config]) if s and "${" not in s and len(s) < 4096]
    return sorted({Path(s) for s in names if Path(s).is_file()} - {Path(str(stage.get("config", "")))})


def dependencies(stage: dict, earlier: list[str]) -> list[str]:
    """The earlier stages this one uses: those its settings reference, or all of them for a report."""
    if stage.get("kind") == "report":
        return list(earlier)
    named = set(REF.findall(json.dumps(stage)))
    return [n for n in earlier if n in named]


def load_recipe(path: str | Path) -> tuple[Path, list[dict]]:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"no recipe at {path}")
    recipe = read_yaml(path) or {}
    if not isinstance(recipe, dict):
        raise InputError("a recipe is a mapping with 'run_dir' and 'stages'", str(path))
    stages = recipe.get("stages")
    if not isinstance(stages, list) or not stages:
        raise InputError(f"{path}: 'stages' must be a non-empty list")
    for key in recipe:
        if key not in RECIPE_KEYS:  # `run_dri:` would silently run into runs/<recipe name>
            raise InputError(f"{path}: unknown key {key!r}{did_you_mean(str(key), RECIPE_KEYS)} (a recipe has "
                             f"{', '.join(RECIPE_KEYS)})")  # fmt: skip
    names = set()
    for n, st in enumerate(stages, 1):
        if not isinstance(st, dict) or "name" not in st or "kind" not in st:
            raise InputError(f"{path}: stage {n} needs a 'name' and a 'kind'")
        if not isinstance(st["name"], str) or not STAGE_NAME.fullmatch(st["name"]):
            raise InputError(f"{path}: stage {n} name {st['name']!r} must be letters, digits, '_' or '-' "
                             "(it names a folder inside run_dir)")  # fmt: skip
        if st["kind"] not in STAGES:
            raise InputError(f"{path}: stage '{st['name']}' has unknown kind '{st['kind']}' "
                             f"(known: {', '.join(sorted(STAGES))})")  # fmt: skip
        if st["name"] in names:
            raise InputError(f"{path}: two stages are named '{st['name']}'")
        check_keys(path, st)
        check_refs(path, st, names | {st["name"]}, {other.get("name") for other in stages if isinstance(other, dict)})
        parse_expected(st.get("expected"), f"{path}: stage '{st['name']}'")
        names.add(st["name"])
    run_dir = recipe.get("run_dir", f"runs/{path.stem}")
    if not isinstance(run_dir, str) or not run_dir.strip():
        raise InputError(f"{path}: 'run_dir' must be a folder path, got {run_dir!r}")
    return Path(run_dir), stages


def check_keys(path: Path, stage: dict) -> None:
    """A typo'd key in a built-in stage is an error (`retreiver: dense` once ran BM25 and called it BM25);
    the other kinds' settings are checked against their config dataclass when they run."""
    allowed = STAGE_KEYS.get(stage["kind"])
    if allowed is None:
        return
    for key in stage:
        if key not in allowed | {"name", "kind", "expected"}:
            hint = did_you_mean(str(key), allowed)
            raise InputError(f"{path}: stage '{stage['name']}' has unknown key '{key}'{hint}")
        kind = STAGE_TYPES.get(key)
        if kind is not None and stage[key] is not None and not isinstance(stage[key], kind):
            want = " or ".join(t.__name__ for t in (kind if isinstance(kind, tuple) else (kind,)))
            raise InputError(f"{path}: stage '{stage['name']}' setting {key}: expected {want}, "
                             f"got {type(stage[key]).__name__} {stage[key]!r}")  # fmt: skip


def check_refs(path: Path, stage: dict, known: set[str], every: set[str]) -> None:
    """`${name}` must name this stage (its own folder) or one before it: a later one has not run yet."""
    for name in REF.findall(json.dumps(stage)):
        if name not in known:
            where = "comes after it" if name in every else "is not in the recipe"
            raise InputError(f"{path}: stage '{stage['name']}': '${{{name}}}' names no earlier stage (stage "
                             f"'{name}' {where}; a stage may use its own folder and those of the stages before it)")


def expectations(recipe: str | Path) -> dict[str, list[Expected]]:
    """{stage name: the numbers it should reach}: its own `expected:` and that of the config file it names."""
    _, stages = load_recipe(recipe)
    out = {}
    for st in stages:
        config = read_yaml(st["config"]) if isinstance(st.get("config"), str) else None
        from_config = config.get("expected") if isinstance(config, dict) else None
        found = parse_expected(from_config, st.get("config")) + parse_expected(st.get("expected"), str(recipe))
        if found:
            out[st["name"]] = found
    return out


def resolve_refs(value, folders: dict[str, Path]):
    """`${name}` -> the folder of that earlier stage, inside strings, lists and dicts."""
    if isinstance(value, str):
        def sub(m):
            if m.group(1) not in folders:
                raise InputError(f"'${{{m.group(1)}}}' names no earlier stage")
            return str(folders[m.group(1)])

        return REF.sub(sub, value)
    if isinstance(value, list):
        return [resolve_refs(v, folders) for v in value]
    if isinstance(value, dict):
        return {k: resolve_refs(v, folders) for k, v in value.items()}
    return value


def claim(folder: Path, h: str, kind: str, fresh: bool = False) -> None:
    """Mark the stage folder with the hash about to run and the `kind` of output it will hold. A folder left
    by a killed run of the same hash is kept (its checkpoints resume) unless `fresh`; one from other settings
    is emptied, or the trainer would resume from checkpoints of the old settings. Only this stage's own
    folder, or an irlm folder of `kind`, may be emptied (another kind: with `irlm run --force`)."""
    mark = folder / ".stage_hash"
    check_output(folder, "stage folder", folder=True, kind=kind, force=fresh or _stage_folder(folder))
    clean_stale_temporaries(folder)  # half-written copies of it from a killed run
    if folder.exists() and (fresh or not mark.is_file() or mark.read_text() != h):
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    mark_as_irlm(folder, kind, stage=folder.name)
    mark.write_text(h)


def _stage_folder(folder: Path) -> bool:
    """Whether irlm made `folder` as the stage of that name (an older marker records no kind: its stage hash)."""
    note = read_marker(folder)
    return note is not None and (note.get("stage") == folder.name or
                                 ("kind" not in note and (folder / ".stage_hash").is_file()))  # fmt: skip


def claim_run_dir(run_dir: Path, force: bool = False) -> None:
    """The run directory holds state.json and the stage folders: refuse a folder of someone else's files, and
    an irlm folder of another kind unless `force`."""
    check_output(run_dir, "run_dir", folder=True, kind="run", force=force)
    claim_folder(run_dir, "run", "run_dir")


def upto(stages: list[dict], until: str | None) -> list[dict]:
    """The stages from the first through `until` (all of them without it)."""
    names = [st["name"] for st in stages]
    if until is None:
        return stages
    if until not in names:
        raise InputError(f"--until {until}: the recipe has no such stage (stages: {', '.join(names)})")
    return stages[: names.index(until) + 1]


def run_pipeline(recipe: str | Path, force: bool = False, until: str | None = None) -> dict:
    """Run every stage whose hash is not yet recorded as finished, through stage `until` if given (the later
    stages' records are kept); returns the state."""
    run_dir, stages = load_recipe(recipe)
    check_settings(stages, run_dir)
    claim_run_dir(run_dir, force)
    state_path = run_dir / STATE
    keep = state_path.is_file() and (not force or until is not None)  # --force --until keeps the later records
    state = read_json_file(state_path) if keep else {}  # damaged: one line
    hashes, folders = {}, {}
    for st in upto(stages, until):
        h = stage_hash(st, {n: hashes[n] for n in dependencies(st, list(hashes))})
        folder = run_dir / st["name"]
        folders[st["name"]] = folder
        done = None if force else state.get(st["name"])
        if done and done.get("hash") == h:
            log.info("stage %s: unchanged, skipped", st["name"])
        else:
            log.info("stage %s (%s): running", st["name"], st["kind"])
            kind = STAGE_OUTPUT.get(st["kind"], "stage")
            claim(folder, h, kind, fresh=force)
            settings = {k: v for k, v in st.items() if k not in ("name", "kind")}
            start = time.perf_counter()
            result = STAGES[st["kind"]](resolve_refs(settings, folders), folder, run_dir)
            seconds = round(time.perf_counter() - start, 1)  # this run's share: a resumed stage counts its rest
            if folder.is_dir() and not _stage_folder(folder):  # an index stage's save wrote its marker anew
                mark_as_irlm(folder, folder_kind(folder) or kind, stage=folder.name)
            state[st["name"]] = {"hash": h, "kind": st["kind"], "result": result, "seconds": seconds}
            write_json(state_path, state)  # atomic: a kill never leaves a half-written record
        hashes[st["name"]] = h
    names = {st["name"] for st in stages}
    for name in [n for n in state if n not in names]:
        state.pop(name)  # stages removed from the recipe
    write_json(state_path, state)
    return state


def check_settings(stages: list[dict], run_dir: Path) -> None:
    """Build every stage's config before the first stage runs: a typo in the last stage fails in a second,
    not after the stages before it have run for hours."""
    folders = {st["name"]: run_dir / st["name"] for st in stages}
    for st in stages:
        settings = resolve_refs({k: v for k, v in st.items() if k not in ("name", "kind")}, folders)
        if st["kind"] == "eval":
            eval_depth_and_limit(settings)
        if st["kind"] == "report":
            check_baseline(st, stages)
        if st["kind"] in ("eval", "index"):
            from irlm import options

            where = f"stage '{st['name']}' setting"
            options.one_of(settings.get("retriever"), options.BUILT, f"{where} retriever")
            options.device(settings.get("device"), f"{where} device")
        cls, out = config_class(st["kind"], settings)
        if cls is not None:
            settings.pop("method", None)
            _config(cls, settings, **{out: "unused"})


RECIPE_KEYS = ("run_dir", "stages")
