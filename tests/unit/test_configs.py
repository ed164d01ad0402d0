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
