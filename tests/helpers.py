"""Builders for test data: bars and ticks from plain Python rows, and the components'
builders the engine tests share (risk with its limits, an intent, a quoted gateway)."""

from __future__ import annotations

import contextlib
import os
import re
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from sovereign.config import Config, from_dict
from sovereign.core import BAR_DTYPE, ORDER_DTYPE, ORDER_INTENT, TICK_DTYPE
from sovereign.engine.gateway import Gateway, make_broker
from sovereign.engine.risk import Risk
from sovereign.market.sim import simulate_ticks
from sovereign.state.store import StateStore
from sovereign.symbols import symbol_specs

NS = 1_000_000_000
T0 = 1_767_225_600 * NS  # 2026-01-01T00:00:00Z, a multiple of every timeframe used here


def bars(rows: Sequence[Sequence[float]], *, symbol: int = 0, tf: int = 60, start: int = T0) -> np.ndarray:
    """Bars from (open, high, low, close[, volume]) rows, one period apart."""
    out = np.zeros(len(rows), BAR_DTYPE)
    for i, row in enumerate(rows):
        o, h, lo, c = row[:4]
        v = row[4] if len(row) > 4 else 1.0
        out[i] = (start + i * tf * NS, o, h, lo, c, v, symbol, tf)
    return out


def ticks(rows: Sequence[Sequence[float]], *, symbol: int = 0) -> np.ndarray:
    """Ticks from (ts_ns, bid, ask[, volume]) rows."""
    out = np.zeros(len(rows), TICK_DTYPE)
    for i, row in enumerate(rows):
        ts, bid, ask = row[:3]
        v = row[3] if len(row) > 3 else 1.0
        out[i] = (ts, bid, ask, bid, v, symbol, 0, 0)
    return out


def random_bars(n: int, *, seed: int = 0, symbol: int = 0, tf: int = 60) -> np.ndarray:
    """A realistic random-walk OHLCV series: gaps, wicks, volume that varies."""
    rng = np.random.default_rng(seed)
    close = 100.0 * np.exp(np.cumsum(rng.standard_normal(n) * 0.002))
    open_ = np.r_[100.0, close[:-1]] * np.exp(rng.standard_normal(n) * 0.0005)
    high = np.maximum(open_, close) * (1 + np.abs(rng.standard_normal(n)) * 0.001)
    low = np.minimum(open_, close) * (1 - np.abs(rng.standard_normal(n)) * 0.001)
    out = np.zeros(n, BAR_DTYPE)
    out["ts_ns"] = T0 + np.arange(n) * tf * NS
    out["open"], out["high"], out["low"], out["close"] = open_, high, low, close
    out["volume"] = rng.integers(1, 500, n).astype(float)
    out["symbol"], out["timeframe_s"] = symbol, tf
    return out


def m1_walk(names: Sequence[str], days: int, seed: int = 3) -> Any:
    """A random-walk Market of M1 bars (the file form) for `names`, every minute of `days`
    days from T0: what the sweep's tests and the backtest bench run on."""
    from sovereign.market.datafile import FILE_BAR_DTYPE, Market

    rng = np.random.default_rng(seed)
    n = days * 1440
    parts = []
    for s in range(len(names)):
        close = 1.1 * np.exp(np.cumsum(rng.standard_normal(n) * 0.0004))
        open_ = np.r_[1.1, close[:-1]]
        f = np.zeros(n, FILE_BAR_DTYPE)
        f["ts_ns"] = T0 + np.arange(n) * 60 * NS
        f["open"], f["close"] = open_, close
        f["high"] = np.maximum(open_, close) * (1 + np.abs(rng.standard_normal(n)) * 0.0002)
        f["low"] = np.minimum(open_, close) * (1 - np.abs(rng.standard_normal(n)) * 0.0002)
        f["volume"] = rng.integers(1, 500, n)
        f["symbol"], f["timeframe_s"], f["spread"] = s, 60, 10
        parts.append(f)
    recs = np.concatenate(parts)
    return Market("bars", recs[np.argsort(recs["ts_ns"], kind="stable")], list(names))


def interruptible() -> None:
    """A child's preexec_fn for a test that stops it with SIGINT (as Ctrl-C): SIGINT back to its
    default, whatever the test runner inherited. A shell without job control starts a
    background command (`pytest ... &`) with SIGINT ignored, and Python keeps an ignored SIGINT
    ignored: the child would never see the test's Ctrl-C."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def ring_name(tag: str = "t") -> str:
    return f"sovtest-{tag}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def board_path(pid: int) -> Path | None:
    """The heartbeat board the supervisor with this pid has mapped (its name comes from the
    state directory, not the pid: found in the process's own mappings)."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return None
    # mapped under the temporary name it was made with (Heartbeats links it into place)
    found = sorted(set(re.findall(r"/dev/shm/(sov-[0-9a-f]+-heartbeats)", maps)))
    return Path("/dev/shm", found[0]) if found else None


# ---- the components' builders (engine tests share them)


def ids() -> object:
    counter = iter(range(1, 10**6))
    return lambda: next(counter)


def quotes_at(bid: float, ask: float, ts: int = 1000 * NS):  # type: ignore[no-untyped-def]
    return lambda s: (ts, bid, ask, 0)


def intent(symbol: int = 0, side: int = 1, price: float = 1.1002, sl: float = 1.0952, tp: float = 1.12,
           risk: float = 0.005, cid: int = 1) -> np.ndarray:  # fmt: skip
    rec = np.zeros(1, ORDER_DTYPE)
    rec[0] = (1000 * NS, 5, cid, 0, symbol, 0, side, ORDER_INTENT, 0, 0, 0.0, price, sl, tp, 1.0, risk, 0.0)
    return rec


def make_risk(**risk: object) -> Risk:
    cfg = from_dict({"risk": risk}) if risk else Config()
    return Risk(cfg, symbol_specs(cfg, 4), ids())


def quoted_gateway(tmp_path: Path, cfg: Config, n_symbols: int) -> tuple[StateStore, Gateway, np.ndarray]:
    """A gateway on fresh state under tmp_path whose broker has seen 10 ticks of each symbol."""
    store = StateStore(tmp_path / "s")
    gw = Gateway(store, make_broker(cfg, n_symbols))
    ticks = simulate_ticks(n_symbols, 10, seed=3)
    gw.on_ticks(ticks)
    return store, gw, ticks


# ---- a whole system as real processes, killed and started again (chaos, soak)


def toml_text(tables: dict[str, dict[str, object]]) -> str:
    """A config file's text from {table: {key: value}} (str, bool, int, float and lists of them)."""

    def value(v: object) -> str:
        if isinstance(v, bool):
            return "true" if v else "false"
        if isinstance(v, str):
            return '"' + v.replace("\\", "\\\\").replace('"', '\\"') + '"'
        if isinstance(v, list | tuple):
            return "[" + ", ".join(value(x) for x in v) + "]"
        return repr(v)

    return "".join(f"[{name}]\n" + "".join(f"{k} = {value(v)}\n" for k, v in table.items())
                   for name, table in tables.items())  # fmt: skip


class LiveSystem:
    """`sovereign run --config FILE` as an operator's service manager runs it: started,
    watched over its control socket, killed (one process, or the whole system at once),
    started again on the same state, stopped. Each supervisor leads a session of its own, so
    a whole-system kill takes its process group at once, like a power cut; it runs in the
    directory of `log`, where its output goes (appended at every start). Shared-memory
    segments are this system's when their name carries the prefix of a supervisor it
    started (`segments`)."""

    def __init__(self, config: Path, log: Path, env: dict[str, str] | None = None):
        from sovereign.config import load
        from sovereign.engine.control import socket_path

        self.config = config
        cfg = load(config)
        self.state = Path(cfg.system.state_dir)
        self.socket = socket_path(cfg.system.state_dir, cfg.system.runtime_dir)
        self.log = log
        self.env = env  # None: this process's (code_snapshot gives one that runs a copy of the code)
        self.proc: subprocess.Popen | None = None
        self.supervisors: list[int] = []  # the pid of every supervisor started, in order
        self.prefixes: dict[int, str] = {}  # supervisor pid -> its shared-memory prefix, once found

    def start(self, *args: str) -> None:
        with open(self.log, "ab") as out:
            command = [sys.executable, "-m", "sovereign.cli", "run", "--config", str(self.config), *args]
            self.proc = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT,
                                         start_new_session=True, env=self.env, cwd=self.log.parent)
        self.supervisors.append(self.proc.pid)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def request(self, cmd: str, timeout: float = 2.0, **args: Any) -> Any:
        """A control command's answer; None when the system does not answer (down, busy,
        starting, or the command timed out)."""
        from sovereign.engine.control import ControlError, request

        try:
            return request(self.socket, cmd, timeout=timeout, **args)
        except ControlError:
            return None

    def status(self, timeout: float = 2.0) -> dict | None:
        answer = self.request("status", timeout)
        return answer if isinstance(answer, dict) and "processes" in answer else None

    def healthy(self, status: dict | None, not_pids: Sequence[int] = ()) -> bool:
        """Every process runs and beats, and none is one of `not_pids` (killed, maybe not
        seen dead yet)."""
        if status is None or status.get("phase") != "running":
            return False
        procs = status["processes"]
        return all(p["health"] == "ok" and p["pid"] not in not_pids for p in procs)

    def wait_healthy(self, timeout: float, not_pids: Sequence[int] = (), poll_s: float = 0.05) -> dict:
        """Poll until healthy (see `healthy`); returns the status. Raises TimeoutError, or
        RuntimeError when the supervisor exits meanwhile."""
        deadline = time.monotonic() + timeout
        while True:
            if not self.running():
                raise RuntimeError(f"the supervisor exited with {self.proc and self.proc.returncode}: "
                                   f"{self.tail()}")  # fmt: skip
            status = self.status()
            if status is not None:
                self._note_prefix()
            if self.healthy(status, not_pids):
                assert status is not None
                return status
            if time.monotonic() > deadline:
                raise TimeoutError(f"not healthy within {timeout:g} s: {status and status.get('status')}")
            time.sleep(poll_s)

    def pids(self, status: dict | None = None) -> dict[str, int]:
        """role -> pid, from `status` (or a fresh one); empty when the system does not answer."""
        status = status or self.status()
        # a process waiting out its restart backoff has pid 0: it is not there to kill
        return {p["role"]: int(p["pid"]) for p in status["processes"] if int(p["pid"]) > 0} if status else {}

    def kill(self, pid: int) -> None:
        if pid <= 0:  # os.kill(0, ...) signals the caller's own process group, -n another group
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)

    def kill_all(self, children: Sequence[int] = (), timeout: float = 30.0) -> None:
        """SIGKILL the supervisor and every process of its group at once, then wait until
        they are all gone (`children`: pids to wait for besides the group, as last seen)."""
        assert self.proc is not None
        self._note_prefix()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout)
        for pid in children:  # reparented and reaped elsewhere: wait for them to be gone
            self.kill(pid)
        wait_gone([self.proc.pid, *children], timeout)

    def stop(self, timeout: float = 120.0) -> int:
        """SIGTERM and wait: the supervisor's exit code."""
        assert self.proc is not None
        self._note_prefix()
        self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout)

    def close(self) -> None:
        """Kill whatever is left (a failed test), and remove this system's shared memory."""
        if self.running():
            assert self.proc is not None
            children = list(self.pids().values()) if self.status(0.5) else []
            self.kill_all(children)
        self.remove_segments()

    def tail(self, n: int = 4000) -> str:
        try:
            return self.log.read_bytes()[-n:].decode(errors="replace")
        except FileNotFoundError:
            return ""

    # ---- shared memory

    def _note_prefix(self) -> None:
        """The running supervisor's segment prefix, once found (by its heartbeat board,
        `<prefix>-heartbeats`, the one segment every layout has): named after its pid, or
        named in the state's meta (a layout whose names do not carry the pid)."""
        if self.proc is None or self.proc.pid in self.prefixes:
            return
        boards = [p.name.removesuffix("-heartbeats") for p in Path("/dev/shm").glob("sov*-heartbeats")]
        mine = [b for b in boards if b.startswith(f"sov{self.proc.pid}-")]
        if not mine and boards:
            meta = self._meta_text()
            mine = [b for b in boards if b in meta]
        if mine:
            self.prefixes[self.proc.pid] = mine[0]

    def _meta_text(self) -> str:
        try:
            with StateStore(self.state, readonly=True) as st:
                return st.read(lambda t: repr([(bytes(k), v) for k, v in t.items("meta")]))
        except Exception:  # not created yet, or being written: asked again at the next poll
            return ""

    def segments(self) -> list[Path]:
        """This system's shared-memory segments now in /dev/shm."""
        found: set[Path] = set()
        for prefix in {*self.prefixes.values(), *(f"sov{pid}" for pid in self.supervisors)}:
            found.update(Path("/dev/shm").glob(f"{glob_escape(prefix)}-*"))
        return sorted(found)

    def remove_segments(self) -> list[str]:
        """Remove this system's segments (never another's); returns their names."""
        gone = []
        for path in self.segments():
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
                gone.append(path.name)
        return gone


def glob_escape(text: str) -> str:
    return "".join(f"[{c}]" if c in "*?[" else c for c in text)


def wait_gone(pids: Sequence[int], timeout: float) -> None:
    """Wait until none of pids runs (a zombie counts as gone: it holds nothing)."""
    import psutil  # type: ignore[import-untyped]

    deadline = time.monotonic() + timeout
    for pid in pids:
        while True:
            try:
                if psutil.Process(pid).status() == psutil.STATUS_ZOMBIE:
                    break
            except psutil.NoSuchProcess:
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"process {pid} still runs {timeout:g} s after SIGKILL")
            time.sleep(0.01)


def code_snapshot(dest: Path) -> dict[str, str]:
    """Copy the sovereign package as it is now (sources and the built extension) to dest,
    and return the environment that runs a system from that copy: a long run then keeps one
    version of the code while the checkout is edited, instead of children restarted
    meanwhile running newer code beside an older supervisor. The editable install's import
    hook is shadowed by a stub of the same name, first on PYTHONPATH."""
    import shutil
    import site

    import sovereign
    from sovereign import _core

    package = Path(sovereign.__file__).parent
    shutil.copytree(package, dest / "sovereign", ignore=shutil.ignore_patterns("__pycache__", "*.so"))
    shutil.copy2(_core.__file__, dest / "sovereign" / Path(_core.__file__).name)
    for site_dir in site.getsitepackages():
        for hook in Path(site_dir).glob("_editable_*sovereign*.py"):
            (dest / hook.name).write_text('"""Shadows the editable install: the package beside it runs."""\n')
    path = [str(dest), *filter(None, os.environ.get("PYTHONPATH", "").split(os.pathsep))]
    return {**os.environ, "PYTHONPATH": os.pathsep.join(path)}


# ---- an outside venue: the MT5 terminal simulator as its own process (issue 23)


class VenueSim:
    """`sovereign mt5 simulate` as a terminal runs beside the engine: started, SIGKILLed (a
    terminal that dies; its successor recreates the bridge file), stopped, and its books
    read from its own state (`dump`). Market time runs `speed` times the wall clock so the
    engine's bars close, and trades come, within seconds."""

    def __init__(self, state: Path, symbols: str = "EURUSD,GBPUSD", speed: float = 600.0,
                 faults: dict[str, Any] | None = None, log: Path | None = None,
                 env: dict[str, str] | None = None, seed: int = 0, hedging: bool = False):  # fmt: skip
        state = state.resolve()  # it runs in the directory of its log (not a checkout's, whose
        # sovereign/ would shadow the code a snapshot's environment names)
        self.state, self.symbols, self.speed, self.faults = state, symbols, speed, faults or {}
        self.bridge = state / "bridge.sov"
        self.log = log or state.parent / "venue.log"
        self.env, self.seed = env, seed  # each start's fault schedule: seed + its count
        self.hedging = hedging  # the account's mode, fixed when its books are first made
        self.proc: subprocess.Popen | None = None
        self.starts = 0

    def start(self) -> None:
        import json

        self.starts += 1
        with open(self.log, "ab") as out:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "sovereign.cli", "mt5", "simulate", "--state", str(self.state),
                 "--symbols", self.symbols, "--speed", str(self.speed),
                 "--seed", str(self.seed + self.starts), "--faults", json.dumps(self.faults),
                 *(["--hedging"] if self.hedging else [])],
                stdout=out, stderr=subprocess.STDOUT, env=self.env, cwd=self.log.parent)  # fmt: skip

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def kill(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.kill()
            self.proc.wait(30)

    def stop(self) -> None:
        if self.running():
            assert self.proc is not None
            self.proc.terminate()
            self.proc.wait(30)

    def dump(self) -> dict[str, Any]:
        import json

        out = subprocess.run([sys.executable, "-m", "sovereign.cli", "mt5", "simulate", "--state",
                              str(self.state), "--dump"], capture_output=True, text=True, check=True,
                             env=self.env, cwd=self.log.parent)  # fmt: skip
        return dict(json.loads(out.stdout))


def mt5_tables(state: Path, venue: VenueSim, symbols: Sequence[str], **tables: dict[str, object]) -> str:
    """A config for `sovereign run` on the simulated terminal `venue` (magic 77, the market
    always open, no recording unless system.record_days is given)."""
    base: dict[str, dict[str, object]] = {
        "system": {"state_dir": str(state), "workers": 1, "record_days": 0, "risk_rt_priority": 0,
                   "snapshot_interval_s": 1.0},
        "broker": {"kind": "mt5"},
        "mt5": {"bridge": str(venue.bridge), "magic": 77, "symbols": list(symbols), "result_timeout_s": 1.0},
        "market": {"hours": "always"},
        "retention": {"days": 0},
        "metrics": {"listen": "127.0.0.1:0"},  # never the user's port (bench.chaos_mt5 runs outside pytest)
    }  # fmt: skip
    for name, table in tables.items():
        base[name] = {**base.get(name, {}), **table}
    return toml_text(base)


def venue_net(dump: dict[str, Any], upto: int | None = None) -> dict[str, float]:
    """A netting venue's volume per terminal symbol (signed), from its deals up to ticket `upto`."""
    net: dict[str, float] = {}
    for d in dump["deals"]:
        if upto is None or d["ticket"] <= upto:
            signed = (1 if d["type"] == 0 else -1) * d["volume"]
            net[d["symbol"]] = round(net.get(d["symbol"], 0.0) + signed, 8)
    return {s: v for s, v in net.items() if v}


def executed_by_client(dump: dict[str, Any], magic: int = 77) -> dict[int, list[tuple[int, float, int]]]:
    """What the venue executed per client id of ours (its own books), deal by deal: the
    position each deal opened or closed, its volume and its DEAL_ENTRY."""
    out: dict[int, list[tuple[int, float, int]]] = {}
    for d in dump["deals"]:
        if d["magic"] == magic and d["comment"].isdigit():
            out.setdefault(int(d["comment"]), []).append((d["position"], d["volume"], d["entry"]))
    return out


def mt5_violations(state: Path, dump: dict[str, Any]) -> list[str]:
    """Exactly once against the outside venue, from its own books and the engine's state:
    every client id executed at most its ordered volume, once (one deal; on a hedging
    account a close takes one deal per position it closes, each a close, never two on one
    position), and what the engine's order says it filled is what the venue executed; no
    order left in SUBMITTING or APPROVED; risk's book the venue's positions symbol by symbol,
    as of the newest deal risk applied (risk stops before the gateway, and the server goes
    on closing stops: what came after is risk's at its next start, from the venue's book).
    Orders the retention moved to the archive count with LMDB's."""
    from sovereign.state.schema import BOOK_KEY, META_SYMBOLS, RISK_STATE_KEY
    from tests.engine.invariants import history

    h = history(state)  # LMDB's and what the retention archived (verified)
    orders = h.orders
    with StateStore(state, readonly=True) as st:
        book, names, risk, config = st.read(lambda t: (
            t.get("positions", BOOK_KEY), t.get("meta", META_SYMBOLS), t.get("risk", RISK_STATE_KEY),
            t.get("meta", "config")))  # fmt: skip
    out = list(h.problems)
    executed = executed_by_client(dump)
    for cid, legs in executed.items():
        o = orders.get(cid)
        vols = [v for _, v, _ in legs]
        closes = all(e == 1 for _, _, e in legs) and len({p for p, _, _ in legs}) == len(legs)
        legs_ok = len(legs) == 1 or closes
        if o is None:
            out.append(f"client id {cid}: executed {vols} at the venue, unknown to the engine")
        elif not legs_ok or round(sum(vols), 8) > float(o.get("volume", 0)) + 1e-9:
            out.append(f"client id {cid}: executed {legs} (position, volume, entry) at the venue for an "
                       f"order of {o.get('volume')}")  # fmt: skip
    for cid, o in orders.items():
        if o["state"] in ("FILLED", "CANCELED", "REJECTED"):
            done = round(sum(v for _, v, _ in executed.get(cid, [])), 8)
            said = float(o.get("filled_volume") or 0) if o["state"] != "REJECTED" else 0.0
            if abs(done - said) > 1e-9:
                out.append(f"order {cid} is {o['state']} with {said} filled; the venue executed {done}")
    for cid, o in orders.items():
        if o["state"] in ("SUBMITTING", "APPROVED"):
            out.append(f"order {cid} left in {o['state']}")
    mapping = dict(config["mt5"]["symbol_map"]) if config else {}
    ours = {mapping.get(names[int(s)], names[int(s)]): round(sum(float(v) for v, _ in p["lots"]), 8)
            for s, p in (book or {"positions": {}})["positions"].items()}  # fmt: skip
    ours = {s: v for s, v in ours.items() if v}
    theirs = venue_net(dump, int((risk or {}).get("ticket", 0)))
    if ours != theirs:
        out.append(f"risk's book {ours} is not the venue's positions {theirs}")
    return out
