"""The supervisor's sd_notify protocol, with the test standing in for systemd: a real
NOTIFY_SOCKET datagram socket and WATCHDOG_USEC, as systemd sets them for Type=notify
with WatchdogSec. READY after start-up; WATCHDOG pings at less than half the interval
while healthy; none while a worker hangs (SIGSTOP); pings again once the supervisor has
replaced it; STATUS lines that say what the system does; STOPPING on SIGTERM."""

from __future__ import annotations

import itertools
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

from sovereign.engine.runtime import RUNNING, Heartbeats
from tests.helpers import board_path

WATCHDOG_S = 1.0
HEARTBEAT_TIMEOUT_S = 1.5
WORKER_SLOT = 3  # gateway, coordinator, risk, worker-0


class FakeSystemd:
    """Collects (monotonic time, message) from the notify socket."""

    def __init__(self, path: Path):
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.settimeout(0.2)
        self.messages: list[tuple[float, str]] = []
        self.running = True
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        while self.running:
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                continue
            for line in data.decode().splitlines():
                self.messages.append((time.monotonic(), line))

    def times(self, prefix: str) -> list[float]:
        return [t for t, m in list(self.messages) if m.startswith(prefix)]

    def lines(self, prefix: str) -> list[str]:
        return [m for _, m in list(self.messages) if m.startswith(prefix)]

    def close(self) -> None:
        self.running = False
        self.thread.join()
        self.sock.close()


def wait_for(cond, timeout: float, what: str) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)


def test_watchdog_protocol(tmp_path: Path) -> None:
    systemd = FakeSystemd(tmp_path / "notify.sock")
    cfg = tmp_path / "sovereign.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp_path / "state"}"\n'
                   f'heartbeat_timeout_s = {HEARTBEAT_TIMEOUT_S}\n'
                   '[feed]\nsymbols = 8\npace = "realtime"\nspeed = 50.0\n')  # fmt: skip
    env = {**os.environ, "NOTIFY_SOCKET": str(tmp_path / "notify.sock"),
           "WATCHDOG_USEC": str(int(WATCHDOG_S * 1e6))}  # fmt: skip
    proc = subprocess.Popen([sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        wait_for(lambda: systemd.times("READY=1"), 90, "READY=1")
        ready = systemd.times("READY=1")[0]
        assert not [t for t in systemd.times("WATCHDOG=1") if t < ready - 0.01]  # no pings before ready
        assert any(line.startswith("STATUS=starting") for line in systemd.lines("STATUS="))
        time.sleep(2.5)
        pings = [t for t in systemd.times("WATCHDOG=1") if t >= ready]
        gaps = [b - a for a, b in itertools.pairwise(pings)]
        assert len(pings) >= 4 and max(gaps) < WATCHDOG_S / 2, gaps  # well inside the interval
        statuses = systemd.lines("STATUS=")
        assert any(line.startswith("STATUS=trading:") and "ticks/s" in line for line in statuses)

        # hang a worker: the supervisor stops pinging once it sees the hang
        board = Heartbeats(board_path(proc.pid).name)  # type: ignore[union-attr]
        worker = int(board.slots[WORKER_SLOT]["pid"])
        os.kill(worker, signal.SIGSTOP)
        stopped = time.monotonic()
        wait_for(lambda: int(board.slots[WORKER_SLOT]["pid"]) not in (0, worker)
                 and board.slots[WORKER_SLOT]["state"] == RUNNING, 60, "a new worker")  # fmt: skip
        replaced = time.monotonic()
        time.sleep(1.0)
        detected = stopped + HEARTBEAT_TIMEOUT_S + 0.2  # the hang is seen within a heartbeat timeout
        silent = [t for t in systemd.times("WATCHDOG=1") if detected < t < replaced - 0.1]
        assert silent == [], f"pinged {len(silent)} times while the worker hung"
        assert [t for t in systemd.times("WATCHDOG=1") if t > replaced], "no pings after the recovery"
        assert any("degraded: restarting worker-0 (hung)" in line for line in systemd.lines("STATUS="))

        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=60)
        assert proc.returncode == 0, out
        assert systemd.lines("STOPPING=1")
        assert any(line.startswith("STATUS=stopping") for line in systemd.lines("STATUS="))
        board.close()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        systemd.close()
