"""A tiny random Llama encoder and toy training examples, shared by the training tests' subprocesses."""

from __future__ import annotations

from pathlib import Path

import torch

from irlm.data.training import TrainExample
from irlm.models.encoder import EncoderConfig, LLMEncoder
from irlm.models.resolve import resolve_model


def tiny_encoder(seed: int = 0, layers: int = 2, **cfg) -> LLMEncoder:
    from transformers import AutoTokenizer, LlamaConfig, LlamaModel

    torch.manual_seed(seed)
    tok = AutoTokenizer.from_pretrained(resolve_model("minilm-l6"))  # a small real vocabulary
    config = LlamaConfig(vocab_size=tok.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=layers,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    model = LlamaModel(config).float()
    settings = {"model": "tiny", "pooling": "mean", "append_eos": False, "max_length": 32, "dtype": "fp32", **cfg}
    return LLMEncoder(model, tok, EncoderConfig(**settings), "cpu")


def toy_examples(n: int = 16, negatives: int = 2) -> list[TrainExample]:
    words = "alpha beta gamma delta epsilon zeta eta theta iota kappa lambda mu nu xi omicron pi rho".split()
    out = []
    for i in range(n):
        w = words[i % len(words)]
        negs = [f"{words[(i + j + 1) % len(words)]} passage number {i + j}" for j in range(negatives)]
        out.append(TrainExample(f"what is {w} {i}", [f"{w} is the passage for {i}"], negs))
    return out


def flat_grads(model) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1) for p in model.parameters() if p.grad is not None])


def weights_file(folder: str | Path) -> Path:
    return Path(folder) / "model.safetensors"
