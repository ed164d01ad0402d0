"""irlm deletes or replaces only what it made: stage names stay inside the run directory, a folder without
irlm's marker is refused (pipeline, `irlm index`, `irlm encode`), and temporaries of killed runs are cleaned.
A command replaces only a folder of its own kind (index, model, run, report, export); `--force` replaces
another kind, never a run directory or a folder irlm did not make; `irlm report` writes only into irlm's folders."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import yaml

from irlm import pipeline
from irlm.cli import run
from irlm.errors import InputError
from irlm.index import BM25Index
from irlm.utils import (
    MARKER,
    atomic_path,
    check_output,
    claim_folder,
    folder_kind,
    made_by_irlm,
    mark_as_irlm,
    read_marker,
)


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


def test_an_index_saved_before_the_marker_existed_is_not_taken_for_irlms(tmp_path):
    """A meta.json with a kind is what an old irlm index holds, and what anyone may write: never enough alone."""
    index = BM25Index()
    index.add(["a", "b"], ["the cat sat", "dogs bark loudly"])
    index.save(tmp_path / "bm25")
    (tmp_path / "bm25" / MARKER).unlink()
    with pytest.raises(InputError, match="irlm did not make"):
        index.save(tmp_path / "bm25")
    assert BM25Index.load(tmp_path / "bm25").ids == ["a", "b"]


def test_temporaries_of_a_killed_writer_are_cleaned_on_the_next_save(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no process holds any more
    stale = tmp_path / f".bm25.tmp-{dead.pid}-abcd1234" / "bm25"
    stale.mkdir(parents=True)
    mark_as_irlm(stale.parent, "temporary")  # as atomic_path marks its temporaries
    (stale / "vectors.npy").write_bytes(b"\0" * 1000)
    live = tmp_path / f".bm25.tmp-{os.getpid()}-other"  # a writer still running: kept
    mark_as_irlm(user_folder(live), "temporary")
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
    mark_as_irlm(stale.parent, "temporary")
    (stale / "vectors.npy").write_bytes(b"\0" * 10_000)
    old = run / f".idx.old-{dead.pid}"  # the old copy of a replace cut short
    old.mkdir()
    mark_as_irlm(old, "stage")
    pipeline.run_pipeline(write_recipe(tmp_path, run, ["a", "idx"]))
    assert sorted(p.name for p in run.iterdir()) == [MARKER, "a", "idx", "state.json"]


# --- ownership by kind: each folder irlm may not replace, as the output of every command that writes ----------


def hf_checkpoint(path: Path) -> Path:
    """A Hugging Face Trainer checkpoint: its trainer_state.json is also a file irlm's trainer writes."""
    path.mkdir(parents=True)
    (path / "trainer_state.json").write_text('{"global_step": 500}')
    (path / "model.safetensors").write_bytes(b"weights" * 1000)
    return path


def kind_meta(path: Path) -> Path:
    """Someone's folder whose meta.json happens to have a "kind", as an irlm index's has."""
    path.mkdir(parents=True)
    (path / "meta.json").write_text('{"kind": "survey"}')
    (path / "data.csv").write_text("id,answer\n1,yes\n")
    return path


def run_folder(path: Path, toy_beir: Path) -> Path:
    """A real `irlm run` directory: state.json, a stage folder, and a trained model in another stage's folder."""
    recipe = path.parent / f"{path.name}.yaml"
    recipe.write_text(yaml.safe_dump({"run_dir": str(path), "stages": [{"name": "d", "kind": "data",
                                                                          "data": str(toy_beir)}]}))  # fmt: skip
    pipeline.run_pipeline(recipe)
    claim_folder(path / "anchor", "model")
    (path / "anchor" / "model.safetensors").write_bytes(b"trained" * 1000)
    return path


def model_folder(path: Path, encoder) -> Path:
    """A trained model as irlm saves it (LLMEncoder.save)."""
    encoder.save(path)
    return path


@pytest.fixture
def victims(tmp_path, toy_beir, llama_encoder):
    return {"hf-checkpoint": lambda p: hf_checkpoint(p), "meta-kind": lambda p: kind_meta(p),
            "run": lambda p: run_folder(p, toy_beir), "model": lambda p: model_folder(p, llama_encoder)}  # fmt: skip


def snapshot(folder: Path) -> dict[str, bytes]:
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def cli_error(capsys, args: list) -> str:
    """Run `irlm ARGS` in this process; it must end with one `error:` line and exit code 2."""
    capsys.readouterr()  # what the set-up printed (progress bars)
    with mock.patch.object(sys, "argv", ["irlm", *map(str, args)]), pytest.raises(SystemExit) as ended:
        run()
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert ended.value.code == 2 and "Traceback" not in err, err
    assert len(lines) == 1 and lines[0].startswith("error:"), err
    return lines[0]


def cli_ok(capsys, args: list) -> None:
    with mock.patch.object(sys, "argv", ["irlm", *map(str, args)]), pytest.raises(SystemExit) as ended:
        run()
    assert ended.value.code == 0, capsys.readouterr().err


def folder_writers(out: Path, data: Path) -> dict[str, list]:
    """Every command that writes a folder, with `out` as that folder. Models that do not exist: the folder is
    checked before any model loads."""
    no_model = "no/such-model"
    sets = ["--set", f"output_dir={out}", "--set", f"model={no_model}"]
    recipe = out.parent / "writes-there.yaml"
    recipe.write_text(yaml.safe_dump({"run_dir": str(out), "stages": [{"name": "d", "kind": "data",
                                                                         "data": str(data)}]}))  # fmt: skip
    return {
        "index": ["index", "--data", data, "--out", out],
        "encode": ["encode", "--data", data, "--out", out, "--model", no_model],
        "export": ["export", no_model, "--out", out],
        "train anchor": ["train", "anchor", *sets],
        "train drama": ["train", "drama", *sets],
        "train reasoning": ["train", "reasoning", "--stage", "coldstart", *sets],
        "selfretrieval train": ["selfretrieval", "train", *sets],
        "prune": ["prune", *sets],
        "pretrain": ["pretrain", *sets],
        "run": ["run", recipe],
    }


def file_writers(out: Path, data: Path, trec: Path) -> dict[str, list]:
    """Every command that writes a file, with the folder `out` given as that file."""
    return {
        "search": ["search", "--index", out, "--data", data, "--out", out],
        "eval --out-run": ["eval", "--data", data, "--out-run", out],
        "fuse": ["fuse", trec, trec, "--out", out],
        "augment": ["augment", "--strategy", "crop", "--data", data, "--out", out],
        "mine": ["mine", "--data", data, "--out", out],
        "selfretrieval search": ["selfretrieval", "search", "--model", out, "--out", out],
    }


# a training output is a model folder, and a run directory is `irlm run`'s own: those pairs are same-kind writes
SAME_KIND = {("model", "train anchor"), ("model", "train drama"), ("model", "train reasoning"),
             ("model", "selfretrieval train"), ("model", "prune"), ("model", "pretrain"), ("run", "run")}  # fmt: skip
WHY = {"hf-checkpoint": "irlm did not make", "meta-kind": "irlm did not make", "run": "only `irlm run` may replace",
       "model": "of kind 'model'"}  # fmt: skip


@pytest.mark.parametrize("victim", ["hf-checkpoint", "meta-kind", "run", "model"])
def test_every_writer_refuses_a_folder_it_may_not_replace_and_leaves_it_whole(tmp_path, toy_beir, victims, capsys,
                                                                              victim):  # fmt: skip
    target = victims[victim](tmp_path / "target")
    before = snapshot(target)
    trec = tmp_path / "a.trec"
    trec.write_text("q1 Q0 d1 1 1.0 x\n")
    commands = {**folder_writers(target, toy_beir), **file_writers(target, toy_beir, trec)}
    for name, args in commands.items():
        if (victim, name) in SAME_KIND:
            continue
        line = cli_error(capsys, args)
        why = "is a folder; give a file path" if name in file_writers(target, toy_beir, trec) else WHY[victim]
        assert str(target) in line and why in line, (name, line)
        assert snapshot(target) == before, name
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["target", "toy", "a.trec", "writes-there.yaml",
                                                                  *(["target.yaml"] if victim == "run" else [])])  # fmt: skip


def test_every_file_writer_refuses_a_file_of_another_kind_and_leaves_it_whole(tmp_path, toy_beir, capsys):
    """An existing file is written over (or appended to) only when it is already what the command writes."""
    notes = tmp_path / "notes.md"
    notes.write_text("# years of work\n")
    trec = tmp_path / "a.trec"
    trec.write_text("q1 Q0 d1 1 1.0 x\n")
    for name, args in file_writers(notes, toy_beir, trec).items():
        line = cli_error(capsys, args)
        assert str(notes) in line and "irlm will not overwrite it" in line, (name, line)
        assert notes.read_text() == "# years of work\n", name


def test_a_file_writer_replaces_a_file_of_its_own_kind_but_never_its_input(tmp_path, capsys):
    a, b, out = tmp_path / "a.trec", tmp_path / "b.trec", tmp_path / "fused.trec"
    a.write_text("q1 Q0 d1 1 2.0 x\nq1 Q0 d2 2 1.0 x\n")
    b.write_text("q1 Q0 d2 1 2.0 y\nq1 Q0 d1 2 1.0 y\n")
    out.write_text("q9 Q0 old 1 5.0 earlier\n")  # an earlier fused run: rerunning replaces it
    cli_ok(capsys, ["fuse", a, b, "--out", out])
    assert "old" not in out.read_text() and "d1" in out.read_text()
    before = a.read_text()
    line = cli_error(capsys, ["fuse", a, b, "--out", a])
    assert "is one of the runs being fused" in line and a.read_text() == before
    examples, corpus = tmp_path / "ex.jsonl", tmp_path / "corpus.jsonl"
    examples.write_text('{"query": "q", "positives": ["p"], "negatives": []}\n')
    corpus.write_text('{"_id": "d1", "title": "", "text": "years of work"}\n')
    assert check_output(examples, kind="examples") == examples  # mine reruns, augment resumes
    for other in (a, corpus):  # a run, or a user's corpus: never appended to or replaced
        with pytest.raises(InputError, match="is not a JSONL of training examples"):
            check_output(other, kind="examples")


def test_every_file_irlm_writes_is_accepted_as_its_own_output(tmp_path):
    """What write_examples and augment's append write (raw U+2028, a line over 64 KiB, a first line a kill cut
    off, a BOM) and what write_trec writes are written over again, never refused."""
    from irlm.data.training import TrainExample, write_examples
    from irlm.eval import write_trec
    from irlm.methods.drama.augment import Outcome, append

    odd = TrainExample("a\u2028b\u0085c", ["p" * 70_000], ["n"])
    write_examples(tmp_path / "mined.jsonl", [odd])
    append([Outcome("u1", odd, None)], tmp_path / "aug.jsonl")
    line = (tmp_path / "aug.jsonl").read_bytes()
    (tmp_path / "cut.jsonl").write_bytes(line[:500])  # killed mid-line in its first batch
    (tmp_path / "bom.jsonl").write_bytes(b"\xef\xbb\xbf" + line)
    for name in ("mined.jsonl", "aug.jsonl", "cut.jsonl", "bom.jsonl"):
        assert check_output(tmp_path / name, kind="examples") == tmp_path / name
    write_trec({"q1": {"d1": 1.0}}, tmp_path / "r.trec")
    assert check_output(tmp_path / "r.trec", kind="trec") == tmp_path / "r.trec"
    (tmp_path / "note.txt").write_text("years of work")  # no newline: still not a run, still refused
    with pytest.raises(InputError, match="not a TREC run"):
        check_output(tmp_path / "note.txt", kind="trec")


def test_a_run_is_never_written_over_its_own_input_by_another_name(tmp_path, toy_beir, capsys, monkeypatch):
    a, b = tmp_path / "a.trec", tmp_path / "b.trec"
    a.write_text("q1 Q0 d1 1 2.0 x\n")
    b.write_text("q1 Q0 d2 1 2.0 y\n")
    monkeypatch.chdir(tmp_path)
    line = cli_error(capsys, ["fuse", a, b, "--out", "./sub/../a.trec"])
    assert "is one of the runs being fused" in line
    line = cli_error(capsys, ["eval", "--data", toy_beir, "--run", a, "--out-run", "a.trec"])
    assert "is the --run being evaluated" in line and a.read_text() == "q1 Q0 d1 1 2.0 x\n"


@pytest.mark.parametrize("victim", ["hf-checkpoint", "meta-kind", "run"])
def test_force_never_replaces_a_run_directory_or_a_folder_irlm_did_not_make(tmp_path, toy_beir, victims, capsys,
                                                                            victim):  # fmt: skip
    target = victims[victim](tmp_path / "target")
    before = snapshot(target)
    for args in (["index", "--data", toy_beir, "--out", target, "--force"],
                 ["train", "anchor", "--set", f"output_dir={target}", "--force"]):  # fmt: skip
        line = cli_error(capsys, args)
        assert WHY[victim] in line and "--force" in line
        assert snapshot(target) == before


def test_force_replaces_an_irlm_folder_of_another_kind(tmp_path, toy_beir, llama_encoder, capsys):
    model = model_folder(tmp_path / "model", llama_encoder)
    cli_ok(capsys, ["index", "--data", toy_beir, "--out", model, "--force"])
    assert folder_kind(model) == "index" and not (model / "model.safetensors").exists()
    assert BM25Index.load(model).ids == ["d1", "d2", "d3", "d4", "d5"]


def test_a_forced_training_output_empties_the_other_kind_first(tmp_path, toy_beir, capsys):
    index = tmp_path / "index"
    cli_ok(capsys, ["index", "--data", toy_beir, "--out", index])
    # drama claims its output before loading the model (prune checks the model's shape first, so it never gets there)
    prune = ["train", "drama", "--set", f"output_dir={index}", "--set", "model=no/such-model"]
    line = cli_error(capsys, prune)
    assert "of kind 'index', not 'model'" in line and folder_kind(index) == "index"
    with mock.patch.object(sys, "argv", ["irlm", *prune, "--force"]), pytest.raises(SystemExit):
        run()  # the folder is taken, then the model is not found
    assert folder_kind(index) == "model" and sorted(os.listdir(index)) == [MARKER]  # replaced, then nothing written


def test_same_kind_outputs_are_replaced_or_resumed(tmp_path, toy_beir, llama_dir, capsys):
    index = tmp_path / "index"
    cli_ok(capsys, ["index", "--data", toy_beir, "--out", index])
    cli_ok(capsys, ["encode", "--data", toy_beir, "--out", index, "--model", llama_dir, "--device", "cpu"])
    assert folder_kind(index) == "index" and (index / "vectors.npy").is_file()
    out = claim_folder(tmp_path / "train", "model")
    (out / "log.jsonl").write_text('{"step": 1}\n')  # a training run to resume: its files stay
    check_output(out, "output_dir", folder=True, kind="model")
    assert claim_folder(out, "model") == out and (out / "log.jsonl").is_file() and folder_kind(out) == "model"


@pytest.mark.parametrize("victim", ["hf-checkpoint", "meta-kind", "run"])  # a model folder: its own kind
def test_every_trainer_checks_its_output_dir_itself(tmp_path, toy_beir, victims, victim):
    """The Python API too: each method's train() refuses the folder before any model loads."""
    from irlm.methods.anchor import AnchorConfig
    from irlm.methods.anchor import train as anchor
    from irlm.methods.drama.config import PretrainConfig, PruneConfig, RetrieverConfig
    from irlm.methods.drama.pretrain import pretrain, prune
    from irlm.methods.drama.train import train as drama
    from irlm.methods.reasoning.config import ReasoningConfig
    from irlm.methods.reasoning.train import train as reasoning
    from irlm.methods.selfretrieval.config import SelfRetrievalConfig
    from irlm.methods.selfretrieval.train import train as selfretrieval

    target = victims[victim](tmp_path / "target")
    before = snapshot(target)
    trainers = [(anchor, AnchorConfig), (drama, RetrieverConfig), (reasoning, ReasoningConfig),
                (selfretrieval, SelfRetrievalConfig), (prune, PruneConfig), (pretrain, PretrainConfig)]  # fmt: skip
    for train, cls in trainers:
        cfg = cls(output_dir=str(target), model="no/such-model")
        with pytest.raises(InputError, match="irlm did not make|only `irlm run`|of kind 'model'"):
            train(cfg)
        assert snapshot(target) == before, train


def test_each_writer_records_its_kind(tmp_path, toy_beir, capsys):
    cli_ok(capsys, ["index", "--data", toy_beir, "--out", tmp_path / "idx"])
    run = run_folder(tmp_path / "run", toy_beir)
    cli_ok(capsys, ["report", run])
    assert [folder_kind(p) for p in (tmp_path / "idx", run, run / "d", run / "report")] == [
        "index", "run", "stage", "report"]  # fmt: skip
    assert read_marker(run / "d")["stage"] == "d"


def test_an_index_stage_keeps_its_stage_name_after_its_save(tmp_path, toy_beir):
    """An index stage's save writes the folder anew; the run still knows it as its stage, so another kind of
    stage under that name may take it over without --force."""
    recipe = tmp_path / "r.yaml"
    stage = {"name": "s", "kind": "index", "data": str(toy_beir)}
    recipe.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": [stage]}))
    pipeline.run_pipeline(recipe)
    assert folder_kind(tmp_path / "run" / "s") == "index" and read_marker(tmp_path / "run" / "s")["stage"] == "s"
    recipe.write_text(yaml.safe_dump({"run_dir": str(tmp_path / "run"), "stages": [
        {"name": "s", "kind": "data", "data": str(toy_beir)}]}))  # fmt: skip
    pipeline.run_pipeline(recipe)
    assert folder_kind(tmp_path / "run" / "s") == "stage"


def test_irlm_run_takes_another_kind_of_folder_only_with_force(tmp_path, toy_beir, capsys):
    index = tmp_path / "idx"
    cli_ok(capsys, ["index", "--data", toy_beir, "--out", index])
    recipe = tmp_path / "r.yaml"
    recipe.write_text(yaml.safe_dump({"run_dir": str(index), "stages": [{"name": "d", "kind": "data",
                                                                           "data": str(toy_beir)}]}))  # fmt: skip
    assert "of kind 'index', not 'run'" in cli_error(capsys, ["run", recipe])
    assert folder_kind(index) == "index"
    cli_ok(capsys, ["run", recipe, "--force"])
    assert folder_kind(index) == "run" and not (index / "meta.json").exists()


def test_legacy_markers_tell_their_kind_by_the_folder_files(tmp_path):
    """A marker from before kinds were recorded: the files beside it say the kind; without a marker, nothing."""
    for name, kind in [("state.json", "run"), ("irlm_encoder.json", "model"), ("meta.json", "index"),
                       ("notes.txt", "unknown")]:  # fmt: skip
        folder = tmp_path / name
        folder.mkdir()
        (folder / name).write_text("{}")
        assert folder_kind(folder) is None
        (folder / MARKER).write_text('{"made_by": "irlm"}')
        assert folder_kind(folder) == kind


# --- irlm report writes only into folders irlm made -------------------------------------------------------------


@pytest.mark.parametrize("notes", [True, False])
def test_report_refuses_a_folder_irlm_did_not_make(tmp_path, capsys, notes):
    folder = user_folder(tmp_path / "results")
    (folder / "results.json").write_text('{"metrics": {"ndcg@10": 0.5}}')
    if notes:  # a report.md of the user's own, where irlm report would write
        (folder / "report").mkdir()
        (folder / "report" / "report.md").write_text("my own notes")
    before = snapshot(folder)
    line = cli_error(capsys, ["report", folder])
    assert line.startswith(f"error: {folder} is a folder irlm did not make") and snapshot(folder) == before
    assert (folder / "report").is_dir() == notes


def test_report_refuses_a_report_folder_it_did_not_make_inside_a_run(tmp_path, toy_beir, capsys):
    run = run_folder(tmp_path / "run", toy_beir)
    notes = user_folder(run / "report")
    assert "irlm did not make" in cli_error(capsys, ["report", run]) and intact(notes)
    assert sorted(os.listdir(notes)) == ["thesis.tex"]


def test_report_rewrites_its_own_report(tmp_path, toy_beir, capsys):
    run = run_folder(tmp_path / "run", toy_beir)
    for _ in range(2):
        cli_ok(capsys, ["report", run])
    assert (run / "report" / "report.md").is_file() and folder_kind(run / "report") == "report"


def test_export_writes_an_export_and_replaces_another_kind_only_with_force(tmp_path, llama_dir, llama_encoder,
                                                                           monkeypatch):  # fmt: skip
    from irlm.models import export

    monkeypatch.setattr(export, "_write_sentence_transformers", lambda enc, folder: (folder.mkdir(),
                        (folder / "modules.json").write_text("[]")))  # fmt: skip
    monkeypatch.setattr(export, "_check_tokens", lambda enc, folder: None)
    model = model_folder(tmp_path / "model", llama_encoder)
    before = snapshot(model)
    with pytest.raises(InputError, match="of kind 'model', not 'export'"):
        export.export_encoder(llama_dir, model)
    assert snapshot(model) == before
    export.export_encoder(llama_dir, model, force=True)
    assert folder_kind(model) == "export" and sorted(os.listdir(model)) == [MARKER, "modules.json"]
    export.export_encoder(llama_dir, model)  # an export replaces an export
    assert folder_kind(model) == "export"
