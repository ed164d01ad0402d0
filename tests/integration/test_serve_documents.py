"""Live document updates over HTTP: in real `irlm serve --writable` processes, added, replaced and deleted documents
(BM25 and dense) are searched at once and saved to the index folder, a restarted server keeps them, a read-only
server (the default) refuses them, and a kill -9 in the middle of a save leaves the last committed index loadable.
Bad requests, the last document, Self-Retrieval and hybrids run in-process (FastAPI's TestClient)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from conftest import TOY_CORPUS, irlm_server
from fastapi.testclient import TestClient

from irlm.errors import InputError
from irlm.index import BM25Retriever, DenseRetriever, HybridRetriever, load_retriever
from irlm.serve import build_app, serve
from irlm.types import Corpus, Document
from irlm.utils import MARKER, restore_interrupted

TOY = Corpus([Document(r["_id"], r["text"], r["title"]) for r in TOY_CORPUS])
PENGUIN = {"id": "d6", "title": "Penguins", "text": "emperor penguins huddle on the antarctic ice through winter"}
VIOLINS = {"id": "d2", "text": "violins and cellos play in the orchestra"}  # replaces the dogs


def bm25_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "index"
    BM25Retriever.build(TOY).save(folder)
    return folder


def update(url: str, *docs: dict) -> httpx.Response:
    return httpx.post(f"{url}/documents", json={"documents": list(docs)}, timeout=120)


def top(url: str, query: str, k: int = 5) -> list[str]:
    r = httpx.post(f"{url}/search", json={"query": query, "k": k}, timeout=120)
    assert r.status_code == 200, r.text
    return [hit["id"] for hit in r.json()["results"]]


def saved(folder: Path) -> dict[str, str]:
    """id -> text of the BM25 index saved in `folder`, opened as any reader would."""
    index = load_retriever(folder).index
    return dict(zip(index.ids, index.texts))


def test_bm25_updates_are_searched_at_once_and_kept_by_a_restarted_read_only_server(tmp_path):
    folder = bm25_folder(tmp_path)
    with irlm_server(["serve", "--index", folder, "--writable"], tmp_path / "writable.log") as (url, _):
        assert httpx.get(f"{url}/health").json()["writable"] is True
        assert update(url, PENGUIN).json() == {"added": 1, "replaced": 0, "docs": 6}
        assert top(url, "penguins")[0] == "d6"  # the title is indexed too, as `irlm index` does
        assert update(url, VIOLINS).json() == {"added": 0, "replaced": 1, "docs": 6}
        assert top(url, "orchestra violins") == ["d2"] and "d2" not in top(url, "dogs bark at the postman")
        assert httpx.delete(f"{url}/documents/d3").json() == {"deleted": 1, "docs": 5}
        assert "d3" not in top(url, "quantum computers qubits")
        gone = httpx.delete(f"{url}/documents/d3")
        assert gone.status_code == 404 and gone.json() == {"error": "no document with id 'd3' in the index",
                                                          "field": "id"}  # fmt: skip
    after = saved(folder)  # on disk before each answer
    assert sorted(after) == ["d1", "d2", "d4", "d5", "d6"] and after["d2"] == VIOLINS["text"]

    with irlm_server(["serve", "--index", folder], tmp_path / "read-only.log") as (url, _):  # read-only: the default
        assert httpx.get(f"{url}/health").json()["docs"] == 5
        assert top(url, "penguins")[0] == "d6" and top(url, "orchestra violins") == ["d2"]
        assert "d3" not in top(url, "quantum computers qubits")
        for r in (update(url, {"id": "d9", "text": "more"}), httpx.delete(f"{url}/documents/d1")):
            assert r.status_code == 403 and "--writable" in r.json()["error"], r.text
    assert saved(folder) == after


def test_dense_updates_embed_with_the_index_encoder_and_are_saved(tmp_path, llama_encoder):
    folder = tmp_path / "index"
    DenseRetriever.build(TOY, llama_encoder).save(folder)
    args = ["serve", "--index", folder, "--writable", "--device", "cpu"]
    with irlm_server(args, tmp_path / "server.log") as (url, _):
        assert update(url, PENGUIN, VIOLINS).json() == {"added": 1, "replaced": 1, "docs": 6}
        assert top(url, "Penguins " + PENGUIN["text"], 1) == ["d6"]  # its own text: the nearest vector
        assert top(url, VIOLINS["text"], 1) == ["d2"]
        assert httpx.delete(f"{url}/documents/d3").json() == {"deleted": 1, "docs": 5}
        assert "d3" not in top(url, TOY_CORPUS[2]["text"], 10)
    index = load_retriever(folder, "cpu").index
    assert sorted(index.ids) == ["d1", "d2", "d4", "d5", "d6"]
    rows = index.vectors[index.rows(["d6", "d2", "d1"])]
    texts = ["Penguins " + PENGUIN["text"], VIOLINS["text"], "Cats " + TOY_CORPUS[0]["text"]]
    # the added and the replaced rows embedded from title and text, an untouched one kept
    np.testing.assert_allclose(rows, llama_encoder.encode_corpus(texts), atol=1e-4)


def commit_pausing(folder: Path) -> bool:
    """Whether a save of `folder` has written all of its new copy and waits at the commit (the test pause)."""
    return any(folder.parent.glob(f".{folder.name}.tmp-*/{folder.name}/{MARKER}"))


def saved_count(folder: Path) -> int:
    """meta.json's count: one file read whole, so a poll never straddles the swap as opening several files could."""
    return json.loads((folder / "meta.json").read_text())["count"]


def wait_for(condition, what: str, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting until {what}"
        time.sleep(0.05)


def kill_during_update(folder: Path, log: Path, when) -> None:
    """Start a writable server, send one update, kill -9 the server once `when(url)` holds, and wait for it."""
    with irlm_server(["serve", "--index", folder, "--writable"], log) as (url, proc), ThreadPoolExecutor(1) as pool:
        sent = pool.submit(update, url, PENGUIN)
        wait_for(lambda: when(url), "the commit point", 300)
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(30)
        with pytest.raises(httpx.TransportError):
            sent.result()  # never answered: the update was not acknowledged


def test_a_kill_9_in_the_middle_of_a_save_leaves_the_old_or_the_new_index(tmp_path, monkeypatch):
    folder = bm25_folder(tmp_path)
    monkeypatch.setenv("IRLM_TEST_COMMIT_PAUSE", "3")  # the server sleeps before and after each commit

    def before_commit(url: str) -> bool:
        if not commit_pausing(folder):
            return False
        assert "d6" not in top(url, "penguins") and httpx.get(f"{url}/health").json()["docs"] == 5  # still serving
        return True

    kill_during_update(folder, tmp_path / "before.log", before_commit)
    assert "d6" not in saved(folder) and len(saved(folder)) == 5  # the last committed index, whole
    assert any(folder.parent.glob(f".{folder.name}.tmp-*"))  # the killed save's leftovers

    kill_during_update(folder, tmp_path / "after.log", lambda url: saved_count(folder) == 6)
    assert saved(folder)["d6"] == "Penguins " + PENGUIN["text"] and len(saved(folder)) == 6  # the new one, whole

    monkeypatch.delenv("IRLM_TEST_COMMIT_PAUSE")
    with irlm_server(["serve", "--index", folder, "--writable"], tmp_path / "next.log") as (url, _):
        assert top(url, "penguins")[0] == "d6"
        assert update(url, {"id": "d7", "text": "a lighthouse on the rocky coast"}).json()["docs"] == 7
    assert [p.name for p in folder.parent.iterdir() if p.name.startswith(".")] == []  # leftovers of dead pids gone
    assert len(saved(folder)) == 7


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    return int(proc.stdout)


def test_where_renames_cannot_swap_a_save_killed_between_them_is_put_back(tmp_path, monkeypatch):
    """The fallback of irlm.utils._replace (old folder aside, new one in): a kill between the two renames leaves
    no folder; `irlm serve` puts the old one back before it opens the index, never a folder irlm did not make."""
    folder = bm25_folder(tmp_path)
    monkeypatch.setattr("irlm.utils._exchange", lambda a, b: False)
    BM25Retriever.build(Corpus(TOY.docs[:4])).save(folder)  # the fallback itself: a plain save works
    assert len(saved(folder)) == 4 and [p.name for p in tmp_path.iterdir()] == ["index"]

    alive = folder.rename(tmp_path / f".index.old-{os.getpid()}")  # a save still running: left alone
    stranger = tmp_path / f".index.old-{dead_pid()}"
    stranger.mkdir()  # no marker: not irlm's
    restore_interrupted(folder)
    assert not folder.exists() and alive.is_dir() and stranger.is_dir()

    alive.rename(tmp_path / f".index.old-{dead_pid()}")  # now its process is gone
    served = []
    monkeypatch.setattr("uvicorn.run", lambda app, **_: served.append(app))
    serve(str(folder), api_key_env=None)
    assert len(saved(folder)) == 4 and stranger.is_dir()
    with TestClient(served[0]) as http:
        assert http.get("/health").json()["docs"] == 4


@pytest.fixture
def bm25(tmp_path):
    folder = bm25_folder(tmp_path)
    return folder, load_retriever(folder)


def check_error(r: httpx.Response, status: int, field: str | None, words: str) -> None:
    body = r.json()
    assert r.status_code == status and body["field"] == field and words in body["error"], r.text
    assert "\n" not in body["error"]


def test_bad_updates_are_a_one_line_4xx_naming_the_field(bm25, monkeypatch):
    folder, retriever = bm25
    monkeypatch.setenv("IRLM_TEST_DOCS_KEY", "s3cret")
    app = build_app(retriever, api_key_env="IRLM_TEST_DOCS_KEY", writable=True, folder=folder, max_documents=3)
    auth = {"Authorization": "Bearer s3cret"}
    with TestClient(app, headers=auth) as http:
        post = lambda *docs: http.post("/documents", json={"documents": list(docs)})  # noqa: E731
        check_error(http.post("/documents", json={"documents": [PENGUIN]}, headers={"Authorization": ""}), 401, None,
                    "key")  # fmt: skip
        check_error(http.delete("/documents/d1", headers={"Authorization": "Bearer no"}), 401, None, "key")
        check_error(post({"id": "d6", "text": "  "}), 422, "documents", "documents.0.text: must contain text")
        check_error(post({"id": "", "text": "a"}), 422, "documents", "documents.0.id")
        check_error(post({"text": "a"}), 422, "documents", "documents.0.id: Field required")
        check_error(post({"id": "a", "text": "a"}, {"id": "a", "text": "b"}), 422, "documents", "id 'a' appears twice")
        many = [{"id": str(n), "text": "a"} for n in range(4)]
        check_error(post(*many), 413, "documents", "4 documents; the limit is 3")
        check_error(post({"id": "a", "text": "a" * 40000}), 413, "documents", "documents.0.text: 40000 characters")
        check_error(http.post("/documents", json={"documents": []}), 422, "documents", "at least 1 item")
        check_error(http.post("/documents", json={"docs": [PENGUIN]}), 422, "documents", "Field required")
        check_error(http.delete("/documents/nope"), 404, "id", "no document with id 'nope'")
        for doc_id in ("d1", "d2", "d3", "d4"):
            assert http.delete(f"/documents/{doc_id}").status_code == 200
        check_error(http.delete("/documents/d5"), 409, "id", "the last document")
        assert post({"id": "a/b", "text": "slashes in ids"}).json()["docs"] == 2
        assert http.delete("/documents/a/b").json() == {"deleted": 1, "docs": 1}  # the path's rest is the id
        assert http.get("/health").json()["docs"] == 1
    assert list(saved(folder)) == ["d5"]


def test_read_only_is_the_default_and_refused_before_the_body_is_checked(bm25):
    folder, retriever = bm25
    with TestClient(build_app(retriever, api_key_env=None)) as http:
        check_error(http.post("/documents", json={"documents": [PENGUIN]}), 403, None, "read-only")
        check_error(http.post("/documents", json={"documents": []}), 403, None, "--writable")
        check_error(http.delete("/documents/d1"), 403, None, "--writable")
        assert http.get("/health").json()["writable"] is False
    with pytest.raises(InputError, match="needs the index folder"):
        build_app(retriever, api_key_env=None, writable=True)


class SelfRetrieverStub:
    kind = "selfretrieval"
    encoder = None  # the Retriever protocol: a generative system has no dense encoder
    under = {"Cats": ["d1"]}

    def __len__(self):
        return 1

    def search(self, queries, k=100):
        return {q: {"d1": 1.0} for q in queries}


def test_self_retrieval_refuses_updates_and_says_why(tmp_path):
    with TestClient(build_app(SelfRetrieverStub(), api_key_env=None)) as http:
        check_error(http.post("/documents", json={"documents": [PENGUIN]}), 403, None, "memorised its corpus")
    with pytest.raises(InputError, match="--writable: Self-Retrieval memorised"):
        build_app(SelfRetrieverStub(), api_key_env=None, writable=True, folder=tmp_path)


def test_a_hybrid_updates_every_part_and_saves_them_together(tmp_path, llama_encoder):
    folder = tmp_path / "hybrid"
    retriever = HybridRetriever([BM25Retriever.build(TOY), DenseRetriever.build(TOY, llama_encoder)])
    retriever.save(folder)
    with TestClient(build_app(retriever, api_key_env=None, writable=True, folder=folder)) as http:
        assert http.post("/documents", json={"documents": [PENGUIN, VIOLINS]}).json()["docs"] == 6
        hits = http.post("/search", json={"query": "penguins antarctic", "k": 1}).json()["results"]
        assert hits[0]["id"] == "d6"
        assert http.delete("/documents/d3").json() == {"deleted": 1, "docs": 5}
    bm25_part, dense_part = load_retriever(folder, "cpu").parts
    assert sorted(bm25_part.index.ids) == sorted(dense_part.index.ids) == ["d1", "d2", "d4", "d5", "d6"]
    assert dict(zip(bm25_part.index.ids, bm25_part.index.texts))["d2"] == VIOLINS["text"]
    np.testing.assert_allclose(dense_part.index.vectors[dense_part.index.rows(["d2"])],
                               llama_encoder.encode_corpus([VIOLINS["text"]]), atol=1e-4)  # fmt: skip
