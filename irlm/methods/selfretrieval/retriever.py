"""SelfRetriever: one causal LM that retrieves by trie-constrained generation, judges and answers.

It implements the Retriever protocol (search -> Run), so evaluation, fusion and serving are the
shared ones.
"""

from __future__ import annotations

import json
import logging
from dataclasses import asdict
from pathlib import Path

import torch
from tqdm.auto import tqdm

from irlm.index.check import write_manifest
from irlm.index.trie import TokenTrie
from irlm.methods.selfretrieval import decode, fast
from irlm.methods.selfretrieval.config import SelfRetrievalConfig
from irlm.methods.selfretrieval.data import QUERY_PROMPT, Format
from irlm.methods.selfretrieval.decode import Candidate
from irlm.types import Corpus, Queries, Run

CONFIG_FILE = "selfretrieval.json"
log = logging.getLogger(__name__)


class SelfRetriever:
    kind = "selfretrieval"
    encoder = None  # generative: it ranks by constrained decoding, with no dense encoder

    def __init__(self, model, tokenizer, corpus: Corpus, cfg: SelfRetrievalConfig):
        self.model, self.tokenizer, self.cfg = model.eval(), tokenizer, cfg
        self.fmt = Format(tokenizer, cfg.max_passage_tokens, cfg.max_prompt_tokens, cfg.titles)
        self.pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else self.fmt.eos
        self._index(corpus)
        self._warned = False  # the depth warning, once per retriever (a server searches many times)
        self.reference = False  # True: the plain search path (transformers' generate), slower, same results

    def _index(self, corpus: Corpus) -> None:
        """Title trie (titles + separator) and, under each title, its passages; or one passage trie."""
        fmt, self.size = self.fmt, len(corpus)
        self.under: dict[tuple, list[tuple[str, list[int]]]] = {}
        for doc in corpus.docs:
            key = tuple(fmt.title(doc.title) + [fmt.sep]) if fmt.titles else ()
            self.under.setdefault(key, []).append((doc.id, fmt.passage(doc.text)))
        if fmt.titles:
            self.trie = TokenTrie.build([list(k) for k in self.under])
            self.stop = fmt.sep
        else:
            docs = self.under[()]
            self.trie = TokenTrie.build([p + [fmt.eos] for _, p in docs], keys=[d for d, _ in docs])
            self.stop = fmt.eos

    @classmethod
    def load(cls, folder, corpus: Corpus, device: str | None = None) -> SelfRetriever:
        from transformers import AutoModelForCausalLM, AutoTokenizer

        from irlm.utils import pick_device

        cfg = saved_config(folder)
        model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32).to(pick_device(device))
        return cls(model, AutoTokenizer.from_pretrained(folder), corpus, cfg)

    def save(self, folder) -> None:
        self.model.save_pretrained(folder)
        self.tokenizer.save_pretrained(folder)
        (Path(folder) / CONFIG_FILE).write_text(json.dumps(asdict(self.cfg), indent=2))
        write_manifest(Path(folder), self.kind, data=self.cfg.data)  # opens with the corpus it memorised

    @property
    def depth(self) -> int:
        """The most candidates one query can yield: the paper's beams (5 x 10), not the corpus."""
        return self.cfg.title_beams * self.cfg.passage_beams if self.fmt.titles else self.cfg.passage_beams

    def __len__(self) -> int:
        """Passages searched (the corpus it was built on)."""
        return self.size

    def candidates(self, query: str, beams: int | None = None) -> list[Candidate]:
        """Titles by constrained beam search, then passages under each title, then self-assessment; ranked."""
        return decode.rank(self.generate(query, beams), self.cfg.scoring, self.cfg.tau, self.cfg.delta)

    def generate(self, query: str, beams: int | None = None) -> list[Candidate]:
        """The candidates with their log-probabilities and verdicts, not yet scored. The cached path
        (fast.py) by default; `reference = True` takes the plain one, which it must equal."""
        beams = beams or (self.cfg.title_beams if self.fmt.titles else self.cfg.passage_beams)
        limit = self.cfg.max_title_tokens if self.fmt.titles else self.cfg.max_passage_tokens + 1
        prompt = self.fmt.prompt(QUERY_PROMPT, query)
        if self.reference or not fast.SUPPORTED:
            return self._reference(query, prompt, beams, limit)
        found, kv = fast.beam_search(self.model, prompt, self.trie, self.stop, beams, limit)
        fmt, assess = self.fmt, self.fmt.assess if self.cfg.assessment else None
        if not fmt.titles:
            cands = self._whole(found)
            if assess:
                rejects = fast.verdicts(self.model, kv, [c.entry for c in cands], assess, fmt.yes, fmt.no, self.pad)
                for c, r in zip(cands, rejects):
                    c.reject = r
            return cands
        docs = [self.under.get(tuple(title), []) for title, _ in found]
        scores, rejects = fast.passages_and_verdicts(self.model, kv, [t for t, _ in found],
                                                     [[p for _, p in d] for d in docs], assess, fmt.yes, fmt.no,
                                                     self.pad)  # fmt: skip
        cands, at = [], 0
        for (title, title_logprob), under in zip(found, docs):
            here = [Candidate(d, title + p, title_logprob, scores[at + i], rejects[at + i])
                    for i, (d, p) in enumerate(under)]  # fmt: skip
            cands += sorted(here, key=lambda c: -c.passage_logprob)[: self.cfg.passage_beams]
            at += len(under)
        return cands

    def _reference(self, query: str, prompt: list[int], beams: int, limit: int) -> list[Candidate]:
        """transformers' beam search, one teacher-forced pass per title, one verdict pass."""
        found = decode.constrained_beams(self.model, [prompt], self.trie, self.stop, beams, limit, self.pad)[0]
        cands = self._passages(prompt, found) if self.fmt.titles else self._whole(found)
        if self.cfg.assessment and cands:
            prompts = [self.fmt.assessment_prompt(query, c.entry) for c in cands]
            for c, r in zip(cands, decode.reject_probs(self.model, prompts, self.fmt.yes, self.fmt.no, self.pad)):
                c.reject = r
        return cands

    def _whole(self, found) -> list[Candidate]:
        out = []
        for seq, logprob in found:
            # passages equal on their first max_passage_tokens are one entry: each of them is a candidate
            out += [Candidate(key, seq[:-1], logprob) for key in self.trie.keys_under(seq)]
        return out

    def _passages(self, prompt: list[int], titles) -> list[Candidate]:
        """P(p | q, t) by teacher forcing up to where each passage differs from its siblings; a title
        holds few passages (at most 4 in nq-open-oracle), so this is the exhaustive version of the
        paper's per-title beam search, cut to the best `passage_beams`."""
        out = []
        for title, title_logprob in titles:
            docs = self.under.get(tuple(title), [])
            lengths = decode.distinguishing_lengths([p for _, p in docs])
            conts = [p[:n] for (_, p), n in zip(docs, lengths)]
            scores = decode.sequence_logprobs(self.model, [prompt + title] * len(docs), conts, self.pad)
            ranked = sorted(zip(docs, scores), key=lambda x: -x[1])[: self.cfg.passage_beams]
            out += [Candidate(d, title + p, title_logprob, s) for (d, p), s in ranked]
        return out

    def search(self, queries: Queries, k: int = 100) -> Run:
        """The best k candidates per query; there are at most `depth`, so a larger k returns fewer (warned once)."""
        if k > self.depth and not self._warned:
            self._warned = True
            log.warning("Self-Retrieval ranks only the passages its beams generate: at most %d per query "
                        "(title_beams x passage_beams), not k=%d", self.depth, k)  # fmt: skip
        run: Run = {}
        for qid, text in tqdm(queries.items(), desc="self-retrieval", disable=len(queries) < 8):
            run[qid] = {c.doc_id: c.score for c in self.candidates(text)[:k]}
        return run

    @torch.inference_mode()
    def answer(self, query: str, cand: Candidate) -> str:
        """The answer the model writes after judging the candidate relevant (trained as yes + answer)."""
        fmt = self.fmt
        prompt = fmt.assessment_prompt(query, cand.entry) + [fmt.yes] + fmt.answer_prefix
        ids, mask = decode.left_pad([prompt], self.pad, self.model.device)
        out = self.model.generate(input_ids=ids, attention_mask=mask, do_sample=False, pad_token_id=self.pad,
                                  max_new_tokens=self.cfg.max_answer_tokens,
                                  eos_token_id=[fmt.eos, fmt.sep])  # an answer ends at the line's end
        return self.tokenizer.decode(out[0, ids.shape[1] :], skip_special_tokens=True).strip()


def saved_config(folder) -> SelfRetrievalConfig:
    """The settings a trained Self-Retrieval folder was saved with (passage length, beams, scoring, ...)."""
    return SelfRetrievalConfig(**json.loads((Path(folder) / CONFIG_FILE).read_text()))
