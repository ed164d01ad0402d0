"""Dataset names resolve: explicit path, $IRLM_DATA/NAME, the cache, then a checksummed download."""

from __future__ import annotations

import hashlib
import http.server
import os
import threading
import zipfile
from functools import partial

import pytest
from conftest import TOY_CORPUS, TOY_QRELS, TOY_QUERIES, write_beir

from irlm.data import registry
from irlm.data.registry import DATASETS, DatasetInfo, load_dataset, resolve_dataset
from irlm.errors import InputError


def _beir_with_marker(folder, marker: str):
    """A toy BEIR folder whose first document id tells where it was read from."""
    corpus = [{"_id": marker, "text": f"from {marker}"}, *TOY_CORPUS]
    return write_beir(folder, corpus, TOY_QUERIES, TOY_QRELS)


@pytest.fixture
def places(tmp_path, monkeypatch):
    data, cache, cwd = tmp_path / "data", tmp_path / "cache", tmp_path / "cwd"
    for d in (data, cache, cwd):
        d.mkdir()
    monkeypatch.setenv("IRLM_DATA", str(data))
    monkeypatch.setenv("IRLM_CACHE", str(cache))
    monkeypatch.chdir(cwd)
    return data, cache, cwd


def test_resolution_order(places, tmp_path):
    data, cache, cwd = places
    explicit = _beir_with_marker(tmp_path / "elsewhere" / "toy", "explicit")
    _beir_with_marker(data / "toy", "irlm-data")
    _beir_with_marker(cache / "datasets" / "toy", "cache")

    assert resolve_dataset(str(explicit), download=False) == explicit
    assert load_dataset(str(explicit), download=False).corpus.ids[0] == "explicit"
    assert resolve_dataset("toy", download=False) == data / "toy"
    assert load_dataset("toy", download=False).corpus.ids[0] == "irlm-data"

    _beir_with_marker(cwd / "toy", "cwd")  # a folder named like the dataset here is an explicit path
    assert load_dataset("toy", download=False).corpus.ids[0] == "cwd"


def test_cache_is_used_after_irlm_data(places):
    data, cache, _ = places
    _beir_with_marker(cache / "datasets" / "toy", "cache")
    (data / "toy").mkdir()  # exists but is not a BEIR folder: skipped
    assert resolve_dataset("toy", download=False) == cache / "datasets" / "toy"
    ds = load_dataset("toy", download=False)
    assert ds.corpus.ids[0] == "cache" and ds.name == "toy"


def test_cache_used_without_irlm_data(places, monkeypatch):
    _, cache, _ = places
    monkeypatch.delenv("IRLM_DATA")
    _beir_with_marker(cache / "datasets" / "toy", "cache")
    assert load_dataset("toy", download=False).corpus.ids[0] == "cache"


def test_error_lists_what_was_tried(places):
    data, cache, _ = places
    with pytest.raises(InputError) as e:
        resolve_dataset("nothing-here", download=False)
    msg = str(e.value)
    assert "nothing-here" in msg
    assert str(data / "nothing-here") in msg
    assert str(cache / "datasets" / "nothing-here") in msg
    assert "not a registered name" in msg


def test_registered_name_with_download_disabled(places):
    with pytest.raises(InputError, match="download disabled"):
        resolve_dataset("nfcorpus", download=False)


def test_registry_has_the_issue_datasets():
    for name in ["scifact", "nq-open-oracle", "cranfield", "nfcorpus", "fiqa", "arguana", "scidocs",
                 "trec-covid", "quora", "nq"]:  # fmt: skip
        assert name in DATASETS
    for info in DATASETS.values():
        if info.url:
            assert info.url.startswith("https://") and info.url.endswith(f"/{info.name}.zip")
            assert len(info.md5) == 32 and int(info.md5, 16) >= 0


@pytest.fixture
def served_zip(tmp_path, monkeypatch):
    """A BEIR zip (toy/ inside) served over HTTP on 127.0.0.1; yields (url, md5)."""
    src = _beir_with_marker(tmp_path / "src" / "toy", "downloaded")
    root = tmp_path / "www"
    root.mkdir()
    with zipfile.ZipFile(root / "toy.zip", "w") as zf:
        for path in sorted(src.rglob("*")):
            zf.write(path, path.relative_to(src.parent).as_posix())
    md5 = hashlib.md5((root / "toy.zip").read_bytes()).hexdigest()
    for var in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("no_proxy", "127.0.0.1,localhost")
    handler = partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/toy.zip", md5
    server.shutdown()
    server.server_close()


def test_download_verifies_and_unpacks_into_cache(places, served_zip, monkeypatch):
    _, cache, _ = places
    url, md5 = served_zip
    monkeypatch.setitem(DATASETS, "toy", DatasetInfo("toy", "toy set", url, md5))
    with pytest.raises(InputError, match="download disabled"):
        load_dataset("toy", download=False)
    ds = load_dataset("toy")
    assert ds.name == "toy" and ds.corpus.ids[0] == "downloaded" and len(ds.corpus) == 6
    assert ds.qrels["test"] == {"q1": {"d2": 1}, "q2": {"d3": 1}, "q3": {"d4": 2}}
    folder = cache / "datasets" / "toy"
    assert (folder / "corpus.jsonl").is_file() and (folder / "qrels" / "test.tsv").is_file()
    assert not [p for p in os.listdir(cache / "datasets") if p.startswith(".")]  # no temp leftovers
    # now cached: found without the network
    monkeypatch.setitem(DATASETS, "toy", DatasetInfo("toy", "toy set", "http://127.0.0.1:9/gone.zip", md5))
    assert load_dataset("toy", download=False).corpus.ids[0] == "downloaded"


def test_download_wrong_checksum(places, served_zip, monkeypatch):
    _, cache, _ = places
    url, _ = served_zip
    monkeypatch.setitem(DATASETS, "toy", DatasetInfo("toy", "toy set", url, "0" * 32))
    with pytest.raises(InputError, match="checksum") as e:
        load_dataset("toy")
    assert "0" * 32 in str(e.value)
    assert not (cache / "datasets" / "toy").exists()
    assert not (cache / "datasets").exists() or not [
        p for p in os.listdir(cache / "datasets") if not p.startswith(".")
    ]


def test_download_failure_is_an_input_error(places, served_zip, monkeypatch):
    url, md5 = served_zip
    missing = url.replace("toy.zip", "missing.zip")
    monkeypatch.setitem(DATASETS, "toy", DatasetInfo("toy", "toy set", missing, md5))
    with pytest.raises(InputError, match="download from .*missing.zip failed"):
        load_dataset("toy")


def test_zip_slip_is_refused(places, tmp_path, monkeypatch):
    evil = tmp_path / "evil.zip"
    with zipfile.ZipFile(evil, "w") as zf:
        zf.writestr("toy/corpus.jsonl", '{"_id": "a", "text": "x"}\n')
        zf.writestr("../escaped.txt", "gotcha")
    with pytest.raises(InputError, match="escapes"):
        registry._extract(evil, "toy", tmp_path / "out" / "toy")
    assert not (tmp_path / "escaped.txt").exists()


def test_real_scifact_from_irlm_data():
    ds = load_dataset("scifact", download=False)
    assert len(ds.corpus) == 5183
    assert len(ds.split_queries("test")) == 300
    assert sum(len(d) for d in ds.qrels["test"].values()) == 339
