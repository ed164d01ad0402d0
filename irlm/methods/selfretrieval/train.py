"""Train Self-Retrieval through the shared loop, then score retrieval and answers (METHODS.md §3).

    irlm selfretrieval train --config recipes/selfretrieval-nq-tiny.yaml
"""

from __future__ import annotations

import json
import re
import string
from collections.abc import Iterator
from dataclasses import asdict, replace
from pathlib import Path

import torch

from irlm.data import load_dataset
from irlm.data.beir import write_jsonl
from irlm.data.registry import resolve_dataset
from irlm.data.training import draw_held_out
from irlm.errors import InputError
from irlm.eval import evaluate
from irlm.eval.runs import write_trec
from irlm.methods.selfretrieval import data
from irlm.methods.selfretrieval.config import SCORINGS, SelfRetrievalConfig
from irlm.methods.selfretrieval.decode import rank
from irlm.methods.selfretrieval.retriever import SelfRetriever
from irlm.train.lm import SFTTask
from irlm.train.loop import Trainer, copy_weights, init_distributed, seed_everything, train_config, world
from irlm.utils import claim_folder, pick_device, write_json

METRICS = ("hits@1", "hits@5", "mrr@5")


def dev_qids(cfg: SelfRetrievalConfig, ds) -> set[str]:
    """The held-out train questions: DRAMA's draw (irlm.data.training.held_out_qids), so the dense baseline
    trained with the same dev_queries holds out the same questions."""
    return draw_held_out(ds.qrels[cfg.train_split], cfg.dev_queries) if cfg.dev_queries else set()


def rankings(cands: list, cfg: SelfRetrievalConfig) -> dict[str, dict[str, float]]:
    """Every ranking of one question's candidates, from one generation pass: each scoring, and with verdicts
    each scoring without them too (SCORING-noassess: the first factor alone, the model's self-assessment
    left out at inference). {name: {doc_id: score}}."""
    out = {}
    for scoring in SCORINGS:
        out[scoring] = {c.doc_id: c.score for c in rank(cands, scoring, cfg.tau, cfg.delta)}
        if any(c.reject is not None for c in cands):
            bare = [replace(c, reject=None) for c in cands]
            out[f"{scoring}-noassess"] = {c.doc_id: c.score for c in rank(bare, scoring, cfg.tau, cfg.delta)}
    return out


def build_examples(cfg: SelfRetrievalConfig, ds, fmt: data.Format,
                   held_out: set[str] = frozenset()) -> tuple[list, dict[str, int]]:  # fmt: skip
    """The training mix: indexing over the whole corpus, retrieval and assessment on the train questions
    that are not held out for dev."""
    qrels = {q: r for q, r in ds.qrels[cfg.train_split].items() if q not in held_out}
    queries = {q: t for q, t in ds.split_queries(cfg.train_split).items() if q in qrels}
    parts = {"retrieval": data.retrieval_examples(queries, qrels, ds.corpus, fmt)}
    if cfg.indexing:
        parts["indexing"] = data.indexing_examples(ds.corpus, fmt, cfg.index_sentences, cfg.seed)
    if cfg.assessment:
        from irlm.index import BM25Retriever

        run = BM25Retriever.build(ds.corpus).search(queries, k=cfg.assessment_negatives + 5)
        negatives = data.hard_negatives(run, qrels, cfg.assessment_negatives, ds.corpus.ids, cfg.seed)
        answers = data.read_answers(resolve_dataset(cfg.data))
        parts["assessment"] = data.assessment_examples(queries, qrels, ds.corpus, fmt, negatives, answers)
    return [ex for part in parts.values() for ex in part], {k: len(v) for k, v in parts.items()}


def load_model(name: str, device: str | None):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from irlm.models.resolve import resolve_model

    path = resolve_model(name)
    model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    return model.to(pick_device(device)), AutoTokenizer.from_pretrained(path)


def sft_task(cfg: SelfRetrievalConfig, model, tok, examples: list) -> SFTTask:
    """The whole model trained (cache_layers 0), or its top on cached lower-layer states of every training
    sequence, filled here before the first step (irlm.train.cached_lm); either way the model saved is whole."""
    if not cfg.cache_layers:
        return SFTTask(model, tok)
    from irlm.train.cached_lm import CachedSFTTask, cached_lm

    return CachedSFTTask(cached_lm(model, cfg.cache_layers, [p + t for p, t in examples]), tok)


def train(cfg: SelfRetrievalConfig) -> dict:
    """Train, save output_dir/final (model + selfretrieval.json), evaluate; writes results.json."""
    claim_folder(cfg.output_dir, "model")  # before any model loads: a folder of another kind is refused
    init_distributed()
    seed_everything(cfg.seed)
    ds = load_dataset(cfg.data)
    model, tok = load_model(cfg.model, cfg.device)
    fmt = data.Format(tok, cfg.max_passage_tokens, cfg.max_prompt_tokens, cfg.titles)
    held_out = dev_qids(cfg, ds)
    examples, counts = build_examples(cfg, ds, fmt, held_out)
    history = []
    if cfg.steps:
        history = Trainer(sft_task(cfg, model, tok, examples), examples, train_config(cfg, cfg.steps)).fit()
    if world()[0] != 0:
        return {}
    retriever = SelfRetriever(model, tok, ds.corpus, cfg)
    final = Path(cfg.output_dir) / "final"
    final.mkdir(parents=True, exist_ok=True)
    retriever.save(final)
    results = {"config": asdict(cfg), "examples": counts, "final_loss": history[-1] if history else None,
               **evaluate_dev(retriever, ds, cfg, held_out),
               **evaluate_selfretrieval(retriever, ds, cfg, Path(cfg.output_dir))}  # fmt: skip
    summary = {"method": "selfretrieval", "output_dir": cfg.output_dir, "scoring": cfg.scoring, **results["metrics"]}
    if "dev" in results:  # the ranking dev prefers, and its test metrics (computed with the others, in one pass)
        results["dev_best"] = dev_choice(results["dev"], cfg.scoring)
        summary["dev_best"] = {"ranking": results["dev_best"], **results["rankings"][results["dev_best"]]}
    write_json(Path(cfg.output_dir) / "results.json", results)
    print(json.dumps(summary))
    return results


def dev_choice(dev: dict[str, dict[str, float]], configured: str) -> str:
    """The ranking with the best dev MRR@5 (then Hits@1); the configured one wins a tie."""
    return max(dev, key=lambda n: (dev[n]["mrr@5"], dev[n]["hits@1"], n == configured))


def evaluate_dev(retriever: SelfRetriever, ds, cfg: SelfRetrievalConfig, held_out: set[str]) -> dict:
    """{"dev": {ranking: metrics}} on the held-out train questions, every ranking (`rankings`) of the same
    candidates (generation and verdicts run once); choose `scoring` and whether to assess here, then score
    test once. {} without a dev split."""
    if not held_out:
        return {}
    queries = {q: t for q, t in ds.split_queries(cfg.train_split).items() if q in held_out}
    qrels = {q: ds.qrels[cfg.train_split][q] for q in queries}
    runs: dict[str, dict] = {}
    for qid, text in _progress(queries, "self-retrieval dev"):
        _collect(runs, qid, retriever.generate(text), cfg)
    dev = _scored(runs, qrels)
    return {"dev": dev, "dev_queries": len(queries)}


def evaluate_selfretrieval(retriever: SelfRetriever, ds, cfg: SelfRetrievalConfig, out: Path | None = None) -> dict:
    """Hits@1, Hits@5, MRR@5 of the retrieval run, and exact match of the answer after the top-1; the
    other rankings of the same candidates (`rankings`) in "rankings". With `out`, the run (SPLIT.trec),
    the others (SPLIT-NAME.trec: `irlm compare` tests them per question) and each question's answer
    (answers.jsonl) are kept there."""
    queries, qrels = ds.first_queries(cfg.eval_split, cfg.eval_limit)
    golds = data.read_answers(resolve_dataset(cfg.data))
    runs, answered = {}, []
    for qid, text in _progress(queries, "self-retrieval eval"):
        found = retriever.generate(text)
        _collect(runs, qid, found, cfg)
        ranked = runs[cfg.scoring][qid]  # the configured ranking (doc_id -> score, best first): the run and the answer
        if golds.get(qid) and ranked:
            top = next(c for c in found if c.doc_id == next(iter(ranked)))
            answer = retriever.answer(text, top)
            answered.append({"qid": qid, "question": text, "doc_id": top.doc_id, "answer": answer,
                             "gold": golds[qid], "em": exact_match(answer, golds[qid])})  # fmt: skip
    scored = _scored(runs, qrels)
    metrics = dict(scored[cfg.scoring])
    if answered:
        metrics["answer_em"] = round(sum(a["em"] for a in answered) / len(answered), 4)
    if out is not None:
        write_trec(runs[cfg.scoring], Path(out) / f"{cfg.eval_split}.trec", tag="selfretrieval")
        for name, other in runs.items():
            write_trec(other, Path(out) / f"{cfg.eval_split}-{name}.trec", tag=f"selfretrieval-{name}")
        write_jsonl(Path(out) / "answers.jsonl", answered)
    return {"metrics": metrics, "rankings": scored, "eval_queries": len(queries)}


def _collect(runs: dict, qid: str, found: list, cfg: SelfRetrievalConfig) -> None:
    """Add one question's candidates, ranked every way (`rankings`), to the runs of each ranking."""
    for name, scores in rankings(found, cfg).items():
        runs.setdefault(name, {})[qid] = scores


def _scored(runs: dict, qrels: dict) -> dict:
    return {n: {m: round(v, 4) for m, v in evaluate(r, qrels, METRICS).items()} for n, r in runs.items()}


def dev_curve(retriever: SelfRetriever, run_dir: str | Path, limit: int = 0) -> Iterator[dict]:
    """Dev metrics of every ranking at each step whose weights the run kept (`weights_every`:
    run_dir/weights/step-N.safetensors), on the first `limit` dev questions (0 = all); the model gets
    each step's trainable weights in turn and its own back at the end."""
    from safetensors.torch import load_file

    cfg, ds = retriever.cfg, load_dataset(retriever.cfg.data)
    files = sorted(Path(run_dir).glob("weights/step-*.safetensors"))
    if not files or not cfg.dev_queries:
        raise InputError(f"{run_dir}: no weights/step-*.safetensors kept (weights_every) or no dev_queries")
    held = sorted(dev_qids(cfg, ds))
    held = set(held[:limit] if limit else held)
    params = dict(retriever.model.named_parameters())
    own = {n: p.detach().clone() for n, p in params.items()}
    try:
        for f in files:  # one row as each step is scored: a long curve shows as it goes
            copy_weights(params, load_file(f))
            yield {"step": int(f.stem.split("-")[1]), **evaluate_dev(retriever, ds, cfg, held)}
    finally:
        copy_weights(params, own)


def _progress(queries: dict, desc: str):
    from tqdm.auto import tqdm

    return tqdm(queries.items(), desc=desc, total=len(queries))


def normalize_answer(text: str) -> str:
    """SQuAD's normalisation: lower case, no punctuation, no articles, single spaces."""
    text = "".join(ch for ch in text.lower() if ch not in set(string.punctuation))
    text = re.sub(r"\b(a|an|the)\b", " ", text)
    return " ".join(text.split())


def exact_match(prediction: str, golds: list[str]) -> bool:
    pred = normalize_answer(prediction)
    return any(pred == normalize_answer(g) for g in golds)
