"""`export_encoder`: a saved irlm encoder becomes a folder that sentence-transformers and onnxruntime load
and that encodes to irlm's vectors (1e-5 through sentence-transformers, 1e-3 through ONNX in fp32).

Each case saves a tiny random encoder with irlm's settings, exports it once, and compares the
exported folder's vectors with irlm's own `encode_queries` / `encode_corpus` on texts that exercise
the settings: upper case and a Greek final sigma (lowercase), a text longer than max_length
(truncation that keeps the appended EOS), and different lengths in one batch (padding).
"""

from __future__ import annotations

import numpy as np
import pytest

from irlm.errors import InputError
from irlm.models.encoder import LLMEncoder
from irlm.models.export import OnnxEncoder, export_encoder

TEXTS = ["Why do DOGS bark at the Postman?", "ΟΔΟΣ ΚΑΙ ΣΟΦΙΑ", "the nile river flows north " * 20, "x"]

CASES = {  # name: (fixture, irlm settings, format)
    "decoder-last": ("llama_dir", {"pooling": "last", "query_prefix": "Query: ", "passage_prefix": "Passage: ",
                                   "lowercase": True, "max_length": 24, "padding_side": "left"}, "onnx"),
    "decoder-mean": ("llama_dir", {"pooling": "mean", "query_prefix": "Instruct: find the passage\nQuery: ",
                                   "max_length": 32}, "sentence-transformers"),
    "bert-mean": ("bert_dir", {"max_length": 20, "query_prefix": "query: ", "passage_prefix": "passage: "}, "onnx"),
    "bert-cls": ("bert_dir", {"pooling": "cls", "normalize": False}, "sentence-transformers"),
}  # fmt: skip


@pytest.fixture(scope="module", params=list(CASES))
def exported(request, tmp_path_factory):
    fixture, settings, fmt = CASES[request.param]
    base = request.getfixturevalue(fixture)
    root = tmp_path_factory.mktemp(f"export-{request.param}")
    LLMEncoder.from_pretrained(str(base), device="cpu", dtype="fp32", **settings).save(root / "irlm")
    out = export_encoder(root / "irlm", root / "out", fmt)
    enc = LLMEncoder.from_pretrained(str(root / "irlm"), device="cpu", dtype="fp32")
    return enc, out, fmt


def test_sentence_transformers_encodes_like_irlm(exported):
    from sentence_transformers import SentenceTransformer

    enc, out, _ = exported
    st = SentenceTransformer(str(out), device="cpu")  # no trust_remote_code: nothing custom in the folder
    # sentence-transformers caps the length at the model's positions, where irlm would fail on longer texts
    assert st.max_seq_length == min(enc.config.max_length, enc.model.config.max_position_embeddings)
    np.testing.assert_allclose(st.encode_query(TEXTS), enc.encode_queries(TEXTS, progress=False), atol=1e-5)
    np.testing.assert_allclose(st.encode_document(TEXTS), enc.encode_corpus(TEXTS, progress=False), atol=1e-5)
    if enc.config.normalize:
        np.testing.assert_allclose(np.linalg.norm(st.encode(TEXTS), axis=1), 1, atol=1e-5)


@pytest.mark.parametrize("exported", [name for name, case in CASES.items() if case[2] == "onnx"], indirect=True)
def test_onnx_encodes_like_irlm(exported):
    enc, out, fmt = exported
    assert fmt == "onnx"
    onnx = OnnxEncoder(out)
    np.testing.assert_allclose(onnx.encode_queries(TEXTS), enc.encode_queries(TEXTS, progress=False), atol=1e-3)
    np.testing.assert_allclose(onnx.encode_corpus(TEXTS), enc.encode_corpus(TEXTS, progress=False), atol=1e-3)


def test_refuses_a_folder_irlm_did_not_make(bert_dir, tmp_path):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("keep me")
    with pytest.raises(InputError, match="did not make"):
        export_encoder(bert_dir, out)
    assert (out / "notes.txt").read_text() == "keep me"


def test_lowercase_on_a_bert_tokenizer_exports_case_folding(bert_dir, tmp_path):
    """irlm's lowercase is Unicode case folding (final sigma -> sigma, sharp s -> ss); the exported tokenizer
    folds the same way after reloading, so every casing encodes alike there too."""
    from sentence_transformers import SentenceTransformer

    LLMEncoder.from_pretrained(str(bert_dir), device="cpu", dtype="fp32", lowercase=True).save(tmp_path / "irlm")
    st = SentenceTransformer(str(export_encoder(tmp_path / "irlm", tmp_path / "out")), device="cpu")
    enc = LLMEncoder.from_pretrained(str(tmp_path / "irlm"), device="cpu", dtype="fp32")
    np.testing.assert_allclose(st.encode_query(TEXTS), enc.encode_queries(TEXTS, progress=False), atol=1e-5)
    upper = [t.upper() for t in TEXTS]
    np.testing.assert_allclose(st.encode_query(upper), st.encode_query(TEXTS), atol=1e-5)


def test_unknown_format(bert_dir, tmp_path):
    with pytest.raises(InputError, match="sentence-transformers, onnx"):
        export_encoder(bert_dir, tmp_path / "out", "gguf")


def test_replaces_its_own_export(bert_dir, tmp_path):
    from sentence_transformers import SentenceTransformer

    out = export_encoder(bert_dir, tmp_path / "out")
    export_encoder(bert_dir, out)  # irlm's marker: a second export may replace the first
    assert SentenceTransformer(str(out), device="cpu").encode(["a"]).shape == (1, 32)
