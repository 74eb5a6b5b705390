"""Chaos against the outside venue (issue 23): the whole system trading an MT5 account on
`sovereign mt5 simulate` (its own process, its own books), and at seeded random moments a
SIGKILL of a random engine process (gateway, coordinator, risk, a worker), of the whole
engine (the supervisor's process group at once, then a new supervisor on the same state),
or of the simulator (a terminal restart: its successor recreates the bridge file). After a
clean stop the venue's own books are checked (tests/helpers.py: mt5_violations): every
client id executed at most its ordered volume, once; no order left in SUBMITTING; risk's
book the venue's positions symbol by symbol.

    python3 -m bench.chaos_mt5 --kills 2000 --out chaos-mt5-2000   # the benchmark run
    python3 -m bench.chaos_mt5 --kills 300 --seed 7
    python3 -m bench.chaos_mt5 --kills 300 --hedging   # a hedging account, manual trades beside ours

Run from the repository root. Reuses bench/chaos.py's records and tests/helpers.py's
LiveSystem; the system and the simulator run a copy of the code taken at the start
(--live-code: not). tests/engine/test_chaos_mt5.py runs it with SOVEREIGN_CHAOS_MT5_KILLS
kills (CI: 200).
"""

from __future__ import annotations

import argparse
import json
import random
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from bench.chaos import SYSTEM, Kill, kill_and_recover, percentile
from sovereign.broker.bridge import find_file
from sovereign.state.schema import BRIDGE_STATUS_KEY
from sovereign.state.store import StateStore
from tests.helpers import LiveSystem, VenueSim, code_snapshot, mt5_tables, mt5_violations

TERMINAL = "terminal"  # the target of a simulator kill
# A process the supervisor has restarted this often waits out a backoff that doubles at each
# restart (0.5 s, 1, 2, 4, ... 30 s): its next kill takes the whole engine instead, which
# costs a start (about 4 s here) and begins a supervisor with no backoff. Without it a long
# run spent most of its time waiting (p99 17 s; 200 kills took 8.5 minutes on 2 cores).
MAX_RESTARTS = 3
SYMBOLS = ["EURUSD", "GBPUSD", "USDJPY"]
# The venue's faults on every trade request, and a stop-out now and then: each kill meets
# orders in every state of their lookup and retry.
FAULTS = {"odds": {"requote": 0.05, "timeout_exec": 0.05, "timeout_noexec": 0.03, "connection_exec": 0.03,
                   "drop_exec": 0.03, "partial": 0.05, "reject": 0.03, "restart_exec": 0.01},
          "stopout_every": 20_000}  # fmt: skip
# A hedging account (--hedging) also takes a manual buy of 0.01 now and then, alternating
# symbols: each a position of its own beside ours, so the engine's closes go position by position.
HEDGING_FAULTS = {**FAULTS, "manual_every": 2_000}


@dataclass
class Mt5ChaosResult:
    seed: int
    hedging: bool = False
    kills: list[Kill] = field(default_factory=list)
    orders: dict[str, int] = field(default_factory=dict)  # by final state
    venue_deals: int = 0
    adopted: int = 0  # deals we did not send (stops, targets, stop-outs), adopted
    reconciled: int = 0  # corrections of risk's book to the venue's
    violations: list[str] = field(default_factory=list)
    exit_code: int | None = None
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        rec = sorted(k.recovery_s for k in self.kills)
        by = Counter(k.target for k in self.kills)
        return {"seed": self.seed, "account": "hedging" if self.hedging else "netting",
                "kills": len(self.kills), "kills_by_target": dict(sorted(by.items())),
                "orders": sum(self.orders.values()), "orders_by_state": dict(sorted(self.orders.items())),
                "venue_deals": self.venue_deals, "adopted": self.adopted, "reconciled": self.reconciled,
                "recovery_p50_s": percentile(rec, 50), "recovery_p99_s": percentile(rec, 99),
                "recovery_p50_s_by_target": {t: percentile(sorted(k.recovery_s for k in self.kills
                                                                  if k.target == t), 50) for t in by},
                "violations": len(self.violations), "exit_code": self.exit_code,
                "wall_s": round(self.wall_s, 1)}  # fmt: skip


def bridge_up_since(state: Path, after_ns: int) -> bool:
    """Whether the gateway has said the bridge is up since `after_ns` (wall clock)."""
    try:
        with StateStore(state, readonly=True) as st:
            s = st.read(lambda t: t.get("bridge", BRIDGE_STATUS_KEY)) or {}
    except Exception:  # being created
        return False
    return bool(s.get("connected")) and int(s.get("since_ns", 0)) >= after_ns


def wait_bridge(state: Path, after_ns: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not bridge_up_since(state, after_ns):
        if time.monotonic() > deadline:
            raise TimeoutError(f"the bridge not up again within {timeout:g} s")
        time.sleep(0.05)


def chaos_mt5(workdir: Path, kills: int, seed: int, *, max_gap_s: float = 0.5, system_share: float = 0.1,
              terminal_share: float = 0.3, recovery_timeout_s: float = 120.0,
              env: dict[str, str] | None = None, hedging: bool = False,
              say: Callable[[str], None] = print) -> Mt5ChaosResult:  # fmt: skip
    """Run the chaos in workdir (state, venue, config and logs go there); every process it
    started is gone, and this system's shared memory removed, when it returns."""
    rng = random.Random(seed)
    state, cfg = workdir / "state", workdir / "sovereign.toml"
    venue = VenueSim(workdir / "venue", ",".join(SYMBOLS), faults=HEDGING_FAULTS if hedging else FAULTS,
                     env=env, seed=seed * 1000, hedging=hedging)  # fmt: skip
    cfg.write_text(mt5_tables(state, venue, SYMBOLS, risk={"max_drawdown": 0.5, "daily_loss_limit": 0.5,
                                                           "max_orders_per_minute": 600}))  # fmt: skip
    system = LiveSystem(cfg, workdir / "supervisor.log", env)
    result = Mt5ChaosResult(seed, hedging)
    t0 = time.monotonic()
    try:
        (workdir / "venue").mkdir(parents=True, exist_ok=True)
        venue.start()
        system.start()
        status = system.wait_healthy(recovery_timeout_s)
        wait_bridge(state, 0, recovery_timeout_s)
        roles = [p["role"] for p in status["processes"]]
        for n in range(kills):
            time.sleep(rng.uniform(0, max_gap_s))
            status = system.status() or status
            pick = rng.random()
            target = TERMINAL if pick < terminal_share else SYSTEM if pick < terminal_share + system_share \
                else rng.choice(roles)  # fmt: skip
            restarts = {p["role"]: int(p.get("restarts", 0)) for p in status["processes"]}
            if restarts.get(target, 0) >= MAX_RESTARTS:
                target = SYSTEM
            pids = system.pids(status)
            start, start_ns = time.monotonic(), time.time_ns()
            if target == TERMINAL:
                victim = venue.proc.pid if venue.proc else 0
                venue.kill()
                venue.start()
                wait_bridge(state, start_ns, recovery_timeout_s)
            else:
                victim, status = kill_and_recover(system, target, pids, recovery_timeout_s)
            result.kills.append(Kill(target, victim, time.monotonic() - start))
            if (n + 1) % max(1, kills // 20) == 0:
                say(f"chaos-mt5: {n + 1}/{kills} kills, the last ({target}) recovered in "
                    f"{result.kills[-1].recovery_s:.2f} s")  # fmt: skip
        wait_bridge(state, 0, recovery_timeout_s)
        result.exit_code = system.stop()
        if "stopped clean=True" not in system.tail(2000):
            result.violations.append(f"the last stop was not clean: {system.tail(600)}")
        if result.exit_code != 0:
            result.violations.append(f"the supervisor's last stop exited {result.exit_code}")
        venue.stop()
        dump = venue.dump()
        result.violations += mt5_violations(state, dump)
        result.venue_deals = len(dump["deals"])
        with StateStore(state, readonly=True) as st:
            result.orders = dict(st.read(lambda t: Counter(v["state"] for _, v in t.items("orders"))))
            events = st.read(lambda t: Counter(v.get("event") for _, v in t.items("journal")))
        result.adopted, result.reconciled = events["adopted"], events["reconciled"]
    finally:
        system.close()
        venue.kill()
        result.wall_s = time.monotonic() - t0
    return result


def table(result: Mt5ChaosResult) -> str:
    s = result.summary()
    by_target = ", ".join(f"{k} {v}" for k, v in s["kills_by_target"].items())
    by_state = ", ".join(f"{k} {v}" for k, v in s["orders_by_state"].items())
    lines = ["| kills by target | orders | venue deals | adopted | recovery p50 | recovery p99 | violations"
             " |",
             "|---|---|---|---|---|---|---|",
             f"| {by_target} | {s['orders']:,} ({by_state}) | {s['venue_deals']:,} | {s['adopted']:,} | "
             f"{_s(s['recovery_p50_s'])} | {_s(s['recovery_p99_s'])} | {s['violations']} |",
             "", "recovery p50 by target: " + ", ".join(f"{k} {_s(v)}" for k, v in
                                                       sorted(s["recovery_p50_s_by_target"].items())),
             f"a {s['account']} account; risk's book corrected to the venue's {s['reconciled']} times; "
             f"wall {s['wall_s']} s"]  # fmt: skip
    lines += [f"violation: {v}" for v in result.violations[:50]]
    return "\n".join(lines)


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def snapshot(work: Path) -> dict[str, str]:
    """code_snapshot's environment, with the bridge library the copy lacks (it is installed
    beside the package, not in the source tree)."""
    env = code_snapshot(Path(tempfile.mkdtemp(prefix="code-", dir=work)))
    lib = find_file("libsovbridge.so")
    if lib is not None:
        env["SOVEREIGN_BRIDGE_DIR"] = str(lib.parent)
    return env


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--max-gap", type=float, default=0.5, help="seconds before a kill, at most")
    ap.add_argument("--system-share", type=float, default=0.1, help="share of whole-engine kills")
    ap.add_argument("--terminal-share", type=float, default=0.3, help="share of simulator kills")
    ap.add_argument("--hedging", action="store_true",
                    help="a hedging account (several positions per symbol; default: netting)")
    ap.add_argument("--live-code", action="store_true",
                    help="run the checkout's code, not a copy taken at the start")
    ap.add_argument("--out", type=Path,
                    help="keep the state, logs, table and JSON here (default: a temporary directory, "
                         "removed)")
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sov-chaos-mt5-") as tmp:
        work = a.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"chaos-mt5: {a.kills} kills, seed {a.seed}, in {work}", flush=True)
        env = None if a.live_code else snapshot(work)
        result = chaos_mt5(work, a.kills, a.seed, max_gap_s=a.max_gap, system_share=a.system_share,
                           terminal_share=a.terminal_share, env=env, hedging=a.hedging,
                           say=lambda line: print(line, flush=True))  # fmt: skip
        text = table(result)
        print(text)
        report = {"summary": result.summary(), "kills": [asdict(k) for k in result.kills],
                  "violations": result.violations}  # fmt: skip
        (work / "chaos_mt5.json").write_text(json.dumps(report, indent=1))
        (work / "chaos_mt5.md").write_text(text + "\n")
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
