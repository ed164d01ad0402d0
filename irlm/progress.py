"""One progress line for a stage made of phases (a cache fill, training, evaluation) whose ETA covers the
phases still to come, not only the one running.

A trainer opens `stage_progress(desc, phases)` with each phase's estimated cost in one unit (a token through
one layer, forward; a training step counts its backward too) and its item count. Inside it, every `bar(phase,
...)` is a plain tqdm bar (nested below the stage line) that also moves the stage line. The seconds per unit
are measured on the work done so far, so the ETA is the estimate of what is left at today's rate. Without an
open stage, `bar` is a plain tqdm bar."""

from __future__ import annotations

import time
from contextlib import contextmanager
from dataclasses import dataclass

from tqdm.auto import tqdm

_STAGE: StagePlan | None = None


@dataclass
class Phase:
    units: float  # estimated cost of the whole phase
    items: int  # what its bar counts (texts, steps)
    done: int = 0

    def units_left(self) -> float:
        return self.units * max(0, self.items - self.done) / max(1, self.items)


class StagePlan:
    """The phases of one stage, in order, and the clock; `eta()` is seconds left at the measured rate."""

    def __init__(self, phases: dict[str, tuple[float, int]]):
        self.phases = {name: Phase(units, items) for name, (units, items) in phases.items()}
        self.start = time.perf_counter()
        self.units_done = 0.0

    def advance(self, phase: str, n: int) -> None:
        p = self.phases.get(phase)
        if p is None:
            return
        n = min(n, max(0, p.items - p.done))  # a phase that runs over its estimate adds nothing past it
        p.done += n
        self.units_done += p.units * n / max(1, p.items)

    def resize(self, phase: str, items: int) -> None:
        """The phase's bar knows its real count (a fill that finds most texts cached, a resumed training)."""
        p = self.phases.get(phase)
        if p is not None and p.done == 0:
            p.units, p.items = p.units * items / max(1, p.items), items

    def units_total(self) -> float:
        return sum(p.units for p in self.phases.values())

    def eta(self) -> float | None:
        if self.units_done <= 0:
            return None
        rate = (time.perf_counter() - self.start) / self.units_done  # seconds per unit so far
        return rate * sum(p.units_left() for p in self.phases.values())


class _Bar(tqdm):
    """A tqdm bar whose updates also move the open stage's line."""

    def __init__(self, *args, phase: str = "", **kwargs):
        self.phase = phase
        super().__init__(*args, **kwargs)

    def update(self, n=1):
        out = super().update(n)
        if _STAGE is not None:
            _STAGE.advance(self.phase, int(n))
            _refresh()
        return out


def bar(phase: str, whole: bool = False, **kwargs) -> tqdm:
    """A tqdm bar for one phase (`kwargs` as tqdm's); nested under the stage line when a stage is open.
    `whole`: this bar is the whole phase, and its total (less `initial`) is the phase's real count."""
    if _STAGE is not None:
        kwargs.setdefault("position", 1)
        kwargs.setdefault("leave", False)
        if whole:
            _STAGE.resize(phase, (kwargs.get("total") or 0) - (kwargs.get("initial") or 0))
    return _Bar(phase=phase, **kwargs)


_LINE: tqdm | None = None


def _refresh() -> None:
    if _LINE is None or _STAGE is None:
        return
    total = _STAGE.units_total()
    _LINE.n = round(1000 * _STAGE.units_done / total) if total else 0
    eta = _STAGE.eta()
    _LINE.set_postfix_str(f"ETA {_clock(eta)} for the whole stage" if eta is not None else "ETA -", refresh=False)
    _LINE.refresh()


def _clock(seconds: float) -> str:
    m, s = divmod(int(seconds), 60)
    return f"{m // 60}:{m % 60:02d}:{s:02d}" if m >= 60 else f"{m:02d}:{s:02d}"


@contextmanager
def stage_progress(desc: str, phases: dict[str, tuple[float, int]], disable: bool = False):
    """Open the stage line for `phases` ({name: (units, items)}, in the order they run)."""
    global _STAGE, _LINE
    if disable:
        yield None
        return
    _STAGE = StagePlan(phases)
    _LINE = tqdm(total=1000, desc=desc, position=0,
                 bar_format="{desc}: {percentage:3.0f}%|{bar}| {elapsed} elapsed{postfix}")  # fmt: skip
    try:
        yield _STAGE
    finally:
        _LINE.close()
        _STAGE, _LINE = None, None
