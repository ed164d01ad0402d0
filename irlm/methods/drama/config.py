"""Settings of DRAMA (Ma et al., ACL 2025): data augmentation and retriever training on it.

Defaults cite their source; "paper" is METHODS.md §2 and the review in ../shared/seeds.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from irlm.train.settings import TrainSettings

STRATEGIES = ("crop", "qgen", "rerank", "triplet")


@dataclass
class AugmentConfig:
    strategy: str = "crop"  # crop|qgen|rerank|triplet (paper §2, augmentation 1-4)
    data: str = "scifact"  # corpus the pseudo-queries come from
    out: str = "runs/drama/crop.jsonl"  # appended to; a rerun resumes it
    n: int = 500  # documents (crop, qgen, triplet) or queries (rerank) to process
    teacher: str = "smollm2-135m"  # generator: model name/folder, or http://host:port/v1[#model]
    retriever: str = "bm25"  # bm25 | dense:<model> | a retriever folder (irlm index)
    top_k: int = 20  # candidates per pseudo-query; paper reranks the top-20
    n_positives: int = 1  # crop/qgen: ranks 1..m are positives (paper: top-1..m); m=1 keeps false positives out
    negatives_from: int = 5  # crop/qgen: hard negatives are ranks negatives_from..top_k (1-based)
    rerank_negatives_from: int = 10  # rerank: after the LLM's ordering, ranks ~10-20 are hard negatives (paper)
    queries_from: str | None = None  # rerank: reuse the queries of a crop/qgen file; default: crop on the fly
    passage_words: int = 40  # rerank: each candidate cut to this many words: 20 of them make a ~1.2k-token prompt
    doc_words: int = 200  # qgen/triplet: the passage shown to the teacher
    window: int = 20  # rerank: candidates per prompt; shrunk automatically to fit the context
    step: int = 10  # rerank: sliding-window stride (RankGPT's 20/10)
    max_new_tokens: int = 0  # 0 = per strategy (qgen 48, rerank 4 per candidate + 16, triplet 256)
    temperature: float = 0.0  # first attempt greedy; retries sample at retry_temperature
    retry_temperature: float = 0.7
    retries: int = 2  # an invalid generation is retried this many times, then the item is skipped
    batch_size: int = 8  # prompts per generate call
    token_budget: int | None = None  # stop cleanly after this many teacher tokens (prompt + completion)
    min_sentence_words: int = 6  # crop: shorter sentences make poor pseudo-queries
    seed: int = 42
    device: str | None = None

    def __post_init__(self):
        """Refuse a setting that would run silently wrong (`top_k=-1` once slices `ranked[:-1]`), one line each."""
        from irlm.errors import InputError

        if self.strategy not in STRATEGIES:
            raise InputError(f"strategy: unknown value '{self.strategy}'; choose {', '.join(STRATEGIES)}")
        least = {"n": 1, "top_k": 1, "n_positives": 1, "negatives_from": 1, "rerank_negatives_from": 1,
                 "passage_words": 1, "doc_words": 1, "window": 2, "step": 1, "max_new_tokens": 0, "retries": 0,
                 "batch_size": 1, "min_sentence_words": 1, "token_budget": 1}  # fmt: skip
        for name, low in least.items():
            value = getattr(self, name)
            if value is not None and value < low:
                raise InputError(f"setting {name} must be at least {low}, got {value}")
        for name in ("temperature", "retry_temperature"):
            if not 0 <= getattr(self, name) <= 2:
                raise InputError(f"setting {name} must be between 0 and 2, got {getattr(self, name)}")


@dataclass
class RetrieverConfig(TrainSettings):
    """A retriever trained with InfoNCE on the original training pairs plus augmented files (paper: FT + aug)."""

    data: str = "scifact"  # original training pairs: the train_split qrels, BM25-mined negatives
    train_split: str = "train"
    augment_files: list[str] = field(default_factory=list)  # JSONL from `irlm augment`, added to the pairs
    dev_queries: int = 0  # > 0: hold out this many train queries (a fixed draw, the same for every seed) as DATA-dev
    augment_limit: int = 0  # > 0: the first N examples of each file, so ablation rows differ in source, not volume
    eval_data: list[str] = field(default_factory=lambda: ["scifact", "cranfield"])
    # also score the dense run fused with BM25's: RRF (k 60) as DATA+bm25, and min-max weighted as
    # DATA+bm25-weighted, with the dense weight tuned on `data`'s dev split (needs dev_queries) for every eval set
    hybrid: bool = True
    output_dir: str = "runs/drama/ft"  # the trained retriever (final/), checkpoints and results.json
    steps: int = 30  # the same for every ablation row: more data, not more updates
    temperature: float = 0.05  # METHODS.md §0
    n_negatives: int = 1
    cache_chunk: int = 0
    # > 0: freeze the embeddings and the first F layers and train the rest on cached layer-F states
    # (irlm.train.cached): about 3x the pairs per second at F = 20 of SmolLM2's 30 (bench/train.py --sweep)
    cache_layers: int = 0
    activations: str = ""  # cache folder; default $IRLM_CACHE/activations/<fingerprint of the frozen weights>
    activation_dtype: str = "bf16"  # bf16 halves the disk (a 5k-document corpus at 128 tokens: ~0.7 GB)
    pooling: str = "mean"  # METHODS.md §0: mean beat last-token for SmolLM2-135M at this budget
    max_length: int = 128
    lowercase: bool = True  # queries arrive in any casing; SmolLM2's tokenizer is cased (README: Casing)
    # > 0: re-write this share of the training queries and passages in upper, title or lower case (the
    # alternative to lowercase: the model sees casings instead of never seeing case; README: Casing)
    case_augment: float = 0.0
    save_every: int = 10  # 30 steps on CPU: a checkpoint every 10 loses at most a third of them

    def __post_init__(self):
        from irlm.errors import InputError

        if not 0 <= self.case_augment <= 1:
            raise InputError(f"setting case_augment must be between 0 and 1, got {self.case_augment}")
        if self.case_augment and self.lowercase:
            raise InputError("case_augment needs lowercase: false (folded text reads every casing alike anyway)")


@dataclass
class PruneConfig(TrainSettings):
    """Structured pruning to a target shape. The default shape is about a third of SmolLM2-135M's
    non-embedding parameters (30 layers, hidden 576, 3 kv heads, intermediate 1536 -> 0.30x)."""

    text: list[str] = field(default_factory=lambda: ["scifact", "nq-open-oracle", "cranfield"])  # LM text
    output_dir: str = "runs/drama/prune"  # the pruned model is written to output_dir/final
    layers: int = 20
    hidden: int = 384
    kv_heads: int = 2  # whole key/value groups go, with their query heads (GQA stays uniform)
    intermediate: int = 1024
    steps: int = 200
    block_size: int = 256  # tokens per LM example
    max_blocks: int = 0  # 0 = all the text
    batch_size: int = 8  # blocks of block_size tokens per step
    lr: float = 1e-4  # weights; Sheared-LLaMA prunes with 1e-4
    mask_lr: float = 0.1  # mask logits and multipliers: 0.1 / 0.1 converged within 0.01 of every target
    lambda_lr: float = 0.1  # on a tiny model in 200 steps (tests/integration/test_prune.py)
    target_warmup: float = 0.5  # targets slide from full size to the final shape over this share of steps
    # the last share of steps trains the weights under frozen gates while the structures outside the target
    # fade to 0, so the export is the model trained (prune.PruneTask; 0 = no hardening: the export then
    # differs from the soft-gated model, by prune_report.json's export_gap)
    harden: float = 0.2
    # also drive the expected non-embedding parameter count to the target shape's (Sheared-LLaMA); off by
    # default: as a product of the structures' fractions it pulls against their own targets
    constrain_params: bool = False
    # initial P(z != 0): at 0.95, ~5 % of hidden dims dropped per step sent SmolLM2 LM loss to 16
    init_keep: float = 0.999


@dataclass
class PretrainConfig(TrainSettings):
    """Recovery: continued next-token pretraining of a pruned model (paper: after pruning, before InfoNCE)."""

    model: str = "runs/drama/prune/final"  # the pruned model to recover (a prune stage's output_dir/final)
    text: list[str] = field(default_factory=lambda: ["scifact", "nq-open-oracle", "cranfield"])  # corpora as LM text
    output_dir: str = "runs/drama/pretrain"  # the recovered model is written to output_dir/final
    steps: int = 100  # optimizer steps; tokens seen = steps x batch_size x block_size
    block_size: int = 256  # tokens per training block (texts are concatenated, then cut)
    max_blocks: int = 0  # > 0: use only the first N blocks of text (a quick run)
    batch_size: int = 8  # blocks per step
    lr: float = 1e-4  # Sheared-LLaMA continued pretraining used 1e-4
