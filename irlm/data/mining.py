"""Training examples from qrels, with hard negatives mined from any retriever's Run."""

from __future__ import annotations

import random

from irlm.data.training import TrainExample
from irlm.types import Corpus, Qrels, Queries, Run


def mine_examples(queries: Queries, qrels: Qrels, corpus: Corpus, run: Run, n_negatives: int = 8,
                  margin: float = 0.95, skip_top: int = 0, seed: int = 0) -> list[TrainExample]:  # fmt: skip
    """One example per judged query: its relevant documents and up to `n_negatives` mined ones.

    A candidate is kept as a negative only if it is unjudged-relevant and scores below
    `margin` x the best positive's score: near-ties with a positive are likely unlabelled
    positives (the "TopK-PercPos" filter of NV-Retriever, Moreira et al. 2024). Negatives are
    sampled from the filtered top of the ranking, keeping rank order.
    """
    rng = random.Random(seed)
    text = {d.id: d.full_text() for d in corpus.docs}
    out = []
    for qid, judged in qrels.items():
        positives = [d for d, g in judged.items() if g > 0 and d in text]
        if qid not in queries or not positives:
            continue
        ranked = sorted(run.get(qid, {}).items(), key=lambda x: -x[1])[skip_top:]
        ceiling = margin * max((run.get(qid, {}).get(p, float("-inf")) for p in positives), default=float("-inf"))
        pool = [d for d, s in ranked if d not in judged and (ceiling == float("-inf") or s < ceiling)]
        pool = pool[: max(n_negatives * 3, n_negatives)]  # hard = near the top
        negs = sorted(rng.sample(range(len(pool)), min(n_negatives, len(pool))))
        meta = {"qid": qid, "positive_ids": positives, "negative_ids": [pool[i] for i in negs]}
        out.append(TrainExample(queries[qid], [text[p] for p in positives], [text[pool[i]] for i in negs], meta))
    return out
