"""Anchor Stage I: the reconstruction loss trains the encoding pass through the embedding prefix."""

from __future__ import annotations

import sys
from pathlib import Path

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


def test_stage1_gradient_flows_through_the_embedding():
    """Detaching the embedding (no flow into the encoding pass) must change the gradients."""
    enc = tiny_lm_encoder()
    task = ReconstructionTask(enc, alpha=0.2, target_max_length=16)
    task.step(toy_examples(4))
    full = torch.cat([p.grad.flatten() for p in enc.model.parameters()]).clone()
    enc.model.zero_grad(set_to_none=True)
    embed = enc.embed
    enc.embed = lambda **kw: embed(**kw).detach()
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
    import pytest

    from irlm.errors import InputError
    from irlm.methods.anchor.config import AnchorConfig

    with pytest.raises(InputError, match="cache_layers and lora_r"):
        AnchorConfig(cache_layers=20, lora_r=8)
