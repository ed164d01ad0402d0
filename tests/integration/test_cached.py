"""Training the top layers on cached layer-F states equals training the full model with those layers frozen."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from conftest import torchrun

SCRIPTS = Path(__file__).parents[1] / "scripts"
sys.path.insert(0, str(SCRIPTS))
from tiny import tiny_encoder, toy_examples  # noqa: E402

from irlm.errors import InputError  # noqa: E402
from irlm.train.cached import CachedEncoder, fingerprint, freeze_lower  # noqa: E402
from irlm.train.contrastive import ContrastiveTask, batch_texts  # noqa: E402

LAYERS, FROZEN = 3, 2


def texts_of(examples) -> list[str]:
    return batch_texts(tiny_encoder(layers=LAYERS), examples)


def one_step(encoder, examples, cache_chunk=0) -> tuple[float, dict[str, torch.Tensor]]:
    task = ContrastiveTask(encoder, temperature=0.05, n_negatives=2, cache_chunk=cache_chunk)
    loss = task.step(examples, seed=7)["infonce"]
    grads = {n: p.grad.clone() for n, p in encoder.model.named_parameters() if p.grad is not None}
    return loss, grads


def frozen_full():
    enc = tiny_encoder(seed=3, layers=LAYERS)
    freeze_lower(enc.model, FROZEN)
    return enc


def cached(tmp_path, dtype="fp32", **kw):
    enc = CachedEncoder.wrap(tiny_encoder(seed=3, layers=LAYERS), FROZEN, tmp_path / "acts", dtype=dtype, **kw)
    return enc


@pytest.mark.parametrize("cache_chunk", [0, 3])
def test_loss_and_gradients_equal_the_frozen_full_model(tmp_path, cache_chunk):
    examples = toy_examples(8, negatives=2)
    loss_full, grads_full = one_step(frozen_full(), examples)
    enc = cached(tmp_path)
    assert enc.fill(texts_of(examples), progress=False) > 0
    loss, grads = one_step(enc, examples, cache_chunk)
    assert loss == pytest.approx(loss_full, rel=1e-5)
    assert grads.keys() == grads_full.keys()
    assert not any(n.startswith(("embed_tokens", "layers.0.", "layers.1.")) for n in grads)  # frozen: no grad
    assert any(n.startswith("layers.2.") for n in grads) and "norm.weight" in grads
    for name in grads:
        assert grads[name].abs().sum() > 0, name
        torch.testing.assert_close(grads[name], grads_full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_states_stay_close(tmp_path):
    examples = toy_examples(8, negatives=2)
    loss_full, _ = one_step(frozen_full(), examples)
    loss, _ = one_step(cached(tmp_path, dtype="bf16"), examples)
    assert loss == pytest.approx(loss_full, rel=2e-2)


def test_encode_equals_the_full_model(tmp_path):
    texts = ["alpha beta gamma", "a longer passage about delta and epsilon and zeta", "x"]
    full = tiny_encoder(seed=3, layers=LAYERS).encode(texts, progress=False)
    enc = cached(tmp_path)
    first = enc.encode(texts, progress=False)  # states computed on the fly and stored
    again = enc.encode(texts, progress=False)  # read back from disk
    torch.testing.assert_close(torch.tensor(first), torch.tensor(full), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(torch.tensor(again), torch.tensor(full), rtol=1e-4, atol=1e-5)


def test_cache_is_reused_and_keyed_by_frozen_weights(tmp_path):
    texts = texts_of(toy_examples(4))
    assert cached(tmp_path).fill(texts, progress=False) == len(set(texts))
    assert cached(tmp_path).fill(texts, progress=False) == 0  # a rerun computes nothing
    enc = tiny_encoder(seed=3, layers=LAYERS)
    key = fingerprint(enc.model, FROZEN, "bf16")
    assert key != fingerprint(enc.model, FROZEN - 1, "bf16")
    assert key != fingerprint(enc.model, FROZEN, "fp32")
    with torch.no_grad():
        enc.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3  # a frozen weight moves: another cache
    assert key != fingerprint(enc.model, FROZEN, "bf16")
    with torch.no_grad():
        enc.model.layers[1].mlp.up_proj.weight[0, 0] -= 1e-3
        enc.model.layers[2].mlp.up_proj.weight[0, 0] += 1.0  # a trained weight moves: the same cache
    assert key == fingerprint(enc.model, FROZEN, "bf16")


def test_torn_index_line_is_ignored(tmp_path):
    texts = texts_of(toy_examples(4))
    cached(tmp_path).fill(texts, progress=False)
    with open(tmp_path / "acts" / "index.jsonl", "a") as f:
        f.write('{"k": "abc", "p": "part-')  # a writer killed mid-line
    assert cached(tmp_path).fill(texts, progress=False) == 0


def test_foreign_folder_and_bad_layers_are_refused(tmp_path):
    (tmp_path / "acts").mkdir()
    (tmp_path / "acts" / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not an irlm activation cache"):
        cached(tmp_path)
    assert (tmp_path / "acts" / "notes.txt").read_text() == "mine"
    with pytest.raises(InputError, match="cache_layers"):
        CachedEncoder.wrap(tiny_encoder(layers=LAYERS), LAYERS, tmp_path / "other")


def test_lora_on_top_layers_equals_frozen_full(tmp_path):
    from irlm.train.lora import add_lora

    examples = toy_examples(8, negatives=2)
    full = add_lora(frozen_full(), r=4, layers=list(range(FROZEN, LAYERS)))
    loss_full, grads_full = one_step(full, examples)
    enc = add_lora(tiny_encoder(seed=3, layers=LAYERS), r=4, layers=list(range(FROZEN, LAYERS)))
    enc = CachedEncoder.wrap(enc, FROZEN, tmp_path / "acts", dtype="fp32")
    loss, grads = one_step(enc, examples)
    assert loss == pytest.approx(loss_full, rel=1e-5)
    assert grads.keys() == grads_full.keys() and any("lora" in n for n in grads)
    for name in grads:
        torch.testing.assert_close(grads[name], grads_full[name], rtol=1e-4, atol=1e-6, msg=name)


def run_script(*args):
    return subprocess.run([sys.executable, str(SCRIPTS / "train_run.py"), *map(str, args)], check=True,
                          capture_output=True, text=True, timeout=300)  # fmt: skip


def test_two_processes_equal_one(tmp_path):
    one, two = tmp_path / "one.json", tmp_path / "two.json"
    run_script(tmp_path / "a", 1, "--grads", one, "--cache-layers", FROZEN)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun([SCRIPTS / "train_run.py", tmp_path / "b", "1", "--grads", two, "--cache-layers", FROZEN], env)
    a, b = json.loads(one.read_text()), json.loads(two.read_text())
    assert b["loss"] == pytest.approx(a["loss"], rel=1e-5)
    torch.testing.assert_close(torch.tensor(b["grads"]), torch.tensor(a["grads"]), rtol=1e-4, atol=1e-5)
    assert b["filled"] == [len(set(texts_of(toy_examples(16)))), 0]  # rank 0 fills; rank 1 reads its rows


def test_drama_trains_on_cached_states_and_holds_out_dev_queries(tmp_path, toy_beir, llama_dir, monkeypatch):
    from irlm.index.retrievers import DenseRetriever
    from irlm.methods.drama.config import RetrieverConfig
    from irlm.methods.drama.train import train

    def run(seed: int, eval_data: tuple = ()) -> dict:
        cfg = RetrieverConfig(model=str(llama_dir), data=str(toy_beir), train_split="test", eval_data=list(eval_data),
                              dev_queries=1, output_dir=str(tmp_path / f"s{seed}"), steps=2, batch_size=2,
                              max_length=32, precision="fp32", save_every=0, device="cpu", n_negatives=0,
                              cache_layers=1, activations=str(tmp_path / "acts"), seed=seed)  # fmt: skip
        return train(cfg)

    first = run(1)
    assert first["examples"] == {"original": 2}  # 3 judged queries, 1 held out
    assert set(first["metrics"]) == {f"{toy_beir}-dev", f"{toy_beir}-dev+bm25-weighted"}
    assert first["metrics"][f"{toy_beir}-dev"]["ndcg@10"] > 0
    assert first["metrics"][f"{toy_beir}-dev+bm25-weighted"]["dense_weight"] == 0.0  # BM25 alone is perfect here
    from irlm.data import load_beir
    from irlm.eval import evaluate, read_trec

    dev_run, ds = read_trec(tmp_path / "s1" / f"{toy_beir.name}-dev.trec"), load_beir(toy_beir)  # kept for tuning
    assert evaluate(dev_run, {q: ds.qrels["test"][q] for q in dev_run}) == first["metrics"][f"{toy_beir}-dev"]
    rows = len((tmp_path / "acts" / "index.jsonl").read_text().splitlines())
    assert rows == 4 + 4  # 2 training queries and their 2 documents; evaluation added 3 documents and the dev query
    builds = []
    build = DenseRetriever.build.__func__
    monkeypatch.setattr(DenseRetriever, "build", classmethod(lambda cls, *a, **kw: builds.append(1) or build(cls, *a, **kw)))
    import irlm.eval.benchmark as benchmark

    # BM25 is perfect on the toy set, so the tuned weight would be 0: force the dense run alone instead
    monkeypatch.setattr(benchmark, "tune_fusion_weight", lambda *a, **kw: (1.0, {}))
    second = run(2, eval_data=[str(toy_beir)])  # another seed reuses every state: nothing new is computed
    assert len((tmp_path / "acts" / "index.jsonl").read_text().splitlines()) == rows
    assert set(second["metrics"]) == {f"{toy_beir}-dev", f"{toy_beir}-dev+bm25-weighted", str(toy_beir),
                                      f"{toy_beir}+bm25", f"{toy_beir}+bm25-weighted"}  # fmt: skip
    assert second["metrics"][f"{toy_beir}-dev+bm25-weighted"]["dense_weight"] == 1.0
    dense_alone, hybrid = second["metrics"][str(toy_beir)], second["metrics"][f"{toy_beir}+bm25-weighted"]
    assert hybrid["ndcg@10"] == pytest.approx(dense_alone["ndcg@10"]) and dense_alone["ndcg@10"] < 1.0  # BM25: 1.0
    assert len(builds) == 1  # dev and test queries of one corpus search one encoding of it
    saved = json.loads((tmp_path / "s1" / "final" / "irlm_encoder.json").read_text())
    assert saved["lowercase"] is True  # trained retrievers read every casing alike by default
