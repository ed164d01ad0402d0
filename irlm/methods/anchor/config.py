"""Settings of anchor embeddings (Su et al., 2025); defaults cite their source."""

from __future__ import annotations

from dataclasses import dataclass, field

from irlm.train.settings import TrainSettings

PREFIX_SCALES = ("embedding", "token", "raw")


@dataclass
class AnchorConfig(TrainSettings):
    data: str = "scifact"  # training set: its `train_split` qrels give (query, positive) pairs
    train_split: str = "train"
    train_file: str | None = None  # or a JSONL of examples (irlm mine); overrides data/train_split
    # > 0: hold out this many train queries (the same draw as the DRAMA trainer's) as DATA-dev, scored at the
    # end beside eval_data, so settings are chosen without looking at test
    dev_queries: int = 0
    eval_data: list[str] = field(default_factory=lambda: ["scifact", "cranfield"])  # test splits scored at the end
    output_dir: str = "runs/anchor"  # Stage I and Stage II checkpoints in stage1/ and stage2/
    # Stage I: bidirectional reconstruction
    stage1_steps: int = 30  # 0 = plain contrastive baseline
    alpha: float = 0.2  # L_I = alpha L_Q2D + (1 - alpha) L_D2Q; 0.2 best in the paper's sweep
    stage1_lr: float = 4e-5  # paper: lr 4e-5
    target_max_length: int = 128  # tokens of the text regenerated from the embedding (paper: 512)
    # the Stage I prefix: `embedding` (the L2-normalised embedding, norm 1), `token` (that direction at the
    # mean norm of the model's input token embeddings, so the decoder reads it as it reads a token; the
    # paper feeds the embedding as a soft token) or `raw` (the pooled state, unnormalised). token: on scifact-dev
    # 0.4267 against embedding's 0.4174 (recipes/anchor-scifact-cpu.yaml; +0.009, p 0.63, so not worse) and the
    # paper's soft token
    prefix_scale: str = "token"
    # Stage I recomputes each layer's activations in backward instead of keeping them: three full passes (both
    # texts encoded, then one regenerated) at batch 32 and 256-token targets take 18.4 GiB on SmolLM2-135M
    # without it, 7.3 GiB with it, and 0.82x the time on a 2-core EPYC (bench/anchor_stage1.py)
    gradient_checkpointing: bool = True
    # Stage II: InfoNCE
    stage2_steps: int = 30
    # Stage II's lr, and batch_size, precision, seed, device: TrainSettings'
    temperature: float = 0.05  # METHODS.md §0: 0.05 beat 0.02 for SmolLM2
    n_negatives: int = 1  # hard negatives per query (mined by BM25 when no train_file)
    grad_accum: int = 1  # micro-batches per step on each process (batch_size: TrainSettings)
    cache_chunk: int = 0  # > 0: gradient caching with this many texts per chunk
    # encoder
    # METHODS.md §0: mean beat last-token for SmolLM2-135M at this budget; `eos` (the paper's) pools the
    # end token, appended where the tokenizer does not add one
    pooling: str = "mean"
    max_length: int = 128  # document tokens; 128 kept the measured CPU run at 9 minutes
    lowercase: bool = True  # queries arrive in any casing; SmolLM2's tokenizer is cased (README: Casing)
    lora_r: int = 0  # 0 = full fine-tuning
    # > 0: Stage II trains only the layers above F, on layer-F states cached from the model as Stage I left
    # it (irlm.train.cached; Stage I itself runs the full model), so Stage II gets ~3x the steps per minute
    cache_layers: int = 0
    activations: str = ""  # cache folder; default $IRLM_CACHE/activations/<fingerprint of the frozen weights>
    save_every: int = 10  # each stage is 30 steps on CPU: a checkpoint every 10 loses at most a third

    def __post_init__(self):
        from irlm.errors import InputError

        if self.prefix_scale not in PREFIX_SCALES:
            raise InputError(f"prefix_scale: unknown value '{self.prefix_scale}'; choose {', '.join(PREFIX_SCALES)}")
        if self.dev_queries < 0 or (self.dev_queries and self.train_file):
            raise InputError("dev_queries must be 0 or more, and holds out qrels queries (not train_file examples)")
        if self.cache_layers < 0:
            raise InputError(f"setting cache_layers must be 0 or more, got {self.cache_layers}")
        if self.cache_layers and self.lora_r:  # adapters on the frozen layers would change the cached states
            raise InputError("cache_layers and lora_r do not combine in anchor training; set one of them to 0")
