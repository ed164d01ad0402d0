"""Reasoning embedders end to end: teacher reasoning data, cold start, GRPO, evaluation.

    irlm train reasoning --stage data      --config recipes/reasoning-scifact-tiny.yaml
    irlm train reasoning --stage coldstart --config recipes/reasoning-scifact-tiny.yaml
    irlm train reasoning --stage grpo      --config recipes/reasoning-scifact-tiny.yaml \
        --set model=runs/reasoning/coldstart/final --set preset=searchr3
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict
from pathlib import Path

from tqdm.auto import tqdm

from irlm.data import load_dataset
from irlm.data.training import held_out_qids
from irlm.errors import InputError
from irlm.methods.reasoning.config import ReasoningConfig
from irlm.methods.reasoning.keywords import condense, render
from irlm.methods.reasoning.model import ReasoningEmbedder
from irlm.methods.reasoning.prf import PRF_VERSION, PRFTeacher, is_prf
from irlm.methods.reasoning.retriever import ReasoningRetriever
from irlm.methods.reasoning.rewards import THINK_OPEN, format_reward
from irlm.methods.reasoning.tasks import ColdStartTask, GRPOTask, is_closed
from irlm.train.loop import TrainConfig, Trainer, autocast, init_distributed, seed_everything, world
from irlm.train.loop import train_config as loop_config
from irlm.utils import atomic_path, claim_folder, write_json

PROMPT_VERSION = "reasoning-v1"
STAGES = ("data", "coldstart", "grpo")
SOURCES = ("teacher", "nothing", "random", "query", "none")


def teacher_prompt(query: str) -> list[dict]:
    return [{"role": "user", "content": (
        f"A user searched for: {query}\n"
        "Think about what they need: which concepts, synonyms and related facts would a relevant "
        "document mention? Answer in one short paragraph.")}]  # fmt: skip


def pairs(data: str, split: str) -> list[dict]:
    """(query, positive) pairs from a dataset's qrels, one per judged relevant document."""
    ds = load_dataset(data)
    docs = {d.id: d for d in ds.corpus.docs}
    queries = ds.split_queries(split)
    return [{"query_id": q, "query": queries[q], "positive_id": d, "positive": docs[d].full_text()}
            for q, judged in ds.qrels[split].items() if q in queries
            for d, rel in judged.items() if rel > 0 and d in docs]  # fmt: skip


def make_reasoning(cfg: ReasoningConfig) -> dict:
    """Teacher reasoning per train query, condensed to keywords; appended to reasoning_file, resumable.
    An LLM teacher reasons and `condense` cuts it; a PRF teacher (prf.py) writes the keywords itself."""
    out = Path(cfg.reasoning_file)
    out.parent.mkdir(parents=True, exist_ok=True)
    drop_torn_line(out)
    rows = [json.loads(line) for line in out.open()] if out.exists() else []
    other = {r.get("teacher") for r in rows} - {cfg.teacher}
    if other:  # a resumed file must hold one teacher's rows, or a cold start would mix two teachers
        raise InputError(f"{out} holds rows of teacher {', '.join(sorted(map(str, other)))}, not '{cfg.teacher}': "
                         "give this teacher its own reasoning_file", field="reasoning_file")  # fmt: skip
    done = {r["query_id"] for r in rows}
    todo = list({p["query_id"]: p for p in pairs(cfg.data, cfg.train_split)}.values())  # one per query
    todo = [p for p in todo[: cfg.max_queries or None] if p["query_id"] not in done]
    if is_prf(cfg.teacher):
        _prf_reasoning(cfg, todo, out)
    else:
        _llm_reasoning(cfg, todo, out)
    total = sum(1 for _ in out.open())
    return {"reasoning_file": str(out), "examples": total, "this_run": len(todo)}


def _prf_reasoning(cfg: ReasoningConfig, todo: list[dict], out: Path) -> None:
    """Rows as the LLM teacher's (reasoning, raw, teacher, prompt_version), plus the feedback documents;
    `raw` holds the kept words with their weights, the teacher's own output."""
    teacher = PRFTeacher({d.id: d.full_text() for d in load_dataset(cfg.data).corpus.docs}, cfg.teacher,
                         cfg.prf_docs, cfg.max_keywords)  # fmt: skip
    with out.open("a", encoding="utf-8") as f:
        for p in tqdm(todo, desc="reasoning (prf)", unit="query"):
            keywords, weights, docs = teacher.keywords(p["query_id"], p["query"], p["positive_id"])
            raw = "; ".join(f"{w} {v:g}" for w, v in weights.items())
            row = {**p, "reasoning": render(keywords), "raw": raw, "teacher": cfg.teacher,
                   "prompt_version": PRF_VERSION, "feedback": docs}  # fmt: skip
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()


def _llm_reasoning(cfg: ReasoningConfig, todo: list[dict], out: Path) -> None:
    from irlm.models.generator import load_generator

    gen = load_generator(cfg.teacher, device=cfg.device)
    with out.open("a", encoding="utf-8") as f:
        for i in tqdm(range(0, len(todo), 8), desc="reasoning", unit="batch"):
            batch = todo[i : i + 8]
            prompts = [teacher_prompt(p["query"]) for p in batch]
            for p, prompt, g in zip(batch, prompts, gen.generate(prompts)):
                # the prompt's own words (the query and the instruction) are dropped: a small teacher
                # echoes "user", "searched", "document" back, which says nothing about the query
                keywords = condense(g.text, prompt[0]["content"], cfg.max_keywords)
                row = {**p, "reasoning": render(keywords), "raw": g.text, "teacher": cfg.teacher,
                       "prompt_version": PROMPT_VERSION}  # fmt: skip
                f.write(json.dumps(row, ensure_ascii=False) + "\n")
            f.flush()


def drop_torn_line(path: Path) -> None:
    """Cut a last line that a kill left without its newline: it may be half a row, and the next row appended
    would be glued to it. Its query is simply reasoned about again."""
    if not path.is_file():
        return
    data = path.read_bytes()
    if data and not data.endswith(b"\n"):
        with atomic_path(path) as tmp:
            tmp.write_bytes(data[: data.rfind(b"\n") + 1])


def read_reasoning(path: str, data: str, split: str) -> list[dict]:
    """Every train pair, with the teacher's keywords for its query."""
    if not Path(path).is_file():
        raise InputError(f"no reasoning file at {path}; run `irlm train reasoning --stage data` first")
    by_query = {}
    with open(path, encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            try:
                row = json.loads(line)
                by_query[row["query_id"]] = row["reasoning"]
            except (json.JSONDecodeError, KeyError) as e:
                raise InputError(f"{path}:{lineno}: bad reasoning row ({e})") from None
    return [{**p, "reasoning": by_query[p["query_id"]]} for p in pairs(data, split) if p["query_id"] in by_query]


def check_source(source: str) -> None:
    if source not in SOURCES:
        raise InputError(f"reasoning must be one of {', '.join(SOURCES)}, not '{source}'", field="reasoning")


def replace_reasoning(examples: list[dict], source: str, seed: int = 0) -> list[dict]:
    """The cold-start examples with <think> filled from `source` (SOURCES): the teacher's keywords as
    read, or an ablation. `random` draws as many keywords as the teacher wrote from the pool of every
    query's keywords (about a thousand words for 240 queries, so a query rarely draws its own), fixed per
    query so a query's positives share one text; `none` drops the think block."""
    check_source(source)
    if source == "teacher":
        return examples
    pool = _pool(examples)

    def fill(ex: dict) -> str | None:
        if source == "random":
            return _draw(pool, len(_keywords(ex["reasoning"])), f"{seed}:{ex['query_id']}")
        return {"nothing": "", "query": ex["query"], "none": None}[source]

    return [{**ex, "reasoning": fill(ex)} for ex in examples]


def fit_budget(example: dict, emb: ReasoningEmbedder, budget: int | None = None) -> dict:
    """The example with its keyword reasoning cut to the whole keywords that fit in `budget` tokens (default
    reasoning_tokens, LREM's at most 16; thought_tokens sets a smaller one), not cut mid-word at the budget:
    the teacher-forced thought then ends where a thought can end, so the model learns to close after a
    keyword list, not to count to 16. A first keyword longer than the budget alone is kept (query_ids cuts
    it at reasoning_tokens); ablations other than keywords pass."""
    budget = budget or emb.reasoning_tokens
    words = _keywords(example.get("reasoning"))
    if len(words) < 2:
        return example
    kept = words[:1]
    for word in words[1:]:
        if len(emb.ids(" " + render([*kept, word]))) > budget:
            break
        kept.append(word)
    return {**example, "reasoning": render(kept)}


def _keywords(reasoning: str | None) -> list[str]:
    """The keywords of a rendered reasoning (keywords.render's inverse); an ablation's None has none."""
    return [w for w in (reasoning or "").split(", ") if w]


def _pool(examples: list[dict]) -> list[str]:
    return sorted({w for ex in examples for w in _keywords(ex["reasoning"])})


def _draw(pool: list[str], n: int, seed: str) -> str:
    """n keywords from the pool, the same for the same seed (a query's id), rendered as the teacher's are."""
    return render(random.Random(seed).sample(pool, min(n, len(pool))))


def train(cfg: ReasoningConfig) -> dict:
    if cfg.stage not in STAGES:
        raise InputError(f"unknown stage '{cfg.stage}' ({', '.join(STAGES)})")
    check_source(cfg.reasoning)
    budget = thought_budget(cfg)  # refused before any model loads
    if cfg.stage == "data":
        return make_reasoning(cfg)
    claim_folder(cfg.output_dir, "model")  # before any model loads: a folder of another kind is refused
    init_distributed()
    seed_everything(cfg.seed)
    emb = ReasoningEmbedder.from_pretrained(cfg.model, cfg.device, max_length=cfg.max_length,
                                            reasoning_tokens=cfg.reasoning_tokens)  # fmt: skip
    dev = dev_queries(cfg)
    if cfg.stage == "coldstart":
        examples = replace_reasoning(read_reasoning(cfg.reasoning_file, cfg.data, cfg.train_split),
                                     cfg.reasoning, cfg.seed)  # fmt: skip
        keywords = cfg.reasoning in ("teacher", "random")  # the other fillers are no keyword lists
        examples = [fit_budget(ex, emb, budget) if keywords else ex for ex in examples if ex["query_id"] not in dev]
        task = ColdStartTask(emb, cfg.lambda_sft, cfg.lambda_nce, cfg.temperature, probe=list(dev.values()),
                             probe_every=cfg.probe_every, lambda_sft_early=cfg.lambda_sft_early,
                             early_steps=cfg.sft_early_steps)  # fmt: skip
    else:
        examples = [ex for ex in pairs(cfg.data, cfg.train_split) if ex["query_id"] not in dev]
        task = GRPOTask(emb, cfg.preset, cfg.group, cfg.gamma_grpo, cfg.gamma_nce, cfg.clip, cfg.temperature,
                        cfg.sample_temperature, env=environment(emb, cfg, examples), chunk=cfg.grpo_chunk,
                        ppo_epochs=cfg.ppo_epochs, kl_coef=cfg.kl_coef, negatives=negative_pool(emb, cfg),
                        pay_unclosed=cfg.pay_unclosed)  # fmt: skip
    history = Trainer(task, examples, train_config(cfg)).fit() if cfg.steps else []
    if world()[0] != 0:
        return {}
    final = Path(cfg.output_dir) / "final"
    if cfg.steps:  # the weights now differ from where they came from: a saved index names the final folder
        emb.source = str(final) if final.is_dir() else None
    emb.model.eval()
    thinking = "none" if cfg.reasoning == "none" else cfg.eval_reasoning  # a model never taught to think
    fill = ablation_filler(cfg.reasoning, examples, cfg.seed) if thinking == "source" else None
    with autocast(emb.device.type, cfg.precision):
        # each test run kept (DATA.trec) so `irlm compare` / `irlm report` test rows against each other per query
        metrics = evaluate_reasoner(emb, cfg.eval_data, thinking, fill=fill, runs_dir=cfg.output_dir)
        if dev and thinking == "self":  # the format on queries never trained on; no corpus index needed
            metrics[f"{cfg.data}-dev"] = thought_metrics(emb, emb.sample(list(dev.values()), 1, do_sample=False))
    results = {"config": asdict(cfg), "examples": len(examples), "final": history[-1] if history else None,
               "metrics": metrics}
    write_json(Path(cfg.output_dir) / "results.json", results)
    print(json.dumps({"method": "reasoning", "stage": cfg.stage, "output_dir": cfg.output_dir,
                      **{f"{d}_{k}": m[k] for d, m in results["metrics"].items() for k in ("ndcg@10", "closed")
                         if k in m}}))  # fmt: skip
    return results


def thought_budget(cfg: ReasoningConfig) -> int:
    """Tokens a teacher thought is cut to in cold start: thought_tokens, at most the generation budget."""
    if not 0 <= cfg.thought_tokens <= cfg.reasoning_tokens:
        raise InputError(f"thought_tokens must be between 0 and reasoning_tokens ({cfg.reasoning_tokens}), "
                         f"not {cfg.thought_tokens}", field="thought_tokens")  # fmt: skip
    return cfg.thought_tokens or cfg.reasoning_tokens


def train_config(cfg: ReasoningConfig) -> TrainConfig:
    return loop_config(cfg, cfg.steps, schedule=cfg.schedule)


def environment(emb: ReasoningEmbedder, cfg: ReasoningConfig, examples: list[dict]):
    """None (rank within the batch), or the corpus index GRPO ranks against, refreshed in part each step."""
    from irlm.methods.reasoning.env import SelectiveIndex

    if cfg.rank_against not in ("batch", "corpus"):
        raise InputError(f"rank_against must be batch or corpus, not '{cfg.rank_against}'", field="rank_against")
    if cfg.rank_against == "batch":
        return None
    texts = {d.id: d.full_text() for d in load_dataset(cfg.data).corpus.docs}
    ids = list(texts)[: cfg.env_docs or None]
    kept = set(ids)
    ids += [p for p in dict.fromkeys(ex["positive_id"] for ex in examples) if p not in kept]
    return SelectiveIndex(ids, _encoder(emb, cfg, texts), cfg.env_top_k, cfg.env_slice)


def negative_pool(emb: ReasoningEmbedder, cfg: ReasoningConfig):
    """rank_against batch: the corpus documents each sample is also ranked against, so that N = the batch's
    documents plus these = rank_docs. Drawn at random (as LREM's in-batch documents are) from the documents
    judged relevant to no train query, so no negative is a positive in disguise; None when rank_docs <= batch."""
    from irlm.methods.reasoning.env import SelectiveIndex

    size = cfg.rank_docs - cfg.batch_size // world()[1]
    if cfg.rank_against != "batch" or not cfg.rank_docs or size <= 0:
        return None
    ds = load_dataset(cfg.data)
    judged = {d for rels in ds.qrels[cfg.train_split].values() for d in rels}
    texts = {d.id: d.full_text() for d in ds.corpus.docs if d.id not in judged}
    if len(texts) < size:
        raise InputError(f"rank_docs {cfg.rank_docs} needs {size} unjudged documents beside the batch; "
                         f"{cfg.data} has {len(texts)}", field="rank_docs")  # fmt: skip
    ids = random.Random(cfg.seed).sample(sorted(texts), size)
    return SelectiveIndex(ids, _encoder(emb, cfg, texts), cfg.env_top_k, cfg.env_slice)


def _encoder(emb: ReasoningEmbedder, cfg: ReasoningConfig, texts: dict[str, str]):
    def encode(batch: list[str]):
        # the same precision as training: the index is built before the trainer's autocast and refreshed
        # inside it, and a mix of fp32 and bf16 rows would drift apart for reasons other than the policy
        with autocast(emb.device.type, cfg.precision):
            return emb.encode_docs([texts[i] for i in batch])

    return encode


def dev_queries(cfg: ReasoningConfig) -> dict[str, str]:
    """The held-out train queries {id: text}, the core's draw (the same for every seed and method)."""
    held = held_out_qids(cfg.data, cfg.train_split, cfg.dev_queries)
    queries = load_dataset(cfg.data).split_queries(cfg.train_split) if held else {}
    return {q: queries[q] for q in sorted(held) if q in queries}


def ablation_filler(source: str, examples: list[dict], seed: int = 0):
    """eval_reasoning `source`: test queries get what the ablation put in <think> during training (the
    teacher wrote only for train queries, so `teacher` has no such form); `random` draws the train rows'
    mean keyword count from their pool."""
    if source not in ("nothing", "random", "query"):
        raise InputError(f"eval_reasoning source needs reasoning nothing, random or query, not '{source}'",
                         field="eval_reasoning")  # fmt: skip
    pool = _pool(examples)
    n = round(sum(len(_keywords(ex["reasoning"])) for ex in examples) / len(examples))

    def fill(query_id: str, query: str) -> str:
        if source == "random":
            return _draw(pool, n, f"{seed}:{query_id}")
        return "" if source == "nothing" else query

    return fill


def evaluate_reasoner(emb: ReasoningEmbedder, names: list[str], reasoning: str = "self", split: str = "test",
                      k: int = 1000, fill=None, runs_dir: str | None = None) -> dict[str, dict]:  # fmt: skip
    """nDCG@10 etc. per dataset through the shared ReasoningRetriever; queries think first (`self`: greedy,
    the model's own reasoning), embed directly (`none`), or carry `fill(query_id, query)` in <think>
    (`source`, the ablations' own form). With `runs_dir`, each run is kept there as DATASET.trec."""
    from irlm.eval import evaluate, write_trec

    out = {}
    for name in names:
        ds = load_dataset(name)
        queries = ds.split_queries(split)
        system = ReasoningRetriever.build(ds.corpus, emb, reasoning, fill)
        samples = system.think(queries)
        run = system.search(queries, k, samples)
        out[name] = evaluate(run, ds.qrels[split])
        if runs_dir:
            write_trec(run, Path(runs_dir) / f"{ds.name}.trec", tag="reasoning")
        if samples:
            out[name].update(thought_metrics(emb, samples))
    return out


def thought_metrics(emb: ReasoningEmbedder, samples: list) -> dict[str, float]:
    """Of greedy (thought, raw) samples: `closed`, the share the model closed itself with </think><emb> within
    its budget, and `think_format`, the share that also passes LREM's format check (a non-empty thought)."""
    decoded = [THINK_OPEN + emb.tokenizer.decode(raw) for _, raw in samples]
    closed = [is_closed(raw, emb.end, emb.emb, emb.reasoning_tokens) for _, raw in samples]
    return {"closed": sum(closed) / len(samples), "think_format": sum(map(format_reward, decoded)) / len(samples)}
