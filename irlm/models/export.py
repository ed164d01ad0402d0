"""Export an irlm encoder for other tools: a sentence-transformers folder, optionally with an ONNX graph.

Everything irlm does around the backbone is written in the formats those tools already read, so the
folder needs no custom code (no trust_remote_code):

- pooling (last/eos/token -> ST "lasttoken", mean, cls) and L2 normalisation: ST's Pooling and
  Normalize modules (1_Pooling/, 2_Normalize/);
- query/passage prefixes: ST prompts "query" and "passage" (also as "document", the name ST looks up
  first) in config_sentence_transformers.json, which `encode_query` / `encode_document` pick up;
- plain text: the Transformer module is pinned to the text modality, so ST does not render inputs
  through the tokenizer's chat template (it would for a chat model);
- max length: the tokenizer's model_max_length (ST's max_seq_length);
- the appended EOS / pool token: a TemplateProcessing post-processor in tokenizer.json, so every
  consumer of the tokenizer (ST, TEI, transformers, tokenizers) appends it, and truncation leaves room
  for it exactly as irlm does;
- lowercase: a Lowercase normalizer in tokenizer.json, then Unicode case folding's extra replacements;
- padding side: right. irlm's vectors do not depend on it (positions come from the mask), while a
  plain transformers forward pass counts positions from the first column, so right padding gives
  irlm's vectors in every tool.

`--format onnx` writes the same folder plus onnx/model.onnx (fp32, exported with torch.onnx), whose
outputs are `last_hidden_state` (what optimum-style consumers pool themselves) and
`sentence_embedding` (pooled and normalised, irlm's vector). `OnnxEncoder` runs it with onnxruntime.

Example:
    >>> export_encoder("runs/ft/final", "exported/st")  # doctest: +SKIP
    >>> SentenceTransformer("exported/st").encode_query(["what is bm25?"])  # doctest: +SKIP
"""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import torch

from irlm.errors import InputError
from irlm.models import pooling
from irlm.utils import atomic_path, check_output

FORMATS = ("sentence-transformers", "onnx")
ST_POOLING = {"last": "lasttoken", "eos": "lasttoken", "token": "lasttoken", "mean": "mean", "cls": "cls"}
ONNX_FILE = "onnx/model.onnx"
# texts the export is checked on before the folder is moved into place: cased, Greek final sigma, long
PROBES = ["What is BM25?", "ΟΔΟΣ and Straße", "a longer passage " * 200]


def _folds() -> dict[str, str]:
    """Lower-case characters whose Unicode case folding differs (ß -> ss, ς -> σ, µ -> μ, ...): irlm's
    `lowercase` is str.casefold(), which equals tokenizers' Lowercase followed by these replacements."""
    out = {}
    for cp in range(0x110000):
        if not 0xD800 <= cp <= 0xDFFF:
            for ch in chr(cp).lower():
                if ch.casefold() != ch:
                    out[ch] = ch.casefold()
    return out


def export_encoder(model_dir: str | Path, out_dir: str | Path, fmt: str = "sentence-transformers",
                   force: bool = False) -> Path:  # fmt: skip
    """Write `model_dir` (a folder saved by `LLMEncoder.save`, or any name irlm loads) as `fmt` into `out_dir`.

    Refuses an `out_dir` that is a non-empty folder irlm did not make, or one of another kind than an export
    (unless `force`; never a run directory), and any setting the target
    format cannot reproduce (InputError naming the setting). The folder is checked before it is
    moved into place: the reloaded tokenizer gives irlm's token ids on probe texts, and the ONNX graph
    gives irlm's vectors to 1e-3.
    """
    from irlm.models.encoder import LLMEncoder

    if fmt not in FORMATS:
        raise InputError(f"unknown export format '{fmt}'; choose from {', '.join(FORMATS)}")
    needed = ["sentence_transformers"] + (["onnx", "onnxscript", "onnxruntime"] if fmt == "onnx" else [])
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise InputError(f"export to {fmt} needs {', '.join(missing)}: pip install 'irlm[dev]'")
    out = check_output(out_dir, "--out", folder=True, kind="export", force=force)  # before loading a model
    enc = LLMEncoder.from_pretrained(str(model_dir), device="cpu", dtype="fp32")
    positions = getattr(enc.model.config, "max_position_embeddings", None)
    if positions and positions > 0 and enc.config.max_length > positions:  # as sentence-transformers caps it;
        enc.config.max_length = positions  # irlm itself fails on texts longer than the model's positions
    with atomic_path(out, "export") as tmp:
        _write_sentence_transformers(enc, tmp)
        _check_tokens(enc, tmp)
        if fmt == "onnx":
            _write_onnx(enc, tmp / ONNX_FILE)
            _check_onnx(enc, tmp)
    return out


def _st_modules():
    try:  # sentence-transformers >= 6
        from sentence_transformers.base.modules import Normalize, Transformer
        from sentence_transformers.sentence_transformer.modules import Pooling
    except ImportError:  # 3.x to 5.x
        from sentence_transformers.models import Normalize, Pooling, Transformer
    return Transformer, Pooling, Normalize


def _write_sentence_transformers(enc, folder: Path) -> None:
    from sentence_transformers import SentenceTransformer

    cfg = enc.config
    if cfg.pooling not in ST_POOLING:
        raise InputError(f"pooling '{cfg.pooling}' has no sentence-transformers equivalent; cannot export")
    backbone = folder / "backbone"  # transformers' own folder first, then ST's Transformer loads it
    enc.model.save_pretrained(backbone, safe_serialization=True)
    tok = _portable_tokenizer(enc)
    tok.save_pretrained(backbone)
    Transformer, Pooling, Normalize = _st_modules()
    # plain text only: ST renders text through a tokenizer's chat template whenever it has one
    text_only = {"text": {"method": "forward", "method_output_name": "last_hidden_state"}}
    word = Transformer(str(backbone), max_seq_length=cfg.max_length, modality_config=text_only,
                       module_output_name="token_embeddings")  # fmt: skip
    modules = [word, Pooling(enc.dim, pooling_mode=ST_POOLING[cfg.pooling])]
    if cfg.normalize:
        modules.append(Normalize())
    # encode_document looks for "document" before "passage"; ST adds an empty "document" unless given one
    prompts = {"query": cfg.query_prefix, "document": cfg.passage_prefix, "passage": cfg.passage_prefix}
    st = SentenceTransformer(modules=modules, prompts=prompts, device="cpu",
                             similarity_fn_name="cosine" if cfg.normalize else "dot")  # fmt: skip
    st.save(str(folder))
    import shutil

    shutil.rmtree(backbone)


def _portable_tokenizer(enc):
    """irlm's tokenizer, doing irlm's text handling by itself: right padding, irlm's max length, and where
    set, the lowercase normalizer and the appended EOS / pool token in its post-processor. A changed one is
    saved as the generic fast tokenizer class: model-specific classes (BertTokenizer, ...) rebuild their
    normalizer and post-processor from their own settings on load and would drop these."""
    import copy

    from tokenizers import normalizers, processors
    from transformers import PreTrainedTokenizerFast

    cfg, tok = enc.config, enc.tokenizer
    if not (cfg.lowercase or enc._suffix):
        tok = copy.deepcopy(tok)
        tok.padding_side, tok.model_max_length = "right", cfg.max_length
        return tok
    if not getattr(tok, "is_fast", False):
        setting = "lowercase" if cfg.lowercase else "append_eos"
        raise InputError(f"{setting}: the tokenizer ({type(tok).__name__}) is not a fast tokenizer, so the "
                         "setting cannot be written into it; cannot export")  # fmt: skip
    backend = copy.deepcopy(tok.backend_tokenizer)
    if cfg.lowercase:
        lower = [normalizers.Lowercase(), *(normalizers.Replace(a, b) for a, b in sorted(_folds().items()))]
        old = backend.normalizer
        rest = list(old) if isinstance(old, normalizers.Sequence) else [old] if old is not None else []
        backend.normalizer = normalizers.Sequence(lower + rest)
    if enc._suffix:
        (token_id,) = enc._suffix
        token = tok.convert_ids_to_tokens(token_id)
        append = processors.TemplateProcessing(single=f"$A:0 {token}:0", pair=f"$A:0 {token}:0 $B:1 {token}:1",
                                               special_tokens=[(token, token_id)])  # fmt: skip
        old = backend.post_processor
        backend.post_processor = append if old is None else processors.Sequence([old, append])
    return PreTrainedTokenizerFast(tokenizer_object=backend, **tok.special_tokens_map, padding_side="right",
                                   model_max_length=cfg.max_length, chat_template=tok.chat_template)  # fmt: skip


def _check_tokens(enc, folder: Path) -> None:
    """The saved tokenizer, as any tool reloads it, gives irlm's ids for prefixed probe texts."""
    from transformers import AutoTokenizer

    cfg = enc.config
    tok = AutoTokenizer.from_pretrained(folder)
    for prefix in dict.fromkeys([cfg.query_prefix, cfg.passage_prefix]):
        texts = [prefix + t for t in PROBES]
        got = tok(texts, truncation=True)["input_ids"]  # max length from the saved tokenizer
        if got != enc.tokenize(texts):
            setting = "/".join(n for n, on in (("lowercase", cfg.lowercase), ("append_eos", enc._suffix)) if on)
            setting = setting or "max_length"
            raise InputError(f"{setting}: the exported tokenizer ({type(tok).__name__}) does not reproduce irlm's "
                             "token ids after reloading; cannot export this model")  # fmt: skip


class _Pooled(torch.nn.Module):
    """irlm's forward pass for export: backbone (positions from the mask), pooling, normalisation."""

    def __init__(self, enc):
        super().__init__()
        self.enc = enc
        self.mode = "last" if enc.config.pooling == "token" else enc.config.pooling  # the pool token is last

    def forward(self, input_ids, attention_mask):
        hidden = self.enc.hidden(input_ids, attention_mask)
        emb = pooling.pool(self.mode, hidden, attention_mask).float()
        if self.enc.config.normalize:
            emb = torch.nn.functional.normalize(emb, dim=-1)
        return hidden, emb


def _write_onnx(enc, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    ids = enc.collate(enc.tokenize(["an example to trace", "a second, longer example to trace the batch"]))
    batch, seq = torch.export.Dim("batch"), torch.export.Dim("sequence")
    shapes = {"input_ids": {0: batch, 1: seq}, "attention_mask": {0: batch, 1: seq}}
    with torch.no_grad():
        torch.onnx.export(_Pooled(enc).eval(), (ids["input_ids"], ids["attention_mask"]), str(path),
                          input_names=["input_ids", "attention_mask"],
                          output_names=["last_hidden_state", "sentence_embedding"],
                          dynamic_shapes=shapes, dynamo=True, external_data=True, verbose=False)  # fmt: skip


def _check_onnx(enc, folder: Path) -> None:
    texts = [enc.config.passage_prefix + t for t in PROBES]
    want = enc.encode(texts, progress=False)
    got = OnnxEncoder(folder).encode(texts)
    if not np.allclose(got, want, atol=1e-3):
        raise InputError(f"the ONNX graph's vectors differ from irlm's by {np.abs(got - want).max():.2g}; "
                         "cannot export this model to ONNX")  # fmt: skip


class OnnxEncoder:
    """An exported folder's onnx/model.onnx run with onnxruntime, with irlm's encode_queries/encode_corpus."""

    def __init__(self, folder: str | Path, threads: int | None = None):
        import onnxruntime as ort
        from transformers import AutoTokenizer

        folder = Path(folder)
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = threads
        self.session = ort.InferenceSession(str(folder / ONNX_FILE), opts, providers=["CPUExecutionProvider"])
        self.tokenizer = AutoTokenizer.from_pretrained(folder)  # appends EOS and lower-cases by itself
        self.prompts = json.loads((folder / "config_sentence_transformers.json").read_text()).get("prompts", {})

    def encode(self, texts: list[str], batch_size: int = 32) -> np.ndarray:
        """float32 (N, C) in input order; batches are length-sorted like irlm's."""
        ids = self.tokenizer(list(texts), truncation=True)["input_ids"]
        order = np.argsort([-len(r) for r in ids], kind="stable")
        parts = []
        for start in range(0, len(ids), batch_size):
            rows = [ids[i] for i in order[start : start + batch_size]]
            batch = self.tokenizer.pad({"input_ids": rows}, padding=True, return_tensors="np")
            feed = {"input_ids": batch["input_ids"].astype(np.int64),
                    "attention_mask": batch["attention_mask"].astype(np.int64)}  # fmt: skip
            parts.append(self.session.run(["sentence_embedding"], feed)[0])
        out = np.zeros((len(ids), parts[0].shape[1] if parts else 0), dtype=np.float32)
        if parts:
            out[order] = np.concatenate(parts)
        return out

    def encode_queries(self, queries: list[str], **kw) -> np.ndarray:
        return self.encode([self.prompts.get("query", "") + q for q in queries], **kw)

    def encode_corpus(self, docs: list[str], **kw) -> np.ndarray:
        return self.encode([self.prompts.get("passage", "") + d for d in docs], **kw)
