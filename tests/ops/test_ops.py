"""The ops CLI against a real running system (real processes, the real control socket,
the real LMDB file) and against the same system once stopped; bad arguments; backup,
verify and restore, then the system starts again on the restored state."""

from __future__ import annotations

import os
import select
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import orjson
import pytest

from sovereign.engine.control import ControlError, request
from tests.helpers import interruptible

SOV = [sys.executable, "-m", "sovereign.cli"]
LIVE = """
[system]
state_dir = "{state}"
snapshot_interval_s = 2.0
heartbeat_timeout_s = 3.0
[feed]
symbols = 12
pace = "realtime"
speed = 300.0
[risk]
max_orders_per_minute = 600
"""


def sov(*args: str, config: Path | None = None, check: int | None = 0,
        timeout: float = 60) -> subprocess.CompletedProcess:  # fmt: skip
    env = {k: v for k, v in os.environ.items() if k != "SOVEREIGN_CONFIG"}
    if config is not None:
        env["SOVEREIGN_CONFIG"] = str(config)
    r = subprocess.run([*SOV, *args], capture_output=True, text=True, timeout=timeout, env=env)
    if check is not None:
        assert r.returncode == check, f"sovereign {' '.join(args)} -> {r.returncode}\n{r.stdout}\n{r.stderr}"
    return r


def sov_json(*args: str, config: Path, check: int = 0) -> Any:
    return orjson.loads(sov(*args, "--json", config=config, check=check).stdout)


def wait_for(cond, timeout: float, what: str):
    """cond()'s first true value."""
    deadline = time.monotonic() + timeout
    while not (value := cond()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)
    return value


class System:
    def __init__(self, tmp: Path):
        self.tmp = tmp
        self.state = tmp / "state"
        self.config = tmp / "sovereign.toml"
        self.config.write_text(LIVE.format(state=self.state))
        self.socket = self.state / "control.sock"
        self.proc: subprocess.Popen | None = None

    def start(self) -> None:
        self.proc = subprocess.Popen([*SOV, "run", "--config", str(self.config)], stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT, text=True)  # fmt: skip
        wait_for(lambda: self.phase() == "running", 90, "the system to be ready")

    def phase(self) -> str | None:
        assert self.proc is not None and self.proc.poll() is None, self.proc and self.proc.stdout.read()
        try:
            return request(self.socket, "ping", timeout=2)["phase"]
        except Exception:
            return None

    def stop(self) -> str:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        out, _ = self.proc.communicate(timeout=60)
        assert self.proc.returncode == 0, out
        return out


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[System]:
    system = System(tmp_path_factory.mktemp("ops"))
    system.start()
    wait_for(lambda: len(sov_json("orders", config=system.config)) >= 3, 90, "a few orders")
    yield system
    if system.proc is not None and system.proc.poll() is None:  # tests run alone, or one failed
        system.proc.send_signal(signal.SIGTERM)  # a clean stop: its shared memory goes with it
        try:
            system.proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            system.proc.kill()
            system.proc.communicate()


# ---- against the running system (the tests below run in file order on one system)


def test_status_shows_processes_rings_rates_and_the_account(live: System) -> None:
    s = sov_json("status", config=live.config)
    assert s["running"] and s["phase"] == "running"
    roles = {p["role"]: p for p in s["processes"]}
    assert set(roles) == {"gateway", "coordinator", "risk", "worker-0"}
    assert all(p["health"] == "ok" and p["pid"] > 0 and p["heartbeat_age_s"] < 3 for p in roles.values())
    assert roles["worker-0"]["core"] is not None  # pinned
    assert {r["name"] for r in s["rings"]} >= {"ticks-0", "signals-0", "intents", "approved"}
    assert s["rates"]["ticks"] > 0
    account = s["account"]
    assert account["state"] == "ACTIVE" and float(account["equity"]) > 0 and "day_pnl" in account
    text = sov("status", config=live.config).stdout
    assert "running" in text and "worker-0" in text and "ACTIVE" in text and "equity" in text


def test_status_shows_the_live_tick_to_order(live: System) -> None:
    """The gateway's heartbeat carries tick-to-order over its last full window."""
    lat = wait_for(lambda: (x := sov_json("status", config=live.config)["tick_to_order"])["n"] and x, 60,
                   "a latency window with orders")  # fmt: skip
    assert lat["window_s"] == 10.0 and 0 < lat["p50_us"] <= lat["p99_us"] < 60e6
    assert "tick-to-order over the last full 10 s: p50" in sov("status", config=live.config).stdout


def test_read_commands_while_running(live: System) -> None:
    orders = sov_json("orders", "--limit", "5", config=live.config)
    assert 1 <= len(orders) <= 5 and all("state" in o and "name" in o for o in orders)
    ids = [o["client_order_id"] for o in orders]
    assert ids == sorted(ids, reverse=True)  # newest first
    assert isinstance(sov_json("orders", "--open", config=live.config), list)
    assert isinstance(sov_json("positions", config=live.config), list)
    sigs = sov_json("signals", "--limit", "3", config=live.config)
    assert len(sigs) == 3 and all(s["side"] in ("BUY", "SELL") and s["name"].startswith("SIM") for s in sigs)
    events = sov_json("journal", "--limit", "10", config=live.config)
    assert len(events) == 10 and all("event" in e for e in events)
    for cmd in ("orders", "positions", "signals", "journal"):
        assert sov(cmd, config=live.config).stdout.strip()


def test_signals_follow_prints_new_signals(live: System) -> None:
    env = {**os.environ, "SOVEREIGN_CONFIG": str(live.config)}
    proc = subprocess.Popen([*SOV, "signals", "--follow", "--json", "--limit", "1"], stdout=subprocess.PIPE,
                            text=True, env=env, preexec_fn=interruptible)  # fmt: skip
    try:
        lines = [orjson.loads(proc.stdout.readline()) for _ in range(3)]
    finally:
        proc.send_signal(signal.SIGINT)
        # read what it still writes: a full pipe would hold its exit (its last flush) forever
        proc.communicate(timeout=30)
    seqs = [s["seq"] for s in lines]
    assert seqs == sorted(seqs) and len(set(seqs)) == 3
    assert proc.returncode == 0


def _journal_after(live: System, seq: int) -> list[dict]:
    from sovereign.state import views
    from sovereign.state.store import StateStore

    with StateStore(live.state, readonly=True) as store:
        return store.read(lambda t: views.journal(t, after=seq))


def test_bad_control_arguments_are_refused_and_change_nothing(live: System) -> None:
    wait_for(lambda: sov_json("positions", config=live.config), 60, "an open position")
    before = _journal_after(live, 0)[-1]["seq"]
    refused = [
        ("halt", {"flatten": "no"}, "halt: argument 'flatten' must be true or false, not \"no\""),
        ("halt", {"flatten": True, "reasn": "typo"}, "halt: unknown argument 'reasn'"),
        ("flatten", {}, "flatten: say which: a symbol, or all"),
        ("flatten", {"all": False}, "flatten: say which: a symbol, or all"),
        ("flatten", {"symbol": "SIM000", "all": True}, "flatten: a symbol or all, not both"),
        ("flatten", {"symbol": 3}, "flatten: argument 'symbol' must be a string, not 3"),
        ("resume", {"force": True}, "resume: unknown argument 'force'; resume takes no arguments"),
    ]
    for cmd, args, why in refused:
        with pytest.raises(ControlError) as e:
            request(live.socket, cmd, **args)
        assert str(e.value).startswith(why), (cmd, args, str(e.value))
    changes = ("operator", "flatten", "trading_state")
    assert [e for e in _journal_after(live, before) if e["event"] in changes] == []
    assert sov_json("status", config=live.config)["account"]["state"] == "ACTIVE"


def test_halt_flatten_closes_everything_and_resume_reopens(live: System) -> None:
    positions = wait_for(lambda: sov_json("positions", config=live.config), 60, "an open position")
    assert all("unrealized" in p for p in positions)  # prices while running
    env = {**os.environ, "SOVEREIGN_CONFIG": str(live.config)}
    command = [*SOV, "journal", "--follow", "--json", "--limit", "1"]
    follower = subprocess.Popen(command, stdout=subprocess.PIPE, bufsize=0, env=env, preexec_fn=interruptible)
    fd = follower.stdout.fileno()  # type: ignore[union-attr]
    buf = b""
    while b"\n" not in buf:  # the newest event: the follower is up
        buf += os.read(fd, 65536)
    out = sov("halt", "--flatten", "--reason", "test halt", config=live.config).stdout
    assert "HALTED" in out and "closing orders sent" in out
    seen: list[dict] = []

    def both() -> bool:
        return any(e["event"] == "operator" and e.get("reason") == "test halt" for e in seen) and any(
            e["event"] == "trading_state" and e["state"] == "HALTED" for e in seen)

    try:  # the follower prints the operator's command and the state change as they happen
        deadline = time.monotonic() + 20
        while not both() and time.monotonic() < deadline:
            if select.select([fd], [], [], 0.5)[0]:
                buf += os.read(fd, 65536)
                *lines, buf = buf.split(b"\n")
                seen += [orjson.loads(line) for line in lines]
    finally:
        follower.send_signal(signal.SIGINT)
        follower.communicate(timeout=30)  # drained: a full pipe would hold its exit forever
    assert both(), [e["event"] for e in seen]
    wait_for(lambda: sov_json("positions", config=live.config) == [], 30, "every position closed")
    s = sov_json("status", config=live.config)
    assert s["account"]["state"] == "HALTED" and s["account"]["why"] == "test halt"
    events = sov_json("journal", "--limit", "400", config=live.config)
    assert any(e["event"] == "operator" and e["command"] == "halt" for e in events)
    assert "resumed" in sov("resume", config=live.config).stdout
    assert sov_json("status", config=live.config)["account"]["state"] == "ACTIVE"


def test_free_text_is_bounded_and_escaped_where_it_is_shown(live: System) -> None:
    """A reason with a newline and terminal codes would forge a line in the supervisor's
    log and the journal: it is kept on its line, escaped, and cut to 200 characters."""
    forged = "maintenance\nsovereign: stopped clean=True undrained_records=0\x1b[2K\x1b[1A" + "x" * 60_000
    assert request(live.socket, "halt", reason=forged)["state"] == "HALTED"
    why = sov_json("status", config=live.config)["account"]["why"]
    assert why.startswith("maintenance\\nsovereign: stopped clean=True undrained_records=0\\x1b[2K\\x1b[1A")
    assert len(why) <= 200 and why.isprintable() and why.endswith(" chars]")
    shown = {"status": sov("status", config=live.config).stdout,
             "journal": sov("journal", "--limit", "200", config=live.config).stdout}  # fmt: skip
    for cmd, out in shown.items():
        assert "\x1b" not in out and "maintenance\\nsovereign: stopped" in out, cmd
        assert not any(line.startswith("sovereign: stopped") for line in out.splitlines()), cmd
        assert max(len(line) for line in out.splitlines()) < 1000, cmd
    assert "resumed" in sov("resume", config=live.config).stdout


def test_a_script_holding_connections_never_locks_the_operator_out(live: System) -> None:
    """More idle connections than the socket has slots, taken again whenever one is let go:
    the CLI's halt, status and resume still get through."""
    import threading

    from sovereign.engine.control import MAX_CLIENTS
    from tests.engine.test_control import HOLDER

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(live.socket), str(MAX_CLIENTS + 8)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        assert "HALTED" in sov("halt", "--reason", "held out", config=live.config).stdout
        s = sov_json("status", config=live.config)
        assert s["live"] is True and s["account"]["state"] == "HALTED" and s["account"]["why"] == "held out"
        assert "resumed" in sov("resume", config=live.config).stdout
    finally:
        holder.communicate("", timeout=30)
    answers: list[str] = []  # and 200 status requests at once all get answers

    def ask() -> None:
        answers.append(request(live.socket, "status")["phase"])

    threads = [threading.Thread(target=ask) for _ in range(200)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert answers == ["running"] * 200


def test_flatten_one_symbol_or_all(live: System) -> None:
    name = wait_for(lambda: sov_json("positions", config=live.config), 60, "an open position")[0]["name"]
    out = sov("flatten", name, config=live.config).stdout
    assert "closing orders sent" in out
    wait_for(lambda: name not in {p["name"] for p in sov_json("positions", config=live.config)}, 30,
             f"{name} closed")  # fmt: skip
    assert "closing orders sent" in sov("flatten", "--all", config=live.config).stdout
    r = sov("flatten", "NOSUCH", config=live.config, check=1)
    assert "unknown symbol 'NOSUCH'" in r.stderr
    assert sov_json("status", config=live.config)["account"]["state"] == "ACTIVE"


def test_reload_applies_a_valid_file_and_refuses_a_broken_one(live: System) -> None:
    good = live.config.read_text()
    try:
        live.config.write_text(good.replace("max_orders_per_minute = 600", "max_orders_per_minute = 300"))
        assert "risk limits reloaded" in sov("reload", config=live.config).stdout
        live.config.write_text(good + "\n[risk]\nmax_drawdown = 7\n")  # [risk] twice: not TOML
        r = sov("reload", config=live.config, check=2)  # the CLI reads the file first and says why
        assert "not valid TOML" in r.stderr
        live.config.write_text(good.replace("max_orders_per_minute = 600", "max_orders_per_minute = 0"))
        with pytest.raises(ControlError, match=r"reload refused, the old limits stay: .*max_orders_per"):
            request(live.socket, "reload")  # the supervisor checks it again and keeps the old limits
    finally:
        live.config.write_text(good)
    assert sov_json("status", config=live.config)["phase"] == "running"


def test_backup_while_running_is_consistent(live: System) -> None:
    dest = live.tmp / "backup"
    manifest = sov_json("state", "backup", str(dest), config=live.config)
    assert manifest["counts"]["orders"] >= 3
    checks = sov_json("state", "verify", str(dest), config=live.config)
    assert {c["name"]: c["status"] for c in checks}["manifest"] == "ok"
    assert all(c["status"] != "fail" for c in checks)
    r = sov("state", "backup", str(dest), config=live.config, check=1)  # never overwrites
    assert "not empty" in r.stderr
    r = sov("state", "restore", "--yes", str(dest), config=live.config, check=1)
    assert "running" in r.stderr  # restore refuses while it runs
    for _ in range(3):
        sov("state", "backup", "--rotate", "2", str(live.tmp / "rotated"), config=live.config)
        time.sleep(1.05)  # backups are named by the second
    assert len(list((live.tmp / "rotated").iterdir())) == 2


def test_bad_requests_never_disturb_the_running_system(live: System) -> None:
    import socket

    bad = (b"{not json\n", b"[1,2]\n", b'{"v": 99, "cmd": "status"}\n', b'{"v": 1, "cmd": "rm -rf"}\n')
    for payload in (*bad, b"x" * 70_000):
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
            s.connect(str(live.socket))
            s.sendall(payload)
            reply = orjson.loads(s.makefile("rb").readline())
            assert reply["v"] == 1 and reply["ok"] is False and reply["error"], payload[:20]
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:  # connects, says nothing
        idle.connect(str(live.socket))
        assert request(live.socket, "ping")["phase"] == "running"  # served meanwhile
    assert live.socket.stat().st_mode & 0o777 == 0o600
    s = sov_json("status", config=live.config)
    assert all(p["health"] == "ok" and p["restarts"] == 0 for p in s["processes"])


def test_stopped_system_reads_work_and_controls_refuse(live: System) -> None:
    out = live.stop()
    assert "stopped clean=True" in out
    # the forged reason above stayed inside its own line, escaped and cut
    assert sum(line.startswith("sovereign: stopped") for line in out.splitlines()) == 1
    assert "\x1b" not in out and max(len(line) for line in out.splitlines()) < 2000
    assert not live.socket.exists()
    r = sov("status", config=live.config, check=3)
    assert "not running" in r.stdout and "as last saved" in r.stdout
    s = sov_json("status", config=live.config, check=3)
    assert s["running"] is False and s["account"]["state"] in ("ACTIVE", "HALTED", "REDUCING")
    assert isinstance(sov_json("positions", config=live.config), list)
    assert sov_json("orders", "--limit", "3", config=live.config)
    assert sov_json("signals", "--limit", "3", config=live.config)
    assert sov_json("journal", "--limit", "3", config=live.config)[-1]["event"] == "stopped"
    for cmd in (["halt"], ["resume"], ["flatten", "--all"], ["reload"]):
        r = sov(*cmd, config=live.config, check=3)
        assert "not running" in r.stderr


def test_restore_then_start_has_the_same_positions_and_orders(live: System) -> None:
    backup = live.tmp / "backup"
    backed = sov_json("orders", "--limit", "0", "--state-dir", str(backup), config=live.config)
    with_orders = {o["client_order_id"]: o["state"] for o in backed}
    backed_positions = sov_json("positions", "--state-dir", str(backup), config=live.config)
    assert sov("state", "restore", str(backup), config=live.config, check=2).stderr  # asks for --yes
    out = sov("state", "restore", "--yes", str(backup), config=live.config).stdout
    assert "previous state is at" in out
    assert sov_json("positions", config=live.config) == backed_positions
    # start on the restored state with the market paused (realtime, one tick an hour)
    restored_seq = sov_json("journal", "--limit", "1", config=live.config)[-1]["seq"]
    # A hot backup can land between the gateway's commit of a fill and risk's commit of its
    # book: the restarted risk then takes the broker's book (journaled "reconciled"), so
    # the positions to expect are the broker's, as the backup holds them.
    expected = _broker_positions(backup)
    live.config.write_text(live.config.read_text().replace("speed = 300.0", "speed = 0.001"))
    live.start()
    try:
        now_positions = [{k: v for k, v in p.items() if k not in ("price", "unrealized")}
                         for p in sov_json("positions", config=live.config)]
        # The sim starts again from its seed's prices, so its first tick (due at once) may
        # cross a stop or target: only such an exit, journaled, may take a position away.
        exited = {e["symbol"] for e in sov_json("journal", "--limit", "100000", config=live.config)
                  if e["seq"] > restored_seq and e["event"] == "fill" and e.get("reason") in ("sl", "tp")}
        assert [p for p in now_positions if p not in expected] == []
        assert [p for p in expected if p not in now_positions and p["symbol"] not in exited] == []
        now = sov_json("orders", "--limit", "0", config=live.config)
        after = {o["client_order_id"]: o["state"] for o in now}
        for cid, st in with_orders.items():  # nothing lost; SUBMITTING resolved from the broker's record
            assert cid in after and (after[cid] == st or st == "SUBMITTING"), (cid, st, after.get(cid))
    finally:
        live.stop()


def _broker_positions(state: Path) -> list[dict[str, Any]]:
    """The positions view of the paper broker's book in `state` (the view reads risk's)."""
    from sovereign.state import views
    from sovereign.state.schema import BOOK_KEY, PAPER_BROKER_KEY
    from sovereign.state.store import StateStore

    class BrokerBook:  # a read transaction whose positions book is the broker's
        def __init__(self, t: Any):
            self.t = t

        def get(self, db: str, key: Any) -> Any:
            if (db, key) == ("positions", BOOK_KEY):
                return self.t.get("bridge", PAPER_BROKER_KEY)["ledger"]
            return self.t.get(db, key)

    with StateStore(state, readonly=True) as st:
        return [{k: v for k, v in p.items() if k not in ("price", "unrealized")}
                for p in st.read(lambda t: views.positions(BrokerBook(t)))]  # fmt: skip


# ---- no system at all, bad arguments, bad files


def test_bad_arguments_exit_2_with_a_clear_message(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp_path / "state"}"\n')
    assert "No such command" in sov("frobnicate", check=2).stderr
    assert "Invalid value" in sov("orders", "--limit", "-1", config=cfg, check=2).stderr
    assert "SYMBOL or --all" in sov("flatten", config=cfg, check=2).stderr
    assert "SYMBOL or --all" in sov("flatten", "EURUSD", "--all", config=cfg, check=2).stderr
    assert "does not exist" in sov("state", "restore", str(tmp_path / "nope"), config=cfg, check=2).stderr
    assert "does not exist" in sov("status", "--config", str(tmp_path / "missing.toml"), check=2).stderr
    bad = tmp_path / "bad.toml"
    bad.write_text("[risk]\nmax_drawdown = 1.5\n")
    r = sov("config", "check", str(bad), check=2)
    assert "risk.max_drawdown" in r.stderr
    assert orjson.loads(sov("config", "check", str(bad), "--json", check=2).stdout)["ok"] is False
    example = Path(__file__).parents[2] / "systemd" / "sovereign.toml"
    assert "ok" in sov("config", "check", str(example)).stdout
    # read commands with no state: a clear error, not a traceback
    r = sov("orders", config=cfg, check=1)
    assert "no state at" in r.stderr and "Traceback" not in r.stderr
    for cmd in ("run", "status", "positions", "orders", "signals", "journal", "halt", "resume", "flatten",
                "reload", "doctor", "demo"):  # fmt: skip
        assert "Example" in sov(cmd, "--help").stdout, cmd
    for cmd in (["config", "check"], ["state", "backup"], ["state", "verify"], ["state", "restore"]):
        assert "Example" in sov(*cmd, "--help").stdout, cmd


def test_doctor_checks_the_machine(tmp_path: Path) -> None:
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp_path / "state"}"\n')
    checks = {c["name"]: c for c in sov_json("doctor", config=cfg, check=0)}
    assert set(checks) == {"engine", "cores", "shared memory", "state directory", "free disk", "retention",
                           "unit file", "clock sync"}  # fmt: skip
    (tmp_path / "state").mkdir(mode=0o755)
    os.chmod(tmp_path / "state", 0o755)
    checks = {c["name"]: c for c in sov_json("doctor", config=cfg, check=0)}
    state_dir = checks["state directory"]
    assert state_dir["status"] == "warn" and "chmod 700" in state_dir["detail"]
    cfg.write_text(f'[system]\nstate_dir = "{tmp_path / "state"}"\ncores = [999]\n')
    checks = {c["name"]: c for c in sov_json("doctor", config=cfg, check=1)}
    assert checks["cores"]["status"] == "fail" and "999" in checks["cores"]["detail"]


def _make_state(tmp: Path) -> Path:
    from sovereign.state.store import StateStore

    state = tmp / "state"
    with StateStore(state) as st:
        st.write(lambda t: (t.put("orders", 1, {"client_order_id": 1, "state": "FILLED"}),
                            t.journal("started"), t.journal("stopped")))  # fmt: skip
    return state


def test_verify_reports_a_corrupt_file_and_backup_refuses_it(tmp_path: Path) -> None:
    state = _make_state(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[system]\nstate_dir = "{state}"\n')
    assert sov("state", "verify", config=cfg, check=0)
    data = state / "data.mdb"
    raw = bytearray(data.read_bytes())
    raw[0:64] = b"\xff" * 64  # the meta pages: no longer an LMDB file
    raw[4096:4096 + 64] = b"\xee" * 64
    data.write_bytes(bytes(raw))
    r = sov("state", "verify", config=cfg, check=1)
    assert "fail" in r.stdout and "Traceback" not in r.stdout + r.stderr
    r = sov("state", "backup", str(tmp_path / "bk"), config=cfg, check=1)
    assert "sovereign:" in r.stderr and not (tmp_path / "bk").exists()
    assert not list(tmp_path.glob(".bk.partial-*"))  # no half-written backup left behind


def test_a_tampered_backup_is_refused_and_the_state_kept(tmp_path: Path) -> None:
    state = _make_state(tmp_path)
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[system]\nstate_dir = "{state}"\n')
    sov("state", "backup", str(tmp_path / "bk"), config=cfg)
    with (tmp_path / "bk" / "data.mdb").open("r+b") as f:
        f.seek(-10, os.SEEK_END)
        f.write(b"tampered!!")
    r = sov("state", "verify", str(tmp_path / "bk"), config=cfg, check=1)
    assert "does not match the backup's checksum" in r.stdout
    before = (state / "data.mdb").read_bytes()
    r = sov("state", "restore", "--yes", str(tmp_path / "bk"), config=cfg, check=1)
    assert "not a good backup" in r.stderr
    assert (state / "data.mdb").read_bytes() == before and not list(tmp_path.glob("state.replaced-*"))


def test_backup_to_a_full_disk_fails_cleanly(tmp_path: Path) -> None:
    small = tmp_path / "small"
    small.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0 or subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(small)], capture_output=True
    ).returncode != 0:
        pytest.skip("needs root and a mountable tmpfs to make a small disk")
    try:
        state = _make_state(tmp_path)
        from sovereign.state.store import StateStore

        with StateStore(state) as st:  # a state bigger than the small disk
            st.write(lambda t: [t.put_bytes("snapshots", f"blob{i}", os.urandom(100_000)) for i in range(4)])
        cfg = tmp_path / "c.toml"
        cfg.write_text(f'[system]\nstate_dir = "{state}"\n')
        r = sov("state", "backup", str(small / "bk"), config=cfg, check=1)
        assert "sovereign:" in r.stderr and "Traceback" not in r.stderr
        assert list(small.iterdir()) == []  # nothing partial left
        assert sov("state", "verify", config=cfg, check=0)  # the source is untouched
    finally:
        subprocess.run(["umount", str(small)], check=False)
