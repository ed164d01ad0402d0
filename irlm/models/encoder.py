"""LLMEncoder: a transformers backbone + pooling + normalisation, with save/load.

Example:
    >>> enc = LLMEncoder.from_pretrained("minilm-l6")  # doctest: +SKIP
    >>> enc.encode_queries(["what is bm25?"]).shape  # doctest: +SKIP
    (1, 384)
"""

from __future__ import annotations

import inspect
import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from irlm.config_files import did_you_mean
from irlm.errors import InputError
from irlm.models import pooling
from irlm.models.resolve import encoder_defaults, resolve_model
from irlm.progress import bar as progress_bar
from irlm.utils import atomic_path, bf16_is_faster, pick_device

CONFIG_FILE = "irlm_encoder.json"
ENCODER_TYPES = {"bert", "roberta", "xlm-roberta", "mpnet", "distilbert", "electra", "deberta", "deberta-v2",
                 "modernbert", "nomic_bert", "xlm_roberta"}  # fmt: skip


@dataclass
class EncoderConfig:
    model: str  # bundled short name, hub id or folder
    pooling: str = "last"  # last|eos|mean|cls|token; last-token suits decoders (METHODS.md §0)
    pool_token: str | None = None  # with pooling=token: the special token whose state is the embedding
    query_prefix: str = ""  # instruction prepended to queries
    passage_prefix: str = ""
    max_length: int = 512  # tokens, including the appended EOS / pool token
    normalize: bool = True  # L2: cosine similarity becomes a dot product
    # case-fold every text (prefix included) before tokenising: a cased tokenizer otherwise reads "VITAMIN D"
    # and "vitamin D" as unrelated; retrievers trained by irlm switch it on. Unicode case folding, not
    # str.lower: "5 µG" upper-cased and back would otherwise differ from "5 µg" (micro sign vs mu)
    lowercase: bool = False
    append_eos: bool = True  # decoders need an explicit end token to summarise into
    padding_side: str = "right"
    dtype: str = "auto"  # auto|bf16|fp32; auto = bf16 where it is faster than fp32 on this device
    batch_size: int = 32
    trust_remote_code: bool = False  # off unless asked: remote code runs with your rights

    def __post_init__(self):
        # checked before the model loads: a tokenizer given max_length <= 0 silently stops truncating, and a
        # pool token of None fails deep inside transformers
        if self.max_length < 1:
            raise InputError(f"encoder setting max_length must be at least 1, got {self.max_length}")
        if self.pooling == "token" and not self.pool_token:
            raise InputError("encoder setting pooling 'token' needs pool_token, the token whose state is the "
                             "embedding (e.g. '<emb>'; a model saved with one keeps it in irlm_encoder.json)")

    @classmethod
    def from_dict(cls, d: dict, source: str | None = None) -> EncoderConfig:
        """An EncoderConfig from a mapping; an unknown key (a typo, or a file from another version) is
        refused with the nearest valid name rather than dropped. source: the file it came from."""
        known = [f.name for f in fields(cls)]
        unknown = sorted(set(d) - set(known))
        if unknown:
            raise InputError(f"unknown encoder setting '{unknown[0]}'{did_you_mean(unknown[0], known)}", source)
        return cls(**d)


def _infer_defaults(path: str, trust_remote_code: bool) -> dict:
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(path, trust_remote_code=trust_remote_code)
    if cfg.model_type in ENCODER_TYPES:
        return {"pooling": "mean", "append_eos": False, "max_length": 512}
    return {}


def _load_config(name: str, overrides: dict) -> tuple[EncoderConfig, str]:
    saved = Path(name) / CONFIG_FILE
    if saved.is_file():
        stored = json.loads(saved.read_text())
        stored.pop("trust_remote_code", None)  # a received file must not switch remote code on
        EncoderConfig.from_dict({**stored, "model": name}, str(saved))  # a bad key in the file names the file
        cfg = EncoderConfig.from_dict({**stored, **overrides, "model": name})
        return cfg, name
    path = resolve_model(name)
    trust = overrides.get("trust_remote_code", False)
    try:
        inferred = encoder_defaults(name) or _infer_defaults(path, trust)
    except OSError as e:
        raise InputError(f"model '{name}' resolves to nothing: {str(e).splitlines()[0]}") from None
    return EncoderConfig.from_dict({**inferred, **overrides, "model": name}), path


class LLMEncoder:
    """Backbone + pooling; `embed` keeps gradients for training, `encode_*` are batched inference."""

    def __init__(self, model, tokenizer, config: EncoderConfig, device: str = "cpu", lm_head=None):
        self.model, self.tokenizer, self.config, self.device = model, tokenizer, config, device
        self.lm_head = lm_head  # only for objectives that generate text from the backbone (anchor Stage I)
        # positions come from the mask so left padding cannot shift them; RoBERTa-style models number
        # their positions from padding_idx + 1, so they get that offset
        params = inspect.signature(model.forward).parameters.values()  # a peft wrapper takes **kwargs
        self._takes_positions = any(p.name == "position_ids" or p.kind == p.VAR_KEYWORD for p in params)
        mcfg = model.config
        offset_types = {"roberta", "xlm-roberta", "mpnet", "camembert", "longformer"}
        self._position_offset = mcfg.pad_token_id + 1 if mcfg.model_type in offset_types else 0
        self._suffix = self._suffix_ids()
        if config.max_length <= len(self._suffix):  # no room left for text: the tokenizer would not truncate at all
            raise InputError(f"encoder setting max_length {config.max_length} leaves no room for text after the "
                             f"{len(self._suffix)} end token(s); give at least {len(self._suffix) + 1}")  # fmt: skip

    @classmethod
    def from_pretrained(cls, name: str, device: str | None = None, with_lm_head: bool = False,
                        **overrides) -> LLMEncoder:  # fmt: skip
        """Load an encoder; `with_lm_head` also keeps the language-model head (tied weights stay tied)."""
        from transformers import AutoModel, AutoModelForCausalLM, AutoTokenizer

        cfg, path = _load_config(name, {k: v for k, v in overrides.items() if v is not None})
        device = pick_device(device)
        dtype = _dtype(cfg.dtype, device)
        try:
            tok = AutoTokenizer.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
            auto = AutoModelForCausalLM if with_lm_head else AutoModel
            model = auto.from_pretrained(path, dtype=dtype, trust_remote_code=cfg.trust_remote_code)
        except OSError as e:
            raise InputError(f"model '{name}' resolves to nothing: {str(e).splitlines()[0]}") from None
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        tok.padding_side = cfg.padding_side
        if cfg.pooling == "token" and cfg.pool_token not in tok.get_vocab():
            tok.add_special_tokens({"additional_special_tokens": [cfg.pool_token]})
            model.resize_token_embeddings(len(tok))
        model = model.to(device).eval()
        if with_lm_head:
            return cls(model.get_decoder(), tok, cfg, device, lm_head=model.get_output_embeddings())
        return cls(model, tok, cfg, device)

    def _suffix_ids(self) -> list[int]:
        cfg, tok = self.config, self.tokenizer
        if cfg.pooling == "token":
            if not cfg.pool_token:
                raise InputError("pooling 'token' needs pool_token (e.g. '<emb>')")
            return [tok.convert_tokens_to_ids(cfg.pool_token)]
        eos = cfg.append_eos or cfg.pooling == "eos"  # EOS pooling needs the token it pools
        return [tok.eos_token_id] if eos and tok.eos_token_id is not None else []

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        """Token ids per text, truncated so that the suffix (EOS / pool token) always fits."""
        room = self.config.max_length - len(self._suffix)
        if self.config.lowercase:
            texts = [t.casefold() for t in texts]
        ids = self.tokenizer(texts, truncation=True, max_length=room, add_special_tokens=True)["input_ids"]
        eos = [self.tokenizer.eos_token_id]
        if self._suffix == eos:  # a tokenizer that ends every text with EOS already gets no second one
            return [row if row[-1:] == eos else row + eos for row in ids]
        return [row + self._suffix for row in ids]

    def collate(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        # lengths rounded up to a multiple of 16: fewer distinct shapes, so CPU kernels are reused
        batch = self.tokenizer.pad({"input_ids": ids}, padding=True, pad_to_multiple_of=16, return_tensors="pt")
        return {k: v.to(self.device) for k, v in batch.items()}

    def run(self, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        """The backbone's last hidden states (B, T, C); `inputs` holds input_ids or inputs_embeds."""
        if self._takes_positions:  # positions from the mask, so left padding does not shift them
            inputs["position_ids"] = (attention_mask.long().cumsum(-1) - 1).clamp(min=0) + self._position_offset
        return self.model(attention_mask=attention_mask, **inputs).last_hidden_state

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.run(attention_mask, input_ids=input_ids)

    def embed(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        """Pooled (and normalised) embeddings with gradients. (B, T) -> (B, C) in fp32.
        Extra `inputs` from a subclass's collate (cached states) go to its `hidden`."""
        emb = self.pooled(input_ids, attention_mask, **inputs)
        return F.normalize(emb, dim=-1) if self.config.normalize else emb

    def pooled(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        """Pooled hidden states before normalisation, with gradients. (B, T) -> (B, C) in fp32."""
        hidden = self.hidden(input_ids, attention_mask, **inputs)
        token_id = self._suffix[0] if self.config.pooling == "token" else None
        return pooling.pool(self.config.pooling, hidden, attention_mask, input_ids, token_id).float()

    @torch.inference_mode()
    def encode(self, texts: list[str], batch_size: int | None = None, progress: bool = True, desc="encode"):
        """Embed texts in length-sorted batches (less padding); returns float32 (N, C) in input order."""
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        ids = self.tokenize(list(texts))
        order = np.argsort([-len(r) for r in ids], kind="stable")
        out = np.zeros((len(ids), self.dim), dtype=np.float32)
        bs = batch_size or self.config.batch_size
        with progress_bar("eval", total=len(ids), desc=desc, unit="text", disable=not progress) as bar:
            for start in range(0, len(ids), bs):
                idx = order[start : start + bs]
                batch = self.collate([ids[i] for i in idx])
                out[idx] = self.embed(**batch).cpu().numpy()  # a subclass may add inputs (cached states)
                bar.update(len(idx))
        return out

    def encode_queries(self, queries: list[str], **kw) -> np.ndarray:
        return self.encode([self.config.query_prefix + q for q in queries], desc="encode queries", **kw)

    def encode_corpus(self, docs: list[str], **kw) -> np.ndarray:
        return self.encode([self.config.passage_prefix + d for d in docs], desc="encode corpus", **kw)

    @property
    def dim(self) -> int:
        return self.model.config.hidden_size

    def save(self, folder: str | Path) -> None:
        """Write weights (safetensors), tokenizer and the encoder config into one folder."""
        model = self.model
        if hasattr(model, "merge_and_unload"):  # LoRA: write a plain model with the adapters folded in
            import copy

            model = copy.deepcopy(model).merge_and_unload()
        with atomic_path(folder, "model") as tmp:
            model.save_pretrained(tmp, safe_serialization=True)
            self.tokenizer.save_pretrained(tmp)
            saved = {k: v for k, v in asdict(self.config).items() if k != "trust_remote_code"}
            (tmp / CONFIG_FILE).write_text(json.dumps(saved, indent=2) + "\n")


def _dtype(name: str, device: str) -> torch.dtype:
    if name == "auto":
        return torch.bfloat16 if bf16_is_faster(device) else torch.float32
    return {"bf16": torch.bfloat16, "fp32": torch.float32, "fp16": torch.float16}[name]
