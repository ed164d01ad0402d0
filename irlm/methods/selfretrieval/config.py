"""Settings of Self-Retrieval (Tang et al., NeurIPS 2024); "paper" is METHODS.md §3 and ../shared/seeds."""

from __future__ import annotations

from dataclasses import dataclass

from irlm.errors import InputError
from irlm.train.settings import TrainSettings

SCORINGS = ("paper", "joint")


@dataclass
class SelfRetrievalConfig(TrainSettings):
    data: str = "nq-open-oracle"  # BEIR folder with titles; answers.jsonl beside it enables answering
    train_split: str = "train"
    eval_split: str = "test"
    output_dir: str = "runs/selfretrieval"  # the model that memorised the corpus (final/) and results.json
    # training data (paper: indexing, retrieval, self-assessment, answers)
    indexing: bool = True  # sentence -> whole passage over the whole corpus (ablation: False)
    titles: bool = True  # generate the title, then the passage (ablation: passages only)
    assessment: bool = True  # "can answer" / "cannot answer" pairs, answers after the positive ones
    index_sentences: int = 2  # sentences per passage used as indexing prompts
    assessment_negatives: int = 1  # BM25's best non-gold passages per train question
    max_passage_tokens: int = 64  # passages are learned and matched on their first N tokens
    max_prompt_tokens: int = 64
    # training (the shared loop; precision, seed, device: TrainSettings')
    steps: int = 300
    batch_size: int = 16  # examples per step
    lr: float = 1e-4  # its own, not the contrastive methods' 5e-5 (TrainSettings)
    save_every: int = 100  # a third of the default 300 steps
    # > 0: freeze the embeddings and the first F layers and train the rest on their cached states (teacher forcing
    # makes them a function of the tokens; irlm.train.cached_lm); 0: every weight trains, as before
    cache_layers: int = 0
    dev_queries: int = 0  # > 0: hold out this many train questions (a fixed draw) as dev; every scoring is scored there
    # inference (paper: 5 titles, 10 passages per title, tau = delta = 0.4)
    title_beams: int = 5
    passage_beams: int = 10
    # paper: S = softmax(P(t|q) / tau) * softmax((1 - P(reject)) / delta), so the passages under one title are
    # ordered by the verdict, P(p|q,t) breaking ties; joint: P(t, p|q) as the first factor (irlm before issue 31)
    tau: float = 0.4
    delta: float = 0.4
    scoring: str = "paper"
    max_title_tokens: int = 32
    max_answer_tokens: int = 16
    eval_limit: int = 0  # > 0: the first N eval questions (CPU budgets)
    batch_queries: int = 8

    def __post_init__(self):
        if self.scoring not in SCORINGS:
            raise InputError(f"scoring: unknown value '{self.scoring}'; choose {' or '.join(SCORINGS)}")
        for name in ("title_beams", "passage_beams", "max_title_tokens", "max_passage_tokens"):
            if getattr(self, name) < 1:
                raise InputError(f"{name}: must be at least 1, got {getattr(self, name)}")
