"""Named datasets and how a name becomes a folder.

A name resolves in this order: an explicit path, `$IRLM_DATA/NAME`, the cache directory,
then a download from the dataset's public URL, verified by its published MD5.
"""

from __future__ import annotations

import hashlib
import os
import tempfile
import urllib.request
import zipfile
from dataclasses import dataclass
from pathlib import Path

from tqdm.auto import tqdm

from irlm.errors import InputError
from irlm.types import Dataset
from irlm.utils import atomic_path, cache_dir

BEIR_URL = "https://public.ukp.informatik.tu-darmstadt.de/thakur/BEIR/datasets/{}.zip"


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    description: str
    url: str | None = None  # public archive; None when the set is built, not downloaded
    md5: str | None = None  # published checksum of the archive
    splits: tuple[str, ...] = ("test",)


def _beir(name: str, md5: str, description: str, splits=("test",)) -> DatasetInfo:
    return DatasetInfo(name, description, BEIR_URL.format(name), md5, splits)


# MD5s as published in the BEIR repository's dataset table.
DATASETS: dict[str, DatasetInfo] = {
    d.name: d
    for d in [
        _beir("scifact", "5f7d1de60b170fc8027bb7898e2efca1", "BEIR SciFact: claims vs abstracts", ("train", "test")),
        DatasetInfo(
            "nq-open-oracle",
            "NQ-open questions with their gold Wikipedia passage; answers.jsonl holds short answers "
            "(built locally, no public archive)",
            splits=("train", "test"),
        ),
        DatasetInfo("cranfield", "Cranfield aeronautics collection, graded 1-4 (no BEIR archive)"),
        _beir("nfcorpus", "a89dba18a62ef92f7d323ec890a0d38d", "BEIR NFCorpus: nutrition", ("train", "dev", "test")),
        _beir("fiqa", "17918ed23cd04fb15047f73e6c3bd9d9", "BEIR FiQA-2018: financial QA", ("train", "dev", "test")),
        _beir("arguana", "8ad3e3c2a5867cdced806d6503f29b99", "BEIR ArguAna: counter-arguments"),
        _beir("scidocs", "38121350fc3a4d2f48850f6aff52e4a9", "BEIR SCIDOCS: citation prediction"),
        _beir("trec-covid", "ce62140cb23feb9becf6270d0d1fe6d1", "BEIR TREC-COVID"),
        _beir("quora", "18fb154900ba42a600f84b839c173167", "BEIR Quora duplicate questions", ("dev", "test")),
        _beir("nq", "d4d3d2e48787a744b6f6e691ff534307", "BEIR Natural Questions", ("test",)),
        _beir("hotpotqa", "f412724f78b0d91183a0e86805e16114", "BEIR HotpotQA", ("train", "dev", "test")),
        _beir("fever", "5a818580227bfb4b35bb6fa46d9b6c03", "BEIR FEVER", ("train", "dev", "test")),
        _beir("climate-fever", "8b66f0a9126c521bae2bde127b4dc99d", "BEIR Climate-FEVER"),
        _beir("dbpedia-entity", "c2a39eb420a3164af735795df012ac2c", "BEIR DBPedia-Entity", ("dev", "test")),
        _beir("webis-touche2020", "46f650ba5a527fc69e0a6521c5a23563", "BEIR Touche-2020"),
        _beir("cqadupstack", "4e41456d7df8ee7760a7f866133bda78", "BEIR CQADupStack (12 sub-forums)"),
        _beir("msmarco", "444067daf65d982533ea17ebd59501e4", "MS MARCO passage", ("train", "dev", "test")),
    ]
}


def _is_beir_folder(path: Path) -> bool:
    return (path / "corpus.jsonl").is_file()


def _candidates(name: str) -> list[Path]:
    found = []
    if os.environ.get("IRLM_DATA"):
        found.append(Path(os.environ["IRLM_DATA"]) / name)
    found.append(cache_dir() / "datasets" / name)
    return found


def resolve_dataset(name: str, download: bool = True) -> Path:
    """Turn a dataset name or path into a BEIR folder, downloading it if needed."""
    tried = []
    path = Path(name).expanduser()
    if _is_beir_folder(path):
        return path
    tried.append(f"path {path}")
    for candidate in _candidates(name):
        if _is_beir_folder(candidate):
            return candidate
        tried.append(str(candidate))
    info = DATASETS.get(name)
    if info and info.url and download:
        try:
            return download_dataset(info)
        except InputError as e:
            raise InputError(f"{e}; also tried {', '.join(tried)}") from None
    reason = "no public URL" if info else "not a registered name (see `irlm data list`)"
    if info and info.url:
        reason = "download disabled"
    raise InputError(f"dataset '{name}' not found; tried {', '.join(tried)}; download: {reason}")


def md5sum(path: Path) -> str:
    h = hashlib.md5()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def _fetch(url: str, dest: Path) -> None:
    with urllib.request.urlopen(url, timeout=60) as resp, open(dest, "wb") as out:
        total = int(resp.headers.get("Content-Length") or 0) or None
        with tqdm(total=total, unit="B", unit_scale=True, desc=f"download {url.rsplit('/', 1)[-1]}") as bar:
            for block in iter(lambda: resp.read(1 << 20), b""):
                out.write(block)
                bar.update(len(block))


def _extract(archive: Path, name: str, dest: Path) -> None:
    """Unzip the archive's `name/` folder into `dest`, refusing members that escape it."""
    with zipfile.ZipFile(archive) as zf:
        for member in zf.namelist():
            parts = Path(member).parts
            if member.startswith("/") or ".." in parts:
                raise InputError(f"archive member escapes its folder: {member}", str(archive))
        zf.extractall(dest.parent / f".{name}-unzip")
    root = dest.parent / f".{name}-unzip"
    inner = root / name if (root / name).is_dir() else root
    os.replace(inner, dest)


def download_dataset(info: DatasetInfo) -> Path:
    """Download, verify and unpack a public archive into the cache; returns the folder."""
    dest = cache_dir() / "datasets" / info.name
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=dest.parent) as scratch:  # the zip is gone once unpacked
        tmp_zip = Path(scratch) / f"{info.name}.zip"
        try:
            _fetch(info.url, tmp_zip)
        except OSError as e:
            raise InputError(f"dataset '{info.name}': download from {info.url} failed ({e})") from None
        got = md5sum(tmp_zip)
        if info.md5 and got != info.md5:
            raise InputError(f"dataset '{info.name}': checksum mismatch, expected md5 {info.md5}, got {got}", info.url)
        with atomic_path(dest, "data") as tmp_dir:
            _extract(tmp_zip, info.name, tmp_dir)
    return dest


def load_dataset(name: str, download: bool = True) -> Dataset:
    """Load a dataset by name or path.

    Example:
        >>> ds = load_dataset("scifact")
        >>> len(ds.corpus), len(ds.split_queries("test"))
        (5183, 300)
    """
    from irlm.data.beir import load_beir

    folder = resolve_dataset(name, download)
    return load_beir(folder, name=DATASETS[name].name if name in DATASETS else folder.name)
