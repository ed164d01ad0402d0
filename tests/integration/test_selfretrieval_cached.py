"""Self-Retrieval trained on cached lower-layer states (cache_layers): a whole model saved with its lower layers
untouched, every training sequence cached once, resume after an interruption, and memorisation still learned."""

from __future__ import annotations

import json

import pytest
import torch
from conftest import write_beir, write_jsonl
from safetensors.torch import load_file
from test_selfretrieval import ANSWERS, DOCS, QRELS, QUERIES

from irlm.methods.selfretrieval.config import SelfRetrievalConfig


@pytest.fixture
def wiki(tmp_path, monkeypatch):
    monkeypatch.setenv("IRLM_CACHE", str(tmp_path / "cache"))  # the activation cache of this test alone
    folder = write_beir(tmp_path / "wiki", DOCS, QUERIES, QRELS)
    write_jsonl(folder / "answers.jsonl", ANSWERS)
    return folder


def config(lm_dir, wiki, out, **kw) -> SelfRetrievalConfig:
    settings = {"model": str(lm_dir), "data": str(wiki), "output_dir": str(out), "steps": 4, "batch_size": 4,
                "lr": 1e-2, "save_every": 2, "precision": "fp32", "title_beams": 2, "passage_beams": 2,
                "device": "cpu", "cache_layers": 1, **kw}  # fmt: skip
    return SelfRetrievalConfig(**settings)


def cache_rows(tmp_path) -> list[str]:
    (folder,) = (tmp_path / "cache" / "activations").iterdir()
    return [json.loads(line)["k"] for line in (folder / "index.jsonl").read_text().splitlines()]


def test_cached_training_saves_a_whole_model_with_its_lower_layers_untouched(lm_dir, wiki, tmp_path):
    from irlm.data import load_dataset
    from irlm.methods.selfretrieval.retriever import SelfRetriever
    from irlm.methods.selfretrieval.train import train

    res = train(config(lm_dir, wiki, tmp_path / "sr"))
    assert set(res["metrics"]) >= {"hits@1", "mrr@5"}
    base, final = load_file(lm_dir / "model.safetensors"), load_file(tmp_path / "sr" / "final" / "model.safetensors")
    assert final.keys() == base.keys()
    lower = [n for n in base if n.startswith(("model.embed_tokens.", "model.layers.0."))]
    top = [n for n in base if n.startswith(("model.layers.1.", "model.norm.", "lm_head."))]
    assert lower and all(torch.equal(final[n], base[n]) for n in lower)
    assert top and not any(torch.equal(final[n], base[n]) for n in top)
    rows = cache_rows(tmp_path)
    assert len(rows) == len(set(rows)) == sum(res["examples"].values())  # every training sequence, once
    sr = SelfRetriever.load(tmp_path / "sr" / "final", load_dataset(str(wiki)).corpus)  # read whole, uncached
    assert set(sr.search({"q": QUERIES[1]["text"]}, k=2)["q"]) <= {d["_id"] for d in DOCS}


def test_interrupted_cached_training_resumes_to_the_same_model(lm_dir, wiki, tmp_path, monkeypatch):
    from irlm.methods.selfretrieval.train import train
    from irlm.train.cached_lm import CachedSFTTask

    train(config(lm_dir, wiki, tmp_path / "straight"))
    rows = cache_rows(tmp_path)
    step, calls = CachedSFTTask.step, []

    def dies_at_the_third_step(self, *a, **kw):
        calls.append(1)
        if len(calls) == 3:  # after the step-2 checkpoint
            raise KeyboardInterrupt
        return step(self, *a, **kw)

    monkeypatch.setattr(CachedSFTTask, "step", dies_at_the_third_step)
    with pytest.raises(KeyboardInterrupt):
        train(config(lm_dir, wiki, tmp_path / "killed"))
    monkeypatch.setattr(CachedSFTTask, "step", step)
    train(config(lm_dir, wiki, tmp_path / "killed"))
    a = load_file(tmp_path / "straight" / "final" / "model.safetensors")
    b = load_file(tmp_path / "killed" / "final" / "model.safetensors")
    for name in a:
        torch.testing.assert_close(b[name], a[name], rtol=0, atol=0, msg=name)
    steps = [json.loads(line)["step"] for line in (tmp_path / "killed" / "log.jsonl").read_text().splitlines()]
    assert steps == [1, 2, 3, 4]
    assert cache_rows(tmp_path) == rows  # both runs read the states the first one stored


def test_cached_training_memorises_the_titles(lm_dir, wiki, tmp_path):
    """Only the top layer, the norm and the head train, and the gold passages are still retrieved."""
    from irlm.methods.selfretrieval.train import train

    cfg = config(lm_dir, wiki, tmp_path / "m", steps=60, batch_size=8, lr=3e-3, save_every=0, indexing=False,
                 assessment=False, eval_split="train", title_beams=3)  # fmt: skip
    assert train(cfg)["metrics"]["hits@1"] == 1.0
