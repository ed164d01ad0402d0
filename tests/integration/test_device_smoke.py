"""The GPU evidence script (bench/device, issue 16) in its CPU smoke mode: every pack's rows run end to end on
tiny random models and a few dozen documents, through the same entry point the device runs; every
distribution the packs import is on the device or carried as a wheel; and each prepared call fits 64 MiB."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
DEVICE = REPO / "bench" / "device"
sys.path.insert(0, str(DEVICE))

import packs  # noqa: E402
import prepare  # noqa: E402


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("device") / "out"
    env = {**os.environ, "PYTHON": sys.executable}
    res = subprocess.run(["bash", str(DEVICE / "run.sh"), "--smoke", "all", str(out)], env=env, cwd=REPO,
                         capture_output=True, text=True, timeout=1500)  # fmt: skip
    if res.returncode != 0:
        failed = [f"{p.name}: {r['name']} {r['status']} {r.get('reason', '')}" for p in out.glob("smoke-*.json")
                  for r in json.loads(p.read_text())["rows"] if r["status"] != "ok"]  # fmt: skip
        pytest.fail(f"smoke exited {res.returncode}; rows not ok: {failed}\n{res.stdout[-3000:]}\n{res.stderr[-3000:]}")
    return out


def test_every_row_of_every_pack_runs(smoke):
    for pack, make in packs.PACKS.items():
        (path,) = smoke.glob(f"smoke-{pack}-*.json")
        record = json.loads(path.read_text())
        assert [r["name"] for r in record["rows"]] == [r.name for r in make(packs.Scale(smoke=False))]
        assert all(r["status"] == "ok" for r in record["rows"]), [(r["name"], r.get("reason")) for r in record["rows"]]
        assert record["date"] and "commit" in record and record["hardware"]["torch"]
        assert record["summary"] and (smoke / f"{pack}-recipe.yaml").is_file()


def test_every_imported_distribution_is_on_the_device_or_carried(smoke):
    imported = json.loads((smoke / "imports.json").read_text())  # distribution -> its modules the packs imported
    allowed = prepare.device_packages() | set(prepare.wheel_pins()) | {"irlm"}
    device = prepare.device_packages()
    missing = {d: mods for d, mods in imported.items()
               if prepare.norm(d) not in allowed and not prepare.brought_by_device(d, device)}  # fmt: skip
    assert not missing, f"add these to bench/device/wheels.txt (or the device has them): {missing}"


def test_each_call_fits_the_device_limits():
    sizes = prepare.planned_sizes(prepare.worktree_bytes())
    for call in prepare.calls(sizes):
        assert call["bytes"] <= prepare.LIMIT, call
        assert len(call["command"]) < 2000
    wheels = prepare.CARRY / "call2" / "wheels"
    if wheels.is_dir():  # prepared here: the carried wheels' own needs are met too
        assert not prepare.check_requirements(wheels)


def test_pack_settings_at_device_scale_are_valid_and_ordered(tmp_path):
    """The GPU rows' settings (not only the smoke's) build their configs, and each row needs only earlier ones."""
    from irlm import pipeline

    for make in packs.PACKS.values():
        rows = make(packs.Scale(smoke=False))
        names = [r.name for r in rows]
        assert len(set(names)) == len(names)
        for n, row in enumerate(rows):
            assert set(row.needs) <= set(names[:n]) and 0 < row.est <= row.cap
        stages = [{"name": r.name, "kind": r.kind, **r.settings} for r in rows if r.kind in pipeline.STAGES]
        pipeline.check_settings(stages, tmp_path)


def test_next_names_a_pack():
    assert packs.next_pack().split()[0] in [*packs.ORDER, "none"]
