"""The whole system as real processes: `sovereign run` on the sim feed, read back from
LMDB and the heartbeat board; kill -9 of a worker, SIGTERM, a drawdown halt, a bad config."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from sovereign.engine.runtime import RUNNING, Heartbeats, Layout, set_realtime
from sovereign.ledger import same_book
from sovereign.state.store import StateStore
from tests.engine.invariants import check_system_invariants
from tests.helpers import board_path

ROLES_BEFORE_WORKERS = 3  # gateway, coordinator, risk; then worker-0..


def start(tmp: Path, toml: str = "", *args: str) -> subprocess.Popen:
    cfg = tmp / "sovereign.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp / "state"}"\nsnapshot_interval_s = 1.0\n' + toml)
    return subprocess.Popen([sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg), *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip


def journal(state: Path) -> list[dict]:
    with StateStore(state, readonly=True) as st:
        return st.read(lambda t: [v for _, v in t.items("journal")])


def orders(state: Path) -> list[dict]:
    with StateStore(state, readonly=True) as st:
        return st.read(lambda t: [v for _, v in t.items("orders")])


def board(proc: subprocess.Popen, timeout: float = 60) -> Heartbeats:
    deadline = time.monotonic() + timeout
    while (path := board_path(proc.pid)) is None:
        assert proc.poll() is None, proc.stdout.read()  # type: ignore[union-attr]
        assert time.monotonic() < deadline, "the supervisor never created its heartbeat board"
        time.sleep(0.05)
    return Heartbeats(path.name)


def wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


def finish(proc: subprocess.Popen, timeout: float = 60) -> tuple[int, str]:
    out, _ = proc.communicate(timeout=timeout)
    return proc.returncode, out


def test_ticks_become_signals_orders_fills_and_positions_in_lmdb(tmp_path: Path) -> None:
    proc = start(tmp_path, "", "--max-ticks", "3000000")
    code, out = finish(proc, 120)
    assert code == 0, out
    state = tmp_path / "state"
    events = journal(state)
    stats = next(e for e in events if e["event"] == "gateway_stats")
    assert stats["ticks"] == 3_000_000 and stats["lost_ticks"] == 0
    # Every hop of tick-to-order journals its latency; each later hop saw no more records.
    coord = next(e for e in events if e["event"] == "coordinator_stats")
    risk = next(e for e in events if e["event"] == "risk_stats")
    hops = [coord["tick_to_signal"], coord["tick_to_intent"], risk["tick_to_intent"],
            risk["tick_to_approved"], stats["tick_to_gateway"], stats["tick_to_broker"]]  # fmt: skip
    assert all(h["n"] > 0 and 0 < h["p50_us"] <= h["p99_us"] <= h["max_us"] for h in hops), hops
    assert coord["tick_to_intent"]["n"] == risk["tick_to_intent"]["n"] >= risk["tick_to_approved"]["n"]
    book = orders(state)
    states = Counter(o["state"] for o in book)
    assert states["FILLED"] >= 20, states
    assert set(states) <= {"FILLED", "REJECTED"}, states  # nothing left open or in flight
    filled = [o for o in book if o["state"] == "FILLED"]
    assert all(o["ticket"] > 0 and o["fill_price"] for o in filled)
    rejected = [o for o in book if o["state"] == "REJECTED"]
    assert all(o.get("reason") or o.get("retcode") for o in rejected)  # every refusal says why
    assert any(e["event"] == "fill" and e["reason"] in ("sl", "tp") for e in events)  # broker-side exits
    with StateStore(state, readonly=True) as st:
        risk_book = st.read(lambda t: t.get("positions", "book"))
        broker = st.read(lambda t: t.get("bridge", "paper"))
        snapshot = st.read(lambda t: t.get_bytes("snapshots", "worker-0"))
        risk_state = st.read(lambda t: t.get("risk", "state"))
    assert same_book(risk_book, broker["ledger"])  # risk's view and the broker's truth agree exactly
    check_system_invariants(state)
    assert snapshot and risk_state["state"] in ("ACTIVE", "REDUCING")
    assert "stopped clean=True undrained_records=0" in out


CAP_SYS_NICE = 23


def _may_run_realtime(priority: int) -> bool:
    """Whether this process's children may take SCHED_FIFO at `priority`."""
    status = Path("/proc/self/status").read_text()
    caps = int(next(line for line in status.splitlines() if line.startswith("CapEff:")).split()[1], 16)
    return bool(caps >> CAP_SYS_NICE & 1) or resource.getrlimit(resource.RLIMIT_RTPRIO)[0] >= priority


def test_risk_runs_at_real_time_priority_the_rest_at_normal(tmp_path: Path) -> None:
    proc = start(tmp_path, '[feed]\npace = "realtime"\nspeed = 100\n')
    try:
        hb = board(proc)
        wait_for(lambda: all(hb.slots["state"] == RUNNING), 60, "every process running")
        roles = ("gateway", "coordinator", "risk", "worker-0")
        pids = {role: int(hb.slots[k]["pid"]) for k, role in enumerate(roles)}
        policies = {role: os.sched_getscheduler(pid) for role, pid in pids.items()}
        risk_priority = os.sched_getparam(pids["risk"]).sched_priority
    finally:
        proc.send_signal(signal.SIGTERM)
        code, out = finish(proc)
    assert code == 0, out
    others = {role: p for role, p in policies.items() if role != "risk"}
    assert set(others.values()) == {os.SCHED_OTHER}, policies
    if _may_run_realtime(10):
        assert policies["risk"] == os.SCHED_FIFO and risk_priority == 10, policies
        assert "risk: real-time priority 10 (SCHED_FIFO)" in out
    else:
        assert policies["risk"] == os.SCHED_OTHER and "risk: real-time priority 10 refused" in out, out


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become another user")
@pytest.mark.parametrize("limit", [0, 10])
def test_an_unprivileged_risk_runs_real_time_only_within_its_rtprio_limit(limit: int) -> None:
    """As systemd's LimitRTPRIO= grants it: a user without CAP_SYS_NICE may take SCHED_FIFO
    up to RLIMIT_RTPRIO; beyond it, risk is told why and stays on the normal scheduler."""
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: nobody, with that limit
        try:
            try:
                resource.setrlimit(resource.RLIMIT_RTPRIO, (limit, limit))
            except ValueError:  # a hard limit below it, and no CAP_SYS_RESOURCE to raise it
                os.write(write, b"cannot raise RLIMIT_RTPRIO here")
                os._exit(0)
            os.setgid(65534)
            os.setuid(65534)
            said = set_realtime(10)
            os.write(write, f"{os.sched_getscheduler(0)}|{said}".encode())
        finally:
            os._exit(0)
    os.close(write)
    with os.fdopen(read) as f:
        answer = f.read()
    os.waitpid(pid, 0)
    if answer.startswith("cannot"):
        pytest.skip(answer)
    policy, said = answer.split("|")  # nothing: the child failed
    if limit >= 10:
        assert int(policy) == os.SCHED_FIFO and said == "real-time priority 10 (SCHED_FIFO)"
    else:
        assert int(policy) == os.SCHED_OTHER
        assert said == "real-time priority 10 refused (no CAP_SYS_NICE, RLIMIT_RTPRIO 0): normal priority"
    assert set_realtime(0) == "normal priority" and os.sched_getscheduler(0) == os.SCHED_OTHER


def test_kill_9_worker_is_restarted_with_its_snapshot_while_the_rest_goes_on(tmp_path: Path) -> None:
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs 2 cores: one for the worker, one for the rest")
    proc = start(tmp_path, '[feed]\npace = "realtime"\ntick_interval_s = 0.02\n')
    try:
        hb = board(proc)
        worker = ROLES_BEFORE_WORKERS
        wait_for(lambda: all(hb.slots["state"] == RUNNING), 60, "every process running")
        others = [int(p) for p in hb.slots["pid"][:ROLES_BEFORE_WORKERS]]
        time.sleep(2.0)  # at least one periodic snapshot
        victim = int(hb.slots[worker]["pid"])
        gateway_ticks = int(hb.slots[0]["ticks"])
        os.kill(victim, signal.SIGKILL)
        wait_for(lambda: int(hb.slots[worker]["pid"]) != victim and hb.slots[worker]["state"] == RUNNING, 30,
                 "the worker restarted")  # fmt: skip
        assert int(hb.slots[0]["ticks"]) > gateway_ticks  # the gateway went on meanwhile
        assert int(hb.slots[worker]["restarts"]) == 1
        assert [int(p) for p in hb.slots["pid"][:ROLES_BEFORE_WORKERS]] == others  # untouched
        proc.send_signal(signal.SIGTERM)
        t = time.monotonic()
        code, out = finish(proc, 60)
        assert code == 0, out
        assert time.monotonic() - t < 20  # the configured shutdown bound
    finally:
        if proc.poll() is None:
            proc.kill()
    events = journal(tmp_path / "state")
    restart = next(e for e in events if e["event"] == "restart")
    assert restart["process"] == "worker-0" and restart["why"] == "dead"
    assert any(e["event"] == "snapshot_restored" and e["worker"] == 0 for e in events)
    assert "snapshot_restored" in [e["event"] for e in events[events.index(restart) :]]
    assert not any(o["state"] in ("SUBMITTING", "APPROVED") for o in orders(tmp_path / "state"))


@pytest.mark.parametrize("killed", [None, "risk", "coordinator", "gateway", "worker-0"])
def test_sigterm_stops_cleanly_and_loses_nothing(tmp_path: Path, killed: str | None) -> None:
    """Also right after a kill -9: the process killed has records waiting for it and is
    dead (or in its restart backoff) when the stop begins; it is started again to drain
    them, and each process stops only after everything upstream of it has."""
    proc = start(tmp_path)
    try:
        hb = board(proc)
        wait_for(lambda: all(hb.slots["state"] == RUNNING), 60, "every process running")
        wait_for(lambda: int(hb.slots[0]["orders"]) >= 5, 60, "some orders")
        if killed is not None:
            services = ["gateway", "coordinator", "risk"]
            slot = services.index(killed) if killed in services else ROLES_BEFORE_WORKERS + int(killed[7:])
            os.kill(int(hb.slots[slot]["pid"]), signal.SIGKILL)
            time.sleep(0.3)  # records pile up for it
        proc.send_signal(signal.SIGTERM)
        code, out = finish(proc, 60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert code == 0, out
    assert "stopped clean=True undrained_records=0" in out, out
    state = tmp_path / "state"
    assert not any(o["state"] in ("SUBMITTING", "APPROVED", "INTENT") for o in orders(state))
    with StateStore(state, readonly=True) as st:
        book, broker = st.read(lambda t: (t.get("positions", "book"), t.get("bridge", "paper")))
        assert same_book(book, broker["ledger"])
    check_system_invariants(state)
    assert not list(Path("/dev/shm").glob(f"sov{proc.pid}-*"))  # shared memory removed


def test_drawdown_past_the_limit_flattens_and_halts(tmp_path: Path) -> None:
    toml = "[risk]\nmax_drawdown = 0.002\ndaily_loss_limit = 0.002\nrisk_per_trade = 0.01\n"
    proc = start(tmp_path, toml, "--max-ticks", "6000000")
    code, out = finish(proc, 180)
    assert code == 0, out
    state = tmp_path / "state"
    events = journal(state)
    halts = [e for e in events if e["event"] == "trading_state" and e["state"] == "HALTED"]
    assert halts and "max drawdown" in halts[0]["why"], Counter(e["event"] for e in events)
    flatten = [o for o in orders(state) if o.get("reason") == "FLATTEN"]
    # A flatten is reduce-only: one whose position a stop closed first finds nothing to close.
    unfilled = [o for o in flatten if o["state"] != "FILLED" and o.get("retcode") != 10036]
    assert flatten and not unfilled, unfilled
    # Nothing but exits once halted. Orders risk approved before the halt may still be in
    # flight; the approved ring is FIFO and risk pushes its closing orders after them, so
    # every other order the gateway submits after the halt comes before the first close.
    after = events[events.index(halts[0]) :]
    submitted = [e for e in after if e["event"] == "order" and e["state"] == "SUBMITTING"]
    first_close = next(i for i, e in enumerate(submitted) if e.get("reason") == "FLATTEN")
    late = [e for e in submitted[first_close:] if e.get("reason") != "FLATTEN"]
    assert late == [], late
    with StateStore(state, readonly=True) as st:
        assert st.read(lambda t: t.get("risk", "state"))["state"] == "HALTED"
        assert st.read(lambda t: t.get("bridge", "paper"))["ledger"]["positions"] == {}
    check_system_invariants(state)
    refused_after = [o for o in orders(state) if o.get("reason") == "HALTED"]
    assert all(o["state"] == "REJECTED" for o in refused_after), refused_after


def test_invalid_config_fails_before_anything_starts(tmp_path: Path) -> None:
    cfg = tmp_path / "bad.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp_path / "state"}"\n[risk]\nmax_drawdown = 1.5\n')
    before = set(Path("/dev/shm").iterdir())
    r = subprocess.run([sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 2
    assert "config key risk.max_drawdown: 1.5 is not in (0, 1]" in r.stderr
    assert not (tmp_path / "state").exists()
    assert set(Path("/dev/shm").iterdir()) == before


def test_layout_default_fits_two_cores() -> None:
    from sovereign.config import Config

    layout = Layout.plan(Config(), "t", 100)
    cores = sorted(os.sched_getaffinity(0))
    assert layout.n_workers == max(1, len(cores) - 1)
    assert all(c in cores for c in layout.worker_cores)
    owned = sorted(s for k in range(layout.n_workers) for s in layout.symbols_of(k))
    assert owned == list(range(100))  # every symbol has exactly one worker


def test_the_gateway_keeps_its_cores_and_the_services_run_beside_the_workers() -> None:
    from sovereign.config import Config, from_dict

    cores = sorted(os.sched_getaffinity(0))
    if len(cores) < 2:
        pytest.skip("needs 2 cores: one for the gateway, one for a worker")
    layout = Layout.plan(Config(), "t", 100)
    workers = set(cores[1:])
    assert layout.cores_for("gateway") == {cores[0]}
    assert {c for k in range(layout.n_workers) for c in layout.cores_for(f"worker-{k}") or ()} == workers
    assert layout.cores_for("worker-0") == {cores[1]}
    assert layout.cores_for("coordinator") == layout.cores_for("risk") == workers
    everywhere = Layout.plan(from_dict({"system": {"cores": cores, "workers": len(cores)}}), "t", 100)
    assert everywhere.cores_for("gateway") is None and everywhere.cores_for("risk") is None
    assert everywhere.cores_for("worker-0") == {cores[0]}
