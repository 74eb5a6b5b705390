"""A helper process beside the trading system (the Telegram bot): a plain subprocess that the
supervisor starts, restarts with backoff when it exits, and stops at shutdown.

It is no trading process: no heartbeat slot, no shared memory, no say in the system's
health (its death degrades nothing and pings no watchdog less). It runs on every core but
the workers' (a bot busy formatting a reply never takes a pinned worker's core), NICE steps
nicer than the supervisor, so that the gateway, on the cores left to it, wins any contest
for them. It talks to the system as any client does, over the control socket. It dies with
the supervisor (PR_SET_PDEATHSIG): an orphan would keep polling Telegram beside the next run's.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Sequence

from sovereign.engine.runtime import _die_with_parent

MAX_BACKOFF_S = 60.0
HEALTHY_AFTER_S = 600.0  # a sidecar that ran this long starts its backoff over
NICE = 5  # more than the trading processes' (risk is real-time); never idle-only: it must alert under load
EXIT_USAGE = 2  # its config or its token is wrong: starting it again cannot help


class Sidecar:
    def __init__(self, name: str, argv: Sequence[str], avoid_cores: Sequence[int] = ()):
        self.name = name
        self.argv = list(argv)
        self.avoid_cores = set(avoid_cores)
        self.process: subprocess.Popen | None = None
        self.started = 0.0
        self.restart_at: float | None = None
        self.restarts = 0
        self.failures = 0  # in a row: each one doubles the backoff
        self.stopping = False

    def start(self) -> None:
        self.process = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, preexec_fn=_die_with_parent)
        self.started, self.restart_at = time.monotonic(), None
        allowed = os.sched_getaffinity(0) - self.avoid_cores
        with contextlib.suppress(OSError):  # it may have exited already
            if allowed:
                os.sched_setaffinity(self.process.pid, allowed)
            nicer = min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE)
            os.setpriority(os.PRIO_PROCESS, self.process.pid, nicer)

    def check(self) -> dict[str, object] | None:
        """Restart it once its backoff is over if it exited (not after exit code 2: a bad
        config or token, said in its own log); the fields of a `sidecar_exited` event when it
        has just been found dead, else None."""
        now = time.monotonic()
        if self.restart_at is not None:
            if now >= self.restart_at:
                self.restarts += 1
                self.start()
            return None
        if self.stopping or self.process is None or self.process.poll() is None:
            return None
        code = self.process.returncode
        if code == EXIT_USAGE:
            self.stopping = True
            return {"process": self.name, "exitcode": code, "restarts": self.restarts,
                    "why": "its config or token is wrong (its log says which): not restarted"}  # fmt: skip
        self.failures = 1 if now - self.started >= HEALTHY_AFTER_S else self.failures + 1
        delay = min(MAX_BACKOFF_S, 2.0 ** (self.failures - 1))
        self.restart_at = now + delay
        return {"process": self.name, "exitcode": code, "delay_s": delay, "restarts": self.restarts}

    def terminate(self) -> None:
        """SIGTERM, without waiting; it is not restarted after this."""
        self.restart_at, self.stopping = None, True
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 5.0) -> None:
        """SIGTERM (unless sent already), then SIGKILL after timeout seconds."""
        self.terminate()
        p, self.process = self.process, None
        if p is None:
            return
        try:
            p.wait(timeout)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()
