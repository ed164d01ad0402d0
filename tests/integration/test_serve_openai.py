"""`irlm serve`'s OpenAI-compatible embeddings API, driven by the official `openai` client against a real server
process: vectors equal the library's, `dimensions` truncates and re-normalises, the API key is the client's bearer
token, and every bad request raises the exception class the client maps its 4xx to."""

from __future__ import annotations

import base64

import httpx
import numpy as np
import pytest
from conftest import TOY_CORPUS, TOY_QRELS, TOY_QUERIES, write_beir
from test_serve import KEY, KEY_ENV, QUERIES, start_server

openai = pytest.importorskip("openai")

NAME = "tiny-llama-embed"  # --model-name: the id /v1/models lists


@pytest.fixture(scope="module")
def encoder(llama_dir):
    """The tiny Llama with distinct query and passage prefixes (so input_type is visible) and a short max length
    (so `usage` counts the truncated tokens, as the encoder reads them)."""
    from irlm.models.encoder import LLMEncoder

    return LLMEncoder.from_pretrained(str(llama_dir), device="cpu", dtype="fp32", query_prefix="query: ",
                                      passage_prefix="passage: ", max_length=24)  # fmt: skip


@pytest.fixture(scope="module")
def url(encoder, tmp_path_factory):
    """One server for the module (a start costs seconds to minutes on a loaded machine); it requires KEY."""
    from irlm.data.beir import load_beir
    from irlm.index import DenseRetriever

    toy = write_beir(tmp_path_factory.mktemp("toy") / "toy", TOY_CORPUS, TOY_QUERIES, TOY_QRELS)
    folder = tmp_path_factory.mktemp("dense-openai") / "index"
    DenseRetriever.build(load_beir(toy).corpus, encoder).save(folder)
    yield from start_server(folder, KEY_ENV, tmp_path_factory, "--model-name", NAME)


@pytest.fixture(scope="module")
def client(url):
    with openai.OpenAI(base_url=f"{url}/v1", api_key=KEY, max_retries=0, timeout=120) as c:
        yield c


def vectors(response) -> np.ndarray:
    """The rows; base64 asked for explicitly comes back as the server sent it: little-endian float32 bytes."""
    assert [d.index for d in response.data] == list(range(len(response.data)))
    rows = [np.frombuffer(base64.b64decode(d.embedding), dtype="<f4") if isinstance(d.embedding, str) else d.embedding
            for d in response.data]  # fmt: skip
    return np.array(rows, dtype=np.float32)


def test_models_lists_the_served_encoder(client, encoder):
    models = client.models.list().data
    assert [m.id for m in models] == [NAME] and models[0].owned_by == "irlm"
    assert models[0].model_extra["dimensions"] == encoder.dim


def test_embeddings_equal_the_library_in_both_encodings(client, encoder):
    texts = QUERIES[:6]
    want = encoder.encode_queries(texts, progress=False)
    # the client asks for base64 unless told otherwise, and decodes it itself
    for fmt in (openai.NOT_GIVEN, "float", "base64"):
        r = client.embeddings.create(model=NAME, input=texts, encoding_format=fmt)
        assert r.object == "list" and r.model == NAME
        np.testing.assert_allclose(vectors(r), want, rtol=0, atol=1e-5)
    one = client.embeddings.create(model=NAME, input=texts[0], encoding_format="float")  # a bare string
    np.testing.assert_allclose(vectors(one), want[:1], rtol=0, atol=1e-5)
    counts = [len(ids) for ids in encoder.tokenize([encoder.config.query_prefix + t for t in texts])]
    assert r.usage.prompt_tokens == r.usage.total_tokens == sum(counts) > 0
    assert one.usage.prompt_tokens == counts[0]
    long = client.embeddings.create(model=NAME, input="word " * 200)  # truncated to max_length, and counted so
    assert long.usage.prompt_tokens == encoder.config.max_length


def test_input_type_passage_uses_the_passage_prefix(client, encoder):
    texts = [doc["text"] for doc in TOY_CORPUS[:3]]
    r = client.embeddings.create(model=NAME, input=texts, extra_body={"input_type": "passage"})
    np.testing.assert_allclose(vectors(r), encoder.encode_corpus(texts, progress=False), rtol=0, atol=1e-5)
    as_query = vectors(client.embeddings.create(model=NAME, input=texts))
    assert np.abs(as_query - vectors(r)).max() > 1e-3  # the default, queries, differs: another prefix


def test_dimensions_truncate_then_normalise(client, encoder):
    texts = QUERIES[:3]
    full = encoder.encode_queries(texts, progress=False)
    for d in (4, encoder.dim // 2, encoder.dim):
        for fmt in ("float", "base64"):
            got = vectors(client.embeddings.create(model=NAME, input=texts, dimensions=d, encoding_format=fmt))
            assert got.shape == (3, d)
            head = full[:, :d] / np.linalg.norm(full[:, :d], axis=1, keepdims=True)
            np.testing.assert_allclose(got, head, rtol=0, atol=1e-5)
            np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1, atol=1e-5)


def test_bad_requests_raise_the_clients_4xx_exceptions(client, url, encoder):
    too_many = ["cats"] * 65
    bad = [
        ({"input": "cats", "dimensions": encoder.dim + 1}, openai.BadRequestError, "dimensions"),
        ({"input": "cats", "dimensions": 0}, openai.BadRequestError, "dimensions"),
        ({"input": [1, 2, 3]}, openai.BadRequestError, "input"),  # token ids
        ({"input": [[1, 2], [3]]}, openai.BadRequestError, "input"),
        ({"input": ""}, openai.BadRequestError, "input"),
        ({"input": []}, openai.BadRequestError, "input"),
        ({"input": too_many}, openai.BadRequestError, "input"),
        ({"input": "cats", "encoding_format": "int8"}, openai.BadRequestError, "encoding_format"),
        ({"input": "cats", "extra_body": {"input_type": "document"}}, openai.BadRequestError, "input_type"),
        ({"input": "cats", "extra_body": {"top_k": 3}}, openai.BadRequestError, "top_k"),
        ({"input": "cats", "model": "text-embedding-3-small"}, openai.NotFoundError, "model"),
    ]
    for kwargs, error, param in bad:
        kwargs = {"model": NAME, **kwargs}
        with pytest.raises(error) as caught:
            client.embeddings.create(**kwargs)
        e = caught.value
        assert e.param == param and e.body["message"].startswith(param), (kwargs, e.body)  # names the field
        assert e.body["type"] == "invalid_request_error" and "\n" not in e.message, (kwargs, e.body)
    with pytest.raises(openai.BadRequestError, match="token-id input is not supported"):
        client.embeddings.create(model=NAME, input=[[1, 2, 3]])
    for key in ("wrong", ""):
        with openai.OpenAI(base_url=f"{url}/v1", api_key=key or "x", max_retries=0) as stranger:
            with pytest.raises(openai.AuthenticationError) as caught:
                stranger.embeddings.create(model=NAME, input="cats")
            assert caught.value.code == "invalid_api_key"
            with pytest.raises(openai.AuthenticationError):
                stranger.models.list()
    headers = {"Authorization": f"Bearer {KEY}", "Content-Type": "application/json"}
    r = httpx.post(f"{url}/v1/embeddings", content=b'{"input": "cats"', headers=headers)  # malformed JSON
    assert r.status_code == 400 and set(r.json()["error"]) == {"message", "type", "param", "code"}
    r = httpx.post(f"{url}/search", json={"query": ""}, headers={"Authorization": f"Bearer {KEY}"})
    assert r.status_code == 422 and r.json()["field"] == "query"  # the native routes keep their own error shape
    assert client.embeddings.create(model=NAME, input="still serving").data
