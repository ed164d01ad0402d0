"""LoRA trains only adapters and merges back exactly; `irlm mine` writes valid examples."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from tiny import tiny_encoder, toy_examples  # noqa: E402

from irlm.data.training import read_examples  # noqa: E402
from irlm.train.contrastive import ContrastiveTask  # noqa: E402
from irlm.train.loop import TrainConfig, Trainer  # noqa: E402
from irlm.train.lora import add_lora, merge_lora  # noqa: E402


def test_lora_trains_adapters_only_and_merges(tmp_path):
    enc = add_lora(tiny_encoder(), r=4)
    frozen = {n: p.detach().clone() for n, p in enc.model.named_parameters() if not p.requires_grad}
    trainable = {n: p.detach().clone() for n, p in enc.model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)
    cfg = TrainConfig(output_dir=str(tmp_path), max_steps=2, batch_size=4, lr=1e-2, precision="fp32", save_every=0)
    Trainer(ContrastiveTask(enc, n_negatives=1), toy_examples(8), cfg).fit()
    params = dict(enc.model.named_parameters())
    assert all(torch.equal(frozen[n], params[n]) for n in frozen)
    assert any(not torch.equal(trainable[n], params[n]) for n in trainable)
    texts = ["alpha beta", "a longer text for the merged model"]
    before = enc.encode(texts, progress=False)
    merge_lora(enc)
    assert not any("lora_" in n for n, _ in enc.model.named_parameters())
    np.testing.assert_allclose(enc.encode(texts, progress=False), before, atol=1e-5)


def test_mine_command_writes_examples(tmp_path, toy_beir):
    out = tmp_path / "train.jsonl"
    cmd = [sys.executable, "-c", "from irlm.cli import run; run()", "mine", "--data", str(toy_beir), "--split", "test",
           "--negatives", "2", "--out", str(out)]  # fmt: skip
    subprocess.run(cmd, check=True, capture_output=True, timeout=120)
    examples = read_examples(out)
    qrels = {line.split("\t")[0]: line.split("\t")[1] for line in (toy_beir / "qrels/test.tsv").read_text().splitlines()[1:]}
    assert {e.meta["qid"] for e in examples} == set(qrels)
    for e in examples:
        assert qrels[e.meta["qid"]] not in e.meta["negative_ids"]
        assert len(e.negatives) == len(e.meta["negative_ids"]) <= 2
        assert e.meta["miner"] == "bm25"
    assert json.loads(out.read_text().splitlines()[0])["query"]
