"""The GPU evidence packs of issue 16: what each pack runs, in what order, under which time box.

A pack is a list of rows; a row is an `irlm run` stage (data, augment, prune, pretrain, train, eval),
a benchmark script under bench/, or a small function here. Rows run in one process, in order of
importance, each under its own alarm (`cap`) and the pack's deadline; a row that would start with less
time left than it needs is skipped, so the most important rows always finish first. After every row
the results file is rewritten (atomically), so a pack killed from outside still leaves what it measured.

    python bench/device/packs.py run a OUTDIR --budget 450        # on the GPU (bench/device/run.sh does this)
    python bench/device/packs.py run all OUTDIR --smoke           # every pack, tiny random models, CPU
    python bench/device/packs.py plan                             # rows, caps and estimates of every pack
    python bench/device/packs.py next                             # the first pack without committed results

The device numbers assume SmolLM2-135M in bf16 trains at roughly 100-200k tokens/s on one H200; `est` is
the seconds a row is expected to take there (loading and evaluation included), `cap` the most it may.
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import datetime as dt
import gc
import io
import json
import os
import platform
import runpy
import signal
import subprocess
import sys
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
RESULTS = HERE / "results"
ORDER = "abcde"
BASE = "smollm2-135m"


@dataclass
class Row:
    name: str
    kind: str  # an irlm pipeline stage kind, "bench" (a script under bench/) or "py" (a function in PY_ROWS)
    settings: dict
    est: int  # expected seconds on one H200, loading and evaluation included
    cap: int  # the most seconds it may run (its alarm)
    needs: tuple[str, ...] = ()  # rows whose output it reads: it is skipped when one of them failed
    partial_ok: bool = False  # cut by its alarm, what it wrote is still usable (append-only augmentation files)


@dataclass
class Scale:
    smoke: bool
    model: str = BASE  # the backbone and teacher: SmolLM2-135M on the device, a tiny random Llama in smoke
    precision: str = "bf16"


# --- the packs -------------------------------------------------------------------------------------------


def drama_row(name: str, s: Scale, est: int = 75, needs=(), **kw) -> Row:
    """recipes/drama-scifact-gpu.yaml (300 steps, batch 64, lr 5e-5): the H100 rows' recipe, one save."""
    settings = {"method": "drama", "config": "recipes/drama-scifact-gpu.yaml", "model": s.model,
                "precision": s.precision, "save_every": 300, **kw}  # fmt: skip
    return Row(name, "train", settings, est, cap=2 * est, needs=tuple(needs))


def pack_a(s: Scale) -> list[Row]:
    """DRAMA at 300 steps, batch 64: FT, + crop, the CPU issue's recipe at GPU scale, the teacher-speed bench,
    then + qgen, + rerank and all three. The H100 already gave FT 0.688 / + crop 0.722 / + rerank 0.684: FT
    and + crop come first so this card's numbers sit beside those, then what was never measured."""
    crop, qgen, rerank = "${crop}/examples.jsonl", "${qgen}/examples.jsonl", "${rerank}/examples.jsonl"
    return [
        Row("bm25-scifact", "eval", {"data": "scifact", "retriever": "bm25", "k": 100}, 10, 60),
        Row("bm25-cranfield", "eval", {"data": "cranfield", "retriever": "bm25", "k": 100}, 5, 60),
        Row("crop", "augment", {"strategy": "crop", "data": "scifact", "n": 2000}, 15, 60),
        drama_row("ft", s),
        drama_row("ft-crop", s, needs=["crop"], augment_files=[crop]),
        # recipes/retriever-scifact-cpu.yaml (top 10 layers on cached layer-20 states, crops of every
        # document, 100 dev queries held out, hybrid) at the GPU recipe's scale: 300 steps, batch 64, bf16
        Row("crop-all", "augment", {"strategy": "crop", "data": "scifact", "n": 5183}, 20, 60),
        Row(
            "cpu-recipe-gpu",
            "train",
            {
                "method": "drama",
                "model": s.model,
                "data": "scifact",
                "train_split": "train",
                "dev_queries": 100,
                "augment_files": ["${crop-all}/examples.jsonl"],  # all 5,183 crops, as the CPU recipe
                "eval_data": ["scifact", "cranfield"],
                "hybrid": True,
                "steps": 300,
                "batch_size": 64,
                "n_negatives": 1,
                "pooling": "mean",
                "max_length": 128,
                "temperature": 0.05,
                "lr": 1.0e-4,
                "precision": s.precision,
                "save_every": 300,
                "cache_layers": 20,
                "seed": 42,
            },
            90,
            180,
            needs=("crop-all",),
        ),  # fmt: skip
        # issue item 3: completion tokens/s of the in-process teacher at batch 64 and 128, against plain
        # generate with a static KV cache (+ compile) on the same length-bucketed batches
        Row(
            "generate-bench",
            "bench",
            {
                "script": "bench/generate.py",
                "args": [
                    "--model",
                    s.model,
                    "--no-http",
                    "--device",
                    "cuda",
                    "--dtype",
                    "bf16",
                    "--prompts",
                    "128",
                    "--max-new-tokens",
                    "48",
                    "--batch-sizes",
                    "64,128",
                    "--static",
                ],
            },
            120,
            150,
        ),  # fmt: skip
        Row(
            "qgen",
            "augment",
            {"strategy": "qgen", "data": "scifact", "n": 1000, "batch_size": 128, "teacher": s.model},
            90,
            120,
            partial_ok=True,
        ),  # fmt: skip
        drama_row("ft-qgen", s, needs=["qgen"], augment_files=[qgen]),
        Row(
            "rerank",
            "augment",
            {
                "strategy": "rerank",
                "data": "scifact",
                "n": 500,
                "batch_size": 64,
                "queries_from": qgen,
                "teacher": s.model,
            },
            90,
            120,
            ("qgen",),
            True,
        ),  # fmt: skip
        drama_row("ft-rerank", s, needs=["rerank"], augment_files=[rerank]),
        drama_row("ft-all", s, needs=["crop", "qgen", "rerank"], augment_files=[crop, qgen, rerank]),
    ]


def reasoning_row(name: str, s: Scale, est: int, cap: int, needs=(), **kw) -> Row:
    settings = {"method": "reasoning", "config": "recipes/reasoning-scifact-tiny.yaml", "model": s.model,
                "teacher": s.model, "reasoning_file": "${teacher}/reasoning.jsonl", "precision": s.precision,
                "save_every": 1000, **kw}  # fmt: skip
    return Row(name, "train", settings, est, cap, tuple(needs))


def pack_b(s: Scale) -> list[Row]:
    """Reasoning embedders: a cold start long enough to close its thoughts (300 steps, batch 64, lambda_sft 1:
    with LREM's 0.1 no CPU thought ever closed), then GRPO against its control without the policy gradient
    (gamma_grpo 0), for the LREM preset (ranked against the batch) and Search-R3 (against the corpus)."""
    cold = "${coldstart}/final"
    grpo = {"stage": "grpo", "model": cold, "steps": 60, "batch_size": 16, "group": 8, "lr": 2.0e-5}
    sr3 = {"preset": "searchr3", "rank_against": "corpus"}
    return [
        reasoning_row("teacher", s, 40, 90, stage="data", max_queries=0),
        reasoning_row("coldstart", s, 70, 150, ["teacher"], lambda_sft=1.0, steps=300, batch_size=64),
        reasoning_row("grpo-lrem", s, 90, 130, ["coldstart"], **grpo),
        reasoning_row("control-lrem", s, 90, 130, ["coldstart"], **grpo, gamma_grpo=0.0),
        reasoning_row("direct", s, 50, 100, ["teacher"], reasoning="none", steps=300, batch_size=64),
        reasoning_row("grpo-searchr3", s, 100, 140, ["coldstart"], **grpo, **sr3),
        reasoning_row("control-searchr3", s, 100, 140, ["coldstart"], **grpo, **sr3, gamma_grpo=0.0),
    ]


def pack_c(s: Scale) -> list[Row]:
    """Anchor: recipes/anchor-scifact-full.yaml (the paper's lr 4e-5, 3 epochs, max length 512, 7 negatives),
    Stage I 90 + Stage II 90 against Stage II alone for the same 180 steps, then against Stage II's 90 alone."""

    def anchor(name, stage1, stage2, est):
        return Row(name, "train", {"method": "anchor", "config": "recipes/anchor-scifact-full.yaml", "model": s.model,
                                   "stage1_steps": stage1, "stage2_steps": stage2, "precision": s.precision,
                                   "save_every": 1000}, est, 2 * est)  # fmt: skip

    return [anchor("stage1-then-2", 90, 90, 110), anchor("stage2-equal", 0, 180, 130), anchor("stage2-only", 0, 90, 80)]


def pack_d(s: Scale) -> list[Row]:
    """Self-Retrieval on nq-open-oracle for many epochs (1500 steps at batch 64: ~96k examples drawn from a
    mix of ~6k), then BM25 and the dense SmolLM2 retriever scored on the same first 300 test questions."""
    limit = 300
    return [
        Row(
            "selfretrieval",
            "train",
            {
                "method": "selfretrieval",
                "config": "recipes/selfretrieval-nq-tiny.yaml",
                "model": s.model,
                "steps": 1500,
                "batch_size": 64,
                "precision": s.precision,
                "save_every": 100000,
                "eval_limit": limit,
                "batch_queries": 32,
            },
            270,
            330,
        ),  # fmt: skip
        Row("bm25", "py", {"fn": "score_nq", "system": "bm25", "limit": limit}, 10, 60),
        drama_row("dense", s, 70, data="nq-open-oracle", eval_data=["nq-open-oracle"]),
        Row(
            "dense-same-questions",
            "py",
            {"fn": "score_nq", "system": "${dense}/final", "limit": limit},
            15,
            60,
            ("dense",),
        ),  # fmt: skip
    ]


def pack_e(s: Scale) -> list[Row]:
    """Pruning to the one-third shape (recipes/drama-prune-gpu.yaml), 500 recovery steps of 16 x 512 tokens
    (4.1M tokens), the DRAMA GPU recipe on the pruned and on the full model, and their encoding speeds."""
    return [
        Row(
            "prune",
            "prune",
            {
                "config": "recipes/drama-prune-gpu.yaml",
                "model": s.model,
                "precision": s.precision,
                "save_every": 100000,
            },
            70,
            140,
        ),  # fmt: skip
        Row(
            "pretrain",
            "pretrain",
            {
                "config": "recipes/drama-pretrain-gpu.yaml",
                "model": "${prune}/final",
                "precision": s.precision,
                "save_every": 100000,
            },
            60,
            140,
            ("prune",),
        ),  # fmt: skip
        drama_row("ft-pruned", s, 60, ["pretrain"], model="${pretrain}/final"),
        drama_row("ft-full", s),
        Row(
            "encode-speed",
            "bench",
            {
                "script": "bench/encode.py",
                "args": [
                    "--model",
                    "${ft-pruned}/final",
                    "--against",
                    "${ft-full}/final",
                    "--device",
                    "cuda",
                    "--dtype",
                    "bf16",
                    "--docs",
                    "2000",
                    "--batch-size",
                    "128",
                ],
            },
            30,
            90,
            ("ft-pruned", "ft-full"),
        ),  # fmt: skip
    ]


PACKS = {"a": pack_a, "b": pack_b, "c": pack_c, "d": pack_d, "e": pack_e}

# --- smoke: the same rows, shrunk to tiny random models and a few dozen documents on the CPU ---------------

# every key is set only where the row's config dataclass has that field
SMOKE = {"steps": 2, "batch_size": 4, "max_length": 48, "target_max_length": 16, "n_negatives": 1, "cache_chunk": 0,
         "save_every": 1000, "precision": "fp32", "n": 6, "top_k": 10, "max_queries": 8, "reasoning_tokens": 6,
         "group": 2, "env_docs": 20, "max_passage_tokens": 16, "max_prompt_tokens": 24, "eval_limit": 3,
         "title_beams": 2, "passage_beams": 2, "batch_queries": 4, "block_size": 32, "max_blocks": 8, "layers": 2,
         "hidden": 16, "kv_heads": 1, "intermediate": 32, "token_budget": None, "dev_queries": 3,
         "augment_limit": 6}  # fmt: skip
ONLY_IF_SET = {"dev_queries", "augment_limit"}
SMOKE_BENCH = {
    "bench/generate.py": ["--no-http", "--device", "cpu", "--dtype", "fp32", "--prompts", "6", "--max-new-tokens", "4",
                          "--batch-sizes", "4", "--static"],
    "bench/encode.py": ["--device", "cpu", "--dtype", "fp32", "--docs", "8", "--batch-size", "4"],
}  # fmt: skip


def config_fields(row: Row) -> set[str] | None:
    from irlm import pipeline

    cls, _ = pipeline.config_class(row.kind, row.settings)
    return None if cls is None else {f.name for f in dataclasses.fields(cls)}


def shrink(row: Row) -> Row:
    row = copy.deepcopy(row)
    st = row.settings
    if row.kind == "bench":  # the models it names stay, the sizes become the smoke's
        args = st["args"]
        keep = [x for n, a in enumerate(args[:-1]) if a in ("--model", "--against") for x in args[n : n + 2]]
        st["args"] = keep + SMOKE_BENCH[st["script"]]
        return row
    if "limit" in st:
        st["limit"] = 3
    fields = config_fields(row) or set()
    for key, value in SMOKE.items():
        if key in fields and (key not in ONLY_IF_SET or key in st):
            st[key] = value
    for key in ("stage1_steps", "stage2_steps"):
        if key in fields:
            st[key] = min(int(st.get(key, 1)), 2)
    if st.get("cache_layers"):
        st["cache_layers"] = 2  # of the tiny model's 4
    if len(st.get("eval_data") or []) > 1:
        st["eval_data"] = st["eval_data"][:1]  # the same code path on one dataset
    return row


def tiny_model(folder: Path) -> str:
    """A 4-layer, 32-wide random causal Llama with SmolLM2's tokenizer (its chat template, its special tokens), tied
    embeddings like SmolLM2, so every row - teacher, retriever, pruning - runs on it."""
    import torch
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    from irlm.models.resolve import resolve_model

    if (folder / "config.json").is_file():
        return str(folder)
    tok = AutoTokenizer.from_pretrained(resolve_model(BASE))
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=4,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=512,
                         bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id,
                         tie_word_embeddings=True)  # fmt: skip
    torch.manual_seed(0)
    LlamaForCausalLM(config).save_pretrained(folder, safe_serialization=True)
    tok.save_pretrained(folder)
    return str(folder)


def scripted_teacher() -> None:
    """Smoke only: qgen and rerank get the test suite's scripted teacher (tests/scripts/fake_teacher.py). A random
    tiny LM never writes a valid ranking, so + rerank would have no examples; the real in-process generator
    still runs in smoke through the teacher-speed bench and the reasoning teacher."""
    import irlm.methods.drama.augment as augment

    sys.path.insert(0, str(REPO / "tests" / "scripts"))
    from fake_teacher import FakeTeacher

    real = augment.run_augment

    def run_augment(cfg, generator=None, retriever=None):
        if generator is None and cfg.strategy != "crop":
            generator = FakeTeacher(bad_every=4, hopeless_every=1000)
        return real(cfg, generator, retriever)

    augment.run_augment = run_augment


def mini_data(src: Path, dest: Path, docs: int = 24) -> Path:
    """scifact, cranfield and nq-open-oracle cut to a few dozen documents: the first judged queries of each
    split, their judged documents, then the corpus's first documents up to `docs`."""
    for name, splits in (("scifact", {"train": 14, "test": 8}), ("cranfield", {"test": 6}),
                         ("nq-open-oracle", {"train": 14, "test": 6})):  # fmt: skip
        out = dest / name
        if (out / "corpus.jsonl").is_file():
            continue
        (out / "qrels").mkdir(parents=True, exist_ok=True)
        keep_q, keep_d = set(), []
        for split, n in splits.items():
            lines = (src / name / "qrels" / f"{split}.tsv").read_text(encoding="utf-8").splitlines()
            rows = [ln for ln in lines[1:] if ln.strip()]
            qids = list(dict.fromkeys(r.split("\t")[0] for r in rows))[:n]
            kept = [r for r in rows if r.split("\t")[0] in qids]
            keep_q |= set(qids)
            keep_d += [r.split("\t")[1] for r in kept]
            (out / "qrels" / f"{split}.tsv").write_text("\n".join([lines[0], *kept]) + "\n", encoding="utf-8")
        wanted = set(keep_d)
        with open(src / name / "corpus.jsonl", encoding="utf-8") as f, open(out / "corpus.jsonl", "w") as o:
            n_other = 0
            for line in f:
                doc_id = json.loads(line)["_id"]
                if doc_id in wanted or n_other < docs - len(wanted):
                    o.write(line)
                    n_other += doc_id not in wanted
        for extra in ("queries.jsonl", "answers.jsonl"):
            if (src / name / extra).is_file():
                with open(src / name / extra, encoding="utf-8") as f, open(out / extra, "w") as o:
                    o.writelines(ln for ln in f if json.loads(ln)["_id"] in keep_q)
    return dest


# --- rows that are no irlm stage ---------------------------------------------------------------------------


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
    pipeline.claim(folder, "device-" + row.name, fresh=True)
    if row.kind == "bench":
        return run_bench(st, folder)
    if row.kind == "py":
        return PY_ROWS[st.pop("fn")](st, folder)
    return pipeline.STAGES[row.kind](st, folder, work)


# --- the results file --------------------------------------------------------------------------------------


def hardware() -> dict:
    info = {"python": platform.python_version(), "cpus": os.cpu_count(), "host": platform.machine()}
    try:
        smi = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version,memory.total", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=20)  # fmt: skip
        info["nvidia_smi"] = smi.stdout.strip() or smi.stderr.strip()
    except (OSError, subprocess.SubprocessError) as e:
        info["nvidia_smi"] = f"unavailable ({type(e).__name__})"
    import torch
    import transformers

    info.update(torch=torch.__version__, transformers=transformers.__version__, cuda=torch.version.cuda,
                gpu=torch.cuda.get_device_name(0) if torch.cuda.is_available() else None)  # fmt: skip
    return info


def commit() -> dict:
    """The commit the working tree was prepared from: $IRLM_DEVICE_COMMIT (the device gets no .git), else git."""
    if os.environ.get("IRLM_DEVICE_COMMIT"):
        sha, _, dirty = os.environ["IRLM_DEVICE_COMMIT"].partition("+")
        return {"commit": sha, "dirty": dirty == "dirty"}
    try:
        sha = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, capture_output=True, text=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=REPO,
                                    capture_output=True, text=True).stdout.strip())  # fmt: skip
        return {"commit": sha or None, "dirty": dirty}
    except OSError:
        return {"commit": None, "dirty": None}


HEADLINE = ("ndcg@10", "recall@100", "hits@1", "hits@5", "mrr@5", "answer_em", "think_format", "ratio",
            "tokens_per_s", "final_loss", "examples", "invalid", "skipped")  # fmt: skip


def headline(result, prefix: str = "") -> dict:
    """The numbers worth reading at a glance, flattened: `scifact.ndcg@10`, `inproc_b64_tokens_per_s`, ..."""
    out = {}
    if isinstance(result, dict):
        for k, v in result.items():
            if k in ("config",):
                continue
            key = f"{prefix}{k}"
            if isinstance(v, dict):
                out.update(headline(v, key + "."))
            elif isinstance(v, (int, float)) and not isinstance(v, bool) and any(h in k for h in HEADLINE):
                out[key] = v
    return out


def write_json(path: Path, data: dict) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1, default=str) + "\n")
    os.replace(tmp, path)


# --- running a pack ------------------------------------------------------------------------------------------


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


# --- the command line -------------------------------------------------------------------------------------


def committed(pack: str) -> list[Path]:
    return sorted(RESULTS.glob(f"{pack}-*.json"))


def next_pack() -> str:
    """The first pack, in order a..e, without a committed results file; with one whose rows did not all
    finish, the pack and those rows (`run.sh a OUT --rows x,y` completes it)."""
    for pack in ORDER:
        files = committed(pack)
        if not files:
            return pack
        done = {r["name"] for f in files for r in json.loads(f.read_text())["rows"] if r.get("status") == "ok"}
        missing = [r.name for r in PACKS[pack](Scale(smoke=False)) if r.name not in done]
        if missing:
            return f"{pack} --rows {','.join(missing)}"
    return "none"


def plan() -> str:
    lines = []
    for pack, fn in PACKS.items():
        rows = fn(Scale(smoke=False))
        lines.append(f"pack {pack}: {sum(r.est for r in rows)} s expected (rows in order; caps in brackets)")
        lines += [f"  {r.name:<20} {r.kind:<8} ~{r.est:>4} s [{r.cap} s]" for r in rows]
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run", help="run one pack (or all, in smoke) into OUTDIR")
    r.add_argument("pack", choices=[*PACKS, "all"])
    r.add_argument("out", type=Path)
    r.add_argument("--work", type=Path, default=None, help="stage folders (default: OUTDIR/../work-PACK)")
    r.add_argument("--budget", type=float, default=450, help="seconds for the rows (run.sh subtracts the setup)")
    r.add_argument("--smoke", action="store_true", help="tiny random models, a few dozen documents, CPU")
    r.add_argument("--rows", default="", help="only these rows (and the rows they need), comma-separated")
    sub.add_parser("plan")
    sub.add_parser("next")
    args = ap.parse_args(argv)
    if args.cmd == "plan":
        print(plan())
        return 0
    if args.cmd == "next":
        print(next_pack())
        return 0
    args.out.mkdir(parents=True, exist_ok=True)
    packs = list(PACKS) if args.pack == "all" else [args.pack]
    if args.pack == "all" and not args.smoke:
        raise SystemExit("'all' is for --smoke: on the device one pack fits a call")
    base = args.work or args.out.parent / f"work-{args.out.name}"
    if args.smoke:
        import irlm.utils

        # every smoke row runs in fp32; irlm's probe of whether bf16 is faster here costs 3-25 s of matmuls
        irlm.utils.bf16_is_faster = lambda device: str(device).startswith("cuda")
        import torch

        torch.set_num_threads(1)  # tiny matrices: a second thread only spins, and on a busy machine it stalls
        scripted_teacher()
        tiny_model(base / "tiny-lm")  # before IRLM_CACHE moves: the tokenizer comes from the real cache
        data = Path(os.environ.get("IRLM_DATA", REPO.parent / "shared" / "data"))
        os.environ["IRLM_DATA"] = str(mini_data(data, base / "data"))
        os.environ["IRLM_CACHE"] = str(base / "cache")  # activations and the like stay in the scratch folder
    bad = 0
    for pack in packs:
        record = run_pack(pack, args.out, base / pack, args.budget, args.smoke, [n for n in args.rows.split(",") if n])
        bad += sum(r["status"] not in ("ok", "partial", "skipped") for r in record["rows"])
        bad += args.smoke and sum(r["status"] != "ok" for r in record["rows"])
    (args.out / "imports.json").write_text(json.dumps(imported_distributions()) + "\n")
    return 1 if bad else 0


if __name__ == "__main__":
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    sys.path.insert(0, str(REPO))
    sys.exit(main())
