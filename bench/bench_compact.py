"""Compacting the LMDB file while the system writes to it (issue 22): how long every
process's writes wait, against a durable write's own time in the same run.

A state holding `--mib` MiB of live records (1 KiB each) and as many MiB of free pages (as
archiving leaves them) is compacted by `StateStore.compact` while a writer process commits
a small record every 2 ms, as the gateway does. Reported: the compaction's pause (LMDB's
write lock held for the copy and the swap), the writer's slowest commit during it, and its
commit p50 and p99 before it, the baseline: so "the pause is N commits".

    python3 -m bench.bench_compact --mib 16 64 256     # the table in docs/performance.md
    python3 -m pytest bench/bench_compact.py -s        # 16 MiB, in the benchmark summary
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from sovereign.state.store import StateStore

# Commits one record every 2 ms until the stop file appears; prints "start_ns end_ns" per commit.
WRITER = """
import sys, time
from pathlib import Path
from sovereign.state.store import StateStore
stop = Path(sys.argv[2])
with StateStore(sys.argv[1]) as store:
    i = 0
    while not stop.exists():
        t0 = time.monotonic_ns()
        store.write(lambda t: t.put("meta", f"w-{i:08d}", i))
        print(t0, time.monotonic_ns(), flush=True)
        i += 1
        time.sleep(0.002)
"""


def build(path: Path, mib: int) -> None:
    """mib MiB of live 1 KiB records, and as many MiB written and deleted (free pages)."""
    value = os.urandom(1024)

    def put(t: Any, name: str, chunk: int) -> None:
        for k in range(1024):
            t.put_bytes("journal", f"{name}-{chunk:05d}-{k:04d}", value)

    def delete(t: Any, chunk: int) -> None:
        for k in range(1024):
            t.delete("journal", f"gone-{chunk:05d}-{k:04d}")

    with StateStore(path) as store:
        for name in ("live", "gone"):
            for chunk in range(mib):
                store.write(lambda t, c=chunk, name=name: put(t, name, c))
        for chunk in range(mib):
            store.write(lambda t, c=chunk: delete(t, c))


def measure(work: Path, mib: int) -> dict[str, Any]:
    state = work / f"state-{mib}"
    build(state, mib)
    stop = work / f"stop-{mib}"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(state), str(stop)], stdout=subprocess.PIPE,
                              text=True)  # fmt: skip
    try:
        time.sleep(2.0)  # the baseline: commits with no compaction
        with StateStore(state) as store:
            t0 = time.monotonic_ns()
            done = store.compact()
            t1 = time.monotonic_ns()
        time.sleep(1.0)
    finally:
        stop.touch()
        out, _ = writer.communicate(timeout=60)
    commits = [tuple(map(int, line.split())) for line in out.splitlines()]
    before = [(e - s) / 1e6 for s, e in commits if e < t0]
    during = [(e - s) / 1e6 for s, e in commits if s < t1 and e > t0]
    shutil.rmtree(state)
    p99 = statistics.quantiles(before, n=100)[98] if len(before) > 1 else before[0]
    return {"mib": mib, "bytes_before": done["bytes_before"], "bytes_after": done["bytes_after"],
            "pause_ms": done["pause_ms"], "slowest_during_ms": max(during, default=0.0),
            "commit_p50_ms": statistics.median(before), "commit_p99_ms": p99}  # fmt: skip


def show(rows: list[dict[str, Any]]) -> str:
    lines = ["| live records | file before -> after | writes paused | slowest commit during "
             "| commit p50 / p99 before | pause / commit p50 |", "|---|---|---|---|---|---|"]  # fmt: skip
    for r in rows:
        size = f"{r['bytes_before'] / 2**20:.0f} -> {r['bytes_after'] / 2**20:.0f} MiB"
        lines.append(f"| {r['mib']} MiB | {size} | {r['pause_ms']:.0f} ms | {r['slowest_during_ms']:.0f} ms "
                     f"| {r['commit_p50_ms']:.1f} / {r['commit_p99_ms']:.1f} ms "
                     f"| {r['pause_ms'] / r['commit_p50_ms']:.0f} |")  # fmt: skip
    return "\n".join(lines)


@pytest.mark.filterwarnings("ignore::pytest_benchmark.logger.PytestBenchmarkWarning")  # timed here, once
def test_compaction_pause_against_a_commit(tmp_path: Path, report: Any) -> None:
    r = measure(tmp_path, 16)
    print("\n" + show([r]))
    report("compact", "durable commit (p50)", 1e3 / r["commit_p50_ms"], "/s")
    report("compact", "online compaction, 16 MiB live", 1e3 / r["pause_ms"], "/s", "durable commit (p50)")
    assert r["bytes_after"] < r["bytes_before"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--mib", type=int, nargs="+", default=[16, 64, 256], help="live MiB in each state")
    ap.add_argument("--dir", help="where the states go (default: a temporary directory, removed)")
    args = ap.parse_args()
    work = Path(args.dir or tempfile.mkdtemp(prefix="sov-compact-"))
    work.mkdir(parents=True, exist_ok=True)
    try:
        print(show([measure(work, mib) for mib in args.mib]))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
