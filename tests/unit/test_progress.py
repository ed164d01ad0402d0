"""The stage line: its ETA covers the phases still to come, at the rate measured so far."""

from __future__ import annotations

import pytest

import irlm.progress as progress


@pytest.fixture
def clock(monkeypatch):
    now = [0.0]
    monkeypatch.setattr(progress.time, "perf_counter", lambda: now[0])
    return now


def test_eta_counts_the_phases_not_yet_started(clock):
    plan = progress.StagePlan({"fill": (100.0, 10), "train": (300.0, 3), "eval": (100.0, 10)})
    assert plan.eta() is None  # nothing measured yet
    clock[0] = 10.0
    plan.advance("fill", 10)  # 100 units in 10 s: 0.1 s a unit
    assert plan.eta() == pytest.approx(0.1 * 400)  # the training and the evaluation still to come
    clock[0] = 20.0
    plan.advance("train", 1)  # 200 units in 20 s
    assert plan.eta() == pytest.approx(0.1 * 300)


def test_a_resumed_or_cached_phase_is_resized_by_its_bar(clock):
    with progress.stage_progress("stage", {"fill": (1000.0, 100), "train": (300.0, 3)}) as plan:
        with progress.bar("fill", whole=True, total=10) as b:  # 90 of the 100 texts were cached already
            b.update(10)
        assert plan.phases["fill"].units == pytest.approx(100.0)
        progress.bar("train", whole=True, total=3, initial=2).close()  # resumed at step 2 of 3
        assert plan.phases["train"].units == pytest.approx(100.0)
        assert plan.units_done == pytest.approx(100.0)


def test_bars_move_their_own_phase_only_and_never_past_it(clock):
    with progress.stage_progress("stage", {"fill": (10.0, 10), "eval": (50.0, 5)}) as plan:
        with progress.bar("eval", total=8) as b:  # one of several eval bars: not the whole phase
            b.update(3)
            b.update(5)
        assert plan.phases["fill"].done == 0
        assert plan.phases["eval"].done == 5 and plan.units_done == pytest.approx(50.0)


def test_a_bar_outside_a_stage_is_plain_tqdm():
    with progress.bar("train", whole=True, total=2) as b:
        b.update(2)
    assert progress._STAGE is None and b.n == 2
