"""What the metrics cost: the whole system at full speed (`sovereign run` on the sim feed,
1000 agents) with its exporter scraped every second, against the same system with the
exporter off, in alternating runs of one session (ticks/s over each run's feed time, as
bench_pipeline.py measures it); and one scrape of a running system of 1000 agents and 100
symbols over HTTP, and through the control socket (`sovereign metrics`).

Every process publishes its metrics where it already beats (tens of times a second, plain
stores into shared memory), so the system pays for them whether it is scraped or not; a
scrape reads shared memory in the supervisor and never waits on a trading process. The
figures: docs/performance.md, "Metrics"."""

from __future__ import annotations

import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import NamedTuple

from bench.conftest import median_seconds
from sovereign.engine.control import request, socket_path
from sovereign.engine.exporter import LISTEN_ENV
from sovereign.engine.gateway import publish_orders
from sovereign.engine.metrics import Histogram, Meter, MetricsBoard
from sovereign.state.store import StateStore

TICKS = 6_000_000
PAIRS = 6  # a run without the exporter, then one with it: each pair's ratio is read in one stretch
SCRAPE_EVERY_S = 1.0
SCRAPES = 200


def started_url(log: Path, proc: subprocess.Popen, timeout: float = 120) -> str:
    """The exporter's URL from the supervisor's start line."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline and proc.poll() is None:
        found = re.search(r"started .* metrics=(\S+)", log.read_text(errors="replace"))
        if found:
            return found.group(1)
        time.sleep(0.05)
    raise AssertionError(f"no start line: {log.read_text(errors='replace')[-2000:]}")


class Run(NamedTuple):
    rate: float  # ticks/s over the feed's time
    scrapes: int
    lost: int  # ticks lost: a worker descheduled longer than the gateway waits (a machine shared)
    supervisor_cpu: float  # the supervisor's CPU seconds per wall second while it ran


def cpu_seconds(pid: int) -> float | None:
    """A process's user + system CPU time (None once it has gone)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_system(tmp: Path, listen: str) -> Run:
    """The system to TICKS at full speed with [metrics] listen = `listen`, scraped every
    SCRAPE_EVERY_S while it runs when listening; the supervisor's CPU time read as often."""
    state, cfg, log = tmp / "state", tmp / "bench.toml", tmp / "log.txt"
    cfg.write_text(f'[system]\nstate_dir = "{state}"\n')
    env = {**os.environ, LISTEN_ENV: listen}
    command = [sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg), "--max-ticks", str(TICKS)]
    with open(log, "wb") as out:
        proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT, env=env)  # the supervisor
    scrapes, cpu = 0, []
    try:
        url = started_url(log, proc)
        while proc.poll() is None:
            t = time.monotonic()
            used = cpu_seconds(proc.pid)
            if used is not None:
                cpu.append((t, used))
            if url != "off":
                try:
                    with urllib.request.urlopen(url, timeout=5) as r:
                        r.read()
                    scrapes += 1
                except OSError:  # stopping: the exporter has closed
                    url = "off"
            time.sleep(max(0.0, SCRAPE_EVERY_S - (time.monotonic() - t)))
        assert proc.wait(600) == 0, log.read_text(errors="replace")[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    with StateStore(state, readonly=True) as st:
        stats = st.read(lambda t: [v for _, v in t.items("journal") if v["event"] == "gateway_stats"])[-1]
    assert stats["ticks"] == TICKS and len(cpu) >= 2
    share = (cpu[-1][1] - cpu[0][1]) / (cpu[-1][0] - cpu[0][0])
    return Run(stats["ticks"] / stats["feed_s"], scrapes, stats["lost_ticks"], share)


def test_pipeline_with_the_exporter_scraped_every_second(benchmark, report) -> None:
    runs: dict[str, list[Run]] = {"off": [], "on": []}

    def run() -> None:
        for k in range(PAIRS):  # off then on, then on then off: a drift of the machine falls on both
            pair = (("off", ""), ("on", "127.0.0.1:0"))
            for name, listen in pair if k % 2 == 0 else pair[::-1]:
                with tempfile.TemporaryDirectory() as tmp:
                    runs[name].append(run_system(Path(tmp), listen))

    median_seconds(benchmark, run, rounds=1)
    off, on = runs["off"], runs["on"]
    assert min(r.scrapes for r in on) >= 2, on  # each run was scraped while it ran
    ratios = sorted(b.rate / a.rate for a, b in zip(off, on, strict=True))
    report("metrics", "exporter off: system ticks/s", statistics.median(r.rate for r in off), "ticks/s")
    report("metrics", "scraped every 1 s: ticks/s", statistics.median(r.rate for r in on), "ticks/s",
           "exporter off: system ticks/s")  # fmt: skip
    report("metrics", "pairs' ratio on/off, median", statistics.median(ratios), "ratio")
    # the noise the ratio is read against: how far the runs without the exporter spread
    spread = min(r.rate for r in off) / max(r.rate for r in off)
    report("metrics", "off runs: slowest/fastest", spread, "ratio")
    # what the exporter costs, in CPU rather than in a throughput this noisy: the supervisor's
    # share of a core with it scraped, against without
    report("metrics", "supervisor CPU %, off", statistics.median(r.supervisor_cpu for r in off) * 100, "%",
           higher_is_better=False)  # fmt: skip
    report("metrics", "supervisor CPU %, scraped", statistics.median(r.supervisor_cpu for r in on) * 100, "%",
           higher_is_better=False)  # fmt: skip
    report("metrics", "scrapes per run (fewest)", min(r.scrapes for r in on), "scrapes")
    report("metrics", "ticks lost, all runs", sum(r.lost for r in off + on), "ticks", higher_is_better=False)
    print(f"ticks/s: off {[round(r.rate) for r in off]}, on {[round(r.rate) for r in on]}; pairs' ratios "
          f"{[round(r, 3) for r in ratios]}; supervisor CPU off {[round(r.supervisor_cpu, 4) for r in off]}, "
          f"on {[round(r.supervisor_cpu, 4) for r in on]}; scrapes {[r.scrapes for r in on]}")


def test_what_publishing_costs_a_process(benchmark, report) -> None:
    """A process's side, without a system: the gateway's publish at each beat (every
    counter, both histograms, its gauge), an observation of each histogram, and a scrape's
    collector alone (in the supervisor, off every trading process's path)."""
    board = MetricsBoard(f"sovbench-{uuid.uuid4().hex}-metrics", 4)
    try:
        meters, t2o, commits = [Meter(board, 0)], Histogram(), Histogram()
        for ns in range(1000, 10**8, 99_991):
            t2o.observe_ns(ns)
            commits.observe_ns(ns)
        n = 20_000

        def publish() -> None:
            for i in range(n):
                publish_orders(meters[0], [i, 1], 1, i, t2o, commits, ticks=i, ticks_dropped=0,
                               ticks_refused=[0] * 9 + [1, 2])  # fmt: skip

        per_publish = median_seconds(benchmark, publish, rounds=3) / n
        t = time.perf_counter()
        for i in range(n):
            commits.observe_ns(1000 + i)
        per_observe = (time.perf_counter() - t) / n
        meters.clear()  # its views of the board, before it is unmapped
    finally:
        board.close()
    report("publish", "gateway publish us", per_publish * 1e6, "us", higher_is_better=False)
    # at a beat every 50 ms: the share of one core the gateway spends on its metrics
    report("publish", "gateway publish, % of a core", per_publish * 20 * 100, "%", higher_is_better=False)
    report("publish", "histogram observation us", per_observe * 1e6, "us", higher_is_better=False)


def test_one_scrape_at_1000_agents_and_100_symbols(benchmark, report) -> None:
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        cfg, log = tmp / "bench.toml", tmp / "log.txt"
        # 100 symbols (1000 agents), paced at 100x a market's rate: every process runs and publishes
        cfg.write_text(f'[system]\nstate_dir = "{tmp / "state"}"\n[feed]\npace = "realtime"\nspeed = 100.0\n')
        env = {**os.environ, LISTEN_ENV: "127.0.0.1:0"}
        with open(log, "wb") as out:
            proc = subprocess.Popen([sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg)],
                                    stdout=out, stderr=subprocess.STDOUT, env=env)  # fmt: skip
        try:
            url = started_url(log, proc)
            sock = socket_path(str(tmp / "state"), "")
            deadline = time.monotonic() + 120
            while "sovereign_equity" not in (text := scrape(url)):  # every process has published
                assert time.monotonic() < deadline and proc.poll() is None, log.read_text()[-2000:]
                time.sleep(0.2)
            http: list[float] = []

            def over_http() -> None:
                for _ in range(SCRAPES):
                    t = time.perf_counter()
                    scrape(url)
                    http.append(time.perf_counter() - t)

            median_seconds(benchmark, over_http, rounds=1)
            control = []
            for _ in range(SCRAPES // 4):
                t = time.perf_counter()
                request(sock, "metrics", timeout=10)
                control.append(time.perf_counter() - t)
        finally:
            proc.terminate()
            proc.wait(120)
    http.sort()
    series = sum(1 for line in text.splitlines() if line and not line.startswith("#"))
    report("scrape", "HTTP scrape p50 ms", http[len(http) // 2] * 1e3, "ms", higher_is_better=False)
    report("scrape", "HTTP scrape p99 ms", http[int(len(http) * 0.99)] * 1e3, "ms", higher_is_better=False)
    report("scrape", "sovereign metrics p50 ms", statistics.median(control) * 1e3, "ms", "HTTP scrape p50 ms",
           higher_is_better=False)  # fmt: skip
    report("scrape", "series", series, "series")
    report("scrape", "exposition bytes", len(text), "bytes")


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        return str(r.read().decode())
