"""`irlm serve` before parsing: a body over the limit is refused from its Content-Length, the key is checked
before the body is read, the docs pages stay behind the key, and an empty key refuses to start."""

from __future__ import annotations

import os

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


def call_unread(app, path: str, headers: list[tuple[bytes, bytes]]) -> tuple[int, bool]:
    """POST to `app` at the ASGI level with a body that is never delivered: (status, whether the app read it)."""
    import asyncio

    read, sent = [], []

    async def receive():
        read.append(True)
        return {"type": "http.request", "body": b'{"query": "cat"}', "more_body": False}

    async def send(message):
        sent.append(message)

    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST", "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "",
             "headers": [(b"content-type", b"application/json"), *headers], "client": ("127.0.0.1", 1),
             "server": ("127.0.0.1", 2)}  # fmt: skip
    asyncio.run(app(scope, receive, send))
    return next(m["status"] for m in sent if m["type"] == "http.response.start"), bool(read)


def apps(retriever, key_env=None):
    from irlm.models.generator.server import build_app as build_llm_app

    class NoModel:  # the guards answer before any model work
        name, context_length = "none", 64

        def generate(self, prompts, params=None):
            raise AssertionError("not reached")

        def count_tokens(self, prompt):
            raise AssertionError("not reached")

    return {"serve": (build_app(retriever, api_key_env=key_env), "/search"),
            "serve-llm": (build_llm_app(NoModel(), api_key=os.environ.get(key_env) if key_env else None),
                          "/v1/completions")}  # fmt: skip


@pytest.mark.parametrize("server", ["serve", "serve-llm"])
def test_an_oversized_content_length_is_refused_without_reading_the_body(retriever, server):
    app, path = apps(retriever)[server]
    status, read = call_unread(app, path, [(b"content-length", str(100 << 20).encode())])
    assert status == 413 and not read


@pytest.mark.parametrize("server", ["serve", "serve-llm"])
def test_a_request_without_the_key_is_refused_without_reading_the_body(retriever, server, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "s3cret")
    app, path = apps(retriever, KEY_ENV)[server]
    status, read = call_unread(app, path, [(b"content-length", b"16")])
    assert status == 401 and not read
