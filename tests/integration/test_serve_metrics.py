"""`irlm serve`'s /metrics through prometheus_client (the names as before, parsed by Prometheus' own parser), and
the BM25 fast path: the same results as through the micro-batcher, counted apart. In process: no server start."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from irlm.index import BM25Retriever
from irlm.serve import build_app, is_cheap
from irlm.types import Corpus, Document

KEY_ENV = "IRLM_TEST_METRICS_KEY"
AUTH = {"Authorization": "Bearer m3trics"}
DOCS = ["the cat sat on the mat", "dogs bark at the postman", "a cat and a dog", "bread needs flour and water"]
QUERIES = ["cat", "dog bark", "flour", "cat dog mat", "zzz unseen"]


@pytest.fixture(scope="module")
def retriever():
    return BM25Retriever.build(Corpus([Document(f"d{n}", text) for n, text in enumerate(DOCS)]))


def scrape(http) -> dict:
    r = http.get("/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"] == "text/plain; version=0.0.4; charset=utf-8"
    families = {f.name: f for f in text_string_to_metric_families(r.text)}
    assert not any(s.name.endswith("_created") for f in families.values() for s in f.samples)
    return families


def value(families: dict, family: str, sample: str, **labels) -> float:
    found = [s.value for s in families[family].samples if s.name == sample and s.labels == labels]
    return found[0] if found else 0.0


def test_metrics_keep_their_names_types_and_counts(retriever, monkeypatch):
    monkeypatch.setenv(KEY_ENV, "m3trics")
    with TestClient(build_app(retriever, api_key_env=KEY_ENV)) as http:
        for query in QUERIES:
            assert http.post("/search", json={"query": query, "k": 2}, headers=AUTH).status_code == 200
        assert http.post("/search", json={"query": ""}, headers=AUTH).status_code == 422
        assert http.post("/search", json={"query": "cat"}).status_code == 401  # refused by the guard: still counted
        assert http.post("/v1/embeddings", json={"input": "cat", "model": "m"}, headers=AUTH).status_code == 400
        assert http.get("/nowhere", headers=AUTH).status_code == 404
        families = scrape(http)
    kinds = {name: f.type for name, f in families.items()}
    assert kinds == {"irlm_requests": "counter", "irlm_request_seconds": "histogram", "irlm_batches": "counter",
                     "irlm_batched_items": "counter", "irlm_direct_searches": "counter"}  # fmt: skip
    requests = "irlm_requests_total"
    assert value(families, "irlm_requests", requests, endpoint="/search", status="200") == len(QUERIES)
    assert value(families, "irlm_requests", requests, endpoint="/search", status="422") == 1
    assert value(families, "irlm_requests", requests, endpoint="/search", status="401") == 1
    assert value(families, "irlm_requests", requests, endpoint="/v1/embeddings", status="400") == 1
    assert value(families, "irlm_requests", requests, endpoint="other", status="404") == 1
    hist = "irlm_request_seconds"
    total = len(QUERIES) + 2
    assert value(families, hist, f"{hist}_count", endpoint="/search") == total
    assert value(families, hist, f"{hist}_bucket", endpoint="/search", le="+Inf") == total
    assert 0 < value(families, hist, f"{hist}_sum", endpoint="/search")
    buckets = [
        s.value for s in families[hist].samples if s.name.endswith("_bucket") and s.labels["endpoint"] == "/search"
    ]
    assert buckets == sorted(buckets)  # cumulative
    assert value(families, "irlm_direct_searches", "irlm_direct_searches_total") == len(QUERIES)  # BM25: fast path
    assert value(families, "irlm_batches", "irlm_batches_total") == 0


def test_the_fast_path_answers_as_the_batcher_does(retriever):
    assert is_cheap(retriever)
    answers = {}
    for fast in (True, False):
        with TestClient(build_app(retriever, api_key_env=None, fast_path=fast)) as http:
            answers[fast] = [http.post("/search", json={"query": q, "k": k}).json() for q in QUERIES for k in (1, 3)]
            assert http.post("/search", json={"query": "cat", "k": 0}).status_code == 422  # the same validation
            families = scrape(http)
        counted = ("irlm_direct_searches_total", "irlm_batched_items_total")
        direct, batched = (value(families, name.removesuffix("_total"), name) for name in counted)
        assert (direct, batched) == ((len(answers[fast]), 0) if fast else (0, len(answers[fast])))
    assert answers[True] == answers[False]
    library = [[{"id": d, "score": s} for d, s in retriever.search({"q": q}, k)["q"].items()] for q in QUERIES
               for k in (1, 3)]  # fmt: skip
    assert [a["results"] for a in answers[True]] == library and answers[True][-1] == {"results": []}


BAD = [({"json": {"query": "cat", "k": 0}}, 422), ({"json": {"query": ""}}, 422),
       ({"json": {"query": "cat", "top_k": 3}}, 422), ({"json": {"query": "cat", "k": "5"}}, 422),
       ({"json": {"query": "cat", "k": 10_000}}, 422), ({"json": {"query": "cat " * 600}}, 413),
       ({"content": b'{"query": ', "headers": {"content-type": "application/json"}}, 400),
       ({"content": b'{"query": "cat"}', "headers": {"content-type": "text/plain"}}, 415)]  # fmt: skip


def test_the_search_lane_answers_valid_requests_and_leaves_every_error_to_the_app(retriever, monkeypatch):
    """The lane in front of FastAPI: the same answers and the same errors as the route behind it."""
    from irlm.serve import SearchLane

    answered = []
    answer = SearchLane.answer
    monkeypatch.setattr(SearchLane, "answer", lambda self, body: answered.append(answer(self, body)) or answered[-1])
    replies = {}
    for fast in (True, False):
        with TestClient(build_app(retriever, api_key_env=None, fast_path=fast)) as http:
            good = [http.post("/search", json={"query": q, "k": 3}) for q in QUERIES]
            chunked = http.post("/search", content=iter([b'{"query": "cat", ', b'"k": 2}']),
                                headers={"content-type": "application/json"})  # no Content-Length: the app's
            bad = [http.post("/search", **request) for request, _ in BAD]
        replies[fast] = [(r.status_code, r.json()) for r in (*good, chunked, *bad)]
        assert [r.status_code for r in bad] == [status for _, status in BAD]
        assert all("\n" not in r.json()["error"] for r in bad)
    assert replies[True] == replies[False]
    # the lane answered the good ones itself and handed the 7 bad JSON bodies on; the chunked and the plain-text
    # ones never reached it
    assert [a is not None for a in answered] == [True] * len(QUERIES) + [False] * 7
