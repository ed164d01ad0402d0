"""Config loading: YAML plus key=value overrides into a settings dataclass."""

from __future__ import annotations

from dataclasses import dataclass

import pytest

from irlm.config_files import load_config
from irlm.errors import InputError


@dataclass
class Settings:
    lr: float = 1.0
    steps: int = 1
    cap: float | None = None
    name: str = "a"


def test_exponents_without_a_dot_are_numbers(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("lr: 1e-5\nname: 1e3\n")  # YAML 1.1 reads both as strings
    cfg = load_config(Settings, path, ["cap=2e-05", "steps=30"])
    assert (cfg.lr, cfg.cap, cfg.steps, cfg.name) == (1e-5, 2e-5, 30, "1e3")
    assert isinstance(cfg.lr, float) and isinstance(cfg.steps, int)


@pytest.mark.parametrize("override, message", [
    ("lr=fast", "setting lr: expected float, got 'fast'"),
    ("stepz=3", "unknown setting"),
    ("steps", "not key=value"),
])  # fmt: skip
def test_bad_settings_name_the_key(override, message):
    with pytest.raises(InputError, match=message):
        load_config(Settings, None, [override])


def test_train_config_refuses_unknown_keys_and_precisions():
    from irlm.train.loop import TrainConfig

    with pytest.raises(InputError, match="did you mean 'max_steps'"):
        TrainConfig.from_dict({"max_stpes": 3})
    with pytest.raises(InputError, match="precision"):
        TrainConfig(precision="bf61")
    assert TrainConfig.from_dict({"max_steps": 3}).max_steps == 3


def test_auto_precision_follows_the_bf16_probe(monkeypatch):
    from irlm.train import loop

    for faster, expected in ((True, "bf16"), (False, "fp32")):
        monkeypatch.setattr(loop, "bf16_is_faster", lambda device, f=faster: f)
        assert loop.resolve_precision("auto", "cpu") == expected
        assert loop.autocast("cpu", "auto").fast_dtype == __import__("torch").bfloat16
        assert loop.autocast("cpu", "auto")._enabled is faster
    assert loop.resolve_precision("fp32", "cpu") == "fp32" and loop.resolve_precision("bf16", "cpu") == "bf16"
