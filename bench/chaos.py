"""Chaos on a random schedule (issue 22, item 4): the whole system at full speed, and a
SIGKILL of a random process (gateway, coordinator, risk, a worker) or of the whole system
(the supervisor's process group at once; then a new supervisor on the same state) at
random moments, N times. After a clean stop, the raw state is checked
(tests/engine/invariants.py: system_violations). Reported: kills by process, orders,
deals, recovery time (from a kill to every process healthy again, by the control
socket's status) p50 and p99, violations (must be 0), the shared memory killed
supervisors left, and risk's drawdown halts under this load: a small risk.max_drawdown
makes them fire, the run resumes after each flatten, and each is measured from the
state in market time (how far past the limit equity went before the flatten completed).

    python3 -m bench.chaos --kills 2000 --out chaos-2000     # the benchmark run
    python3 -m bench.chaos --kills 200 --seed 7              # a shorter one

Run from the repository root (it uses tests/helpers.py and tests/engine/invariants.py).
The system runs a copy of the package taken at the start (tests.helpers.code_snapshot),
so that a checkout edited during a long run does not mix versions (--live-code: not).
tests/engine/test_chaos.py runs it with SOVEREIGN_CHAOS_KILLS kills (CI: 50).
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any

from sovereign.state.store import StateStore
from tests.engine.invariants import history, system_violations
from tests.helpers import LiveSystem, code_snapshot, toml_text

NS = 1_000_000_000
SYSTEM = "system"  # the target of a whole-system kill


@dataclass
class Kill:
    target: str  # a role, or SYSTEM
    pid: int  # the process killed (SYSTEM: the supervisor)
    recovery_s: float  # from the kill to every process healthy again


@dataclass
class ChaosResult:
    seed: int
    kills: list[Kill] = field(default_factory=list)
    orders: int = 0
    filled: int = 0
    deals: int = 0
    ticks: int = 0  # the gateways' ticks, as their last status said
    resumes: int = 0  # drawdown halts resumed by the run
    restarts: dict[str, int] = field(default_factory=dict)  # the supervisor's, by why
    halts: list[dict[str, Any]] = field(default_factory=list)  # drawdown_halts()
    violations: list[str] = field(default_factory=list)
    leaked_segments: list[str] = field(default_factory=list)  # left by killed supervisors
    compactions: list[float] = field(default_factory=list)  # online compactions between kills: pause ms
    compactions_unanswered: int = 0  # asked for, no answer (the system busy or restarting)
    segment_names_per_state: bool = False  # names no longer carry the supervisor's pid
    exit_code: int | None = None
    wall_s: float = 0.0

    def summary(self) -> dict[str, Any]:
        rec = sorted(k.recovery_s for k in self.kills)
        flat_s = sorted(h["market_s_to_flat"] for h in self.halts if "market_s_to_flat" in h)
        at_halt = [float(h["past_limit_at_halt"]) / float(h["peak"]) for h in self.halts
                   if "past_limit_at_halt" in h]  # fmt: skip
        when_flat = [h["past_limit_of_peak"] for h in self.halts if "past_limit_of_peak" in h]
        by = Counter(k.target for k in self.kills)
        return {"seed": self.seed, "kills": len(self.kills), "kills_by_process": dict(sorted(by.items())),
                "orders": self.orders, "filled": self.filled, "deals": self.deals, "ticks": self.ticks,
                "recovery_p50_s": percentile(rec, 50), "recovery_p99_s": percentile(rec, 99),
                "recovery_max_s": rec[-1] if rec else None,
                "recovery_p50_s_by_process": {t: percentile(sorted(k.recovery_s for k in self.kills
                                                                   if k.target == t), 50) for t in by},
                "violations": len(self.violations), "supervisor_restarts": self.restarts,
                "drawdown_halts": len(self.halts), "resumes": self.resumes,
                "halt_past_limit_of_peak_at_halt": _quantiles(at_halt),
                "halt_past_limit_of_peak_when_flat": _quantiles(when_flat),
                "halt_market_s_to_flat_p50": percentile(flat_s, 50),
                "halt_market_s_to_flat_p90": percentile(flat_s, 90),
                "halt_market_s_to_flat_max": flat_s[-1] if flat_s else None,
                "leaked_segments": len(self.leaked_segments), "exit_code": self.exit_code,
                "compactions": len(self.compactions), "compactions_unanswered": self.compactions_unanswered,
                "compaction_pause_ms_max": max(self.compactions, default=None),
                "wall_s": round(self.wall_s, 1)}  # fmt: skip


def _quantiles(values: list[float]) -> dict[str, float | None]:
    v = sorted(values)
    return {"p50": percentile(v, 50), "p90": percentile(v, 90), "max": v[-1] if v else None}


def percentile(sorted_values: list[float], q: float) -> float | None:
    """Nearest rank."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))
    return sorted_values[int(rank) - 1]


def config(state: Path, *, seed: int, symbols: int, workers: int, max_drawdown: float) -> str:
    return toml_text({
        "system": {"state_dir": str(state), "workers": workers, "snapshot_interval_s": 1.0,
                   "record_days": 1, "record_max_mb": 16},  # recorded, within a small budget
        "feed": {"symbols": symbols, "seed": seed, "pace": "fast"},
        # a small drawdown limit, so that risk's halt and flatten fire under the kills
        "risk": {"max_drawdown": max_drawdown, "daily_loss_limit": max_drawdown, "risk_per_trade": 0.01},
        "metrics": {"listen": "127.0.0.1:0"},  # never the user's port, whatever runs beside it
    })  # fmt: skip


def chaos(workdir: Path, kills: int, seed: int, *, symbols: int = 8, workers: int = 2, max_gap_s: float = 1.0,
          system_share: float = 0.25, max_drawdown: float = 0.01, recovery_timeout_s: float = 180.0,
          compact_share: float = 0.0, env: dict[str, str] | None = None,
          say: Callable[[str], None] = print) -> ChaosResult:  # fmt: skip
    """Run the chaos in workdir (its state, config and log go there); every process it
    started is gone and this system's shared memory removed when it returns. env: the
    system's environment (code_snapshot's runs a copy of the code). compact_share: the share
    of kills before which the supervisor is asked to compact the LMDB file (every process
    then opens the new file while the system trades, and the kills go on)."""
    rng = random.Random(seed)
    state = workdir / "state"
    cfg = workdir / "sovereign.toml"
    cfg.write_text(config(state, seed=seed, symbols=symbols, workers=workers, max_drawdown=max_drawdown))
    system = LiveSystem(cfg, workdir / "supervisor.log", env)
    result = ChaosResult(seed)
    gateway_ticks: dict[int, int] = {}
    t0 = time.monotonic()
    try:
        system.start()
        status = system.wait_healthy(recovery_timeout_s)
        roles = [p["role"] for p in status["processes"]]
        for n in range(kills):
            time.sleep(rng.uniform(0, max_gap_s))  # a random moment of a healthy run
            status = system.status() or status
            _note_ticks(status, gateway_ticks)
            if _halted_flat(status) and system.request("resume") is not None:
                result.resumes += 1
            if compact_share and rng.random() < compact_share:
                done = system.request("compact", timeout=30.0)
                if done is None:
                    result.compactions_unanswered += 1
                else:
                    result.compactions.append(float(done["pause_ms"]))
            target = SYSTEM if rng.random() < system_share else rng.choice(roles)
            start = time.monotonic()
            victim, status = kill_and_recover(system, target, system.pids(status), recovery_timeout_s)
            result.kills.append(Kill(target, victim, time.monotonic() - start))
            if (n + 1) % max(1, kills // 20) == 0:
                last = result.kills[-1]
                say(f"chaos: {n + 1}/{kills} kills, the last ({target}) recovered in {last.recovery_s:.2f} s")
        _note_ticks(system.status() or status, gateway_ticks)
        result.exit_code = system.stop()
        if "stopped clean=True undrained_records=0" not in system.tail(2000):
            result.violations.append(f"the last stop was not clean: {system.tail(600)}")
        if result.exit_code != 0:
            result.violations.append(f"the supervisor's last stop exited {result.exit_code}")
        result.leaked_segments = [p.name for p in system.segments()]
        result.segment_names_per_state = bool(system.prefixes) and all(
            not prefix.startswith(f"sov{pid}-") for pid, prefix in system.prefixes.items())
        if result.segment_names_per_state:  # the lead's fix: a killed system's segments are reclaimed
            result.violations += [f"shared memory leaked: {name}" for name in result.leaked_segments]
        result.violations += system_violations(state)
        result.orders, result.filled, result.deals, result.restarts = _counts(state)
        result.halts = drawdown_halts(state, max_drawdown)
        result.ticks = sum(gateway_ticks.values())
    finally:
        system.close()
        result.wall_s = time.monotonic() - t0
    return result


def kill_and_recover(system: LiveSystem, target: str, pids: dict[str, int],
                     timeout: float) -> tuple[int, dict]:
    """SIGKILL `target` (a role, or SYSTEM: the supervisor's group, then a new supervisor on
    the same state) and wait until every process is healthy again, none of them the one
    killed; returns the pid killed and the status."""
    if target == SYSTEM:
        victim = system.proc.pid if system.proc else 0
        system.kill_all(list(pids.values()))
        system.start()
        return victim, system.wait_healthy(timeout)
    system.kill(pids[target])
    return pids[target], system.wait_healthy(timeout, not_pids=[pids[target]])


def _note_ticks(status: dict | None, seen: dict[int, int]) -> None:
    """The gateway's tick count as of this status (per gateway pid: it counts from its start)."""
    for p in (status or {}).get("processes", []):
        if p["role"] == "gateway":
            seen[p["pid"]] = max(seen.get(p["pid"], 0), int(p["ticks"]))


def _halted_flat(status: dict | None) -> bool:
    """Halted by the drawdown limit with every position closed: the run resumes, so the
    halt can fire again (and be measured again)."""
    account = (status or {}).get("account") or {}
    return (account.get("state") == "HALTED" and str(account.get("why", "")).startswith("max drawdown")
            and account.get("open_positions") == 0 and not account.get("in_flight"))  # fmt: skip


def _counts(state: Path) -> tuple[int, int, int, dict[str, int]]:
    """Orders, of them filled, deals, and the supervisor's restarts by why: over the whole
    history (the retention archives most of a full-speed run's as it goes)."""
    h = history(state)
    deals = sum(1 for d in [*h.execs.values(), *h.deals.values()] if d["ticket"])
    restarts = Counter(str(v.get("why")) for v in h.journal.values() if v.get("event") == "restart")
    filled = sum(o["state"] == "FILLED" for o in h.orders.values())
    return len(h.orders), filled, deals, dict(restarts)


HALT_WHY = re.compile(r"max drawdown: equity (-?[\d.]+) is more than [\d.]+% below the peak (-?[\d.]+)")


def drawdown_halts(state: Path, max_drawdown: float) -> list[dict[str, Any]]:
    """Each drawdown halt, from the journal and the deals: the equity risk saw at the halt,
    the limit (peak · (1 − max_drawdown)), the equity when the flatten completed (the first
    deal after the halt that leaves no position open: the balance then; or the balance at
    the halt, if nothing was open), how far past the limit that is (money, and a fraction
    of the peak), and the market time from the halt (its first closing order's time) to
    that deal. The deals after the halt are those journaled after it (the gateway journals
    its deals in ticket order)."""
    h = history(state)
    journal, orders = list(h.journal.values()), h.orders
    made = [d for d in [*h.execs.values(), *h.deals.values()] if d["ticket"]]
    deals = sorted(made, key=lambda d: int(d["ticket"]))
    with StateStore(state, readonly=True) as st:
        config = st.read(lambda t: t.get("meta", "config"))
    after = _books_after(deals, Decimal(repr(float(config["broker"]["initial_balance"]))))
    out = []
    newest = 0  # the newest deal journaled so far
    for i, e in enumerate(journal):
        newest = max(newest, _ticket_of(e))
        m = HALT_WHY.match(str(e.get("why", ""))) if e.get("event") == "trading_state" else None
        if m is None or e.get("state") != "HALTED":
            continue
        peak = Decimal(m.group(2))
        limit = peak * (1 - Decimal(repr(max_drawdown)))
        row: dict[str, Any] = {"equity_at_halt": str(e.get("equity")), "peak": str(peak),
                               "limit": str(round(limit, 2))}  # fmt: skip
        episode = journal[i + 1 :]
        end = next((j for j, x in enumerate(episode) if x.get("event") == "trading_state"), len(episode))
        episode = episode[:end]
        closing = sorted({int(x["client_order_id"]) for x in episode if x.get("event") == "order" and
                          orders.get(int(x["client_order_id"]), {}).get("reason") == "FLATTEN"})  # fmt: skip
        row["closing_orders"] = len(closing)
        # the halt's market time: its first closing order's; with none, the last deal before it
        halt_ns = min((int(orders[c]["ts_ns"]) for c in closing if "ts_ns" in orders[c]),
                      default=after.get(newest, (0, 0, True))[1])  # fmt: skip
        flat = next((after[t] for t in range(newest, len(after)) if t in after and after[t][2]), None)
        if flat is not None:
            balance, flat_ns, _ = flat
            # A deal filled at a quote older than the halt's clock (the broker side trails the
            # board, a stop was hit meanwhile) counts as 0.
            row.update(equity_flat=str(round(balance, 2)), past_limit=str(round(limit - balance, 2)),
                       past_limit_at_halt=str(round(limit - Decimal(str(e.get("equity"))), 2)),
                       past_limit_of_peak=float((limit - balance) / peak),
                       market_s_to_flat=max(0, flat_ns - halt_ns) / NS)  # fmt: skip
        out.append(row)
    return out


def _ticket_of(event: dict) -> int:
    """The deal ticket a journal entry records (a fill, an order FILLED), else 0."""
    if event.get("event") == "fill" or (event.get("event") == "order" and event.get("state") == "FILLED"):
        return int(event.get("ticket") or 0)
    return 0


def _books_after(deals: list[dict], initial: Decimal) -> dict[int, tuple[Decimal, int, bool]]:
    """ticket -> (the balance after it, its market time, whether no position is open after
    it); ticket 0: the start."""
    held: dict[int, Decimal] = {}
    balance = initial
    out = {0: (initial, 0, True)}
    for d in deals:
        s = int(d["symbol"])
        held[s] = held.get(s, Decimal(0)) + int(d["side"]) * Decimal(d["volume"])
        balance += Decimal(d["realized_pnl"]) - Decimal(d["commission"])
        out[int(d["ticket"])] = (balance, int(d["ts_ns"]), not any(held.values()))
    return out


def table(result: ChaosResult) -> str:
    s = result.summary()
    lines = ["| kills by process | orders | deals | recovery p50 | recovery p99 | violations |",
             "|---|---|---|---|---|---|",
             f"| {', '.join(f'{k} {v}' for k, v in s['kills_by_process'].items())} | {s['orders']:,} "
             f"({s['filled']:,} filled) | {s['deals']:,} | {_s(s['recovery_p50_s'])} | "
             f"{_s(s['recovery_p99_s'])} "
             f"| {s['violations']} |"]  # fmt: skip
    lines += ["", "recovery p50 by process: " + ", ".join(f"{k} {_s(v)}" for k, v in
                                                         sorted(s["recovery_p50_s_by_process"].items())),
              f"recovery max {_s(s['recovery_max_s'])}; supervisor restarts by why: "
              f"{s['supervisor_restarts']}",
              f"ticks {s['ticks']:,}; wall {s['wall_s']} s; shared-memory segments left by killed "
              f"supervisors: {s['leaked_segments']}"]  # fmt: skip
    if result.compactions or result.compactions_unanswered:
        lines.append(f"online compactions between the kills: {s['compactions']} (writes paused at most "
                     f"{s['compaction_pause_ms_max'] or 0:.0f} ms), {s['compactions_unanswered']} unanswered")
    if result.halts:
        at, flat = s["halt_past_limit_of_peak_at_halt"], s["halt_past_limit_of_peak_when_flat"]
        lines += ["", f"drawdown halts {len(result.halts)} (resumed {s['resumes']}). Past the limit, as a "
                      f"share of the peak: when risk halted {_pct(at)}; when the flatten completed "
                      f"{_pct(flat)} (negative: above the limit). Market time from the halt to flat: p50 "
                      f"{_s(s['halt_market_s_to_flat_p50'])}, p90 {_s(s['halt_market_s_to_flat_p90'])}, max "
                      f"{_s(s['halt_market_s_to_flat_max'])}"]  # fmt: skip
        lines += ["", "| drawdown halt | equity at halt | limit | equity flat | past the limit when flat | "
                      "market time to flat |", "|---|---|---|---|---|---|"]  # fmt: skip
        for i, h in enumerate(result.halts, 1):
            past = f"{h['past_limit']} ({h['past_limit_of_peak']:.3%} of peak)" if "past_limit" in h else "-"
            flat_s = f"{h['market_s_to_flat']:.1f} s" if "market_s_to_flat" in h else "-"
            lines.append(f"| {i} | {h['equity_at_halt']} | {h['limit']} | {h.get('equity_flat', '-')} "
                         f"| {past} | {flat_s} |")  # fmt: skip
    lines += [f"violation: {v}" for v in result.violations[:50]]
    return "\n".join(lines)


def _pct(q: dict[str, float | None]) -> str:
    return ", ".join(f"{k} {'-' if v is None else f'{v:.3%}'}" for k, v in q.items())


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:.2f} s"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--kills", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--symbols", type=int, default=8)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--max-gap", type=float, default=1.0, help="healthy seconds before a kill, at most")
    ap.add_argument("--system-share", type=float, default=0.25, help="share of whole-system kills")
    ap.add_argument("--max-drawdown", type=float, default=0.01)
    ap.add_argument("--compact-share", type=float, default=0.0,
                    help="share of kills before which the LMDB file is compacted online")
    ap.add_argument("--live-code", action="store_true",
                    help="run the checkout's code, not a copy taken at the start")
    ap.add_argument("--out", type=Path, help="keep the state, log, table and JSON here (default: a temporary "
                                             "directory, removed)")  # fmt: skip
    a = ap.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="sov-chaos-") as tmp:
        work = a.out or Path(tmp)
        work.mkdir(parents=True, exist_ok=True)
        print(f"chaos: {a.kills} kills, seed {a.seed}, in {work}", flush=True)
        env = None if a.live_code else code_snapshot(Path(tempfile.mkdtemp(prefix="code-", dir=work)))
        result = chaos(work, a.kills, a.seed, symbols=a.symbols, workers=a.workers, max_gap_s=a.max_gap,
                       system_share=a.system_share, max_drawdown=a.max_drawdown,
                       compact_share=a.compact_share, env=env,
                       say=lambda line: print(line, flush=True))  # fmt: skip
        text = table(result)
        print(text)
        report = {"summary": result.summary(), "kills": [asdict(k) for k in result.kills],
                  "drawdown_halts": result.halts, "violations": result.violations,
                  "leaked_segments": result.leaked_segments}  # fmt: skip
        (work / "chaos.json").write_text(json.dumps(report, indent=1))
        (work / "chaos.md").write_text(text + "\n")
    return 1 if result.violations else 0


if __name__ == "__main__":
    sys.exit(main())
