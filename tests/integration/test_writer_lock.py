"""One writer per index: a second `irlm serve --writable` on the same index refuses to start, in one line naming
the process that holds it, even after the first has saved (and so swapped) the folder; the lock goes with its
holder, whether it stops or is killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from conftest import TOY_CORPUS, cli, free_port, irlm_server

from irlm.errors import InputError
from irlm.index import BM25Index, BM25Retriever
from irlm.types import Corpus, Document
from irlm.utils import WriterLock


def bm25_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "index"
    BM25Retriever.build(Corpus([Document(d["_id"], d["text"], d["title"]) for d in TOY_CORPUS])).save(folder)
    return folder


def one_line_refusal(out: subprocess.CompletedProcess) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode == 2 and "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    return lines[0]


def test_a_second_writable_server_refuses_to_start_and_names_the_first(tmp_path):
    folder = bm25_folder(tmp_path)
    lock = tmp_path / ".index.lock"
    with irlm_server(["serve", "--index", folder, "--writable"], tmp_path / "first.log") as (url, first):
        penguin = {"id": "d6", "text": "penguins huddle against the antarctic wind"}
        r = httpx.post(f"{url}/documents", json={"documents": [penguin]}, timeout=120)
        assert r.status_code == 200, r.text  # saved: the index folder is now another folder than at start
        second = subprocess.run(cli("serve", "--index", folder, "--writable", "--port", free_port()),
                                capture_output=True, text=True, timeout=60)  # fmt: skip
        line = one_line_refusal(second)
        assert f"{folder} is already written by process {first.pid}" in line, line
        assert first.poll() is None and httpx.get(f"{url}/health").json()["docs"] == 6
        assert lock.read_text().strip() == str(first.pid)
    assert first.returncode is not None and not lock.exists()  # stopped: its lock is gone with it
    assert "d6" in BM25Index.load(folder).ids  # the update it answered is on disk
    WriterLock(folder).release()  # free again
    assert sorted(p.name for p in tmp_path.iterdir()) == ["first.log", "index"]


def test_the_lock_goes_with_a_killed_holder(tmp_path):
    folder = bm25_folder(tmp_path)
    code = f"from irlm.utils import WriterLock; WriterLock({str(folder)!r}); print('held', flush=True); input()"
    holder = subprocess.Popen([sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(InputError, match=f"already written by process {holder.pid} "):
            WriterLock(folder)
    finally:
        os.kill(holder.pid, signal.SIGKILL)
        holder.wait(30)
    deadline = time.monotonic() + 10
    while True:  # the kernel drops the lock as the process ends
        try:
            WriterLock(folder).release()
            break
        except InputError:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    assert not (tmp_path / ".index.lock").exists()


def test_a_writer_of_a_folder_whose_parent_is_missing_is_one_line(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        WriterLock(tmp_path / "missing" / "index")
