"""What the processes share: the layout (ring names, which worker owns which symbol, which
core each is pinned to), the heartbeat board in shared memory, and each child's start.

The supervisor creates every ring, the quote board, the heartbeat board and the metrics
board (sovereign.engine.metrics) and owns them,
so they outlive any child: a restarted worker attaches to the same rings and finds the
ticks that queued while it was down.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import hashlib
import mmap
import os
import resource
import secrets
import signal
import sys
import time
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any

import numpy as np

from sovereign.config import Config, ConfigError
from sovereign.core import OrderRing, QuoteBoard, SignalRing, TickRing
from sovereign.errors import OperationalError
from sovereign.state.schema import META_STATE_ID
from sovereign.state.store import StateStore, StateUser

TICK_RING = 1 << 16
SIGNAL_RING = 1 << 14
ORDER_RING = 1 << 12

# Child states on the heartbeat board.
STARTING, RUNNING, FEED_DONE, STOPPING, STOPPED = 0, 1, 2, 3, 4
STATE_NAMES = ("starting", "running", "feed done", "stopping", "stopped")

HEARTBEAT_DTYPE = np.dtype([
    ("pid", "<i8"), ("started_ns", "<i8"), ("beat_ns", "<i8"), ("state", "<i8"), ("core", "<i8"),
    ("restarts", "<i8"),  # written by the supervisor; everything else by the child
    ("ticks", "<u8"), ("signals", "<u8"), ("orders", "<u8"), ("rejects", "<u8"), ("dropped", "<u8"),
    # the gateway's tick-to-order over its last full window (LATENCY_WINDOW_S); n 0: no orders
    ("latency_n", "<u8"), ("latency_p50_ns", "<u8"), ("latency_p99_ns", "<u8"),
    # the gateway's market clock: every tick older than it is in the workers' rings (0: none yet)
    ("market_ns", "<i8"),
    ("pad", "<u8", 1),
])  # fmt: skip
LATENCY_WINDOW_S = 10.0
COUNTERS = ("ticks", "signals", "orders", "rejects", "dropped",
            "latency_n", "latency_p50_ns", "latency_p99_ns")  # fmt: skip
assert HEARTBEAT_DTYPE.itemsize == 128
METRICS_SLOT_BYTES = 1024  # a process's slot on the metrics board (sovereign.engine.metrics)


def monotonic_ns() -> int:
    return time.monotonic_ns()


@dataclass(frozen=True)
class Layout:
    """Names and placement for one running system (prefix: unique per supervisor)."""

    prefix: str
    n_symbols: int
    n_workers: int
    worker_cores: tuple[int | None, ...]
    symbol_names: tuple[str, ...] = field(default=())
    session: str = ""  # names the session's recording and event logs (empty: not recorded)
    state_dir: str = ""  # every child holds it (StateUser) for its life; empty: none (tests)

    @staticmethod
    def plan(config: Config, prefix: str, n_symbols: int, symbol_names: tuple[str, ...] = (),
             session: str = "", state_dir: str = "") -> Layout:  # fmt: skip
        """Workers: config.system.workers, or one per core but the first (at least one),
        pinned to config.system.cores or to the cores after the first, round-robin."""
        available = sorted(os.sched_getaffinity(0))
        n = config.system.workers or max(1, len(available) - 1)
        n = min(n, n_symbols)
        cores = list(config.system.cores) or available[1:] or available
        bad = [c for c in cores if c not in available]
        if bad:
            raise ConfigError(
                f"config key system.cores: core {bad[0]} is not available to this process "
                f"(available: {', '.join(map(str, available))})"
            )
        pinned: tuple[int | None, ...] = tuple(cores[k % len(cores)] for k in range(n))
        return Layout(prefix, n_symbols, n, pinned, symbol_names, session, state_dir)

    def worker_of(self) -> np.ndarray:
        """symbol -> worker, round-robin: symbols of similar activity spread evenly."""
        return (np.arange(self.n_symbols) % self.n_workers).astype(np.int64)

    def symbols_of(self, worker: int) -> list[int]:
        return list(range(worker, self.n_symbols, self.n_workers))

    def cores_for(self, role: str) -> set[int] | None:
        """The cores a process may run on (None: every core). A worker: its own. The
        gateway: the cores no worker is pinned to, so the feed keeps them to itself (at
        full speed it fills one). The coordinator and risk: the workers' cores. A worker's
        hot loop leaves most of its core idle (AgentPool runs tens of millions of ticks a
        second on one), so they find a core there at once instead of waiting behind the
        feed (measured in docs/performance.md with bench/bench_pipeline.py). Where workers
        are pinned to every core, every process may run anywhere."""
        if role.startswith("worker-"):
            core = self.worker_cores[int(role.removeprefix("worker-"))]
            return None if core is None else {core}
        pinned = {c for c in self.worker_cores if c is not None}
        free = set(os.sched_getaffinity(0)) - pinned
        if not free:
            return None
        return free if role == "gateway" else pinned

    def roles(self) -> list[str]:
        return ["gateway", "coordinator", "risk", *(f"worker-{k}" for k in range(self.n_workers))]

    def slot(self, role: str) -> int:
        return self.roles().index(role)

    # Shared-memory names.
    def tick_ring(self, k: int) -> str:
        return f"{self.prefix}-ticks-{k}"

    def signal_ring(self, k: int) -> str:
        return f"{self.prefix}-signals-{k}"

    @property
    def intents(self) -> str:
        return f"{self.prefix}-intents"

    @property
    def approved(self) -> str:
        return f"{self.prefix}-approved"

    @property
    def reports_risk(self) -> str:
        return f"{self.prefix}-reports-risk"

    @property
    def reports_coordinator(self) -> str:
        return f"{self.prefix}-reports-coord"

    @property
    def quotes(self) -> str:
        return f"{self.prefix}-quotes"

    @property
    def heartbeats(self) -> str:
        return f"{self.prefix}-heartbeats"

    @property
    def metrics(self) -> str:
        return f"{self.prefix}-metrics"


def _open_private(path: Path, size: int | None) -> int:
    """A shared-memory file that only this user can reach: created new with `size` bytes
    (never one that is already there, never through a symlink, and whole before its name
    appears: made under a temporary name, then linked), mode 0600; or (size None) opened
    only if this user owns it and nobody else may read or write it. A board another user
    could write would let them tell the supervisor its children are done, or hung."""
    flags = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC
    if size is None:
        fd = os.open(path, flags)
    else:
        tmp = path.with_name(f"{path.name}.new-{secrets.token_hex(8)}")
        fd = os.open(tmp, flags | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.ftruncate(fd, size)
            os.posix_fallocate(fd, 0, size)  # a full /dev/shm fails here, not with SIGBUS later
            os.link(tmp, path)  # never replaces: a name already there is refused
        except FileExistsError:
            os.close(fd)
            raise FileExistsError(f"{path} already exists: refusing to adopt a file this process did not "
                                  "make") from None
        finally:
            tmp.unlink()
    st = os.fstat(fd)
    if st.st_uid != os.geteuid() or st.st_mode & 0o077:
        os.close(fd)
        raise PermissionError(f"{path} is owned by uid {st.st_uid} with mode {st.st_mode & 0o777:o}: "
                              f"only a file of uid {os.geteuid()} with mode 600 is trusted")  # fmt: skip
    return fd


class Heartbeats:
    """One 128-byte slot per process in /dev/shm. Each field has one writer (the child,
    but `restarts`: the supervisor), and each is one aligned 8-byte word, so a reader
    never sees a torn value."""

    def __init__(self, name: str, n: int | None = None):
        self.path = Path("/dev/shm") / name
        self.owner = n is not None
        fd = _open_private(self.path, None if n is None else n * HEARTBEAT_DTYPE.itemsize)
        try:
            self._map = mmap.mmap(fd, 0)
        finally:
            os.close(fd)
        self.slots = np.frombuffer(self._map, HEARTBEAT_DTYPE)

    def beat(self, slot: int, state: int, **counters: int) -> None:
        s = self.slots[slot : slot + 1]
        for k, v in counters.items():
            s[k] = v
        s["state"] = state
        s["beat_ns"] = monotonic_ns()

    def start(self, slot: int, core: int | None) -> None:
        s = self.slots[slot : slot + 1]
        s["pid"], s["started_ns"], s["core"] = os.getpid(), time.time_ns(), -1 if core is None else core
        for k in COUNTERS:
            s[k] = 0
        self.beat(slot, STARTING)

    def close(self) -> None:
        del self.slots
        self._map.close()
        if self.owner:
            self.path.unlink(missing_ok=True)


class Child:
    """A child process's side: its slot, its control pipe and its stop flag."""

    def __init__(self, role: str, layout: Layout, control: Connection):
        self.role = role
        self.layout = layout
        self.slot = layout.slot(role)
        self.control = control
        self.stop_requested = False
        _die_with_parent()
        # held until this process exits: a new system waits for it even if the supervisor died
        self.user = StateUser(layout.state_dir) if layout.state_dir else None
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C goes to the supervisor, which stops us
        signal.signal(signal.SIGTERM, self._on_term)
        signal.signal(signal.SIGHUP, signal.SIG_IGN)
        cores = layout.cores_for(role)
        if cores is not None:
            os.sched_setaffinity(0, cores)
        self.hb = Heartbeats(layout.heartbeats)
        self.hb.start(self.slot, min(cores) if cores and role.startswith("worker-") else None)
        self._next_beat = 0

    def _on_term(self, *_: Any) -> None:
        self.stop_requested = True

    def messages(self) -> list[tuple]:
        """Control messages waiting (never blocks)."""
        out = []
        try:
            while self.control.poll():
                out.append(self.control.recv())
        except (EOFError, OSError):  # the supervisor is gone: stop
            self.stop_requested = True
        for m in out:
            if m[0] == "stop":
                self.stop_requested = True
        return out

    def reply(self, request_id: int, answer: Any) -> None:
        """Answer a ("request", id, ...) control message."""
        with contextlib.suppress(BrokenPipeError, OSError):  # the supervisor is gone
            self.control.send(("reply", request_id, answer))

    def beat(self, state: int = RUNNING, **counters: int) -> None:
        self.hb.beat(self.slot, state, **counters)

    def publish_market_clock(self, ns: int) -> None:
        """The gateway: its feed's clock (Feed.clock_ns), once the ticks before it are pushed.
        One aligned word, written by the gateway alone: a reader never sees half of it."""
        self.hb.slots[self.slot]["market_ns"] = ns

    def market_clock(self) -> int:
        """The gateway's market clock (0: none yet). Read it before looking at a tick ring:
        once the ring is empty after that, every tick older than the clock has been taken."""
        return int(self.hb.slots[self.layout.slot("gateway")]["market_ns"])


def set_realtime(priority: int) -> str:
    """Run the calling thread, and the threads it starts after, under SCHED_FIFO at
    `priority` (0: leave the normal scheduler). Returns what was done, or why not: refused
    without CAP_SYS_NICE or RLIMIT_RTPRIO (the unit's LimitRTPRIO) this high."""
    if priority == 0:
        return "normal priority"
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except PermissionError:
        limit = resource.getrlimit(resource.RLIMIT_RTPRIO)[0]
        return (f"real-time priority {priority} refused (no CAP_SYS_NICE, RLIMIT_RTPRIO {limit}): "
                "normal priority")
    return f"real-time priority {priority} (SCHED_FIFO)"


def _die_with_parent() -> None:
    """Ask the kernel to send SIGTERM when the supervisor dies (PR_SET_PDEATHSIG), so no
    orphaned worker keeps trading state to itself."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(1, signal.SIGTERM)
    except (OSError, AttributeError):
        pass


SHM_DIR = Path("/dev/shm")


class ShmSpaceError(OperationalError):
    """/dev/shm cannot hold the system's segments."""


def shm_prefix(store: StateStore, state_dir: str | Path) -> str:
    """The prefix of every shared-memory name of the system on this state directory. The
    same at every start, so the segments of a run that died are found and reclaimed (a
    SIGKILLed supervisor cannot remove its own); different for every state directory (its
    device and inode), so two systems never meet, even in separate PID namespaces that
    share /dev/shm; unguessable by another user, whose segment planted under it first
    would be refused anyway (only this user's mode-0600 segments are opened), because half
    of it is a secret kept in the private state."""

    def identity(t: Any) -> str:
        sid = t.get("meta", META_STATE_ID)
        if not isinstance(sid, str):
            sid = secrets.token_hex(16)
            t.put("meta", META_STATE_ID, sid)
        return sid

    sid = store.write(identity)
    st = os.stat(state_dir)
    return "sov-" + hashlib.blake2b(f"{sid}:{st.st_dev}:{st.st_ino}".encode(), digest_size=8).hexdigest()


def reclaim_segments(prefix: str) -> dict[str, int]:
    """Remove this user's segments named under `prefix`; returns their names and sizes.
    Call it only holding the state's lock with no process of the state left (StateLock):
    then each one provably belongs to a dead system of this same state."""
    out: dict[str, int] = {}
    for path in SHM_DIR.glob(prefix + "-*"):
        try:
            st = path.lstat()
            if st.st_uid == os.geteuid():  # another user's is not ours to remove; creating refuses it
                path.unlink()
                out[path.name] = st.st_size
        except FileNotFoundError:
            pass
    return out


def shm_bytes(layout: Layout) -> tuple[int, int]:
    """The shared memory a system takes: (per worker, shared by all)."""
    per_worker = TickRing.bytes_for(TICK_RING) + SignalRing.bytes_for(SIGNAL_RING)
    shared = (4 * OrderRing.bytes_for(ORDER_RING) + QuoteBoard.bytes_for(layout.n_symbols)
              + len(layout.roles()) * (HEARTBEAT_DTYPE.itemsize + METRICS_SLOT_BYTES))  # fmt: skip
    return per_worker, shared


def shm_room_error(layout: Layout, free: int | None = None) -> str | None:
    """Why /dev/shm cannot hold the layout's segments (free: its free bytes, or measured),
    or None when it can."""
    if free is None:
        v = os.statvfs(SHM_DIR)
        free = v.f_bavail * v.f_frsize
    per_worker, shared = shm_bytes(layout)
    need = layout.n_workers * per_worker + shared
    if need <= free:
        return None
    return f"{_shm_need(layout)} and only {free / MIB:.1f} MiB is free: {SHM_ADVICE}"


MIB = 1 << 20
SHM_ADVICE = "enlarge it (docker run --shm-size, or the tmpfs's size=) or run fewer workers (system.workers)"


def _shm_need(layout: Layout) -> str:
    per_worker, shared = shm_bytes(layout)
    need, n = layout.n_workers * per_worker + shared, layout.n_workers
    return (f"shared memory: this system needs {need / MIB:.1f} MiB in {SHM_DIR} ({n} worker"
            f"{'s' if n != 1 else ''} at {per_worker / MIB:.1f} MiB each, {shared / MIB:.1f} MiB shared)")


def check_shm_room(layout: Layout) -> None:
    """Refuse to start, saying how much is needed, when /dev/shm cannot hold the system."""
    why = shm_room_error(layout)
    if why is not None:
        raise ShmSpaceError(why)


def shm_ran_out(layout: Layout, e: BaseException) -> ShmSpaceError:
    """The start error for a segment that found /dev/shm full although check_shm_room saw
    room (another process took it meanwhile)."""
    return ShmSpaceError(f"{_shm_need(layout)}, and it ran out while they were made (another process is "
                         f"using {SHM_DIR}): {e}; {SHM_ADVICE}")


def out_of_shm(e: BaseException) -> bool:
    """Whether creating a segment failed because /dev/shm is full (another process took the
    room between check_shm_room and the creation)."""
    return getattr(e, "errno", None) == errno.ENOSPC or "No space left on device" in str(e)


class _Tolerant:
    """A text stream whose failed writes (a log on a full disk, a reader gone away) are
    dropped and counted instead of raised."""

    def __init__(self, stream: Any):
        self.stream = stream
        self.lost = 0  # writes and flushes dropped

    def write(self, text: str) -> int:
        try:
            return int(self.stream.write(text))
        except OSError:
            self.lost += 1
            return len(text)

    def flush(self) -> None:
        try:
            self.stream.flush()
        except OSError:
            self.lost += 1

    def __getattr__(self, name: str) -> Any:
        return getattr(self.stream, name)


def tolerant_output() -> None:
    """A process must never die of its own log: stdout and stderr drop what they cannot
    write. (The supervisor's print to a full disk killed every child without draining.)"""
    if not isinstance(sys.stdout, _Tolerant):
        sys.stdout = _Tolerant(sys.stdout)  # type: ignore[assignment]
    if not isinstance(sys.stderr, _Tolerant):
        sys.stderr = _Tolerant(sys.stderr)  # type: ignore[assignment]
