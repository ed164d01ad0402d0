"""Settings of the reasoning embedders; defaults cite METHODS.md §4 (LREM) and §5 (Search-R3)."""

from __future__ import annotations

from dataclasses import dataclass, field

from irlm.train.settings import TrainSettings


@dataclass
class ReasoningConfig(TrainSettings):
    stage: str = "coldstart"  # data | coldstart | grpo
    preset: str = "lrem"  # reward preset: lrem | searchr3
    model: str = "smollm2-135m"  # coldstart: the base LLM; grpo: the cold-started folder
    data: str = "scifact"
    train_split: str = "train"
    eval_data: list[str] = field(default_factory=lambda: ["scifact"])
    output_dir: str = "runs/reasoning"  # this stage's model, checkpoints and results.json
    reasoning_file: str = "runs/reasoning/reasoning.jsonl"  # written by stage data, read by coldstart
    # stage data: model name/folder or http://host:port/v1[#model] (an LLM reasons, keywords.condense cuts it),
    # or a teacher without an LLM (prf.py): prf-bm25 (salient words of BM25's top prf_docs documents) or
    # prf-positive (salient words of the query's judged positive)
    teacher: str = "smollm2-135m"
    prf_docs: int = 3  # prf-bm25: feedback documents per query
    reasoning_tokens: int = 16  # LREM: reasoning of at most 16 tokens
    # cold start: the teacher's thoughts are cut to the whole keywords that fit in this many tokens (0 =
    # reasoning_tokens). Below the budget it leaves a margin: greedy thoughts run a token or two longer than
    # the thoughts they were taught, and cut at the budget itself they then close past it
    thought_tokens: int = 0
    max_keywords: int = 16
    max_length: int = 128
    max_queries: int = 0  # stage data: reason about the first N train queries only (0 = all)
    # what fills <think> in cold start: teacher (the data file's keywords) or an ablation (LREM §4):
    # nothing (an empty <think></think>), random (keywords of other queries), query (the query repeated),
    # none (no think block at all: direct embedding, evaluated without reasoning)
    reasoning: str = "teacher"
    # cold start (LREM: lambda1 0.1, lambda2 1, lr 1e-5 cosine, warm-up 3 %, batch 128, 1 epoch)
    lambda_sft: float = 0.1
    lambda_nce: float = 1.0
    # a heavier SFT weight for the first sft_early_steps steps, so the format (closing with </think><emb>)
    # is learnt before InfoNCE leads (not in LREM; 0 steps = LREM's constant lambda_sft)
    lambda_sft_early: float = 1.0
    sft_early_steps: int = 0
    # GRPO (LREM: G 8, 1.0 GRPO + 0.1 InfoNCE, lr 1e-6, batch 256)
    group: int = 8
    gamma_grpo: float = 1.0
    gamma_nce: float = 0.1
    clip: float = 0.2  # DeepSeekMath epsilon
    # updates per sampled batch (DeepSeekMath's mu): the first takes the ratio at 1, the later ones against the
    # sampling-time log-probs, so the clip acts only with mu > 1 (each sampled batch then serves mu steps)
    ppo_epochs: int = 2
    kl_coef: float = 0.04  # DeepSeekMath beta: k3 KL to the frozen starting model (0 = no reference kept)
    # rank reward: a sample that never closed its thought with </think><emb> is not ranked (no accuracy or
    # DCG term); true pays it the rank of the embedding at the </think><emb> appended for it
    pay_unclosed: bool = False
    sample_temperature: float = 1.0
    temperature: float = 0.05  # InfoNCE
    # samples per forward/backward in a GRPO step (0 = all B*G at once). Smaller holds fewer activations,
    # with the same gradients, for one extra no-grad forward per step.
    grpo_chunk: int = 0
    # what a GRPO sample is ranked against: batch (LREM: the batch's documents) or corpus (Search-R3's
    # environment: the whole corpus, kept current by selective re-embedding, irlm/methods/reasoning/env.py)
    rank_against: str = "batch"
    # batch: N of LREM's rank accuracy, the batch's documents plus corpus documents judged relevant to no train
    # query, drawn at random (LREM ranks among a batch of 256; 16 in-batch documents leave the reward near its
    # ceiling). Kept current as the env keeps the corpus (env_top_k, env_slice). 0 = the batch's documents alone
    rank_docs: int = 256
    env_docs: int = 0  # corpus: the first N documents plus every train positive (0 = the whole corpus)
    env_top_k: int = 10  # corpus: each step re-encodes the samples' top-k neighbours ...
    env_slice: int = 64  # ... and this many more documents of a rolling schedule
    steps: int = 50
    batch_size: int = 16  # queries per step (LREM: 128 cold start, 256 GRPO)
    lr: float = 1e-5  # LREM cold start: 1e-5 (its GRPO: 1e-6)
    schedule: str = "cosine"  # LREM cold start: lr 1e-5 cosine, warm-up 3 % (irlm/train/loop.py SCHEDULES)
    save_every: int = 25  # half of the default 50 steps
    # hold out this many train queries (a fixed draw, the same for every seed) as DATA-dev: never trained on,
    # their greedy thoughts' closed share is logged every probe_every cold-start steps and reported at the end
    dev_queries: int = 0
    probe_every: int = 10
    # self (the model thinks, greedy) | none (direct embedding) | source (an ablation's own filler: an
    # empty think, the query, or random train keywords, as in its training)
    eval_reasoning: str = "self"
