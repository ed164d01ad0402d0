"""DRAMA data augmentation (METHODS.md §2): cropping, synthetic queries, listwise reranking, triplets.

Each strategy turns *units* (documents, or pseudo-queries for rerank) into training examples
(query, positives, hard negatives) carrying their provenance. Output is appended one line per
unit and flushed per batch; units already in the output (or in its `.skipped.jsonl` sidecar)
are not redone, so a killed run restarts where it stopped without duplicates or losses.

    irlm augment --strategy crop --data scifact --n 1000 --out runs/drama/crop.jsonl
"""

from __future__ import annotations

import json
import logging
import os
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

from tqdm.auto import tqdm

from irlm.data import load_dataset
from irlm.data.beir import iter_jsonl
from irlm.data.training import TrainExample
from irlm.errors import InputError
from irlm.methods.drama import prompts
from irlm.methods.drama.config import STRATEGIES, AugmentConfig
from irlm.methods.drama.parse import parse_query, parse_ranking, parse_triplet
from irlm.models.generator import BudgetExceeded, SamplingParams
from irlm.types import Corpus, Document
from irlm.utils import write_json

log = logging.getLogger(__name__)
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=[A-Z0-9(\"'])")


@dataclass
class Outcome:
    """One unit's result: an example, or None with the reason and the last raw generation."""

    unit: str
    example: TrainExample | None
    invalid: int = 0  # invalid generations seen for this unit (retried or not)
    reason: str = ""
    raw: str = ""


@dataclass
class Stats:
    examples: int = 0
    skipped: int = 0
    invalid_generations: int = 0
    usage: dict = field(default_factory=dict)


# ---- pure helpers --------------------------------------------------------------------------------


def split_sentences(text: str) -> list[str]:
    return [s.strip() for s in _SENTENCE.split(text) if s.strip()]


def crop_query(doc: Document, rng: random.Random, min_words: int = 6) -> str | None:
    """One random sentence of the document body long enough to be a pseudo-query (paper: augmentation 1)."""
    candidates = [s for s in split_sentences(doc.text) if len(s.split()) >= min_words]
    return rng.choice(candidates) if candidates else None


def split_ranks(ranked: list[str], n_positives: int, negatives_from: int, top_k: int) -> tuple[list, list]:
    """Ranks 1..m are positives, ranks negatives_from..top_k (1-based) hard negatives."""
    return ranked[:n_positives], ranked[max(n_positives, negatives_from - 1) : top_k]


def sliding_windows(n: int, window: int, step: int) -> list[tuple[int, int]]:
    """RankGPT's passes, back to front, so the best candidates bubble up to the first window."""
    if n <= window:
        return [(0, n)]
    out, end = [], n
    while True:
        start = max(0, end - window)
        out.append((start, end))
        if start == 0:
            return out
        end -= step


def apply_window(order: list, start: int, end: int, perm: list[int]) -> list:
    """`order` with its slice [start, end) permuted by `perm` (indices local to the slice)."""
    part = order[start:end]
    return order[:start] + [part[i] for i in perm] + order[end:]


def sample_units(ids: list[str], n: int, seed: int) -> list[str]:
    """A seeded sample, in a fixed order: the same config always names the same units."""
    return random.Random(seed).sample(sorted(ids), min(n, len(ids)))


# ---- the output file -----------------------------------------------------------------------------


def skipped_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".jsonl") + ".skipped.jsonl")


def stats_path(out: Path) -> Path:
    return out.with_name(out.name.removesuffix(".jsonl") + ".stats.json")


def _repair(path: Path) -> None:
    """Drop a last line cut short by a kill: everything before it was flushed whole."""
    if not path.exists() or path.stat().st_size == 0:
        return
    data = path.read_bytes()
    if not data.endswith(b"\n"):
        with open(path, "r+b") as f:
            f.truncate(data.rfind(b"\n") + 1)


def finished_units(out: Path) -> set[str]:
    done = set()
    for path in (out, skipped_path(out)):
        _repair(path)
        if path.exists():
            done.update(str(obj.get("id")) for _, obj in iter_jsonl(path))
    return done


def check_same_source(out: Path, cfg: AugmentConfig) -> None:
    """A rerun resumes `out`; one of another dataset or strategy would mix its examples into it (and skip its
    units whose ids happen to match), so it is refused before any work."""
    recorded = {}
    if out.is_file() and out.stat().st_size:
        with open(out, encoding="utf-8", errors="replace") as f:
            try:
                recorded = json.loads(f.readline())
            except ValueError:
                recorded = {}
    if not isinstance(recorded, dict) or "data" not in recorded:
        try:
            recorded = json.loads(stats_path(out).read_text()).get("config", {})
        except (OSError, ValueError, AttributeError):
            return
    for key in ("data", "strategy"):
        was, now = recorded.get(key), getattr(cfg, key)
        if was is not None and was != now:
            raise InputError(f"--out {out} already holds examples made with {key} '{was}'; this run has {key} "
                             f"'{now}' and would mix them in: give another --out")  # fmt: skip


def append(outcomes: list[Outcome], out: Path) -> None:
    with open(out, "a", encoding="utf-8") as ok, open(skipped_path(out), "a", encoding="utf-8") as bad:
        for o in outcomes:
            if o.example is not None:
                ok.write(json.dumps({**o.example.to_json(), "id": o.unit}, ensure_ascii=False) + "\n")
            else:
                bad.write(json.dumps({"id": o.unit, "reason": o.reason, "raw": o.raw}, ensure_ascii=False) + "\n")
        for f in (ok, bad):
            f.flush()
            os.fsync(f.fileno())


# ---- the augmenter -------------------------------------------------------------------------------


class Augmenter:
    """Runs one strategy over units. `generator` is any irlm generator (None for crop)."""

    def __init__(self, cfg: AugmentConfig, corpus: Corpus, generator=None, retriever=None):
        if cfg.strategy not in STRATEGIES:
            raise InputError(f"unknown strategy '{cfg.strategy}'; choose {', '.join(STRATEGIES)}")
        self.cfg, self.generator, self.retriever = cfg, generator, retriever
        self.docs = {d.id: d for d in corpus.docs}
        self.invalid = 0

    def provenance(self, **extra) -> dict:
        c, llm = self.cfg, self.cfg.strategy != "crop"
        return {"strategy": c.strategy, "teacher": self.generator.name if llm and self.generator else None,
                "retriever": c.retriever if c.strategy != "triplet" else None,
                "prompt_version": prompts.PROMPT_VERSION if llm else None, "data": c.data, **extra}  # fmt: skip

    def text(self, doc_id: str) -> str:
        return self.docs[doc_id].full_text()

    def ask(self, chats: list, parse, max_new: int, stop: tuple = ()) -> tuple[list, list[int], list[str]]:
        """Generate and parse each chat (`parse`: one function, or one per chat); invalid ones are retried
        with sampling, then given up (None). Returns parsed values, invalid counts and last raw texts."""
        c = self.cfg
        parsers = parse if isinstance(parse, list) else [parse] * len(chats)
        parsed, invalid, raw = [None] * len(chats), [0] * len(chats), [""] * len(chats)
        pending = list(range(len(chats)))
        for attempt in range(c.retries + 1):
            temp = c.temperature if attempt == 0 else c.retry_temperature
            params = SamplingParams(max_new_tokens=max_new, temperature=temp, stop=list(stop), seed=c.seed + attempt)
            gens = self.generator.generate([chats[i] for i in pending], params)
            still = []
            for i, g in zip(pending, gens):
                raw[i], parsed[i] = g.text, parsers[i](g.text)
                if parsed[i] is None:
                    invalid[i] += 1
                    still.append(i)
            pending = still
            if not pending:
                break
        self.invalid += sum(invalid)
        return parsed, invalid, raw

    def retrieve(self, queries: dict[str, str]) -> dict[str, list[str]]:
        run = self.retriever.search(queries, k=self.cfg.top_k)
        return {qid: sorted(hits, key=hits.get, reverse=True) for qid, hits in run.items()}

    def from_queries(self, units: list[str], queries: list[str | None], sources: list[str], invalid=None,
                     raw=None) -> list[Outcome]:  # fmt: skip
        """Crop/qgen: a pseudo-query's top-k split into positives and hard negatives (paper 1-2)."""
        c, invalid, raw = self.cfg, invalid or [0] * len(units), raw or [""] * len(units)
        ranked = self.retrieve({u: q for u, q in zip(units, queries) if q})
        out = []
        for u, q, src, bad, text in zip(units, queries, sources, invalid, raw):
            if not q:
                out.append(Outcome(u, None, bad, "no usable query", text))
                continue
            pos, neg = split_ranks(ranked.get(u, []), c.n_positives, c.negatives_from, c.top_k)
            if not pos:
                out.append(Outcome(u, None, bad, "retriever found nothing", text))
                continue
            meta = self.provenance(source_doc=src, positive_ids=pos, negative_ids=neg)
            ex = TrainExample(q, [self.text(d) for d in pos], [self.text(d) for d in neg], meta)
            out.append(Outcome(u, ex, bad))
        return out

    def crop(self, units: list[str]) -> list[Outcome]:
        qs = [crop_query(self.docs[u], random.Random(f"{self.cfg.seed}:{u}"), self.cfg.min_sentence_words)
              for u in units]  # fmt: skip
        return self.from_queries(units, qs, units)

    def qgen(self, units: list[str]) -> list[Outcome]:
        chats = [prompts.qgen_prompt(self.text(u), self.cfg.doc_words) for u in units]
        qs, invalid, raw = self.ask(chats, parse_query, self.cfg.max_new_tokens or 48, stop=("\n",))
        return self.from_queries(units, qs, units, invalid, raw)

    def triplet(self, units: list[str]) -> list[Outcome]:
        chats = [prompts.triplet_prompt(self.text(u), self.cfg.doc_words) for u in units]
        parse = lambda text: parse_triplet(prompts.TRIPLET_PREFILL + text)  # noqa: E731
        parsed, invalid, raw = self.ask(chats, parse, self.cfg.max_new_tokens or 256)
        out = []
        for u, p, bad, text in zip(units, parsed, invalid, raw):
            if p is None:
                out.append(Outcome(u, None, bad, "no valid triplet", text))
            else:
                out.append(Outcome(u, TrainExample(p[0], [p[1]], [p[2]], self.provenance(source_doc=u)), bad))
        return out

    def rerank(self, units: list[str], queries: dict[str, str]) -> list[Outcome]:
        """The teacher reorders each query's top-k; its top-1 is the positive, ranks ~10-20 negatives (paper 3)."""
        c = self.cfg
        ranked = self.retrieve({u: queries[u] for u in units})
        orders = {u: ranked.get(u, []) for u in units}
        failed: dict[str, tuple[int, str]] = {}
        window = self.fit_window(queries, orders)
        passes = {u: sliding_windows(len(o), window, min(c.step, max(1, window // 2))) for u, o in orders.items()}
        for j in range(max(map(len, passes.values()), default=0)):
            live = [u for u in units if j < len(passes[u]) and u not in failed and orders[u]]
            chats = [self.window_chat(queries[u], orders[u], *passes[u][j]) for u in live]
            sizes = [passes[u][j][1] - passes[u][j][0] for u in live]
            parsers = [lambda t, n=n: parse_ranking("[" + t, n) for n in sizes]  # "[" was prefilled
            perms, invalid, raw = self.ask(chats, parsers, c.max_new_tokens or 6 * window + 8)
            for u, perm, bad, text in zip(live, perms, invalid, raw):
                if perm is None:  # retries spent: the unit is skipped rather than half-reranked
                    failed[u] = (bad, text)
                else:
                    orders[u] = apply_window(orders[u], *passes[u][j], perm)
        return [self.reranked(u, queries[u], orders[u], ranked.get(u, []), failed.get(u)) for u in units]

    def reranked(self, unit: str, query: str, order: list[str], before: list[str], failure) -> Outcome:
        if failure is not None or not order:
            bad, text = failure or (0, "")
            return Outcome(unit, None, bad, "no valid ranking" if failure else "retriever found nothing", text)
        pos, neg = order[:1], order[self.cfg.rerank_negatives_from - 1 : self.cfg.top_k]
        meta = self.provenance(positive_ids=pos, negative_ids=neg, retriever_ids=before)
        return Outcome(unit, TrainExample(query, [self.text(d) for d in pos], [self.text(d) for d in neg], meta))

    def window_chat(self, query: str, order: list[str], start: int, end: int) -> list[dict]:
        return prompts.rerank_prompt(query, [self.text(d) for d in order[start:end]], self.cfg.passage_words)

    def fit_window(self, queries: dict[str, str], orders: dict[str, list[str]]) -> int:
        """The largest window whose prompt (and answer) fits the teacher's context; sliding windows cover the rest."""
        window = self.cfg.window
        for u, order in orders.items():
            while window > 2:
                need = self.generator.count_tokens(self.window_chat(queries[u], order, 0, window)) + 6 * window + 8
                if need <= self.generator.context_length:
                    break
                window -= 1
        return window


# ---- the run -------------------------------------------------------------------------------------


def make_retriever(spec: str, corpus: Corpus, device: str | None = None):
    """`bm25`, `dense:<model>` (built on the corpus now) or a folder from `irlm index`."""
    from irlm.index import BM25Retriever, DenseRetriever, load_retriever

    if spec == "bm25":
        return BM25Retriever.build(corpus)
    if spec.startswith("dense:"):
        from irlm.models import LLMEncoder

        return DenseRetriever.build(corpus, LLMEncoder.from_pretrained(spec.removeprefix("dense:"), device=device))
    if not Path(spec).is_dir():
        raise InputError(f"retriever '{spec}' is not bm25, dense:<model> or an index folder")
    return load_retriever(spec, device=device)


def plan(cfg: AugmentConfig, corpus: Corpus) -> tuple[list[str], dict[str, str]]:
    """The units to process, in order, and (rerank only) each unit's pseudo-query."""
    if cfg.strategy != "rerank":
        return sample_units(corpus.ids, cfg.n, cfg.seed), {}
    if cfg.queries_from:  # reuse crop/qgen queries; the unit id carries over so provenance links them
        rows = [obj for _, obj in iter_jsonl(cfg.queries_from)][: cfg.n]
        return [str(r["id"]) for r in rows], {str(r["id"]): r["query"] for r in rows}
    docs = {d.id: d for d in corpus.docs}
    queries = {u: crop_query(docs[u], random.Random(f"{cfg.seed}:{u}"), cfg.min_sentence_words)
               for u in sample_units(corpus.ids, cfg.n, cfg.seed)}  # fmt: skip
    return [u for u, q in queries.items() if q], {u: q for u, q in queries.items() if q}


def process(aug: Augmenter, units: list[str], queries: dict[str, str]) -> list[Outcome]:
    s = aug.cfg.strategy
    return aug.rerank(units, queries) if s == "rerank" else getattr(aug, s)(units)


def _stats(out: Path, before: dict, aug: Augmenter, generator) -> dict:
    """Counts from the files themselves (exact after any resume) plus this run's invalid and token totals."""
    lines = [sum(1 for _ in open(p, encoding="utf-8")) if p.exists() else 0 for p in (out, skipped_path(out))]
    usage = generator.usage.as_dict() if generator is not None else {}
    return {"examples": lines[0], "skipped": lines[1],
            "invalid_generations": before.get("invalid_generations", 0) + aug.invalid,
            "this_run": {"invalid_generations": aug.invalid, **usage}, "config": vars(aug.cfg)}  # fmt: skip


def run_augment(cfg: AugmentConfig, generator=None, retriever=None) -> dict:
    """Process every unit not yet in `cfg.out`; returns (and writes beside it) the run's counts."""
    from irlm.models.generator import load_generator

    out = Path(cfg.out)
    check_same_source(out, cfg)
    corpus = load_dataset(cfg.data).corpus
    out.parent.mkdir(parents=True, exist_ok=True)
    if generator is None and cfg.strategy != "crop":
        generator = load_generator(cfg.teacher, device=cfg.device, batch_size=cfg.batch_size, budget=cfg.token_budget)
    if retriever is None and cfg.strategy != "triplet":
        retriever = make_retriever(cfg.retriever, corpus, cfg.device)
    aug = Augmenter(cfg, corpus, generator, retriever)
    units, queries = plan(cfg, corpus)
    done = finished_units(out)
    todo = [u for u in units if u not in done]
    before = json.loads(stats_path(out).read_text()) if stats_path(out).exists() and done else {}
    chunk = 256 if cfg.strategy == "crop" else cfg.batch_size  # flushed per chunk: a kill loses at most one
    bar = tqdm(total=len(units), initial=len(units) - len(todo), desc=cfg.strategy, unit="item")
    try:
        for i in range(0, len(todo), chunk):
            append(process(aug, todo[i : i + chunk], queries), out)
            stats = _stats(out, before, aug, generator)
            write_json(stats_path(out), stats)
            bar.update(len(todo[i : i + chunk]))
            rate = stats["this_run"].get("completion_tokens_per_s", 0)
            bar.set_postfix(tok_s=rate, invalid=stats["invalid_generations"])
    except BudgetExceeded as e:
        log.warning("%s; stopping, finished work is in %s", e, out)
    bar.close()
    stats = _stats(out, before, aug, generator)
    write_json(stats_path(out), stats)
    return stats
