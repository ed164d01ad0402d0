"""LLMEncoder on tiny random models: padding-invariant, order-preserving, save/load, truncation, prefixes."""

from __future__ import annotations

import json

import numpy as np
import pytest

from irlm.errors import InputError
from irlm.models.encoder import CONFIG_FILE, LLMEncoder
from irlm.models.resolve import resolve_model

TEXTS = [
    "a",
    "the quick brown fox jumps over the lazy dog and keeps running far away",
    "retrieval with decoder-only language models",
    "short one",
    "BM25 is a bag-of-words ranking function used by search engines to estimate relevance",
    "x y",
    "what is the capital of france?",
]


def _encoder(folder, **kw) -> LLMEncoder:
    return LLMEncoder.from_pretrained(str(folder), device="cpu", dtype="fp32", **kw)


def test_decoder_defaults(llama_encoder):
    cfg = llama_encoder.config
    assert (cfg.pooling, cfg.append_eos, cfg.normalize) == ("last", True, True)
    assert llama_encoder.dim == 32
    assert llama_encoder.tokenizer.pad_token_id is not None


def test_encoder_model_defaults(bert_encoder):
    cfg = bert_encoder.config
    assert (cfg.pooling, cfg.append_eos) == ("mean", False)
    assert bert_encoder.tokenize(["hello world"])[0][-1] == bert_encoder.tokenizer.sep_token_id


@pytest.mark.parametrize("which", ["llama_dir", "bert_dir"])
def test_left_and_right_padding_agree_and_match_batch_of_one(request, which):
    folder = request.getfixturevalue(which)
    right = _encoder(folder, padding_side="right")
    left = _encoder(folder, padding_side="left")
    assert right.tokenizer.padding_side == "right" and left.tokenizer.padding_side == "left"
    e_right = right.encode(TEXTS, batch_size=8, progress=False)
    e_left = left.encode(TEXTS, batch_size=8, progress=False)
    single = np.concatenate([right.encode([t], progress=False) for t in TEXTS])
    assert e_right.shape == (len(TEXTS), 32) and e_right.dtype == np.float32
    np.testing.assert_allclose(e_left, e_right, atol=1e-5)
    np.testing.assert_allclose(e_right, single, atol=1e-5)
    assert np.abs(e_right[0] - e_right[1]).max() > 1e-3  # different texts, different vectors


def test_order_preserved_despite_length_sorting(llama_encoder):
    reference = np.concatenate([llama_encoder.encode([t], progress=False) for t in TEXTS])
    for batch_size in (2, 3, 100):
        out = llama_encoder.encode(TEXTS, batch_size=batch_size, progress=False)
        np.testing.assert_allclose(out, reference, atol=1e-5)
    shuffled = [TEXTS[i] for i in (4, 0, 6, 2, 1, 5, 3)]
    np.testing.assert_allclose(
        llama_encoder.encode(shuffled, batch_size=3, progress=False),
        reference[[4, 0, 6, 2, 1, 5, 3]],
        atol=1e-5,
    )


def test_rows_are_unit_norm(llama_encoder, bert_encoder):
    for enc in (llama_encoder, bert_encoder):
        norms = np.linalg.norm(enc.encode(TEXTS, progress=False), axis=1)
        np.testing.assert_allclose(norms, 1.0, atol=1e-5)


def test_normalize_off_gives_raw_pooled_states(llama_dir, llama_encoder):
    raw = _encoder(llama_dir, normalize=False).encode(TEXTS, progress=False)
    norms = np.linalg.norm(raw, axis=1)
    assert not np.allclose(norms, 1.0, atol=1e-3)
    np.testing.assert_allclose(raw / norms[:, None], llama_encoder.encode(TEXTS, progress=False), atol=1e-5)


def test_save_and_load_keep_embeddings_and_config(tmp_path, llama_dir):
    enc = _encoder(llama_dir, query_prefix="query: ", passage_prefix="passage: ", max_length=24,
                   padding_side="left", pooling="mean")  # fmt: skip
    before_q = enc.encode_queries(TEXTS, progress=False)
    before_c = enc.encode_corpus(TEXTS, progress=False)
    enc.save(tmp_path / "enc")
    saved = json.loads((tmp_path / "enc" / CONFIG_FILE).read_text())
    assert saved["query_prefix"] == "query: " and saved["max_length"] == 24
    assert (tmp_path / "enc" / "model.safetensors").is_file()
    assert not list((tmp_path / "enc").glob("*.bin")) and not list((tmp_path / "enc").glob("*.pkl"))

    loaded = LLMEncoder.from_pretrained(str(tmp_path / "enc"), device="cpu")
    cfg = loaded.config
    assert (cfg.pooling, cfg.query_prefix, cfg.passage_prefix) == ("mean", "query: ", "passage: ")
    assert cfg.max_length == 24
    assert (cfg.padding_side, cfg.dtype, cfg.append_eos) == ("left", "fp32", True)
    assert loaded.tokenizer.padding_side == "left"
    np.testing.assert_allclose(loaded.encode_queries(TEXTS, progress=False), before_q, atol=1e-6)
    np.testing.assert_allclose(loaded.encode_corpus(TEXTS, progress=False), before_c, atol=1e-6)
    overridden = LLMEncoder.from_pretrained(str(tmp_path / "enc"), device="cpu", max_length=8)
    assert overridden.config.max_length == 8 and overridden.config.query_prefix == "query: "


def test_truncation_keeps_eos_last(llama_dir):
    enc = _encoder(llama_dir, max_length=10)
    eos = enc.tokenizer.eos_token_id
    long_text = " ".join(["retrieval"] * 200)
    ids = enc.tokenize([long_text, "short", ""])
    assert len(ids[0]) == 10
    assert all(len(row) <= 10 and row[-1] == eos for row in ids)
    assert ids[0][:-1].count(eos) == 0  # truncation cut the text, not the EOS
    full = _encoder(llama_dir, max_length=512).tokenize([long_text])[0]
    assert ids[0][:-1] == full[:9]  # the beginning is kept
    emb = enc.encode([long_text, long_text + " tail that is cut off"], progress=False)
    np.testing.assert_allclose(emb[0], emb[1], atol=1e-6)  # beyond max_length nothing changes


def test_truncation_without_eos(bert_dir):
    enc = _encoder(bert_dir, max_length=12)
    ids = enc.tokenize([" ".join(["word"] * 100)])[0]
    assert len(ids) == 12 and ids[-1] == enc.tokenizer.sep_token_id


def test_query_prefix_changes_queries_not_corpus(llama_dir, llama_encoder):
    prefixed = _encoder(llama_dir, query_prefix="Instruct: find a passage\nQuery: ")
    plain_q = llama_encoder.encode_queries(TEXTS, progress=False)
    pref_q = prefixed.encode_queries(TEXTS, progress=False)
    assert np.abs(plain_q - pref_q).max(axis=1).min() > 1e-4  # every query moved
    np.testing.assert_allclose(
        prefixed.encode_corpus(TEXTS, progress=False),
        llama_encoder.encode_corpus(TEXTS, progress=False),
        atol=1e-6,
    )
    by_hand = llama_encoder.encode(["Instruct: find a passage\nQuery: " + t for t in TEXTS], progress=False)
    np.testing.assert_allclose(pref_q, by_hand, atol=1e-5)


def test_passage_prefix_changes_corpus_not_queries(llama_dir, llama_encoder):
    prefixed = _encoder(llama_dir, passage_prefix="passage: ")
    moved = prefixed.encode_corpus(TEXTS, progress=False) - llama_encoder.encode_corpus(TEXTS, progress=False)
    assert np.abs(moved).max(axis=1).min() > 1e-4
    np.testing.assert_allclose(
        prefixed.encode_queries(TEXTS, progress=False),
        llama_encoder.encode_queries(TEXTS, progress=False),
        atol=1e-6,
    )


def test_special_token_pooling(llama_dir):
    enc = _encoder(llama_dir, pooling="token", pool_token="<emb>", max_length=8)
    emb_id = enc.tokenizer.convert_tokens_to_ids("<emb>")
    assert emb_id == enc.model.get_input_embeddings().weight.shape[0] - 1  # new token, embeddings resized
    ids = enc.tokenize([" ".join(["word"] * 50), "hi"])
    assert all(row[-1] == emb_id and len(row) <= 8 for row in ids)
    out = enc.encode(TEXTS, progress=False)
    np.testing.assert_allclose(np.linalg.norm(out, axis=1), 1.0, atol=1e-5)


def test_embed_keeps_gradients(llama_encoder):
    batch = llama_encoder.collate(llama_encoder.tokenize(TEXTS[:3]))
    emb = llama_encoder.embed(batch["input_ids"], batch["attention_mask"])
    assert emb.shape == (3, 32) and emb.requires_grad
    emb.sum().backward()
    grads = [p.grad for p in llama_encoder.model.parameters() if p.grad is not None]
    assert grads and any(g.abs().sum() > 0 for g in grads)
    llama_encoder.model.zero_grad(set_to_none=True)


@pytest.mark.parametrize("name", ["./no/such/model", "no/such/model", "/abs/missing/model.gguf", "~/nope/x"])
def test_path_like_model_name_resolving_to_nothing(name):
    with pytest.raises(InputError, match="resolves to nothing"):
        resolve_model(name)
    with pytest.raises(InputError, match="resolves to nothing"):
        LLMEncoder.from_pretrained(name, device="cpu")


def test_unknown_hub_id_offline_is_an_input_error():
    with pytest.raises(InputError, match="no-such-org-xyz/no-such-model"):
        LLMEncoder.from_pretrained("no-such-org-xyz/no-such-model", device="cpu")


def test_folder_without_config(tmp_path):
    with pytest.raises(InputError, match="no config.json"):
        resolve_model(str(tmp_path))


@pytest.mark.parametrize("hub_id", ["sentence-transformers/all-MiniLM-L6-v2", "BAAI/bge-small-en-v1.5",
                                    "Qwen/Qwen2.5-0.5B", "intfloat/e5-mistral-7b-instruct"])  # fmt: skip
def test_hub_ids_pass_through_unchanged(hub_id):
    assert resolve_model(hub_id) == hub_id


def test_local_folder_passes_through(llama_dir):
    assert resolve_model(str(llama_dir)) == str(llama_dir)


def test_bundled_short_names_resolve():
    assert (resolve_model_path := resolve_model("minilm-l6")).endswith("model")
    assert json.loads(open(f"{resolve_model_path}/config.json").read())["model_type"] == "bert"


def test_bf16_close_to_fp32(llama_dir, llama_encoder):
    bf16 = LLMEncoder.from_pretrained(str(llama_dir), device="cpu", dtype="bf16")
    assert next(bf16.model.parameters()).dtype.is_floating_point and str(bf16.model.dtype) == "torch.bfloat16"
    out = bf16.encode(TEXTS, progress=False)
    assert out.dtype == np.float32
    np.testing.assert_allclose(out, llama_encoder.encode(TEXTS, progress=False), atol=2e-2)


def test_encode_empty_list(llama_encoder):
    # e.g. a split with no queries: an empty (0, dim) array, not an IndexError from inside the tokenizer
    out = llama_encoder.encode_queries([], progress=False)
    assert out.shape == (0, 32) and out.dtype == np.float32


def test_lowercase_is_saved_and_applied_on_reload(tmp_path, llama_dir):
    """A cased tokenizer sees 'VITAMIN D' and 'vitamin d' as different texts; `lowercase` makes every
    casing one input, and a saved encoder keeps doing so when reloaded."""
    texts = [*TEXTS, "5 µg of vitamin D per day", "Straße and ς"]  # micro sign, sharp s, final sigma
    shouted = [t.upper() for t in texts]
    cased = _encoder(llama_dir)
    assert not cased.config.lowercase  # a base model reads its text as written
    assert not np.allclose(cased.encode_queries(shouted, progress=False), cased.encode_queries(texts, progress=False))

    _encoder(llama_dir, lowercase=True).save(tmp_path / "enc")
    assert json.loads((tmp_path / "enc" / CONFIG_FILE).read_text())["lowercase"] is True
    loaded = LLMEncoder.from_pretrained(str(tmp_path / "enc"), device="cpu", dtype="fp32")
    assert loaded.config.lowercase
    for recased in (shouted, [t.title() for t in texts], [t.lower() for t in texts]):
        np.testing.assert_allclose(loaded.encode_queries(recased, progress=False),
                                   loaded.encode_queries(texts, progress=False), atol=1e-6)  # fmt: skip
        np.testing.assert_allclose(loaded.encode_corpus(recased, progress=False),
                                   loaded.encode_corpus(texts, progress=False), atol=1e-6)  # fmt: skip
    lowered = cased.encode_corpus([t.casefold() for t in texts], progress=False)
    np.testing.assert_allclose(loaded.encode_corpus(shouted, progress=False), lowered, atol=1e-5)


def test_trainers_lowercase_by_default():
    from irlm.methods.anchor.config import AnchorConfig
    from irlm.methods.drama.config import RetrieverConfig

    assert RetrieverConfig().lowercase and AnchorConfig().lowercase


def test_unknown_encoder_settings_are_refused_with_the_nearest_name(tmp_path, llama_dir):
    from irlm.models.encoder import EncoderConfig

    with pytest.raises(InputError, match="unknown encoder setting 'lowercse'.*lowercase"):
        EncoderConfig.from_dict({"model": "m", "lowercse": True})  # once dropped: the model stayed cased
    with pytest.raises(InputError, match="'poling'.*pooling"):
        LLMEncoder.from_pretrained(str(llama_dir), device="cpu", poling="mean")
    _encoder(llama_dir).save(tmp_path / "enc")
    saved = json.loads((tmp_path / "enc" / CONFIG_FILE).read_text())
    (tmp_path / "enc" / CONFIG_FILE).write_text(json.dumps({**saved, "max_lenght": 64}))
    with pytest.raises(InputError, match=f"{CONFIG_FILE}.*'max_lenght'.*max_length"):
        LLMEncoder.from_pretrained(str(tmp_path / "enc"), device="cpu")
