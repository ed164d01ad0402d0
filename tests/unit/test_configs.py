"""`irlm config show`: every method's and stage's settings with type, default and the reason beside it."""

from __future__ import annotations

import dataclasses
import json

import pytest
from typer.testing import CliRunner

from irlm.cli import app
from irlm.configs import NAMES, config_class, describe
from irlm.errors import InputError


@pytest.mark.parametrize("name", NAMES)
def test_every_field_is_described(name):
    cls = config_class(name)
    rows = describe(cls)
    assert [r["name"] for r in rows] == [f.name for f in dataclasses.fields(cls)]
    assert sum(bool(r["help"]) for r in rows) >= len(rows) // 3  # most reasons live beside the fields


def test_help_is_the_comment_beside_the_field_and_defaults_are_real():
    rows = {r["name"]: r for r in describe(config_class("anchor"))}
    assert "0.2 best in the paper's sweep" in rows["alpha"]["help"]
    assert rows["alpha"]["default"] == 0.2 and rows["alpha"]["type"] == "float"
    assert rows["eval_data"]["default"] == ["scifact", "cranfield"]  # a factory's value, not the factory


def test_an_unknown_name_suggests_the_nearest():
    with pytest.raises(InputError, match="did you mean 'drama'"):
        config_class("dramma")


def test_the_cli_lists_settings_as_json():
    result = CliRunner().invoke(app, ["config", "show", "prune", "--json"])
    assert result.exit_code == 0, result.output
    rows = [json.loads(line) for line in result.output.splitlines()]
    assert {"harden", "target_warmup"} <= {r["name"] for r in rows}


@pytest.mark.parametrize("name", ["anchor", "drama", "selfretrieval", "reasoning", "prune", "pretrain"])
def test_trainers_extend_the_shared_settings_and_read_their_reasons(name):
    from irlm.train.settings import TrainSettings

    cls = config_class(name)
    assert issubclass(cls, TrainSettings)
    rows = {r["name"]: r for r in describe(cls)}
    assert "bf16 autocast" in rows["precision"]["help"]  # declared only in TrainSettings
    assert rows["seed"]["default"] == 42 and rows["device"]["default"] is None


def test_an_overridden_default_keeps_its_own_reason():
    rows = {r["name"]: r for r in describe(config_class("reasoning"))}
    assert rows["lr"]["default"] == 1e-5 and "LREM" in rows["lr"]["help"]
    assert rows["batch_size"]["default"] == 16


def test_train_config_takes_the_shared_fields_and_a_stage_override():
    from irlm.methods.anchor.config import AnchorConfig
    from irlm.train.loop import train_config

    cfg = AnchorConfig(lr=1e-3, batch_size=4, precision="fp32", save_every=3, seed=7, output_dir="o")
    tc = train_config(cfg, 5, output_dir="o/stage1", grad_accum=2)
    assert (tc.max_steps, tc.lr, tc.batch_size, tc.precision, tc.save_every, tc.seed) == (5, 1e-3, 4, "fp32", 3, 7)
    assert (tc.output_dir, tc.grad_accum) == ("o/stage1", 2)


@pytest.mark.parametrize("words", [["train", m] for m in ("anchor", "drama", "selfretrieval", "reasoning")]
                         + [["selfretrieval", "train"], ["prune"], ["pretrain"]])  # fmt: skip
def test_every_settings_command_refuses_a_wrong_key_with_the_nearest(words):
    result = CliRunner().invoke(app, [*words, "--set", "sed=1"])
    assert isinstance(result.exception, InputError), result.output
    assert "did you mean 'seed'" in str(result.exception)
