"""The retriever stage's progress line: its plan counts exactly what the fill, the training and the
evaluation bars count, so the line ends at 100 % and its ETA covered every phase."""

from __future__ import annotations

import pytest


def test_the_retriever_stage_line_plans_what_its_bars_count(tmp_path, toy_beir, llama_dir, monkeypatch):
    import irlm.progress as progress
    from irlm.data import load_beir
    from irlm.methods.drama.config import RetrieverConfig
    from irlm.methods.drama.train import train

    plans, etas = [], []
    plan_class = progress.StagePlan
    monkeypatch.setattr(progress, "StagePlan", lambda phases: plans.append(plan_class(phases)) or plans[-1])
    eta = plan_class.eta
    monkeypatch.setattr(plan_class, "eta", lambda self: etas.append(eta(self)) or etas[-1])
    cfg = RetrieverConfig(model=str(llama_dir), data=str(toy_beir), train_split="test", eval_data=[str(toy_beir)],
                          dev_queries=1, output_dir=str(tmp_path / "m"), steps=3, batch_size=2, max_length=32,
                          precision="fp32", save_every=0, device="cpu", n_negatives=0, cache_layers=1,
                          activations=str(tmp_path / "acts"))  # fmt: skip
    train(cfg)
    (plan,) = plans
    assert list(plan.phases) == ["fill", "train", "eval"]
    counted = {name: (p.done, p.items) for name, p in plan.phases.items()}
    ds = load_beir(toy_beir)
    encoded = len(ds.corpus.ids) + len(ds.split_queries("test")) + 1  # the corpus once, test and dev queries
    assert counted == {"fill": (4, 4), "train": (3, 3), "eval": (encoded, encoded)}
    assert plan.units_done == pytest.approx(plan.units_total())
    assert etas[0] is not None and etas[0] > 0 and etas[-1] == pytest.approx(0.0)
