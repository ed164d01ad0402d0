"""The search service in a real uvicorn process: the same results as the library, under 16 concurrent
clients too, /encode equal to the encoder's own output, auth, Prometheus metrics, and a 4xx (never a 500)
for every kind of bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import TOY_CORPUS, TOY_QRELS, TOY_QUERIES, free_port, wait_healthy, write_beir

from irlm.data.beir import load_beir
from irlm.index import BM25Retriever, DenseRetriever, load_retriever

KEY_ENV, KEY = "IRLM_TEST_SEARCH_KEY", "test-search-key"
AUTH = {"Authorization": f"Bearer {KEY}"}
MORE = ["the cat on the mat", "river egypt", "flour water salt", "café ☕ 東京", "dogs, cats, bread and rivers"]
QUERIES = [q["text"] for q in TOY_QUERIES] + MORE


def start_server(index: Path, key_env: str, tmp_path_factory, *extra: str):
    """Base URL of `irlm serve --index` on the CPU; the key (when key_env is KEY_ENV) is set in its environment."""
    port = free_port()
    env = {**os.environ, KEY_ENV: KEY, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false"}
    log = tmp_path_factory.mktemp("search-server") / "server.log"  # a file, not a pipe: a full pipe would block it
    with open(log, "wb") as out:
        # the CPU, as the test's in-process retriever, so both compute the very same scores
        cmd = [sys.executable, "-m", "irlm.cli", "serve", "--index", str(index), "--port", str(port),
               "--api-key-env", key_env, "--batch-size", "8", "--device", "cpu", *extra]  # fmt: skip
        proc = subprocess.Popen(cmd, env=env, stdout=out, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        proc.terminate()
        proc.wait(10)


@pytest.fixture(scope="module")
def toy_dir(tmp_path_factory):
    return write_beir(tmp_path_factory.mktemp("toy") / "toy", TOY_CORPUS, TOY_QUERIES, TOY_QRELS)


@pytest.fixture(scope="module")
def corpus(toy_dir):
    return load_beir(toy_dir).corpus


@pytest.fixture(scope="module")
def bm25(corpus, tmp_path_factory):
    folder = tmp_path_factory.mktemp("bm25") / "index"
    BM25Retriever.build(corpus).save(folder)
    return folder, load_retriever(folder)


@pytest.fixture(scope="module")
def dense(corpus, llama_encoder, tmp_path_factory):
    folder = tmp_path_factory.mktemp("dense") / "index"
    retriever = DenseRetriever.build(corpus, llama_encoder)
    retriever.save(folder)
    return folder, retriever


@pytest.fixture(scope="module")
def bm25_url(bm25, tmp_path_factory):
    """Requires KEY."""
    yield from start_server(bm25[0], KEY_ENV, tmp_path_factory)


@pytest.fixture(scope="module")
def dense_url(dense, tmp_path_factory):
    """Open: its key variable is unset."""
    yield from start_server(dense[0], "IRLM_TEST_SEARCH_NO_KEY", tmp_path_factory)


def pairs(results: list[dict]) -> list[tuple]:
    return [(r["id"], r["score"]) for r in results]


def expected(retriever, query: str, k: int) -> list[tuple]:
    return list(retriever.search({"q": query}, k)["q"].items())


def search(url: str, query: str, k: int, http=httpx) -> list[tuple]:
    r = http.post(f"{url}/search", json={"query": query, "k": k}, headers=AUTH)
    assert r.status_code == 200, r.text
    return pairs(r.json()["results"])


def assert_same_ranking(got: list[tuple], want: list[tuple], exact: bool) -> None:
    assert [d for d, _ in got] == [d for d, _ in want]
    if exact:
        assert got == want
    else:  # dense queries may share a padded batch on the server: float noise only
        np.testing.assert_allclose([s for _, s in got], [s for _, s in want], rtol=1e-5, atol=1e-6)


def test_bm25_results_equal_the_library(bm25_url, bm25):
    health = httpx.get(f"{bm25_url}/health").json()
    assert health["status"] == "ok" and health["kind"] == "bm25" and health["docs"] == len(TOY_CORPUS)
    for query in QUERIES:
        for k in (1, 3, 10):
            assert_same_ranking(search(bm25_url, query, k), expected(bm25[1], query, k), exact=True)
    assert len(search(bm25_url, QUERIES[-1], 10)) == 4 and len(search(bm25_url, QUERIES[-1], 3)) == 3
    assert search(bm25_url, "zzz unseen words", 10) == []  # nothing matches: an empty list, not an error


def test_dense_results_equal_the_library(dense_url, dense):
    health = httpx.get(f"{dense_url}/health").json()
    assert (health["kind"], health["docs"], health["encode"]) == ("dense", len(TOY_CORPUS), True)
    for query in QUERIES:
        for k in (2, 1000):
            got = search(dense_url, query, k)
            assert len(got) == min(k, len(TOY_CORPUS))
            assert_same_ranking(got, expected(dense[1], query, k), exact=False)


def test_hybrid_and_generative_results_equal_the_library(bm25, dense, toy_dir, lm_dir, tmp_path_factory):
    """Any retriever folder serves: an RRF hybrid of the two above, and a Self-Retrieval model folder (an
    untrained tiny LM: trie-constrained beams are deterministic, so the server must rank exactly as we do)."""
    from irlm.index import HybridRetriever
    from irlm.methods.selfretrieval.config import SelfRetrievalConfig
    from irlm.methods.selfretrieval.retriever import SelfRetriever

    hybrid_dir = tmp_path_factory.mktemp("hybrid") / "index"
    HybridRetriever([bm25[1], dense[1]], "rrf").save(hybrid_dir)
    hybrid = load_retriever(hybrid_dir)
    for url in start_server(hybrid_dir, "IRLM_TEST_SEARCH_NO_KEY", tmp_path_factory):
        assert httpx.get(f"{url}/health").json()["kind"] == "hybrid"
        for query in QUERIES[:4]:
            assert_same_ranking(search(url, query, 3), expected(hybrid, query, 3), exact=False)

    from transformers import AutoModelForCausalLM, AutoTokenizer

    cfg = SelfRetrievalConfig(data=str(toy_dir), title_beams=2, passage_beams=2, max_passage_tokens=12)
    sr_dir = tmp_path_factory.mktemp("selfretrieval")
    model = AutoModelForCausalLM.from_pretrained(lm_dir)
    selfr = SelfRetriever(model, AutoTokenizer.from_pretrained(lm_dir), load_beir(toy_dir).corpus, cfg)
    selfr.save(sr_dir)
    for url in start_server(sr_dir, "IRLM_TEST_SEARCH_NO_KEY", tmp_path_factory, "--data", str(toy_dir)):
        assert httpx.get(f"{url}/health").json()["kind"] == "selfretrieval"
        for query in QUERIES[:3]:
            want = expected(selfr, query, 5)
            assert want, "an untrained model still reaches trie entries"
            assert_same_ranking(search(url, query, 5), want, exact=False)


@pytest.mark.parametrize("which", ["bm25", "dense"])
def test_sixteen_concurrent_clients_get_correct_results_in_shared_batches(which, request):
    url, (_, retriever) = request.getfixturevalue(f"{which}_url"), request.getfixturevalue(which)
    jobs = [(QUERIES[(c + n) % len(QUERIES)], 1 + (c + 2 * n) % 5) for c in range(16) for n in range(5)]
    want = {(q, k): expected(retriever, q, k) for q, k in set(jobs)}

    def client(c: int) -> list:
        with httpx.Client(timeout=60) as http:
            return [(q, k, search(url, q, k, http)) for q, k in jobs[c * 5 : c * 5 + 5]]

    before = batch_counts(url)
    with ThreadPoolExecutor(16) as pool:
        done = [row for rows in pool.map(client, range(16)) for row in rows]
    after = batch_counts(url)
    assert len(done) == 80
    for q, k, got in done:
        assert_same_ranking(got, want[q, k], exact=which == "bm25")
    if which == "bm25":  # the fast path: every search answered at once, none through the batcher
        assert (after[2] - before[2], after[1] - before[1], after[0] - before[0]) == (80, 0, 0)
    else:
        assert after[1] - before[1] == 80 and after[2] == before[2] == 0
        assert after[0] - before[0] < 80  # some requests shared a retriever call


def batch_counts(url: str) -> tuple[int, int, int]:
    """(batches, batched items, fast-path searches) from /metrics."""
    text = httpx.get(f"{url}/metrics", headers=AUTH).text
    values = dict(line.split(" ") for line in text.splitlines() if line.startswith(("irlm_batch", "irlm_direct")))
    names = ("irlm_batches_total", "irlm_batched_items_total", "irlm_direct_searches_total")
    return tuple(int(float(values[name])) for name in names)


def test_encode_equals_the_encoder_and_needs_a_dense_index(dense_url, bm25_url, llama_encoder):
    texts = QUERIES[:5]
    for kind, own in (("query", llama_encoder.encode_queries), ("passage", llama_encoder.encode_corpus)):
        r = httpx.post(f"{dense_url}/encode", json={"texts": texts, "kind": kind})
        assert r.status_code == 200, r.text
        got = np.array(r.json()["embeddings"])
        assert got.shape == (5, llama_encoder.dim)
        np.testing.assert_allclose(got, own(texts, progress=False), rtol=1e-5, atol=1e-6)
    r = httpx.post(f"{bm25_url}/encode", json={"texts": ["cats"]}, headers=AUTH)
    assert r.status_code == 400 and "no dense encoder" in r.json()["error"]


LONG = "word " * 410  # 2050 characters: over the 2048 limit
BAD_SEARCH = [
    (b'{"query": "cats"', 400, None),  # malformed JSON
    (b'\xff\xfe{"query": 1}', 400, None),  # not UTF-8
    (b"", 422, None),
    (b"[1, 2]", 422, None),
    (b'"cats"', 422, None),
    (b"{}", 422, "query"),
    (b'{"query": ""}', 422, "query"),
    (b'{"query": "  \\n\\t "}', 422, "query"),
    (b'{"query": "' + LONG.encode() + b'"}', 413, "query"),
    (b'{"query": 5}', 422, "query"),
    (b'{"query": ["cats"]}', 422, "query"),
    (b'{"query": null}', 422, "query"),
    (b'{"query": "cats", "k": 0}', 422, "k"),
    (b'{"query": "cats", "k": -3}', 422, "k"),
    (b'{"query": "cats", "k": 1001}', 422, "k"),
    (b'{"query": "cats", "k": 100000000000000000000000000000}', 422, "k"),
    (b'{"query": "cats", "k": "5"}', 422, "k"),
    (b'{"query": "cats", "k": 2.5}', 422, "k"),
    (b'{"query": "cats", "k": true}', 422, "k"),
    (b'{"query": "cats", "k": null}', 422, "k"),
    (b'{"query": "cats", "top_k": 5}', 422, "top_k"),
]
BAD_ENCODE = [
    (b'{"texts": []}', 422, "texts"),
    (b'{"texts": "cats"}', 422, "texts"),
    (b'{"texts": [""]}', 422, "texts"),
    (b'{"texts": ["   "]}', 422, "texts"),
    (b'{"texts": [1]}', 422, "texts"),
    (b'{"texts": ["cats"], "kind": "document"}', 422, "kind"),
    (b'{"texts": ["cats"' + b', "cats"' * 64 + b"]}", 413, "texts"),  # 65 texts: the limit is 64
    (b'{"texts": ["' + b"x" * 32769 + b'"]}', 413, "texts"),
    (b'{"texts": ["cats"]', 400, None),
]


def check_error(r: httpx.Response, status: int, field: str | None, what) -> None:
    assert r.status_code == status, (what, r.status_code, r.text)
    body = r.json()
    assert set(body) == {"error", "field"} and body["error"] and "\n" not in body["error"], (what, body)
    assert body["field"] == field, (what, body)
    if field:
        assert body["error"].startswith(field), (what, body)  # the one-line message names the field


def test_bad_input_is_a_clear_4xx_never_a_500(dense_url):
    with httpx.Client(headers={"Content-Type": "application/json"}) as http:
        for body, status, field in BAD_SEARCH:
            check_error(http.post(f"{dense_url}/search", content=body), status, field, body[:60])
        for body, status, field in BAD_ENCODE:
            check_error(http.post(f"{dense_url}/encode", content=body), status, field, body[:60])
        check_error(http.get(f"{dense_url}/search"), 405, None, "GET /search")
        check_error(http.post(f"{dense_url}/nothing-here", content=b"{}"), 404, None, "unknown route")
        for kind in ("text/plain", "application/x-www-form-urlencoded"):  # the latter is curl -d's default
            r = http.post(f"{dense_url}/search", content=b'{"query": "cats"}', headers={"Content-Type": kind})
            check_error(r, 415, None, kind)
            assert "application/json" in r.json()["error"]
        assert http.get(f"{dense_url}/health").status_code == 200  # still serving
        assert search(dense_url, "cats", 2, http) and 'status="500"' not in http.get(f"{dense_url}/metrics").text


def test_api_key_guards_everything_but_health(bm25_url):
    guarded = [("POST", "/search", {"query": "cats"}), ("POST", "/encode", {"texts": ["a"]}), ("GET", "/metrics", None),
               ("POST", "/search", {"query": ""})]  # fmt: skip
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": KEY}, {"Authorization": f"Basic {KEY}"}):
        for method, path, body in guarded:
            r = httpx.request(method, f"{bm25_url}{path}", json=body, headers=headers)
            assert r.status_code == 401 and "API key" in r.json()["error"], (headers, path, r.text)  # before validation
    assert httpx.get(f"{bm25_url}/health").status_code == 200
    assert httpx.post(f"{bm25_url}/search", json={"query": "cats"}, headers=AUTH).status_code == 200


def test_metrics_are_prometheus_text_with_request_counters(bm25_url):
    httpx.post(f"{bm25_url}/search", json={"query": "dogs"}, headers=AUTH)
    httpx.post(f"{bm25_url}/search", json={"query": ""}, headers=AUTH)
    httpx.post(f"{bm25_url}/search", json={"query": "dogs"})
    r = httpx.get(f"{bm25_url}/metrics", headers=AUTH)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
    lines = r.text.splitlines()
    assert "# TYPE irlm_requests_total counter" in lines and "# TYPE irlm_request_seconds histogram" in lines
    counts = {line.rsplit(" ", 1)[0]: float(line.rsplit(" ", 1)[1]) for line in lines if not line.startswith("#")}
    for status in ("200", "401", "422"):
        assert counts[f'irlm_requests_total{{endpoint="/search",status="{status}"}}'] >= 1
    total = sum(v for key, v in counts.items() if key.startswith('irlm_requests_total{endpoint="/search"'))
    assert counts['irlm_request_seconds_bucket{endpoint="/search",le="+Inf"}'] == total
    assert counts['irlm_request_seconds_count{endpoint="/search"}'] == total
    assert counts['irlm_request_seconds_sum{endpoint="/search"}'] > 0
