"""A causal LM's top trained on cached layer-F states: the full model's loss, gradients only above F, a whole model
saved, and the cache keyed and resumable as the encoders' one."""

from __future__ import annotations

import random
from types import SimpleNamespace

import pytest
import torch

from irlm.errors import InputError
from irlm.train.cached_lm import CachedCausalLM, CachedSFTTask, cached_lm, untie_head
from irlm.train.lm import SFTTask
from irlm.train.loop import TrainConfig, Trainer

LAYERS, FROZEN, VOCAB = 3, 2, 97
TOK = SimpleNamespace(pad_token_id=0, save_pretrained=lambda folder: None)  # all SFTTask asks of a tokenizer


def tiny_lm(tied: bool, seed: int = 3):
    """A 3-layer random Llama; initializer_range 0.2 makes attention sharp enough that a wrong mask or position
    visibly moves the loss."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(seed)
    config = LlamaConfig(vocab_size=VOCAB, hidden_size=32, intermediate_size=64, num_hidden_layers=LAYERS,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         initializer_range=0.2, tie_word_embeddings=tied, pad_token_id=0)  # fmt: skip
    return LlamaForCausalLM(config).float()


def examples(n: int = 6, seed: int = 0) -> list[tuple[list[int], list[int]]]:
    """(prompt, target) token lists of unequal lengths, so batches carry right padding."""
    rng = random.Random(seed)
    draw = lambda k: [rng.randrange(1, VOCAB) for _ in range(k)]  # noqa: E731
    return [(draw(rng.randint(2, 9)), draw(rng.randint(1, 6))) for _ in range(n)]


def rows_of(exs) -> list[list[int]]:
    return [p + t for p, t in exs]


def cached(tmp_path, tied: bool, layers: int = FROZEN, folder: str = "acts", **kw) -> CachedCausalLM:
    return CachedCausalLM.wrap(tiny_lm(tied), layers, tmp_path / folder, dtype="fp32", **kw)


def step(task, exs) -> tuple[float, dict[str, torch.Tensor]]:
    loss = task.step(exs)["lm"]
    grads = {n: p.grad.clone() for n, p in task.model.named_parameters() if p.grad is not None}
    return loss, grads


@pytest.mark.parametrize("tied", [True, False], ids=["tied-head", "own-head"])
def test_loss_and_top_gradients_equal_the_full_model(tmp_path, tied):
    exs = examples()
    full = tiny_lm(tied)
    untie_head(full)  # the same function as before, so the head's gradient is comparable where it was tied
    loss_full, grads_full = step(SFTTask(full, TOK), exs)
    lm = cached(tmp_path, tied)
    assert lm.fill(rows_of(exs), batch_size=4, progress=False) == len(exs)
    lm.lower_states = None  # every state of the batch must now come from the cache
    loss, grads = step(CachedSFTTask(lm, TOK), exs)
    assert loss == pytest.approx(loss_full, rel=1e-5)
    top = {f"model.layers.{i}." for i in range(FROZEN, LAYERS)}
    assert set(grads) == {n for n in grads_full if n.startswith(tuple(top))} | {"model.norm.weight", "lm_head.weight"}
    assert any(n.startswith("model.layers.0.") for n in grads_full)  # the reference did train the lower layers
    for name, g in grads.items():
        assert g.abs().sum() > 0, name
        torch.testing.assert_close(g, grads_full[name], rtol=1e-4, atol=1e-6, msg=name)


def test_bf16_states_stay_close(tmp_path):
    exs = examples()
    loss_full = SFTTask(tiny_lm(True), TOK).step(exs)["lm"]
    lm = CachedCausalLM.wrap(tiny_lm(True), FROZEN, tmp_path / "acts", dtype="bf16")
    lm.fill(rows_of(exs), progress=False)
    assert CachedSFTTask(lm, TOK).step(exs)["lm"] == pytest.approx(loss_full, rel=2e-2)


def test_training_moves_only_the_top_and_saves_a_whole_model(tmp_path):
    from transformers import AutoModelForCausalLM

    exs = examples(8)
    base = tiny_lm(True).state_dict()
    lm = cached(tmp_path, tied=True)
    lm.fill(rows_of(exs), progress=False)
    cfg = TrainConfig(output_dir=str(tmp_path / "run"), max_steps=3, batch_size=4, lr=1e-2, precision="fp32",
                      save_every=0)  # fmt: skip
    Trainer(CachedSFTTask(lm, TOK), exs, cfg).fit()
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "run" / "final", dtype=torch.float32)
    now = saved.state_dict()
    frozen = [n for n in base if n.startswith(("model.embed_tokens.", "model.layers.0.", "model.layers.1."))]
    trained = [n for n in base if n.startswith(("model.layers.2.", "model.norm.", "lm_head."))]
    assert frozen and all(torch.equal(now[n], base[n]) for n in frozen)
    assert trained and not any(torch.equal(now[n], base[n]) for n in trained)
    assert saved.lm_head.weight is not saved.model.embed_tokens.weight  # loaded untied, as trained
    assert saved.config.tie_word_embeddings is False  # said so in its config, not left to the loader's guess
    # the saved model, run whole and uncached, gives the loss the cached top gives on the same batch
    torch.testing.assert_close(torch.tensor(SFTTask(saved, TOK).step(exs)["lm"]),
                               torch.tensor(CachedSFTTask(lm, TOK).step(exs)["lm"]), rtol=1e-5, atol=0)  # fmt: skip


def test_other_layers_or_weights_miss_the_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("IRLM_CACHE", str(tmp_path / "cache"))
    rows = rows_of(examples())
    wrap = lambda layers, model: CachedCausalLM.wrap(model, layers, dtype="fp32")  # noqa: E731
    first = wrap(FROZEN, tiny_lm(True))
    assert first.fill(rows, progress=False) == len(rows)
    assert wrap(FROZEN, tiny_lm(True)).fill(rows, progress=False) == 0  # the same weights and F: every row found
    other = wrap(FROZEN - 1, tiny_lm(True))
    assert other.cache.folder != first.cache.folder and other.fill(rows, progress=False) == len(rows)
    moved = tiny_lm(True)
    with torch.no_grad():
        moved.model.layers[1].mlp.up_proj.weight[0, 0] += 1e-3  # a frozen weight moves: another cache
    assert wrap(FROZEN, moved).fill(rows, progress=False) == len(rows)
    with pytest.raises(InputError, match="another model or layer count"):  # a folder given by hand is checked
        CachedCausalLM.wrap(tiny_lm(True), FROZEN - 1, first.cache.folder, dtype="fp32")


def test_a_killed_fill_resumes_where_it_stopped(tmp_path):
    exs = examples(7)
    lm, calls = cached(tmp_path, tied=True), []
    add = lm.cache.add

    def dying_add(keys, states):
        if calls:
            raise KeyboardInterrupt  # killed while the second batch is computed
        calls.append(len(keys))
        add(keys, states)

    lm.cache.add = dying_add
    with pytest.raises(KeyboardInterrupt):
        lm.fill(rows_of(exs), batch_size=3, progress=False)
    part = next((tmp_path / "acts" / "parts").glob("part-*.bin"))
    with open(part, "ab") as f:
        f.write(b"\x01" * 200)  # rows written by a writer killed before its index line
    with open(tmp_path / "acts" / "index.jsonl", "a") as f:
        f.write('{"k": "abc", "p": "part-')  # an index line cut short
    again = cached(tmp_path, tied=True)
    assert again.fill(rows_of(exs), batch_size=3, progress=False) == len(exs) - 3  # only what was lost
    loss_full = SFTTask(tiny_lm(True), TOK).step(exs)["lm"]
    again.lower_states = None
    assert CachedSFTTask(again, TOK).step(exs)["lm"] == pytest.approx(loss_full, rel=1e-5)


def test_one_process_fills_and_counts(tmp_path):
    rows = rows_of(examples())
    lm = cached_lm(tiny_lm(True), FROZEN, rows + rows[:2], tmp_path / "acts", dtype="fp32")
    assert lm.filled == len(rows) and len(lm.cache.index) == len(rows)  # repeated sequences are stored once
    assert cached_lm(tiny_lm(True), FROZEN, rows, tmp_path / "acts", dtype="fp32").filled == 0


def test_layer_count_out_of_range_is_refused(tmp_path):
    with pytest.raises(InputError, match="cache_layers"):
        cached(tmp_path, tied=True, layers=LAYERS)
