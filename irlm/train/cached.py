"""Cheaper steps: train only the top of a decoder on cached layer-F activations.

The token embeddings and the first F layers are frozen, so the hidden state that enters layer F is
a pure function of (frozen weights, token ids). It is computed once per distinct token sequence,
kept on disk (bf16, memory-mapped) and reused by every later step, epoch, seed and recipe; forward
and backward then run through layers F.. only. Every step is the step of the full model with those
layers frozen (tests/integration/test_cached.py checks loss and gradients). A causal LM trained with teacher
forcing uses the same cache, fill and fingerprint: irlm.train.cached_lm.

Causal attention makes a real token's state independent of right padding, so states are stored
per sequence without padding and padded again at collate time.

    enc = CachedEncoder.wrap(LLMEncoder.from_pretrained("smollm2-135m"), layers=20)
    enc.fill(texts)                  # one pass through the lower layers, with progress and ETA
    task = ContrastiveTask(enc)      # the shared loop, GradCache and evaluation work unchanged

On disk: ``$IRLM_CACHE/activations/<fingerprint of the frozen weights, F and dtype>/`` holds
``parts/part-*.bin`` (rows of C values, appended) and ``index.jsonl`` (sha1 of the token ids ->
part, first row, rows). Data is flushed before its index line is written, so a killed fill loses
at most the rows nobody points to yet.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist
from torch import nn
from tqdm.auto import tqdm

from irlm.errors import InputError
from irlm.models.encoder import LLMEncoder
from irlm.progress import bar as progress_bar
from irlm.train.loop import autocast, world
from irlm.utils import bf16_is_faster, cache_dir

MARKER = ".irlm-activations.json"
_NUMPY = {"bf16": np.uint16, "fp32": np.float32}  # bf16 travels as its raw 16 bits
_TORCH = {"bf16": torch.bfloat16, "fp32": torch.float32}


def decoder_of(model) -> nn.Module:
    """The module holding `embed_tokens`, `layers` and `norm` (through a peft wrapper, if any)."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    if not hasattr(base, "embed_tokens") and hasattr(base, "get_decoder"):  # a causal LM: its body
        base = base.get_decoder()
    if all(hasattr(base, a) for a in ("embed_tokens", "layers", "norm", "rotary_emb")):
        return base
    kind = getattr(getattr(base, "config", None), "model_type", type(base).__name__)
    raise InputError(f"cached activations need a rotary decoder (Llama, Qwen, Mistral, SmolLM); got '{kind}'")


@contextmanager
def only_layers(decoder: nn.Module, layers: list[nn.Module], final_norm: bool = True):
    """Run `decoder` with a slice of its layers (and without its final norm when asked), then restore it.
    The slice lives only inside the call, so parameter names, checkpoints and saving see the whole model."""
    full, norm = decoder._modules["layers"], decoder._modules["norm"]
    decoder._modules["layers"] = nn.ModuleList(layers)
    if not final_norm:
        decoder._modules["norm"] = nn.Identity()
    try:
        yield
    finally:
        decoder._modules["layers"], decoder._modules["norm"] = full, norm


def freeze_lower(model, layers: int) -> None:
    """Freeze the token embeddings and the first `layers` layers: what the cache stands in for."""
    dec = decoder_of(model)
    if not 0 < layers < len(dec.layers):
        raise InputError(f"cache_layers must be between 1 and {len(dec.layers) - 1} for this model; got {layers}")
    for module in [dec.embed_tokens, *dec.layers[:layers]]:
        module.requires_grad_(False)


def fingerprint(model, layers: int, dtype: str) -> str:
    """Hash of every frozen weight (names and bytes), F and the stored dtype: the cache's key."""
    dec = decoder_of(model)
    h = hashlib.sha1(f"{layers}:{dtype}:{type(dec).__name__}".encode())
    for module in [dec.embed_tokens, *dec.layers[:layers]]:
        for name, p in module.named_parameters():
            h.update(name.encode())
            h.update(p.detach().cpu().contiguous().view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:20]


def ids_key(ids: list[int]) -> str:
    return hashlib.sha1(np.asarray(ids, dtype=np.int64).tobytes()).hexdigest()


class ActivationCache:
    """Rows of hidden states per token sequence, appended to part files and memory-mapped for reading."""

    def __init__(self, folder: str | Path, dim: int, dtype: str = "bf16", meta: dict | None = None,
                 writable: bool = True):  # fmt: skip
        if dtype not in _NUMPY:
            raise InputError(f"activation dtype must be one of {', '.join(_NUMPY)}; got '{dtype}'")
        self.folder, self.dim, self.dtype, self.writable = Path(folder), dim, dtype, writable
        self._claim({"dim": dim, "dtype": dtype, **(meta or {})})
        self.index: dict[str, tuple[str, int, int]] = {}
        self._maps: dict[str, np.ndarray] = {}
        self._part, self._rows = None, 0
        self.reload()

    def _claim(self, meta: dict) -> None:
        marker = self.folder / MARKER
        if marker.is_file():
            self._check_same(marker, meta)
            return
        if self.folder.exists() and any(self.folder.iterdir()):
            raise InputError(f"{self.folder} exists and is not an irlm activation cache; choose another folder")
        if self.writable:  # the marker first: a reader racing this sees an empty folder or a marked one
            self.folder.mkdir(parents=True, exist_ok=True)
            marker.write_text(json.dumps(meta, indent=2) + "\n")
            (self.folder / "parts").mkdir(exist_ok=True)

    def _check_same(self, marker: Path, meta: dict) -> None:
        """States of other frozen weights or another F must never be read as ours (a folder given by hand)."""
        try:
            known = json.loads(marker.read_text()).get("fingerprint")
        except (ValueError, AttributeError):
            known = None
        if known and meta.get("fingerprint") not in (None, known):
            raise InputError(f"{self.folder} caches the states of another model or layer count (fingerprint {known}, "
                             f"here {meta['fingerprint']}); choose another folder")  # fmt: skip

    def reload(self) -> None:
        """Read index.jsonl (other processes may have added to it); a torn last line is ignored."""
        path = self.folder / "index.jsonl"
        if not path.is_file():
            return
        for line in path.read_text().splitlines():
            try:
                row = json.loads(line)
                self.index[row["k"]] = (row["p"], row["o"], row["n"])
            except (json.JSONDecodeError, KeyError, TypeError):
                continue

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def get(self, key: str) -> torch.Tensor:
        """(T, C) states of one sequence, copied out of the memory map."""
        part, start, rows = self.index[key]
        data = self._map(part, start + rows)[start : start + rows]
        return torch.from_numpy(np.array(data)).view(_TORCH[self.dtype])

    def _map(self, part: str, rows: int) -> np.ndarray:
        mapped = self._maps.get(part)
        if mapped is None or len(mapped) < rows:  # the part grew since it was mapped
            path = self.folder / "parts" / part
            n = path.stat().st_size // (self.dim * np.dtype(_NUMPY[self.dtype]).itemsize)
            mapped = np.memmap(path, dtype=_NUMPY[self.dtype], mode="r", shape=(n, self.dim))
            self._maps[part] = mapped
        return mapped

    def add(self, keys: list[str], states: list[torch.Tensor]) -> None:
        """Append sequences' states ((T_i, C) each); data reaches the disk before the index names it."""
        if not self.writable:
            return
        if self._part is None:  # a new part per writer: a killed writer's tail is never appended to
            self._part = f"part-{uuid.uuid4().hex[:12]}.bin"
        lines = []
        with open(self.folder / "parts" / self._part, "ab") as f:
            for key, s in zip(keys, states):
                raw = s.detach().to(_TORCH[self.dtype]).cpu().contiguous()
                f.write(raw.view(torch.int16 if self.dtype == "bf16" else torch.float32).numpy().tobytes())
                lines.append({"k": key, "p": self._part, "o": self._rows, "n": len(s)})
                self._rows += len(s)
            f.flush()
            os.fsync(f.fileno())
        with open(self.folder / "index.jsonl", "a") as f:
            f.write("".join(json.dumps(row) + "\n" for row in lines))
        for row in lines:
            self.index[row["k"]] = (row["p"], row["o"], row["n"])

    def nbytes(self) -> int:
        return sum(p.stat().st_size for p in (self.folder / "parts").glob("part-*.bin"))


def fill_cache(cache: ActivationCache, rows: list[list[int]], compute, batch_size: int, device, desc: str,
               progress: bool = True) -> int:  # fmt: skip
    """Store the states of every distinct token sequence in `rows` that `cache` lacks, longest first (batches of
    like lengths pad little); `compute(rows, keys)` runs the lower layers and adds the states. Returns how many."""
    seqs = {ids_key(row): row for row in rows}
    todo = sorted((k for k in seqs if k not in cache), key=lambda k: -len(seqs[k]))
    fast = cache.dtype == "bf16" and bf16_is_faster(device)  # stored as bf16 anyway
    precision = autocast(torch.device(device).type, "bf16" if fast else "fp32")
    with precision, progress_bar("fill", whole=True, total=len(todo), desc=desc, unit="seq",
                                 disable=not progress) as bar:  # fmt: skip
        for start in range(0, len(todo), batch_size):
            keys = todo[start : start + batch_size]
            compute([seqs[k] for k in keys], keys)
            bar.update(len(keys))
    return len(todo)


def gather_states(cache: ActivationCache, rows: list[list[int]], width: int, compute) -> torch.Tensor:
    """(B, width, C) layer-F states of `rows`, right-padded with zeros; rows nobody filled (an evaluation
    corpus) are computed now by `compute(rows, keys)` and stored."""
    keys = [ids_key(row) for row in rows]
    missing = [i for i, k in enumerate(keys) if k not in cache]
    fresh = {}
    if missing:
        fresh = dict(zip(missing, compute([rows[i] for i in missing], [keys[i] for i in missing])))
    states = torch.zeros(len(rows), width, cache.dim, dtype=_TORCH[cache.dtype])
    for i, k in enumerate(keys):
        s = fresh[i] if i in fresh else cache.get(k)
        states[i, : len(s)] = s.to(states.dtype)
    return states


def filled(wrapped, fill):
    """`wrapped` (anything with a `cache`) after `fill()` ran on rank 0 alone, the other ranks waiting and then
    reading its rows; `filled` on the result says how many sequences this process computed."""
    rank, size = world()
    wrapped.filled = fill() if rank == 0 else 0
    if rank == 0:
        tqdm.write(f"activation cache {wrapped.cache.folder}: {len(wrapped.cache.index)} sequences, "
                   f"{wrapped.cache.nbytes() / 2**20:.0f} MB ({wrapped.filled} computed now)")  # fmt: skip
    if size > 1:
        dist.barrier()
        wrapped.cache.reload()
    return wrapped


def cached_encoder(encoder: LLMEncoder, layers: int, texts: list[str], folder: str | Path | None = None,
                   dtype: str = "bf16") -> CachedEncoder:  # fmt: skip
    """Wrap `encoder` and cache `texts`: rank 0 computes what is missing, the other ranks wait and read it.
    `filled` on the result says how many sequences this process computed."""
    enc = CachedEncoder.wrap(encoder, layers, folder, dtype, writable=world()[0] == 0)
    return filled(enc, lambda: enc.fill(texts))


class CachedEncoder(LLMEncoder):
    """An LLMEncoder whose lower `layers` are frozen and read from an ActivationCache.

    It shares the wrapped encoder's model, tokenizer and config (saving writes the whole model), and
    `collate` adds `inputs_embeds` (the layer-F states) to each batch, so `embed(**batch)` runs the top only.
    """

    @classmethod
    def wrap(cls, encoder: LLMEncoder, layers: int, folder: str | Path | None = None, dtype: str = "bf16",
             writable: bool = True) -> CachedEncoder:  # fmt: skip
        freeze_lower(encoder.model, layers)
        key = fingerprint(encoder.model, layers, dtype)
        folder = Path(folder) if folder else cache_dir() / "activations" / key
        meta = {"model": encoder.config.model, "layers": layers, "fingerprint": key}
        out = cls.__new__(cls)
        out.__dict__.update(encoder.__dict__)
        out.layers, out.cache = layers, ActivationCache(folder, encoder.dim, dtype, meta, writable)
        return out

    # ---- the lower layers, run once per sequence ----------------------------------------------
    @torch.no_grad()
    def lower_states(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B, T) -> (B, T, C): the hidden states entering layer F, as the full model computes them."""
        dec = decoder_of(self.model)
        with only_layers(dec, list(dec.layers[: self.layers]), final_norm=False):
            return self.run(attention_mask, input_ids=input_ids, use_cache=False).float()

    def fill(self, texts: list[str], batch_size: int | None = None, progress: bool = True) -> int:
        """Cache every text's states that is not cached yet (tokenised as training does); returns how many."""
        rows = self.tokenize(list(dict.fromkeys(texts)))
        return fill_cache(self.cache, rows, self._compute, batch_size or self.config.batch_size, self.device,
                          f"cache layer-{self.layers} states", progress)  # fmt: skip

    def _compute(self, rows: list[list[int]], keys: list[str]) -> list[torch.Tensor]:
        batch = super().collate(rows)
        states = self.lower_states(batch["input_ids"], batch["attention_mask"])  # (B, T, C)
        out = [s[: len(r)] for s, r in zip(states, rows)]  # right padding: real tokens come first
        self.cache.add(keys, out)
        return out

    # ---- batches and the top layers -------------------------------------------------------------
    def collate(self, ids: list[list[int]]) -> dict[str, torch.Tensor]:
        batch = super().collate(ids)
        if self.tokenizer.padding_side != "right":
            raise InputError("cached activations need right padding (padding_side: right)")
        states = gather_states(self.cache, ids, batch["input_ids"].shape[1], self._compute)
        batch["inputs_embeds"] = states.to(self.device)
        return batch

    def hidden(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
               inputs_embeds: torch.Tensor | None = None) -> torch.Tensor:  # fmt: skip
        """Last hidden states from the top layers; (B, T, C) layer-F states in, computed when not given."""
        if inputs_embeds is None:
            inputs_embeds = self.lower_states(input_ids, attention_mask)
        dec = decoder_of(self.model)
        with only_layers(dec, list(dec.layers[self.layers :])):
            return self.run(attention_mask, inputs_embeds=inputs_embeds.to(dec.norm.weight.dtype), use_cache=False)
