"""Benchmark plumbing: each benchmark reports a rate next to the baseline it is compared
with in the same run, and the session ends with a table of ratios. Nothing here asserts
on time: machines are noisy, ratios taken in one run are what we track."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import pytest


@dataclass
class Result:
    group: str
    name: str
    value: float
    unit: str
    baseline: str | None = None  # name of the result in the same group to divide by
    higher_is_better: bool = True


RESULTS: list[Result] = []


def median_seconds(benchmark, fn: Callable[[], object], rounds: int) -> float:
    """Run fn through pytest-benchmark and return its median time per call. With
    --benchmark-disable (as in CI) fn still runs once and that run is timed here."""
    times: list[float] = []

    def timed() -> None:
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)

    benchmark.pedantic(timed, rounds=rounds, iterations=1, warmup_rounds=0)
    times.sort()
    return times[len(times) // 2]


@pytest.fixture
def report(benchmark):
    def add(group: str, name: str, value: float, unit: str, baseline: str | None = None,
            higher_is_better: bool = True) -> None:
        RESULTS.append(Result(group, name, value, unit, baseline, higher_is_better))
        benchmark.extra_info[name] = value

    return add


def pytest_terminal_summary(terminalreporter) -> None:
    if not RESULTS:
        return
    tr = terminalreporter
    tr.section("Sovereign benchmark summary (ratios are within this run)")
    by_key = {(r.group, r.name): r for r in RESULTS}
    for r in RESULTS:
        line = f"{r.group:<12} {r.name:<34} {r.value:>14,.1f} {r.unit:<10}"
        base = by_key.get((r.group, r.baseline)) if r.baseline else None
        if base and base.value > 0 and r.value > 0:
            ratio = r.value / base.value if r.higher_is_better else base.value / r.value
            line += f"  {ratio:8.2f}x vs {base.name}"
        tr.write_line(line)
