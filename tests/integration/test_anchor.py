"""Anchor Stage I: the reconstruction loss trains the encoding pass through the embedding prefix."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).parents[1] / "scripts"))
from tiny import toy_examples  # noqa: E402

from irlm.losses.reconstruction import bidirectional_loss, reconstruction_loss  # noqa: E402
from irlm.methods.anchor.train import ReconstructionTask  # noqa: E402
from irlm.models.encoder import EncoderConfig, LLMEncoder  # noqa: E402
from irlm.models.resolve import resolve_model  # noqa: E402


def tiny_lm_encoder():
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))
    cfg = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    lm = LlamaForCausalLM(cfg)
    config = EncoderConfig("tiny", pooling="last", append_eos=False, max_length=24, dtype="fp32")
    return LLMEncoder(lm.get_decoder(), tok, config, "cpu", lm_head=lm.get_output_embeddings())


def test_prefix_gradient_reaches_the_encoding_pass():
    enc = tiny_lm_encoder()
    prefix = torch.randn(2, 32, requires_grad=True)
    target = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = (target != 0).long()
    loss = reconstruction_loss(enc.model, enc.lm_head, prefix, target, mask)
    loss.backward()
    assert prefix.grad is not None and prefix.grad.abs().sum() > 0
    # hand check: mean NLL over the 5 real target tokens, padding ignored
    with torch.no_grad():
        tokens = enc.model.get_input_embeddings()(target[:, :-1])
        h = enc.model(inputs_embeds=torch.cat([prefix[:, None], tokens], 1),
                      attention_mask=torch.cat([torch.ones(2, 1, dtype=torch.long), mask[:, :-1]], 1)).last_hidden_state
        logp = enc.lm_head(h).log_softmax(-1)
        nll = [-logp[b, t, target[b, t]] for b in range(2) for t in range(4) if mask[b, t]]
    assert abs(loss.item() - torch.stack(nll).mean().item()) < 1e-5


def test_bidirectional_weights():
    assert abs(bidirectional_loss(torch.tensor(1.0), torch.tensor(2.0), alpha=0.2).item() - 1.8) < 1e-6


def test_stage1_step_updates_encoder_parameters():
    enc = tiny_lm_encoder()
    task = ReconstructionTask(enc, alpha=0.2, target_max_length=16)
    parts = task.step(toy_examples(4))
    assert set(parts) == {"q2d", "d2q", "stage1"}
    assert abs(parts["stage1"] - (0.2 * parts["q2d"] + 0.8 * parts["d2q"])) < 1e-5
    missing = [n for n, p in enc.model.named_parameters() if p.grad is None or p.grad.abs().sum() == 0]
    assert missing == []


def test_the_library_default_prefix_is_the_recipes():
    import inspect

    from irlm.methods.anchor.config import AnchorConfig

    default = inspect.signature(ReconstructionTask).parameters["prefix_scale"].default
    assert default == AnchorConfig().prefix_scale == "token"


@pytest.mark.parametrize("scale,prefix", [("embedding", "embed"), ("token", "pooled")])
def test_stage1_gradient_flows_through_the_embedding(scale, prefix):
    """Detaching the prefix (no flow into the encoding pass) must change the gradients, for either scaling."""
    enc = tiny_lm_encoder()
    task = ReconstructionTask(enc, alpha=0.2, target_max_length=16, prefix_scale=scale)
    task.step(toy_examples(4))
    full = torch.cat([p.grad.flatten() for p in enc.model.parameters()]).clone()
    enc.model.zero_grad(set_to_none=True)
    made = getattr(enc, prefix)
    setattr(enc, prefix, lambda **kw: made(**kw).detach())
    task.step(toy_examples(4))
    cut = torch.cat([p.grad.flatten() if p.grad is not None else torch.zeros(p.numel()) for p in enc.model.parameters()])
    assert (full - cut).abs().max() > 1e-6


def test_stage2_reads_cached_states_of_the_model_stage1_left(tmp_path, toy_beir, lm_dir, monkeypatch):
    """cache_layers: Stage I trains every layer, so Stage II's cache is keyed by (and filled from) the
    Stage-I weights, which Stage II then keeps frozen while the layers above change."""
    from safetensors.torch import load_file

    from irlm.methods.anchor.config import AnchorConfig
    from irlm.methods.anchor.train import train

    monkeypatch.setenv("IRLM_CACHE", str(tmp_path / "cache"))

    def run(name: str, stage1_steps: int) -> Path:
        cfg = AnchorConfig(model=str(lm_dir), data=str(toy_beir), train_split="test", eval_data=[],
                           output_dir=str(tmp_path / name), stage1_steps=stage1_steps, stage2_steps=2, batch_size=2,
                           max_length=32, target_max_length=16, precision="fp32", save_every=0, device="cpu",
                           n_negatives=0, cache_layers=1, lr=1e-2, stage1_lr=1e-2)  # fmt: skip
        train(cfg)
        return tmp_path / name

    def weights(folder: Path) -> dict:
        return {k: v for f in sorted(folder.glob("*.safetensors")) for k, v in load_file(f).items()}

    plain, staged = run("plain", 0), run("staged", 2)
    assert len(list((tmp_path / "cache" / "activations").iterdir())) == 2  # Stage I's weights: a second cache
    after1, final = weights(staged / "stage1" / "final"), weights(staged / "stage2" / "final")
    lower = [k for k in final if k.startswith("layers.0.")]
    top = [k for k in final if k.startswith("layers.1.")]
    assert lower and top and all(torch.equal(after1[k], final[k]) for k in lower)  # frozen in Stage II
    assert any(not torch.equal(after1[k], final[k]) for k in top)  # trained in Stage II
    base = weights(plain / "stage2" / "final")
    assert any(not torch.equal(base[k], final[k]) for k in lower)  # Stage I did change what Stage II reads


def test_cache_layers_refuses_lora():
    from irlm.errors import InputError
    from irlm.methods.anchor.config import AnchorConfig

    with pytest.raises(InputError, match="cache_layers and lora_r"):
        AnchorConfig(cache_layers=20, lora_r=8)


def _prefixes(scale: str) -> tuple[torch.Tensor, LLMEncoder]:
    enc = tiny_lm_encoder()
    task = ReconstructionTask(enc, alpha=0.2, target_max_length=16, prefix_scale=scale)
    return task._embed(["alpha beta gamma", "a longer text about delta and epsilon"]), enc


def test_token_scaling_gives_the_prefix_the_mean_token_embedding_norm():
    prefix, enc = _prefixes("token")
    rows = enc.model.get_input_embeddings().weight.detach().float().norm(dim=-1)
    torch.testing.assert_close(prefix.norm(dim=-1), torch.full((2,), rows.mean().item()), rtol=1e-5, atol=1e-6)
    assert abs(rows.mean().item() - 1) > 0.5  # the tiny model's token rows are far from norm 1: the test can tell


def test_embedding_scaling_is_the_retrieval_embedding_and_raw_the_pooled_state():
    unit, enc = _prefixes("embedding")
    torch.testing.assert_close(unit.norm(dim=-1), torch.ones(2))
    raw, _ = _prefixes("raw")
    pooled = enc.pooled(**enc.collate(enc.tokenize(["alpha beta gamma", "a longer text about delta and epsilon"])))
    torch.testing.assert_close(raw, pooled)
    assert not torch.allclose(raw.norm(dim=-1), torch.ones(2), atol=1e-2)
    torch.testing.assert_close(torch.nn.functional.normalize(raw, dim=-1), unit)


def test_the_anchor_trainer_passes_prefix_scale_and_holds_out_dev_queries(tmp_path, toy_beir, lm_dir, monkeypatch):
    import importlib
    import json

    from irlm.methods.anchor.config import AnchorConfig

    anchor = importlib.import_module("irlm.methods.anchor.train")
    seen = {}
    real = anchor.scale_prefix
    def spy(pooled, scale, norm):
        seen["scale"] = scale
        return real(pooled, scale, norm)

    monkeypatch.setattr(anchor, "scale_prefix", spy)
    cfg = AnchorConfig(model=str(lm_dir), data=str(toy_beir), train_split="test", eval_data=[], dev_queries=1,
                       output_dir=str(tmp_path / "run"), stage1_steps=1, stage2_steps=1, batch_size=2, max_length=32,
                       target_max_length=16, precision="fp32", save_every=0, device="cpu", n_negatives=0,
                       prefix_scale="token")  # fmt: skip
    anchor.train(cfg)
    assert seen["scale"] == "token"
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    held = anchor.held_out_qids(str(toy_beir), "test", 1)
    assert len(held) == 1 and results["examples"] == len(anchor.training_examples(cfg)) - 1
    assert f"{toy_beir}-dev" in results["metrics"]


def test_eos_pooling_appends_the_end_token_once(lm_dir):
    enc = LLMEncoder.from_pretrained(str(lm_dir), device="cpu", dtype="fp32", pooling="eos", append_eos=False)
    eos = enc.tokenizer.eos_token_id
    rows = enc.tokenize(["alpha beta", "gamma"])
    assert all(row[-1] == eos and row[-2] != eos for row in rows)
    plain = LLMEncoder.from_pretrained(str(lm_dir), device="cpu", dtype="fp32", pooling="mean", append_eos=False)
    assert all(row[-1] != eos for row in plain.tokenize(["alpha beta", "gamma"]))


def test_prefix_scale_refuses_an_unknown_value():
    from irlm.errors import InputError
    from irlm.methods.anchor.config import AnchorConfig

    with pytest.raises(InputError, match="prefix_scale"):
        AnchorConfig(prefix_scale="unit")


def test_chunked_loss_keeps_the_loss_and_the_gradients():
    """The output layer run a few positions at a time (logits recomputed in backward) gives the whole pass's loss
    and gradients; chunk 2 splits the 5 real targets across three pieces."""
    enc = tiny_lm_encoder()
    target = torch.tensor([[5, 6, 7, 0], [8, 9, 0, 0]])
    mask = (target != 0).long()
    grads = []
    for chunk in (1024, 2):
        prefix = torch.randn(2, 32, generator=torch.Generator().manual_seed(1), requires_grad=True)
        enc.model.zero_grad(set_to_none=True)
        loss = reconstruction_loss(enc.model, enc.lm_head, prefix, target, mask, chunk=chunk)
        loss.backward()
        grads.append((loss.item(), prefix.grad.clone(), enc.lm_head.weight.grad.clone()))
    (whole, g_whole, w_whole), (parts, g_parts, w_parts) = grads
    assert abs(whole - parts) < 1e-6
    assert torch.allclose(g_whole, g_parts, atol=1e-5) and torch.allclose(w_whole, w_parts, atol=1e-5)  # sum order


def test_stage1_recomputes_activations_and_stage2_keeps_them(tmp_path, toy_beir, lm_dir, monkeypatch):
    import importlib

    from irlm.methods.anchor.config import AnchorConfig

    anchor = importlib.import_module("irlm.methods.anchor.train")
    seen = []
    real = anchor._stage

    def spy(cfg, name, task, examples, steps, lr):
        model = task.encoder.model
        on = getattr(model, "is_activation_checkpointing", None) or model.is_gradient_checkpointing
        seen.append((name, bool(on), model.training))  # transformers recomputes in train mode only
        return real(cfg, name, task, examples, steps, lr)

    monkeypatch.setattr(anchor, "_stage", spy)
    for on in (True, False):
        cfg = AnchorConfig(model=str(lm_dir), data=str(toy_beir), train_split="test", eval_data=[],
                           output_dir=str(tmp_path / f"run-{on}"), stage1_steps=1, stage2_steps=1, batch_size=2,
                           max_length=32, target_max_length=16, precision="fp32", save_every=0, device="cpu",
                           n_negatives=0, gradient_checkpointing=on)  # fmt: skip
        anchor.train(cfg)
    assert seen == [("stage1", True, True), ("stage2", False, False), ("stage1", False, False), ("stage2", False, False)]


def test_reconstruction_loss_of_padding_alone_is_zero_and_differentiable():
    enc = tiny_lm_encoder()
    prefix = torch.randn(2, 32, requires_grad=True)
    target = torch.zeros(2, 4, dtype=torch.long)
    loss = reconstruction_loss(enc.model, enc.lm_head, prefix, target, torch.zeros_like(target))
    loss.backward()  # no target: nothing to learn, but the step must not fail
    assert loss.item() == 0.0 and prefix.grad is not None and prefix.grad.abs().sum() == 0
