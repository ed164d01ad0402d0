"""TREC run files and atomic writes."""

from __future__ import annotations

import os

import pytest

from irlm.errors import InputError
from irlm.eval.runs import read_trec, write_trec
from irlm.utils import MARKER, atomic_path, write_json

RUN = {"q1": {"d1": 1.5, "d2": 2.25, "d3": -0.125}, "q2": {"x": 0.000001}}


def test_trec_round_trip(tmp_path):
    path = tmp_path / "run.trec"
    write_trec(RUN, path, tag="mytag")
    lines = path.read_text().splitlines()
    assert lines[0].split() == ["q1", "Q0", "d2", "1", "2.250000", "mytag"]  # ranked by score
    assert [ln.split()[2] for ln in lines[:3]] == ["d2", "d1", "d3"]
    assert [ln.split()[3] for ln in lines[:3]] == ["1", "2", "3"]
    back = read_trec(path)
    assert back.keys() == RUN.keys()
    for qid in RUN:
        assert back[qid] == pytest.approx(RUN[qid], abs=1e-6)
    assert sorted(os.listdir(tmp_path)) == ["run.trec"]


def test_trec_crlf_and_blank_lines(tmp_path):
    path = tmp_path / "run.trec"
    path.write_bytes(b"q1 Q0 d1 1 2.0 t\r\n\r\nq1 Q0 d2 2 1.0 t\r\n")
    assert read_trec(path) == {"q1": {"d1": 2.0, "d2": 1.0}}


def test_trec_bad_column_count(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0\n")
    with pytest.raises(InputError) as e:
        read_trec(path)
    assert f"{path}:2" in str(e.value) and "6 columns" in str(e.value) and "got 5" in str(e.value)


def test_trec_bad_score(tmp_path):
    path = tmp_path / "run.trec"
    path.write_text("q1 Q0 d1 1 2.0 t\nq1 Q0 d2 2 1.0 t\nq1 Q0 d3 3 abc t\n")
    with pytest.raises(InputError) as e:
        read_trec(path)
    assert f"{path}:3" in str(e.value) and "'score'" in str(e.value) and "abc" in str(e.value)


def test_atomic_path_file_success(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with atomic_path(target) as tmp:
        assert tmp != target and tmp.parent.parent == tmp_path
        tmp.write_text("new")
        assert target.read_text() == "old"  # not visible until the block ends
    assert target.read_text() == "new"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_file_failure_keeps_target(tmp_path):
    target = tmp_path / "out.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half-writ")
            raise RuntimeError("boom")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["out.txt"]


def test_atomic_path_new_file_failure_creates_nothing(tmp_path):
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "sub" / "new.json") as tmp:
            tmp.write_text("{")
            raise RuntimeError("boom")
    assert not (tmp_path / "sub" / "new.json").exists()
    assert os.listdir(tmp_path / "sub") == []


def test_atomic_path_folder_replace_and_failure(tmp_path):
    target = tmp_path / "index"
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "a.npy").write_text("old")
    assert sorted(os.listdir(target)) == [MARKER, "a.npy"]  # irlm's own folder, so it may replace it later
    with atomic_path(target) as tmp:
        tmp.mkdir()
        (tmp / "b.npy").write_text("new")
    assert sorted(os.listdir(target)) == [MARKER, "b.npy"]
    assert os.listdir(tmp_path) == ["index"]
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.mkdir()
            (tmp / "c.npy").write_text("half")
            raise RuntimeError("boom")
    assert sorted(os.listdir(target)) == [MARKER, "b.npy"]
    assert os.listdir(tmp_path) == ["index"]


def test_write_json(tmp_path):
    write_json(tmp_path / "m.json", {"a": [1, 2], "é": "ü"})
    assert (tmp_path / "m.json").read_text(encoding="utf-8").startswith("{")
    import json

    assert json.loads((tmp_path / "m.json").read_text(encoding="utf-8")) == {"a": [1, 2], "é": "ü"}
    assert os.listdir(tmp_path) == ["m.json"]


def test_a_folder_replacing_a_folder_is_swapped_in_one_step_on_linux(tmp_path, monkeypatch):
    """Where renameat2 exists (Linux, as here and in CI) the live index is exchanged atomically: two renames
    would leave a moment with no folder at the path."""
    import irlm.utils as utils

    if utils._libc() is None or not hasattr(utils._libc(), "renameat2"):
        pytest.fail("this test needs Linux's renameat2, which the project's machines and CI have")
    target = tmp_path / "index"
    with atomic_path(target, "index") as tmp:
        tmp.mkdir()
        (tmp / "meta.json").write_text('{"v": 1}')
    renames = []
    real = os.replace
    monkeypatch.setattr(utils.os, "replace", lambda a, b: renames.append((a, b)) or real(a, b))
    with atomic_path(target, "index") as tmp:
        tmp.mkdir()
        (tmp / "meta.json").write_text('{"v": 2}')
    assert renames == [] and (target / "meta.json").read_text() == '{"v": 2}'
