"""The runbook's way of sharing the bridge file, with three real users (issue 23): the
terminal's user makes the file (umask 0007, as its unit) in a directory made as
systemd/mt5/sovereign-bridge.conf makes /run/sovereign-bridge (2770, setgid, the terminal's
user and the bridge's group); the engine, another user in that group, trades through it
and trusts it by its owner (mt5.terminal_uid); a user outside the group cannot open it.
Each side is a forked process that gave up root, the terminal face driven by the simulator.
systemd itself is not here (no PID 1 systemd): tests/test_systemd.py checks the units."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
import time
from decimal import Decimal
from pathlib import Path

import orjson
import pytest

from sovereign.broker.base import OrderRequest
from sovereign.broker.bridge import Bridge, BridgeError
from sovereign.broker.mt5 import MT5Broker, MT5Settings
from sovereign.broker.mt5sim import Faults, Simulator, Venue
from tests.broker.test_mt5_broker import make, order, run
from tests.test_systemd import bridge_dir_line

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root to become three other users")

TERMINAL_UID, ENGINE_UID, OUTSIDER_UID = 61001, 61002, 61003  # no names needed: numbers are users
BRIDGE_GID = 61010  # the bridge's group (mt5bridge)
MAGIC = 770001


def as_user(uid: int, groups: list[int], umask: int, work) -> int:
    """Fork; the child drops root for `uid` (primary group its own, or the first of `groups`),
    runs `work()` and exits 0 if it returned, 1 with its exception on stderr."""
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            os.setgroups(groups)
            os.setgid(groups[0] if groups else uid)
            os.setuid(uid)
            os.umask(umask)
            work()
            code = 0
        except BaseException as e:  # said on stderr: the parent sees the exit code
            os.write(2, f"as uid {uid}: {type(e).__name__}: {e}\n".encode())
        finally:
            os._exit(code)
    return pid


def wait(pid: int, timeout: float) -> int:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            return os.waitstatus_to_exitcode(status)
        time.sleep(0.05)
    os.kill(pid, 9)
    os.waitpid(pid, 0)
    raise AssertionError(f"process {pid} did not finish within {timeout:g} s")


def test_the_terminal_and_the_engine_share_the_bridge_by_group_and_no_one_else_can(tmp_path: Path) -> None:
    # Everything is loaded before the forks (the bridge library, py-lmdb's lazy parts): the
    # children cannot read this Python installation (it is root's), as a real terminal's user
    # would have its own.
    sim, broker = make(tmp_path)  # one order through both faces, in this process
    broker.submit([order(1)])
    run(sim, broker, 1)
    broker.close()
    sim.close()
    sim.venue.close()
    _path, mode, _user, _group = bridge_dir_line()
    base = Path(tempfile.mkdtemp(prefix="sov-bridge-share-"))  # pytest's own directory is root's alone
    terminal = engine = 0
    try:
        base.chmod(0o711)
        run_dir, venue_dir = base / "sovereign-bridge", base / "venue"
        run_dir.mkdir()
        os.chown(run_dir, TERMINAL_UID, BRIDGE_GID)
        run_dir.chmod(int(mode, 8))  # as systemd-tmpfiles makes it
        venue_dir.mkdir(mode=0o700)
        os.chown(venue_dir, TERMINAL_UID, TERMINAL_UID)
        bridge = run_dir / "bridge.sov"

        def terminal_side() -> None:
            sim = Simulator(venue_dir, str(bridge), {"EURUSD": 1.1}, Faults())
            sim.open()
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not (base / "done").exists():
                sim.step()
                time.sleep(0.001)
            sim.close()
            sim.venue.close()

        def engine_side() -> None:
            broker = MT5Broker(MT5Settings(str(bridge), MAGIC, ["EURUSD"], owner_uid=TERMINAL_UID))
            said: dict[str, object] = {}
            deadline = time.monotonic() + 45
            while time.monotonic() < deadline and not said.get("outcome"):
                outcomes, _ = broker.poll()
                if broker.connected()[0] and broker.specs and not broker.orders and "sent" not in said:
                    broker.submit([OrderRequest(1, 0, 1, Decimal("0.10"))])
                    said["sent"] = True
                for o in outcomes:
                    said["outcome"] = [o.state, str(o.volume)]
                time.sleep(0.002)
            said["why_down"] = broker.why_down
            broker.close()
            out.write_bytes(orjson.dumps(said))

        terminal = as_user(TERMINAL_UID, [BRIDGE_GID], 0o007, terminal_side)
        deadline = time.monotonic() + 30
        while not bridge.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        st = bridge.stat()
        assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (TERMINAL_UID, BRIDGE_GID, 0o660)

        engine_dir = base / "engine"  # the engine's result file: a directory of its own
        engine_dir.mkdir(mode=0o700)
        os.chown(engine_dir, ENGINE_UID, ENGINE_UID)
        out = engine_dir / "engine.json"
        engine = as_user(ENGINE_UID, [ENGINE_UID, BRIDGE_GID], 0o077, engine_side)
        assert wait(engine, 60) == 0
        said = orjson.loads(out.read_bytes())
        assert said.get("outcome") == ["FILLED", "0.1"], said

        def outsider() -> None:
            try:
                Bridge.engine(str(bridge), TERMINAL_UID).close()
            except BridgeError as e:
                (base / "outsider").mkdir()  # refused, as it must be (the directory is 2770)
                raise SystemExit(f"refused: {e.message}") from None

        base.chmod(0o777)  # let the outsider say so (nothing else in base is open to it)
        outside = as_user(OUTSIDER_UID, [], 0o077, outsider)
        assert wait(outside, 30) == 1 and (base / "outsider").is_dir()
        base.chmod(0o711)
        (base / "done").touch()
        assert wait(terminal, 30) == 0
        terminal = 0
        v = Venue(venue_dir)
        try:
            deals = [d for d in v.dump()["deals"] if d["comment"] == "1"]
        finally:
            v.close()
        assert [(d["magic"], d["volume"]) for d in deals] == [(MAGIC, 0.1)]  # once
    finally:
        for pid in (terminal, engine):
            if pid:
                try:
                    os.kill(pid, 9)
                    os.waitpid(pid, 0)
                except (ProcessLookupError, ChildProcessError):
                    pass
        shutil.rmtree(base, ignore_errors=True)
