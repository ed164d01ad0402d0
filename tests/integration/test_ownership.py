"""irlm deletes or replaces only what it made: stage names stay inside the run directory, a folder without
irlm's marker is refused (pipeline, `irlm index`, `irlm encode`), and temporaries of killed runs are cleaned."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from irlm import pipeline
from irlm.errors import InputError
from irlm.index import BM25Index
from irlm.utils import MARKER, atomic_path, made_by_irlm, mark_as_irlm


def irlm(*args, cwd=None):
    return subprocess.run([sys.executable, "-c", "from irlm.cli import run; run()", *map(str, args)],
                          capture_output=True, text=True, timeout=300, cwd=cwd)  # fmt: skip


def one_line_error(out) -> str:
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert out.returncode != 0 and "Traceback" not in out.stderr, out.stderr
    assert len(lines) == 1 and lines[0].startswith("error:"), out.stderr
    return lines[0]


def user_folder(path: Path) -> Path:
    """A folder of someone else's files that irlm must never touch."""
    path.mkdir(parents=True)
    (path / "thesis.tex").write_text("years of work")
    return path


def intact(path: Path) -> bool:
    return (path / "thesis.tex").read_text() == "years of work"


@pytest.fixture
def marks(monkeypatch):
    ran = []
    monkeypatch.setitem(pipeline.STAGES, "mark", lambda s, folder, run_dir: ran.append(folder) or {})
    return ran


def write_recipe(tmp_path: Path, run_dir: Path, names) -> Path:
    path = tmp_path / "r.yaml"
    stages = [{"name": n, "kind": "mark"} for n in names]
    path.write_text(yaml.safe_dump({"run_dir": str(run_dir), "stages": stages}))
    return path


@pytest.mark.parametrize("name", ["../victim", "..", ".", "", "/abs/victim", "a/b", "victim/..", 3])
def test_a_stage_name_that_could_leave_the_run_dir_is_refused(tmp_path, marks, name):
    victim = user_folder(tmp_path / "victim")
    with pytest.raises(InputError, match="must be letters, digits"):
        pipeline.run_pipeline(write_recipe(tmp_path, tmp_path / "run", ["ok", name]))
    assert intact(victim) and marks == []


def test_a_run_dir_of_someone_elses_files_is_refused(tmp_path, marks):
    home = user_folder(tmp_path / "home")
    (home / "notes").mkdir()
    (home / "notes" / "a.txt").write_text("keep")
    with pytest.raises(InputError, match="irlm did not make"):
        pipeline.run_pipeline(write_recipe(tmp_path, home, ["notes"]))
    assert intact(home) and (home / "notes" / "a.txt").read_text() == "keep" and marks == []


def test_a_foreign_folder_inside_an_irlm_run_dir_is_refused(tmp_path, marks):
    run = tmp_path / "run"
    pipeline.run_pipeline(write_recipe(tmp_path, run, ["a"]))
    foreign = user_folder(run / "b")
    with pytest.raises(InputError, match="irlm did not make"):
        pipeline.run_pipeline(write_recipe(tmp_path, run, ["a", "b"]))
    assert intact(foreign)


def test_an_irlm_stage_folder_of_other_settings_is_still_emptied(tmp_path, marks):
    run = tmp_path / "run"
    pipeline.run_pipeline(write_recipe(tmp_path, run, ["a"]))
    (run / "a" / "old-checkpoint").write_text("x")
    (run / "a" / ".stage_hash").write_text("other settings")
    pipeline.run_pipeline(write_recipe(tmp_path, run, ["a"]), force=True)
    assert not (run / "a" / "old-checkpoint").exists() and made_by_irlm(run / "a")


def test_atomic_path_refuses_a_foreign_folder_before_the_work(tmp_path):
    target = user_folder(tmp_path / "index")
    with pytest.raises(InputError, match="irlm did not make"):
        with atomic_path(target):
            pytest.fail("the block must not run")
    assert intact(target) and sorted(os.listdir(tmp_path)) == ["index"]


def test_an_index_saved_before_the_marker_existed_can_be_replaced(tmp_path):
    index = BM25Index()
    index.add(["a", "b"], ["the cat sat", "dogs bark loudly"])
    index.save(tmp_path / "bm25")
    (tmp_path / "bm25" / MARKER).unlink()  # as saved by an older irlm: meta.json with its kind
    index.save(tmp_path / "bm25")
    assert BM25Index.load(tmp_path / "bm25").ids == ["a", "b"]


def test_temporaries_of_a_killed_writer_are_cleaned_on_the_next_save(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no process holds any more
    stale = tmp_path / f".bm25.tmp-{dead.pid}-abcd1234" / "bm25"
    stale.mkdir(parents=True)
    mark_as_irlm(stale.parent)  # as atomic_path marks its temporaries
    (stale / "vectors.npy").write_bytes(b"\0" * 1000)
    live = tmp_path / f".bm25.tmp-{os.getpid()}-other"  # a writer still running: kept
    mark_as_irlm(user_folder(live))
    alike = user_folder(tmp_path / f".bm25.tmp-{dead.pid}-mine")  # the name of a temporary, not irlm's: kept
    index = BM25Index()
    index.add(["a"], ["the cat sat"])
    index.save(tmp_path / "bm25")
    assert sorted(os.listdir(tmp_path)) == sorted([live.name, alike.name, "bm25"]) and intact(alike)


def test_cli_index_refuses_a_foreign_out_folder_and_the_working_directory(tmp_path, toy_beir):
    target = user_folder(tmp_path / "mine")
    line = one_line_error(irlm("index", "--data", toy_beir, "--out", target))
    assert str(target) in line and "irlm did not make" in line and intact(target)
    cwd = user_folder(tmp_path / "cwd")
    one_line_error(irlm("index", "--data", toy_beir, "--out", ".", cwd=cwd))
    assert intact(cwd) and sorted(os.listdir(cwd)) == ["thesis.tex"]


def test_cli_index_may_rewrite_its_own_index(tmp_path, toy_beir):
    for _ in range(2):
        out = irlm("index", "--data", toy_beir, "--out", tmp_path / "idx")
        assert out.returncode == 0, out.stderr
    assert made_by_irlm(tmp_path / "idx")


def test_cli_encode_refuses_a_foreign_out_folder_before_loading_a_model(tmp_path, toy_beir):
    target = user_folder(tmp_path / "emb")
    line = one_line_error(irlm("encode", "--data", toy_beir, "--out", target, "--model", "no/such-model"))
    assert "irlm did not make" in line and intact(target)


def test_a_rerun_cleans_the_temporaries_of_a_stage_killed_mid_write(tmp_path, marks):
    """`irlm run` killed while the index stage saved: `run/.idx.tmp-PID-x/idx` stays; the rerun removes it."""
    run = tmp_path / "run"
    pipeline.run_pipeline(write_recipe(tmp_path, run, ["a"]))
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = run / f".idx.tmp-{dead.pid}-k1ll3d" / "idx"
    stale.mkdir(parents=True)
    mark_as_irlm(stale.parent)
    (stale / "vectors.npy").write_bytes(b"\0" * 10_000)
    old = run / f".idx.old-{dead.pid}"  # the old copy of a replace cut short
    old.mkdir()
    mark_as_irlm(old)
    pipeline.run_pipeline(write_recipe(tmp_path, run, ["a", "idx"]))
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "a", "idx", "state.json"]
