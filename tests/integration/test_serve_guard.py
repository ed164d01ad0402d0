"""`irlm serve` before parsing: a body over the limit is refused from its Content-Length, the key is checked
before the body is read, the docs pages stay behind the key, and an empty key refuses to start."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient

from irlm.errors import InputError
from irlm.index import BM25Retriever
from irlm.models.generator.server import MAX_BODY_BYTES
from irlm.serve import build_app
from irlm.types import Corpus, Document

KEY_ENV = "IRLM_TEST_GUARD_KEY"


@pytest.fixture(scope="module")
def retriever():
    docs = [Document("d1", "the cat sat on the mat"), Document("d2", "dogs bark at the postman")]
    return BM25Retriever.build(Corpus(docs))


def test_a_body_over_the_limit_is_refused_before_it_is_read(retriever):
    with TestClient(build_app(retriever, api_key_env=None)) as http:
        r = http.post("/search", content=b"x" * (MAX_BODY_BYTES + 1), headers={"content-type": "application/json"})
        assert r.status_code == 413 and "over the limit" in r.json()["error"]
        assert http.post("/search", json={"query": "cat", "k": 1}).json()["results"][0]["id"] == "d1"


def test_the_key_is_checked_before_the_body_is_parsed(retriever, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "s3cret")
    with TestClient(build_app(retriever, api_key_env=KEY_ENV)) as http:
        r = http.post("/search", content=b'{"query": ', headers={"content-type": "application/json"})
        assert r.status_code == 401  # not 400: an unauthenticated client learns nothing of the parser
        for page in ("/docs", "/redoc", "/openapi.json"):
            assert http.get(page).status_code in (401, 404), page
            assert http.get(page, headers={"Authorization": "Bearer s3cret"}).status_code == 404, page
        assert http.get("/health").status_code == 200
        ok = http.post("/search", json={"query": "cat", "k": 1}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_an_empty_key_refuses_to_start(retriever, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "")
    with pytest.raises(InputError, match=f"\\${KEY_ENV} is set but empty"):
        build_app(retriever, api_key_env=KEY_ENV)
