"""An accelerated soak (issue 22, item 3): the whole system, every process, on a simulated
market whose clock runs from 2026 for `--years` (12: to 2038), paced at `--speed` market
seconds per wall second, with faults on a seeded schedule in market time:

- SIGKILL of a random process (gateway, coordinator, risk, a worker) every few simulated
  days (`--kill-every-days`, each gap drawn in [0.5, 1.5] of it);
- SIGKILL of the whole system (the supervisor's process group) once a simulated month,
  then a new supervisor on the same state, as systemd would start it;
- the state's disk full for a while, once a simulated year: the state lives on a small
  ext4 file system of its own (a loop-mounted image, which needs root), filled with a
  ballast file for `--disk-full-s` seconds, then freed;
- with `--broker mt5`, a terminal restart every few simulated days (`--terminal-every-days`):
  the system trades an MT5 account through the real bridge on `sovereign mt5 simulate` (its
  own process, its own books, with the trade server's faults: requotes, lost answers,
  timeouts, partial fills, stop-outs), which is SIGKILLed and started again (its successor
  recreates the bridge file). The market clock is then the terminal's: it starts at the
  venue's creation (now) and its ticks come once a step (about 1 ms of wall time);
- the wall clock stepped, as NTP steps a host's, once a simulated quarter (`--clock-steps`):
  every process of the system runs with bench/clockshift.c preloaded (built here with cc),
  which adds an offset the soak rewrites to CLOCK_REALTIME alone; each step sets it to a
  new value in [-6 h, +6 h], at least a minute from the last. The monotonic clock is never
  touched (NTP does not move it). Not with `--broker mt5`: the simulated terminal's market
  clock is the wall clock sped up, where a step of an hour would be decades of market;
- not injected, and said so in the summary: with the paper broker, a terminal restart.

Once a simulated month it samples each process's RSS, open files and threads; this
system's shared-memory segments; the LMDB file, its pages in use and its entries; the
archive's and the recordings' bytes; the ticks, orders and deals of the month. At the end it
stops the system cleanly, checks every invariant on the raw state (tests/engine/invariants.py:
system_violations; with the MT5 bridge also tests/helpers.py: mt5_violations, against the
venue's own books: every client id executed at most once, risk's book the venue's), and
writes soak.json, soak.png and soak.md. It exits 1 if an invariant
is broken, or if after the baseline (the first simulated year) RSS grew more than
`--rss-growth` (5%; each process's RSS is read every 2 s, a month's is their median: a
process restarted every few days is young or old at any one moment), the pages in use
but the signals' more than `--db-growth` (10%, and 256 KiB: the retention keeps a fixed
window of history), the signals past their count (`--signal-history`), the shared memory
at all, or the recordings past their budget.

    python3 -m bench.soak --years 12 --out soak-12y              # the full run: about 2 h here
    python3 -m bench.soak --max-wall-minutes 40                  # as far as 40 minutes go
    python3 -m bench.soak --years 1 --speed 200000 --retention-days 30 --record-days 10 \
        --baseline-months 6 --window-months 3 --no-disk-full                    # CI's, 5 minutes
    python3 -m bench.soak --broker mt5 --years 12 --speed 200000 --out soak-mt5  # through the bridge

Run from the repository root; the system runs a copy of the package taken at the start
(tests.helpers.code_snapshot; --live-code: the checkout's).
"""

from __future__ import annotations

import argparse
import calendar
import contextlib
import dataclasses
import json
import mmap
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import numpy as np
import psutil  # type: ignore[import-untyped]

from bench.chaos_mt5 import FAULTS, bridge_up_since, snapshot
from sovereign.state.schema import FEED_KEY
from sovereign.state.store import StateError, StateStore, open_lock
from tests.engine.invariants import system_violations
from tests.helpers import LiveSystem, VenueSim, code_snapshot, mt5_tables, mt5_violations, toml_text

NS = 1_000_000_000
DAY_NS = 86_400 * NS
HOUR_NS = 3_600 * NS
START = "2026-01-01T00:00:00"
SYSTEM, DISK_FULL, TERMINAL = "system", "disk full", "terminal"
BROKERS = ("paper", "mt5")
MT5_SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY", "AUDUSD", "USDCAD", "USDCHF", "NZDUSD", "EURJPY"]
CLOCK_WATCH_S = 3.0  # after a clock step, the system is looked at this much later (days of market)
SAMPLE_WAIT_S = 10.0  # a month's sample waits this long at most for a process being restarted
RSS_EVERY_S = 2.0  # each process's RSS is read this often; a month's is their median
# The LMDB pages in use move by this much with no growth: a B-tree's splits and merges, and a
# month's count of faults (each restart journals its events). It matters only to a small
# state: 0.3 MiB in use with the MT5 bridge's few trades (a 12% "growth" in CI was 9 pages).
DB_SLACK = 64 * 4096
CLOCK = "clock step"
CLOCK_STEP_MAX_NS = 6 * 3_600 * NS  # a step sets the wall clock's offset within +-6 h
NO_CLOCK_MT5 = ("clock step: not injected with --broker mt5 (the simulated terminal's market clock is the "
                "wall clock sped up: a step of an hour would be decades of market); the paper soak steps it")
NO_TERMINAL = ("terminal restart: not injected, the soak trades the paper broker (--broker mt5 trades "
               "through the MT5 bridge and restarts the terminal)")  # fmt: skip


@dataclass
class Options:
    years: float = 12.0
    speed: float = 80_000.0  # market seconds per wall second: a simulated day in about a second
    symbols: int = 4
    tick_interval_s: float = 20.0  # per symbol: 3 ticks a simulated minute (paper; MT5: the terminal's)
    broker: str = "paper"  # or "mt5": through the bridge, on `sovereign mt5 simulate`
    clock_steps: bool = True  # paper: the wall clock stepped once a simulated quarter (bench/clockshift.c)
    terminal_every_days: float = 10.0  # mt5: a terminal restart this often (each gap in [0.5, 1.5] of it)
    workers: int = 1
    seed: int = 1
    kill_every_days: float = 3.0
    system_kills: bool = True  # one a simulated month
    disk_full: bool = True  # when a loop-mounted file system can be made
    disk_full_s: float = 30.0  # wall seconds: the system stalls meanwhile, so not market time
    disk_mb: int = 4096
    retention_days: int = 90
    record_days: int = 30  # below retention_days (the config requires it)
    record_max_mb: int = 64
    signal_history: int = 10_000  # signals kept in LMDB: a count, reached in about two simulated months
    baseline_months: int = 12  # the first simulated year
    window_months: int = 6  # compared: the last months of the baseline, and of the run
    rss_growth: float = 0.05
    db_growth: float = 0.10
    max_wall_minutes: float = 0.0  # 0: none
    recovery_timeout_s: float = 120.0


@dataclass
class Fault:
    at_ns: int  # market time
    kind: str  # a role, SYSTEM, DISK_FULL or TERMINAL


@dataclass
class Report:
    options: Options
    faults: Counter = field(default_factory=Counter)  # injected, by kind
    recoveries: list[tuple[str, float]] = field(default_factory=list)  # (kind, seconds to healthy)
    samples: list[dict[str, Any]] = field(default_factory=list)
    violations: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    unplanned_exits: list[str] = field(default_factory=list)  # the supervisor died by itself
    timeline: list[str] = field(default_factory=list)  # every fault and restart, in order, with its times
    market_start_ns: int = 0
    market_end_ns: int = 0
    wall_s: float = 0.0


def schedule(o: Options, start_ns: int, end_ns: int, rng: random.Random, roles: list[str]) -> list[Fault]:
    """Every fault of the run, in market time order."""
    out = []
    t = start_ns
    while True:
        t += int(rng.uniform(0.5, 1.5) * o.kill_every_days * DAY_NS)
        if t >= end_ns:
            break
        out.append(Fault(t, rng.choice(roles)))
    t = start_ns
    while o.broker == "mt5":
        t += int(rng.uniform(0.5, 1.5) * o.terminal_every_days * DAY_NS)
        if t >= end_ns:
            break
        out.append(Fault(t, TERMINAL))
    for month_ns in _months(start_ns, end_ns):
        if o.clock_steps and o.broker == "paper" and time.gmtime(month_ns // NS).tm_mon % 3 == 2:
            out.append(Fault(month_ns + int(rng.uniform(0.05, 0.95) * 28 * DAY_NS), CLOCK))
        if o.system_kills:
            out.append(Fault(month_ns + int(rng.uniform(0.05, 0.95) * 28 * DAY_NS), SYSTEM))
        if o.disk_full and time.gmtime(month_ns // NS).tm_mon == 6:  # once a year, in June
            out.append(Fault(month_ns + int(rng.uniform(0.1, 0.6) * 28 * DAY_NS), DISK_FULL))
    return sorted((f for f in out if f.at_ns < end_ns), key=lambda f: f.at_ns)


def _months(start_ns: int, end_ns: int) -> list[int]:
    """The first nanosecond of every calendar month from start's to end's (UTC)."""
    t = time.gmtime(start_ns // NS)
    y, m = t.tm_year, t.tm_mon
    out = []
    while (ns := calendar.timegm((y, m, 1, 0, 0, 0)) * NS) < end_ns:
        out.append(ns)
        y, m = (y + 1, 1) if m == 12 else (y, m + 1)
    return out


def month_start(ns: int) -> int:
    t = time.gmtime(ns // NS)
    return calendar.timegm((t.tm_year, t.tm_mon, 1, 0, 0, 0)) * NS


def month_index(ns: int) -> int:
    """Months since January 2026 (0: January 2026)."""
    t = time.gmtime(ns // NS)
    return (t.tm_year - 2026) * 12 + t.tm_mon - 1


# ---- the state's own small disk


class Disk:
    """A file system of its own for the state (an ext4 image, loop-mounted), so that it can
    be filled without touching anyone else's; None of it where that cannot be made."""

    def __init__(self, root: Path, mb: int):
        self.image, self.mount = root / "disk.img", root / "disk"
        self.mounted = False
        self.ballast = self.mount / "ballast"
        self.why_not = ""
        try:
            self.mount.mkdir(parents=True, exist_ok=True)
            with open(self.image, "wb") as f:
                f.truncate(mb << 20)  # sparse: only what is written takes room
            _run(["mkfs.ext4", "-q", "-F", "-m", "0", str(self.image)])
            _run(["mount", "-o", "loop", str(self.image), str(self.mount)])
            self.mounted = True
        except (OSError, subprocess.CalledProcessError) as e:
            self.why_not = f"no loop-mounted file system here ({e}): the disk-full fault is not injected"
            self.image.unlink(missing_ok=True)

    def fill(self) -> int:
        """Take every free byte; returns how many."""
        fd = os.open(self.ballast, os.O_WRONLY | os.O_CREAT, 0o600)
        taken = 0
        try:
            v = os.statvfs(self.mount)
            with contextlib.suppress(OSError):
                os.posix_fallocate(fd, 0, v.f_bfree * v.f_frsize)
            taken = os.fstat(fd).st_size
            chunk = b"\0" * (1 << 16)
            with contextlib.suppress(OSError):  # what fallocate left (metadata rounding): to ENOSPC
                while True:
                    taken += os.pwrite(fd, chunk, taken)
            os.fsync(fd)
        finally:
            os.close(fd)
        return taken

    def free(self) -> None:
        self.ballast.unlink(missing_ok=True)

    def close(self) -> None:
        if self.mounted:
            self.free()
            if subprocess.run(["umount", str(self.mount)], capture_output=True).returncode != 0:
                subprocess.run(["umount", "-l", str(self.mount)], capture_output=True)
            self.mounted = False
        self.image.unlink(missing_ok=True)


def _run(cmd: list[str]) -> None:
    subprocess.run(cmd, check=True, capture_output=True, timeout=60)


# ---- the system's own wall clock


class ClockShift:
    """The wall clock of this system alone, stepped: bench/clockshift.c, built here and
    preloaded in every process of the system, adds the offset this writes (an 8-byte file
    both map) to CLOCK_REALTIME; the monotonic clock stays the kernel's."""

    SOURCE = Path(__file__).resolve().parent / "clockshift.c"

    def __init__(self, root: Path):
        self.lib, self.file = root / "libclockshift.so", root / "clockshift"
        self.offset_ns = 0
        self.why_not = ""
        self._map: mmap.mmap | None = None
        try:
            _run(["cc", "-shared", "-fPIC", "-O2", "-o", str(self.lib), str(self.SOURCE), "-ldl"])
            self.file.write_bytes(bytes(8))
            with open(self.file, "r+b") as f:
                self._map = mmap.mmap(f.fileno(), 8)
        except (OSError, subprocess.CalledProcessError) as e:
            self.why_not = f"clock step: not injected, the clock shifter cannot be built or mapped here ({e})"

    def env(self, base: dict[str, str] | None) -> dict[str, str]:
        env = dict(base if base is not None else os.environ)
        env["LD_PRELOAD"] = " ".join(filter(None, [str(self.lib), env.get("LD_PRELOAD", "")]))
        env["SOV_CLOCKSHIFT"] = str(self.file)
        return env

    def step(self, rng: random.Random) -> int:
        """Set the offset to a new one within +-CLOCK_STEP_MAX_NS, a minute or more from the
        last (one aligned 8-byte store: every process reads it at its next clock read);
        returns the step."""
        assert self._map is not None
        new = self.offset_ns
        while abs(new - self.offset_ns) < 60 * NS:
            new = rng.randint(-CLOCK_STEP_MAX_NS, CLOCK_STEP_MAX_NS)
        view = np.frombuffer(self._map, np.int64)
        view[0] = new
        del view  # (the map cannot close while a view of it lives)
        step, self.offset_ns = new - self.offset_ns, new
        return step

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
            self._map = None


# ---- the run


class Soak:
    def __init__(self, out: Path, o: Options, env: dict[str, str] | None = None, keep_state: bool = False):
        self.out, self.o, self.keep_state = out, o, keep_state
        self.rng = random.Random(o.seed)
        self.report = Report(o)
        self.disk = Disk(out, o.disk_mb) if o.disk_full else None
        base = self.disk.mount if self.disk and self.disk.mounted else out
        if self.disk and not self.disk.mounted:
            self.report.notes.append(self.disk.why_not)
        self.state = base / "state"
        self.mt5 = o.broker == "mt5"
        self.symbols = MT5_SYMBOLS[: o.symbols] if self.mt5 else []
        # The terminal's market clock starts at its venue's creation, at the first start below
        # (the venue is outside the state's disk: a full disk is ours, not the trade server's).
        self.venue = VenueSim(out / "venue", ",".join(self.symbols), speed=o.speed, faults=FAULTS, env=env,
                              seed=o.seed * 1000) if self.mt5 else None  # fmt: skip
        self.start_ns = time.time_ns() if self.mt5 else _ns(START)
        self.report.market_start_ns = self.start_ns
        # The oldest terminal restart not recovered from: (monotonic, wall ns); None: none waits
        self.terminal_pending: tuple[float, int] | None = None
        self.end_ns = self.start_ns + int(o.years * 365.25 * DAY_NS)
        cfg = out / "sovereign.toml"
        cfg.write_text(self.config())
        self.clock = ClockShift(out) if o.clock_steps and not self.mt5 else None
        if self.clock is not None and self.clock.why_not:
            self.report.notes.append(self.clock.why_not)
            self.clock = None
        self.system = LiveSystem(cfg, out / "supervisor.log", self.clock.env(env) if self.clock else env)
        # After a clock step: when to look, the pids before it, and the faults fired by then
        self.clock_check: tuple[float, dict[str, int], int] | None = None
        self.clock_steps: list[int] = []
        self.roles = ["gateway", "coordinator", "risk", *(f"worker-{k}" for k in range(o.workers))]
        disk_ok = bool(self.disk and self.disk.mounted)
        self.faults = schedule(dataclasses.replace(o, disk_full=disk_ok, clock_steps=self.clock is not None),
                               self.start_ns, self.end_ns, self.rng, self.roles)  # fmt: skip
        self.market_ns = self.seen_ns = 0  # the market clock: newest seen, and as last read
        self.counters: dict[str, dict[int, int]] = {"ticks": {}, "orders": {}}  # per gateway pid
        self.last: dict[str, int] = {}
        self.advanced_at = time.monotonic()
        self.full_until: float | None = None  # wall time the ballast goes
        self.pending: list[tuple[str, float, list[int]]] = []  # (fault, when, pids killed): not recovered yet
        self.rss: dict[str, list[int]] = {}  # role -> RSS read this month (every RSS_EVERY_S)
        self.anon: dict[str, list[int]] = {}  # the same, anonymous memory alone (RssAnon)
        self.next_rss = 0.0

    def config(self) -> str:
        o = self.o
        if self.venue is not None:
            # Ticks come a step of the terminal apart (about 1 ms of wall time: minutes of market
            # time at this pace): a quote is stale only at the largest limit, an hour.
            return mt5_tables(self.state, self.venue, self.symbols, system={
                "workers": o.workers, "snapshot_interval_s": 10.0, "record_days": o.record_days,
                "record_max_mb": o.record_max_mb, "signal_history": o.signal_history},
                risk={"stale_after_s": 3600.0, "price_band": 0.05, "max_drawdown": 0.5,
                      "daily_loss_limit": 0.5},
                retention={"days": o.retention_days, "interval_s": 2.0})  # fmt: skip
        return toml_text({
            "system": {"state_dir": str(self.state), "workers": o.workers, "snapshot_interval_s": 10.0,
                       "record_days": o.record_days, "record_max_mb": o.record_max_mb,
                       "signal_history": o.signal_history},
            "feed": {"symbols": o.symbols, "seed": o.seed, "start": START, "pace": "realtime",
                     "speed": o.speed, "tick_interval_s": o.tick_interval_s},
            # Ticks are sparse (one a symbol every tick_interval_s): a quote is stale only well past
            # that. A decision takes milliseconds of wall time, minutes of market time at this pace:
            # the price band is wider, or it would refuse most intents.
            "risk": {"stale_after_s": 300.0, "price_band": 0.05},
            "retention": {"days": o.retention_days, "interval_s": 2.0},
            "metrics": {"listen": "127.0.0.1:0"},  # scraped over the control socket (read_rss)
        })  # fmt: skip

    def run(self) -> Report:
        r, o = self.report, self.o
        r.notes.append(NO_CLOCK_MT5 if self.mt5 else NO_TERMINAL)
        t0 = time.monotonic()
        deadline = t0 + o.max_wall_minutes * 60 if o.max_wall_minutes else None
        try:
            if self.venue is not None:
                (self.out / "venue").mkdir(parents=True, exist_ok=True)
                self.venue.start()
            self.system.start()
            self.system.wait_healthy(o.recovery_timeout_s)
            sampled, due = month_index(self.start_ns), None
            while self.market_ns < self.end_ns:
                if deadline is not None and time.monotonic() > deadline:
                    r.notes.append(f"stopped by --max-wall-minutes at market {_date(self.market_ns)}")
                    break
                self.tick()
                if month_index(self.market_ns) > sampled:  # a month ended: its sample, once all run
                    sampled, due = month_index(self.market_ns), time.monotonic() + SAMPLE_WAIT_S
                if due is not None and (not self.pending or time.monotonic() > due):
                    self.sample()
                    due = None
                while self.faults and self.faults[0].at_ns <= self.market_ns:
                    self.fire(self.faults.pop(0))
                time.sleep(0.1)
            self.finish()
        finally:
            self.system.close()
            if self.clock is not None:
                self.clock.close()
            if self.venue is not None:
                self.venue.kill()
            if self.disk:
                if self.keep_state and self.disk.mounted:  # the image goes: the state is kept beside it
                    shutil.copytree(self.state, self.out / "state", ignore=shutil.ignore_patterns("*.sock"))
                self.disk.close()
            r.market_end_ns = self.market_ns
            r.wall_s = time.monotonic() - t0
        return r

    def tick(self) -> None:
        """One look, never waiting long (the market runs on meanwhile): free the disk when its
        time is up; start a supervisor that died by itself again, as systemd would; read the
        market clock; see whether the system has recovered from what was done to it; restart
        a system whose market stopped."""
        if self.full_until is not None and time.monotonic() >= self.full_until:
            self.full_until = None
            assert self.disk is not None
            self.disk.free()
            self.pending.append(("disk freed", time.monotonic(), []))
        if not self.system.running():
            self.restart_exited()
            return
        if self.venue is not None:
            self.terminal()
        answer = self.system.request("quotes", symbols=list(range(self.o.symbols)))
        newest = max((int(q["ts_ns"]) for q in (answer or {}).values()), default=0)
        if newest:
            if newest < self.seen_ns - HOUR_NS:  # a paced mark may run ahead of its last tick
                after = "; ".join(self.report.timeline[-3:])
                self.report.violations.append(f"the market clock went back from {_date(self.seen_ns)} to "
                                              f"{_date(newest)} (after: {after})")  # fmt: skip
            self.seen_ns = newest
            if newest > self.market_ns:
                self.market_ns, self.advanced_at = newest, time.monotonic()
        if self.pending:
            self.recovered()
        if self.clock_check is not None and time.monotonic() >= self.clock_check[0]:
            self.after_clock_step()
        if time.monotonic() >= self.next_rss:
            self.next_rss = time.monotonic() + RSS_EVERY_S
            self.read_rss()
        if time.monotonic() - self.advanced_at > self.o.recovery_timeout_s and self.full_until is None:
            stood = f"{_date(self.market_ns)} for {self.o.recovery_timeout_s:g} s"
            self.report.violations.append(f"the market clock stood at {stood}: the system was restarted "
                                          f"({self.system.tail(300)!r})")  # fmt: skip
            self.restart_all("stuck")

    def after_clock_step(self) -> None:
        """A few seconds after a clock step, unless another fault came meanwhile: every
        process the one it was (none restarted for it), all healthy."""
        assert self.clock_check is not None
        _, before, fired = self.clock_check
        self.clock_check = None
        if sum(self.report.faults.values()) != fired or self.pending or self.full_until is not None:
            return
        status = self.system.status(2.0)
        now, healthy = self.system.pids(status), self.system.healthy(status)
        if now != before or not healthy:
            self.report.violations.append(f"after the clock step at market {_date(self.market_ns)}: the "
                                          f"processes {before} became {now}, healthy {healthy}")  # fmt: skip

    def terminal(self) -> None:
        """The terminal: started again if it died by itself (a violation: nothing kills it but
        the schedule), and each restart recovered once the gateway says the bridge is up again
        since it."""
        assert self.venue is not None
        if not self.venue.running():
            code = self.venue.proc.returncode if self.venue.proc else None
            self.report.violations.append(f"the terminal simulator exited by itself (exit {code}) at market "
                                          f"{_date(self.market_ns)}")  # fmt: skip
            self.restart_terminal()
        if self.terminal_pending is not None:
            since, wall_ns = self.terminal_pending
            if bridge_up_since(self.state, wall_ns):
                self.report.recoveries.append((TERMINAL, time.monotonic() - since))
                self.terminal_pending = None
            elif time.monotonic() - since > self.o.recovery_timeout_s and self.full_until is None:
                late = f"{self.o.recovery_timeout_s:g} s after a terminal restart"
                self.report.violations.append(f"the bridge not up {late} at market {_date(self.market_ns)}")
                self.terminal_pending = None

    def restart_terminal(self) -> None:
        assert self.venue is not None
        start = (time.monotonic(), time.time_ns())
        self.venue.kill()
        self.venue.start()
        self.terminal_pending = self.terminal_pending or start  # one recovery, timed from the first

    def recovered(self) -> None:
        """Every process healthy, none of them one that was killed: each fault waiting for
        that has recovered (the time since it is its recovery time)."""
        status = self.system.status(0.5)
        self.count(status)
        killed = [pid for _, _, pids in self.pending for pid in pids]
        now = time.monotonic()
        if self.system.healthy(status, killed):
            self.report.recoveries += [(why, now - since) for why, since, _ in self.pending]
            self.pending.clear()
            return
        late = [why for why, since, _ in self.pending if now - since > self.o.recovery_timeout_s]
        if late and self.full_until is None:
            self.report.violations.append(f"not healthy {self.o.recovery_timeout_s:g} s after {late[0]} at "
                                          f"market {_date(self.market_ns)}: "
                                          f"{status and status.get('status')}")  # fmt: skip
            self.pending.clear()
            self.restart_all("not recovered")

    def restart_exited(self) -> None:
        """The supervisor exited by itself: a violation unless the disk is full (then it is
        the known behaviour of a supervisor that cannot write its own journal: reported)."""
        code = self.system.proc.returncode if self.system.proc else None
        why = f"at market {_date(self.market_ns)}: exit {code}: {self.system.tail(300)!r}"
        self.report.unplanned_exits.append(why)
        self.report.timeline.append(f"the supervisor exited {why[:80]}")
        if self.full_until is None:
            self.report.violations.append(f"the supervisor exited by itself {why}")
        time.sleep(1.0)  # systemd's RestartSec
        self.seen_ns = min(self.seen_ns, self.durable_feed_ns())  # as after a whole-system kill
        self.system.start()
        self.pending.append(("supervisor exit", time.monotonic(), []))
        self.advanced_at = time.monotonic()

    def fire(self, f: Fault) -> None:
        r = self.report
        if f.kind == DISK_FULL:
            if self.disk is None or not self.disk.mounted or self.full_until is not None:
                return
            taken = self.disk.fill()
            self.full_until = time.monotonic() + self.o.disk_full_s
            r.faults[DISK_FULL] += 1
            r.notes.append(f"disk full at market {_date(self.market_ns)}: {taken >> 20} MiB of ballast, for "
                           f"{self.o.disk_full_s:g} s")  # fmt: skip
            return
        if f.kind == CLOCK:
            if self.clock is None:
                return
            before = self.system.pids(self.system.status(1.0))
            step = self.clock.step(self.rng)
            r.faults[CLOCK] += 1
            self.clock_steps.append(step)
            self.clock_check = (time.monotonic() + CLOCK_WATCH_S, before, sum(r.faults.values()))
            r.timeline.append(f"the wall clock stepped {step / 3.6e12:+.2f} h (offset now "
                              f"{self.clock.offset_ns / 3.6e12:+.2f} h) at market {_date(self.market_ns)}")
            return
        if f.kind == TERMINAL:
            r.faults[TERMINAL] += 1
            r.timeline.append(f"terminal killed at market {_date(self.market_ns)}, "
                              f"wall {time.monotonic():.1f}")  # fmt: skip
            self.restart_terminal()
            return
        status = self.system.status(1.0)
        self.count(status)
        pids = self.system.pids(status)
        r.timeline.append(f"{f.kind} killed at market {_date(self.market_ns)}, the board at "
                          f"{_date(self.seen_ns)}, the durable feed mark at {_date(self.durable_feed_ns())}, "
                          f"wall {time.monotonic():.1f}")  # fmt: skip
        if f.kind == SYSTEM:
            r.faults[SYSTEM] += 1
            self.restart_all(SYSTEM, pids)
        elif f.kind in pids:
            r.faults[f.kind] += 1
            self.system.kill(pids[f.kind])
            self.pending.append((f.kind, time.monotonic(), [pids[f.kind]]))
        else:
            r.faults["skipped: not running (restarting) or the system not answering"] += 1

    def restart_all(self, why: str, pids: dict[str, int] | None = None) -> None:
        """SIGKILL the whole system (with the pids last seen) and start a new supervisor."""
        start = time.monotonic()
        self.system.kill_all(list((pids or self.system.pids(self.system.status(0.5))).values()))
        # The new system resumes the feed at the mark the broker's state was last committed
        # with (every 0.25 s of wall time: at this pace days of market): the clock may go back
        # to that mark, and never before it.
        self.seen_ns = min(self.seen_ns, self.durable_feed_ns())
        self.system.start()
        self.pending = [(why, start, [])]  # what waited before is part of this recovery now
        self.advanced_at = time.monotonic()

    def durable_feed_ns(self) -> int:
        """The market clock of the feed's mark committed in the state (0: none yet)."""
        try:
            with StateStore(self.state, readonly=True) as st:
                saved = st.read(lambda t: t.get("bridge", FEED_KEY))
        except Exception:  # no state yet
            return 0
        return int(((saved or {}).get("feed") or {}).get("clock_ns") or 0)

    def read_rss(self) -> None:
        """Every process's RSS now, for the month's median: a process restarted every few
        simulated days is young or old at any one moment, and its RSS with it."""
        status = self.system.status(0.5)
        self.count(status)
        self.system.request("metrics", 0.5)  # a scrape: the exporter's memory is the supervisor's
        pids = self.system.pids(status)
        if self.system.proc is not None:
            pids["supervisor"] = self.system.proc.pid
        for role, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                self.rss.setdefault(role, []).append(psutil.Process(pid).memory_info().rss)
            with contextlib.suppress(OSError):
                self.anon.setdefault(role, []).append(rss_anon(pid))

    def count(self, status: dict | None) -> None:
        """The gateway's ticks and orders so far (it counts from its own start: per pid)."""
        for p in (status or {}).get("processes", []):
            if p["role"] == "gateway":
                for k in self.counters:
                    self.counters[k][p["pid"]] = max(self.counters[k].get(p["pid"], 0), int(p[k]))

    # ---- samples

    def sample(self) -> None:
        status = self.system.status()
        self.count(status)
        pids = self.system.pids(status)
        if self.system.proc is not None and self.system.running():
            pids["supervisor"] = self.system.proc.pid
        ended = _date(month_start(self.market_ns) - 1)[:7]
        s: dict[str, Any] = {"month": ended, "market_ns": self.market_ns, "processes": {}}
        for role, pid in pids.items():
            with contextlib.suppress(psutil.Error):
                p = psutil.Process(pid)
                with p.oneshot():
                    now = p.memory_info().rss
                    seen = sorted(self.rss.get(role) or [now])
                    anon = sorted(self.anon.get(role) or [0])
                    s["processes"][role] = {"rss": seen[len(seen) // 2], "rss_now": now, "rss_max": seen[-1],
                                            "rss_anon": anon[len(anon) // 2],
                                            "fds": p.num_fds(), "threads": p.num_threads(),
                                            "age_s": round(time.time() - p.create_time(), 1)}  # fmt: skip
        self.rss.clear()
        self.anon.clear()
        segments = self.system.segments()
        s["shm"] = {"segments": len(segments), "bytes": sum(_size(p) for p in segments)}
        s["lmdb"] = lmdb_stats(self.state)
        s["archive_bytes"] = _tree_bytes(self.state / "archive")
        s["recordings_bytes"] = _tree_bytes(self.state / "recordings")
        totals = {k: sum(v.values()) for k, v in self.counters.items()}
        totals["deals"] = venue_deals(self.out / "venue") if self.mt5 else s["lmdb"].get("deals_made", 0)
        s["month_counts"] = {k: v - self.last.get(k, 0) for k, v in totals.items()}
        self.last = totals
        s["totals"] = totals
        self.report.samples.append(s)

    # ---- the end

    def finish(self) -> None:
        r = self.report
        if self.full_until is not None:
            assert self.disk is not None
            self.disk.free()
            self.full_until = None
        if not self.system.running():
            self.restart_exited()
        with contextlib.suppress(TimeoutError, RuntimeError):
            self.system.wait_healthy(self.o.recovery_timeout_s)
        if self.pending:
            self.recovered()
        deadline = time.monotonic() + self.o.recovery_timeout_s
        while self.venue is not None and self.terminal_pending is not None and time.monotonic() < deadline:
            self.terminal()  # the last terminal restart recovered (or said not to be) before the stop
            time.sleep(0.1)
        self.count(self.system.status())
        code = self.system.stop(self.o.recovery_timeout_s)
        if code != 0 or "stopped clean=True undrained_records=0" not in self.system.tail(3000):
            r.violations.append(f"the last stop was not clean (exit {code}): {self.system.tail(600)}")
        r.violations += system_violations(self.state)
        if self.clock_steps:
            hours = sorted(s / 3.6e12 for s in self.clock_steps)
            r.notes.append(f"the wall clock stepped {len(hours)} times, by {hours[0]:+.2f} h to "
                           f"{hours[-1]:+.2f} h ({sum(h < 0 for h in hours)} of them back)")  # fmt: skip
        if self.venue is not None:
            self.venue.stop()
            dump = self.venue.dump()
            r.violations += mt5_violations(self.state, dump)
            r.notes.append(f"the venue: {len(dump['deals'])} deals, {len(dump['positions'])} positions open "
                           f"at the end, {self.venue.starts} terminal starts")  # fmt: skip
        r.violations += growth_violations(r.samples, self.o)


def growth_violations(samples: list[dict[str, Any]], o: Options) -> list[str]:
    """After the baseline, what grew: anonymous memory (each process's monthly median, averaged over the
    window), the LMDB pages in use (the window's largest), the shared memory; and recordings
    past their budget."""
    out = []
    w = o.window_months
    base = samples[max(0, o.baseline_months - w) : o.baseline_months]
    last = samples[o.baseline_months :][-w:]
    for s in samples:
        if s["recordings_bytes"] > o.record_max_mb * 1.05 * (1 << 20) + (8 << 20):
            out.append(f"{s['month']}: recordings take {s['recordings_bytes'] >> 20} MiB, past their "
                       f"budget of {o.record_max_mb} MiB")  # fmt: skip
    if not base or not last:
        return out
    # Growth is judged on each process's anonymous memory (its own heap: where a leak shows).
    # Its RSS also counts the LMDB file's pages it has mapped, which follow the file's size,
    # bounded by the retention (the pages in use, below) and compaction at start.
    for role in sorted({r for s in base + last for r in s["processes"]}):
        b, e = _mean(base, role), _mean(last, role)
        ba, ea = _mean(base, role, "rss_anon"), _mean(last, role, "rss_anon")
        if ba and ea and ea > ba * (1 + o.rss_growth):
            mib = 2**20
            out.append(f"anonymous memory of {role} grew {ea / ba - 1:.1%} after the baseline: "
                       f"{ba / mib:.1f} MiB in {base[0]['month']}..{base[-1]['month']}, "
                       f"{ea / mib:.1f} MiB in {last[0]['month']}..{last[-1]['month']} "
                       f"(RSS {b / mib:.1f} to {e / mib:.1f} MiB)")
    # The signals are kept by count (system.signal_history), the rest by the retention's time:
    # each judged by its own bound (with the bridge's few trades, the count fills for decades).
    b_db = max(_retained(s) for s in base)
    e_db = max(_retained(s) for s in last)
    if b_db and e_db > b_db * (1 + o.db_growth) + DB_SLACK:
        out.append(f"the database's pages in use but the signals' grew {e_db / b_db - 1:.1%} after the "
                   f"baseline ({b_db / 2**20:.1f} MiB to {e_db / 2**20:.1f} MiB): more than the retention "
                   "keeps")  # fmt: skip
    signals = max(s["lmdb"].get("entries", {}).get("signals", 0) for s in samples)
    if signals > o.signal_history:
        out.append(f"{signals} signals in LMDB, past system.signal_history = {o.signal_history}")
    b_shm = max(s["shm"]["bytes"] for s in base)
    e_shm = max(s["shm"]["bytes"] for s in last)
    if e_shm > b_shm:
        out.append(f"shared memory grew after the baseline: {b_shm >> 20} MiB to {e_shm >> 20} MiB")
    return out


def _retained(sample: dict[str, Any]) -> int:
    """The LMDB pages in use, less the signals' (bytes)."""
    lm = sample["lmdb"]
    return int(lm.get("used_bytes", 0)) - int(lm.get("signals_bytes", 0))


def venue_deals(venue: Path) -> int:
    """The deals the terminal's trade server has made (its books, read beside it)."""
    try:
        env = lmdb.open(str(venue / "venue"), readonly=True, max_dbs=4, subdir=True)
    except lmdb.Error:
        return 0
    try:
        with env.begin() as txn:
            return int(txn.stat(env.open_db(b"deals", txn=txn, create=False))["entries"])
    except lmdb.Error:
        return 0
    finally:
        env.close()


def rss_anon(pid: int) -> int:
    """A process's anonymous resident memory (RssAnon): RSS less the file pages it has
    touched, of which LMDB's mapped file is most (its RSS follows the file's size)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("RssAnon:"):
                return int(line.split()[1]) << 10
    return 0


def _mean(samples: list[dict[str, Any]], role: str, key: str = "rss") -> float:
    values = [s["processes"][role].get(key, 0) for s in samples if role in s["processes"]]
    return sum(values) / len(values) if values else 0.0


def lmdb_stats(state: Path) -> dict[str, Any]:
    """The LMDB file's size, its pages in use (every database's branch, leaf and overflow
    pages), its high-water page, its entries per database, and the deals the broker made."""
    out: dict[str, Any] = {"file_bytes": _size(state / "data.mdb")}
    try:
        with open_lock(state):  # never the new data file with the old lock file, mid-compaction
            env = lmdb.open(str(state), readonly=True, lock=True, max_dbs=64, subdir=True)
    except (lmdb.Error, StateError) as e:
        return {**out, "error": str(e)}
    try:
        info, main = env.info(), env.stat()
        psize = int(main["psize"])
        used = _pages(main)
        entries, pages = {}, {}
        with env.begin() as txn:
            names = [bytes(k) for k, _ in txn.cursor()]
            for name in names:
                with contextlib.suppress(lmdb.Error):
                    db = env.open_db(name, txn=txn, create=False)
                    st = txn.stat(db)
                    used += _pages(st)
                    entries[name.decode(errors="replace")] = int(st["entries"])
                    pages[name.decode(errors="replace")] = _pages(st)
            paper = None
            with contextlib.suppress(lmdb.Error):
                raw = txn.get(b"paper", db=env.open_db(b"bridge", txn=txn, create=False))
                paper = json.loads(bytes(raw)) if raw is not None else None
        out.update(used_bytes=used * psize, signals_bytes=pages.get("signals", 0) * psize,
                   high_water_bytes=(int(info["last_pgno"]) + 1) * psize,
                   map_bytes=int(info["map_size"]), readers=int(info["num_readers"]), entries=entries,
                   deals_made=int(paper["next_ticket"]) - 1 if paper else 0)  # fmt: skip
    finally:
        env.close()
    return out


def _pages(st: Any) -> int:
    return int(st["branch_pages"]) + int(st["leaf_pages"]) + int(st["overflow_pages"])


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def _tree_bytes(path: Path) -> int:
    if not path.exists():
        return 0
    return sum(_size(p) for p in path.rglob("*") if p.is_file())


def _ns(text: str) -> int:
    return calendar.timegm(time.strptime(text, "%Y-%m-%dT%H:%M:%S")) * NS


def _date(ns: int) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.gmtime(ns // NS)) if ns else "-"


# ---- the results


def summary(r: Report) -> dict[str, Any]:
    o = r.options
    years = (r.market_end_ns - r.market_start_ns) / (365.25 * DAY_NS) if r.market_end_ns else 0.0
    rec = sorted(s for _, s in r.recoveries if _ != "start")
    by_kind: dict[str, list[float]] = {}
    for kind, s in r.recoveries:
        by_kind.setdefault(kind, []).append(s)

    def at(month: int) -> dict[str, Any] | None:
        return r.samples[month - 1] if 0 < month <= len(r.samples) else None

    def brief(s: dict[str, Any] | None) -> dict[str, Any] | None:
        if s is None:
            return None
        rss = {k: round(v["rss"] / 2**20, 1) for k, v in s["processes"].items()}
        return {"month": s["month"], "rss_mib": rss,
                "lmdb_file_mib": round(s["lmdb"].get("file_bytes", 0) / 2**20, 1),
                "lmdb_used_mib": round(s["lmdb"].get("used_bytes", 0) / 2**20, 1),
                "archive_mib": round(s["archive_bytes"] / 2**20, 1),
                "recordings_mib": round(s["recordings_bytes"] / 2**20, 1),
                "shm_segments": s["shm"]["segments"],
                "shm_mib": round(s["shm"]["bytes"] / 2**20, 1)}  # fmt: skip

    return {"passed": not r.violations, "simulated_years": round(years, 2),
            "market_end": _date(r.market_end_ns),
            "wall_minutes": round(r.wall_s / 60, 1), "speed": o.speed, "broker": o.broker,
            "market_start": _date(r.market_start_ns), "faults": dict(r.faults),
            "faults_total": sum(r.faults.values()), "recoveries": len(rec),
            "recovery_p50_s": rec[len(rec) // 2] if rec else None, "recovery_max_s": rec[-1] if rec else None,
            "recovery_max_s_by_kind": {k: round(max(v), 2) for k, v in sorted(by_kind.items())},
            "year_1": brief(at(12)), "last": brief(r.samples[-1] if r.samples else None),
            "totals": r.samples[-1]["totals"] if r.samples else {},
            "unplanned_supervisor_exits": len(r.unplanned_exits), "violations": r.violations,
            "notes": r.notes, "options": asdict(o)}  # fmt: skip


def plot(r: Report, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    s = r.samples
    if not s:
        return
    x = [_ns_to_year(v["market_ns"]) for v in s]
    fig, ax = plt.subplots(3, 2, figsize=(13, 11), sharex=True)
    roles = sorted({k for v in s for k in v["processes"]})
    for role in roles:
        for a, key, scale in ((ax[0, 0], "rss", 2**20), (ax[0, 1], "fds", 1), (ax[1, 0], "threads", 1)):
            a.plot(x, [v["processes"].get(role, {}).get(key, float("nan")) / scale for v in s], label=role)
        ax[0, 0].plot(x, [v["processes"].get(role, {}).get("rss_anon", float("nan")) / 2**20 for v in s], ":",
                      label=f"{role} (anonymous)")  # fmt: skip
    ax[0, 0].set_title("RSS, monthly median (MiB); dotted: anonymous memory alone")
    ax[0, 1].set_title("open files")
    ax[1, 0].set_title("threads")
    mib = 2**20
    ax[1, 1].plot(x, [v["lmdb"].get("file_bytes", 0) / mib for v in s], label="LMDB file")
    ax[1, 1].plot(x, [v["lmdb"].get("used_bytes", 0) / mib for v in s], label="LMDB pages in use")
    ax[1, 1].plot(x, [_retained(v) / mib for v in s], ":", label="... less the signals' (kept by count)")
    ax[1, 1].plot(x, [v["archive_bytes"] / mib for v in s], label="archive")
    ax[1, 1].plot(x, [v["recordings_bytes"] / mib for v in s], label="recordings")
    ax[1, 1].plot(x, [v["shm"]["bytes"] / mib for v in s], label="shared memory")
    ax[1, 1].set_title("bytes on disk and in /dev/shm (MiB)")
    for k in ("ticks", "orders", "deals"):
        ax[2, 0].plot(x, [v["month_counts"].get(k, 0) for v in s], label=k)
    ax[2, 0].set_yscale("log")
    ax[2, 0].set_title("per simulated month")
    history = ("orders", "journal", "bridge")
    ax[2, 1].plot(x, [sum(v["lmdb"].get("entries", {}).get(d, 0) for d in history) for v in s],
                  label="orders + journal + bridge entries in LMDB")
    ax[2, 1].plot(x, [v["shm"]["segments"] * 1000 for v in s], label="shm segments x 1000")
    ax[2, 1].set_title("entries")
    for a in ax.flat:
        a.legend(fontsize=7)
        a.grid(alpha=0.3)
    for a in ax[2]:
        a.set_xlabel("market year")
    fig.suptitle(f"Sovereign soak: {summary(r)['simulated_years']} simulated years, "
                 f"{sum(r.faults.values())} faults, {len(r.violations)} violations")  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def _ns_to_year(ns: int) -> float:
    return 1970 + ns / (365.2425 * DAY_NS)


def markdown(r: Report) -> str:
    s = summary(r)
    y1, last = s["year_1"] or {}, s["last"] or {}
    lines = [f"simulated {s['simulated_years']} years (to {s['market_end']}) in {s['wall_minutes']} min at "
             f"{s['speed']:,.0f}x; passed: {s['passed']}",
             f"faults injected: {s['faults_total']} ("
             + ", ".join(f"{k} {v}" for k, v in sorted(s["faults"].items())) + ")",
             f"recoveries: {s['recoveries']}, p50 {s['recovery_p50_s'] and round(s['recovery_p50_s'], 2)} s, "
             f"largest {s['recovery_max_s'] and round(s['recovery_max_s'], 2)} s; by kind "
             f"{s['recovery_max_s_by_kind']}; supervisor exits by itself: {s['unplanned_supervisor_exits']}",
             "", "| | RSS MiB by process | LMDB file MiB | LMDB in use MiB | archive MiB | recordings MiB "
                 "| shm |",
             "|---|---|---|---|---|---|---|"]  # fmt: skip
    for name, row in (("year 1", y1), ("last", last)):
        if row:
            lines.append(f"| {name} ({row['month']}) | {row['rss_mib']} | {row['lmdb_file_mib']} | "
                         f"{row['lmdb_used_mib']} | {row['archive_mib']} | {row['recordings_mib']} | "
                         f"{row['shm_segments']} segments, {row['shm_mib']} MiB |")  # fmt: skip
    lines += ["", *(f"violation: {v}" for v in s["violations"][:40]), *(f"note: {n}" for n in s["notes"])]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    d = Options()
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    for name, value in asdict(d).items():
        flag = "--" + name.replace("_", "-")
        if isinstance(value, bool):
            ap.add_argument(flag, action=argparse.BooleanOptionalAction, default=value)
        else:
            ap.add_argument(flag, type=type(value), default=value)
    ap.add_argument("--out", type=Path, help="keep the run here (default: a temporary directory, removed)")
    ap.add_argument("--live-code", action="store_true", help="run the checkout's code, not a copy")
    a = vars(ap.parse_args(argv))
    out, live = a.pop("out"), a.pop("live_code")
    if a["broker"] not in BROKERS:
        ap.error(f"--broker: {a['broker']!r} is not one of {', '.join(BROKERS)}")
    if a["broker"] == "mt5" and a["tick_interval_s"] != d.tick_interval_s:
        ap.error("--tick-interval-s: the simulated feed's; with --broker mt5 the ticks are the terminal's, "
                 "one a step")  # fmt: skip
    if a["broker"] == "mt5" and not 1 <= a["symbols"] <= len(MT5_SYMBOLS):
        ap.error(f"--symbols: 1 to {len(MT5_SYMBOLS)} with --broker mt5")
    o = Options(**a)
    with tempfile.TemporaryDirectory(prefix="sov-soak-") as tmp:
        work = out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        if live:
            env = None
        elif o.broker == "mt5":
            env = snapshot(work)  # with the bridge library, which the copy of the package lacks
        else:
            env = code_snapshot(Path(tempfile.mkdtemp(prefix="code-", dir=work)))
        print(f"soak: {o.years:g} simulated years at {o.speed:,.0f}x, {o.broker} broker, in {work}",
              flush=True)  # fmt: skip
        r = Soak(work, o, env, keep_state=out is not None).run()
        doc = {"summary": summary(r), "samples": r.samples, "recoveries": r.recoveries,
               "unplanned_exits": r.unplanned_exits}  # fmt: skip
        (work / "soak.json").write_text(json.dumps(doc, indent=1))
        plot(r, work / "soak.png")
        text = markdown(r)
        (work / "soak.md").write_text(text + "\n")
        print(text)
        if out is None:
            shutil.rmtree(work / "state", ignore_errors=True)
            shutil.rmtree(work / "venue", ignore_errors=True)
    return 0 if not r.violations else 1


if __name__ == "__main__":
    sys.exit(main())
