"""The control socket: how the ops CLI talks to a running supervisor.

A Unix stream socket in the runtime directory, mode 0600. One request per connection: a
JSON object (orjson) on one line, `{"v": 1, "cmd": "status", "args": {...}}`, answered by
one line, `{"v": 1, "ok": true, "result": ...}` or `{"v": 1, "ok": false, "error": "..."}`,
then the server closes. The server never blocks: sockets are non-blocking, a request is at
most MAX_REQUEST bytes and must arrive within REQUEST_TIMEOUT_S, and a peer whose uid is
not the server's (SO_PEERCRED) is refused before anything it sends is read, even if the
socket's mode was loosened. A malformed, oversized or unknown request gets an error reply
and changes nothing. Given a command table (COMMANDS, the supervisor's), the server also
refuses an unknown command, an unknown argument, and an argument of the wrong type (a
JSON true or false where a flag is expected, never "no" or 1), naming it.

Answers may come later than the request (the supervisor asks risk, which answers on its
own loop): `ControlServer.poll` hands complete requests to the caller, which answers each
with `answer(conn_id, ...)` now or on a later poll; an unanswered request times out with an
error reply. A connection's id is never reused, so an answer that comes after its
connection has gone reaches no one else.

Slots, and why a halt always gets through. At most MAX_CLIENTS connections are served at
once, plus RESERVED_SLOTS kept for the PRIORITY commands (halt). Connections beyond that
are not accepted: they wait in the kernel's listen queue (SOMAXCONN long) until a slot
frees, in the order they came. A slot frees when
- its connection is answered and closed;
- a connection waits, every ordinary slot is taken, and one of them is idle: the oldest
  connection that has been open EVICT_IDLE_S without completing a request (or that was
  answered and has not closed yet) is evicted (told so, and closed) and the waiting one
  takes its slot. A script holding connections open cannot keep them once someone else
  needs one. A connection whose request is complete is never evicted: its command may be
  running. In each poll, what connected clients sent is read before anyone new is let in,
  so a request that has arrived is never evicted unread;
- nothing can be evicted (every slot holds a request waiting for its answer): the next
  connection takes a reserved slot, where only a priority command is served; anything
  else takes an ordinary slot if one has freed meanwhile, or is answered busy (the slot
  is free again as soon as the answer is sent) and its client tries again.
So a halt never waits for a client that does nothing to leave: only for those queued
before it to be let in, each at once or within EVICT_IDLE_S.

The client (`request`) waits its turn: its connect() returns once it is queued, and it
waits for the answer; when even the listen queue is full (EAGAIN) or the answer is busy,
it tries again after a short random pause, until busy_timeout, then raises Busy. (Before,
the listen queue was 16 long, a client whose connect found it full failed at once with
EAGAIN instead of waiting, and the server answered busy, for good, to every connection
past 32: of 200 concurrent status requests, 36 were answered here, and none while a
script held 32 connections.)
"""

from __future__ import annotations

import contextlib
import errno
import itertools
import os
import random
import selectors
import socket
import stat
import struct
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

from sovereign.errors import OperationalError
from sovereign.state.store import private_dirs
from sovereign.text import clean

VERSION = 1
MAX_REQUEST = 64 * 1024
MAX_CLIENTS = 32  # ordinary slots: connections served at once
RESERVED_SLOTS = 1  # beyond MAX_CLIENTS, for PRIORITY commands only
PRIORITY = frozenset({"halt"})
EVICT_IDLE_S = 0.5  # an ordinary client sends its request within microseconds of connecting
REQUEST_TIMEOUT_S = 2.0  # to send the request
ANSWER_TIMEOUT_S = 10.0  # for the server to answer it
LINGER_S = 1.0  # after the answer, for the client to close its side
SOCKET_NAME = "control.sock"

# The supervisor's commands: each argument's name and kind (_KINDS). Arguments may be left
# out (the command's default applies); any other is refused.
COMMANDS: dict[str, dict[str, str]] = {
    "ping": {},
    "status": {},
    "quotes": {"symbols": "ints"},
    "halt": {"flatten": "bool", "reason": "str"},
    "resume": {},
    "flatten": {"symbol": "str", "all": "bool"},
    "reload": {},
    "positions": {},  # open positions with each one's current quote
    "orders": {"open": "bool"},  # the newest orders (open: those not final yet)
    "pnl": {},  # P&L of the trading day, week and month
    "metrics": {},  # one scrape of the exporter, in Prometheus' text format
    "compact": {},  # compact the LMDB file now, while the system runs
}


def _ints(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, int) and not isinstance(x, bool) for x in v)


_KINDS: dict[str, tuple[str, Callable[[Any], bool]]] = {  # JSON's true is no integer here, nor 1 a flag
    "bool": ("true or false", lambda v: isinstance(v, bool)),
    "str": ("a string", lambda v: isinstance(v, str)),
    "ints": ("a list of integers", _ints),
}


class ControlError(OperationalError):
    """The system answered with an error, or the exchange failed."""


class NotRunning(ControlError):
    """Nothing listens on the control socket: the system is not running."""


class Busy(ControlError):
    """Every slot stayed taken for as long as the client was willing to wait."""


@dataclass
class Request:
    conn_id: int
    cmd: str
    args: dict[str, Any]


@dataclass
class _Client:
    sock: socket.socket
    since: float  # accepted at (monotonic)
    deadline: float
    reserved: bool  # holds a reserved slot: only PRIORITY commands are served
    buf: bytearray = field(default_factory=bytearray)
    out: bytes = b""
    pending: bool = False  # a complete request handed out, not answered yet
    answered: bool = False  # the answer is sent and our side shut: input is discarded until EOF


def check(cmd: str, args: Mapping[str, Any], commands: Mapping[str, Mapping[str, str]]) -> str | None:
    """Why a request does not fit the command table, or None when it does."""
    spec = commands.get(cmd)
    if spec is None:
        return f"unknown command '{clean(cmd, 40)}'; known: {', '.join(commands)}"
    for name, value in args.items():
        kind = spec.get(name)
        if kind is None:
            takes = ", ".join(spec) or "no arguments"
            return f"{cmd}: unknown argument '{clean(name, 40)}'; {cmd} takes {takes}"
        what, fits = _KINDS[kind]
        if not fits(value):
            return f"{cmd}: argument '{name}' must be {what}, not {clean(orjson.dumps(value).decode(), 40)}"
    return None


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class ControlServer:
    """Listens at `path` (created 0600; a stale socket file is replaced). With `commands`,
    requests that do not fit the table are answered with the reason and never handed out."""

    def __init__(self, path: str | Path, commands: Mapping[str, Mapping[str, str]] | None = None):
        self.path = Path(path)
        self.commands = commands
        self.uid = os.geteuid()
        self.sel = selectors.DefaultSelector()
        self.clients: dict[int, _Client] = {}
        self.refused = 0
        self.errors = 0
        self.evicted = 0
        self._ids = itertools.count(1)
        try:
            private_dirs(self.path.parent)  # a runtime directory not made yet (not by systemd)
        except OSError as e:
            raise ControlError(f"cannot make the control socket's directory {self.path.parent}: "
                               f"{e.strerror}") from None  # fmt: skip
        self._remove_stale()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # born 0600: no window in which another user could connect
        try:
            self.sock.bind(str(self.path))
        except OSError as e:
            self.sock.close()
            raise ControlError(f"cannot listen on {self.path}: {e.strerror}") from None
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(socket.SOMAXCONN)  # those waiting for a slot wait here
        self.sock.setblocking(False)
        self.sel.register(self.sock, selectors.EVENT_READ, None)
        self._listening = True

    def _remove_stale(self) -> None:
        try:
            st = self.path.lstat()
        except FileNotFoundError:
            return
        if not stat.S_ISSOCK(st.st_mode):
            raise ControlError(f"{self.path} exists and is not a socket; refusing to replace it")
        probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            probe.connect(str(self.path))
        except OSError:
            self.path.unlink()  # nobody listens: a crashed run left it
            return
        finally:
            probe.close()
        raise ControlError(f"another Sovereign is already listening on {self.path}")

    def poll(self, timeout: float) -> list[Request]:
        """Accept, read and write what is ready (waiting at most timeout); returns the
        requests that became complete."""
        done: list[Request] = []
        waiting = False
        for key, events in self.sel.select(timeout):
            if key.data is None:
                waiting = True  # let them in after reading what the connected clients sent
                continue
            cid = key.data
            c = self.clients.get(cid)
            if c is None:
                continue
            if events & selectors.EVENT_READ and c.answered:
                self._discard(cid, c)
            elif events & selectors.EVENT_READ and not c.out:
                req = self._read(cid, c)
                if req is not None:
                    done.append(req)
            if events & selectors.EVENT_WRITE and c.out:
                self._write(cid, c)
        if waiting:
            self._accept_waiting()
        now = time.monotonic()
        for cid, c in list(self.clients.items()):
            if now > c.deadline and c.answered:
                self._drop(cid)
            elif now > c.deadline and not c.out:
                why = "no answer in time" if c.pending else f"no request within {REQUEST_TIMEOUT_S} s"
                self.answer(cid, error=why)
        self._listen(self._room())
        return done

    # ---- slots (see the module doc)

    def _reserved(self) -> int:
        return sum(c.reserved for c in self.clients.values())

    def _room(self) -> bool:
        """Could a waiting connection be let in now?"""
        reserved = self._reserved()
        return (len(self.clients) - reserved < MAX_CLIENTS or reserved < RESERVED_SLOTS
                or self._idlest() is not None)  # fmt: skip

    def _idlest(self) -> int | None:
        """The connection to evict: the oldest that has not completed a request within
        EVICT_IDLE_S, or was answered and lingers; never one whose request is complete."""
        now = time.monotonic()
        idle = [(c.since, cid) for cid, c in self.clients.items()
                if not c.pending and not c.out and (c.answered or now - c.since >= EVICT_IDLE_S)]  # fmt: skip
        return min(idle)[1] if idle else None

    def _listen(self, on: bool) -> None:
        """Watch the listening socket only while a slot can be given (else select would
        return at once, again and again, for connections that must wait)."""
        if on and not self._listening:
            self.sel.register(self.sock, selectors.EVENT_READ, None)
        elif not on and self._listening:
            self.sel.unregister(self.sock)
        self._listening = on

    def _accept_waiting(self) -> None:
        while True:
            reserved = self._reserved()
            victim = None
            if len(self.clients) - reserved < MAX_CLIENTS:
                slot_reserved = False
            elif (victim := self._idlest()) is not None:
                slot_reserved = self.clients[victim].reserved  # it takes the victim's slot
            elif reserved < RESERVED_SLOTS:
                slot_reserved = True
            else:
                return
            try:
                sock, _ = self.sock.accept()
            except (BlockingIOError, InterruptedError):
                return  # nobody waits (any more), and nobody was evicted for nothing
            if victim is not None:
                self._evict(victim)
            self._admit(sock, slot_reserved)

    def _admit(self, sock: socket.socket, reserved: bool) -> None:
        sock.setblocking(False)
        uid = _peer_uid(sock)
        cid = next(self._ids)
        now = time.monotonic()
        self.clients[cid] = _Client(sock, now, now + REQUEST_TIMEOUT_S, reserved)
        self.sel.register(sock, selectors.EVENT_READ, cid)
        if uid != self.uid:
            self.refused += 1
            self.answer(cid, error=f"refused: uid {uid} is not the service's uid {self.uid}")

    def _evict(self, cid: int) -> None:
        c = self.clients[cid]
        if not c.answered:  # best effort: it is idle, and one line fits any socket buffer
            with contextlib.suppress(OSError):  # busy: nothing of it ran, a client may try again
                c.sock.send(_reply(error="evicted: idle while another client waited for a slot", busy=True))
        self.evicted += 1
        self._drop(cid)

    # ---- one connection

    def _read(self, cid: int, c: _Client) -> Request | None:
        try:
            chunk = c.sock.recv(MAX_REQUEST + 1 - len(c.buf))
        except (BlockingIOError, InterruptedError):
            return None
        except OSError:
            self._drop(cid)
            return None
        if not chunk:
            if c.pending:  # it closed its side and waits for the answer
                self.sel.unregister(c.sock)
            else:  # it went away before finishing
                self._drop(cid)
            return None
        c.buf += chunk
        end = c.buf.find(b"\n")
        if end < 0:
            if len(c.buf) > MAX_REQUEST:
                self.answer(cid, error=f"request larger than {MAX_REQUEST} bytes")
            return None
        if c.pending:
            return None
        req = self._parse(cid, bytes(c.buf[:end]))
        if req is not None:
            c.pending = True
            c.deadline = time.monotonic() + ANSWER_TIMEOUT_S
        return req

    def _parse(self, cid: int, line: bytes) -> Request | None:
        try:
            msg = orjson.loads(line)
        except orjson.JSONDecodeError as e:
            self.answer(cid, error=f"malformed request: not JSON ({e})")
            return None
        if not isinstance(msg, dict):
            self.answer(cid, error="malformed request: expected a JSON object")
            return None
        if msg.get("v") != VERSION:
            self.answer(cid, error=f"unsupported protocol version {msg.get('v')!r}; this is {VERSION}")
            return None
        cmd, args = msg.get("cmd"), msg.get("args", {})
        if not isinstance(cmd, str) or not isinstance(args, dict):
            self.answer(cid, error="malformed request: 'cmd' must be a string and 'args' an object")
            return None
        why = None if self.commands is None else check(cmd, args, self.commands)
        if why is not None:
            self.answer(cid, error=why)
            return None
        c = self.clients[cid]
        if c.reserved and cmd not in PRIORITY and len(self.clients) - self._reserved() < MAX_CLIENTS:
            c.reserved = False  # an ordinary slot freed since it came in: it takes that one
        if c.reserved and cmd not in PRIORITY:
            self._send(cid, _reply(error=f"busy: all {MAX_CLIENTS} connections are in use (the reserved "
                                         f"one is for {', '.join(sorted(PRIORITY))} only); try again",
                                   busy=True))  # fmt: skip
            return None
        return Request(cid, cmd, args)

    def answer(self, conn_id: int, result: Any = None, *, error: str | None = None) -> None:
        """Answer a request (or refuse a connection); nothing if it is gone or answered."""
        if self._send(conn_id, _reply(result, error=error)) and error is not None:
            self.errors += 1

    def _send(self, conn_id: int, line: bytes) -> bool:
        c = self.clients.get(conn_id)
        if c is None or c.out or c.answered:
            return False  # gone, or answered already
        c.out = line
        c.deadline = time.monotonic() + REQUEST_TIMEOUT_S
        try:
            self.sel.modify(c.sock, selectors.EVENT_WRITE, conn_id)
        except KeyError:
            self.sel.register(c.sock, selectors.EVENT_WRITE, conn_id)
        self._write(conn_id, c)
        return True

    def _write(self, cid: int, c: _Client) -> None:
        try:
            sent = c.sock.send(c.out)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(cid)
            return
        c.out = c.out[sent:]
        if c.out:
            return
        # Answered: shut our side (the client reads the answer, then EOF) and discard what it
        # still sends until it closes. Closing at once would reset a client whose request we
        # did not read (a refused one), and it would see ECONNRESET instead of the answer.
        c.answered = True
        c.deadline = time.monotonic() + LINGER_S
        with contextlib.suppress(OSError):
            c.sock.shutdown(socket.SHUT_WR)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.modify(c.sock, selectors.EVENT_READ, cid)

    def _discard(self, cid: int, c: _Client) -> None:
        try:
            chunk = c.sock.recv(1 << 16)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._drop(cid)

    def _drop(self, cid: int) -> None:
        c = self.clients.pop(cid, None)
        if c is None:
            return
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(c.sock)
        c.sock.close()

    def close(self) -> None:
        for cid in list(self.clients):
            self._drop(cid)
        with contextlib.suppress(KeyError, ValueError):
            self.sel.unregister(self.sock)
        self.sock.close()
        self.sel.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


def _reply(result: Any = None, *, error: str | None = None, busy: bool = False) -> bytes:
    """One answer line; busy tells the client to try again."""
    if error is None:
        return orjson.dumps({"v": VERSION, "ok": True, "result": result}, default=str) + b"\n"
    msg: dict[str, Any] = {"v": VERSION, "ok": False, "error": error}
    if busy:
        msg["busy"] = True
    return orjson.dumps(msg) + b"\n"


def request(path: str | Path, cmd: str, timeout: float = 15.0, busy_timeout: float | None = None,
            **args: Any) -> Any:  # fmt: skip
    """Send one request; the result, or ControlError with the server's reason, within
    timeout seconds. NotRunning when nothing listens at path. While every slot is taken
    (the server answers busy, or even its listen queue is full), it tries again after a
    short random pause, for at most busy_timeout seconds (default: timeout), then raises
    Busy."""
    line = orjson.dumps({"v": VERSION, "cmd": cmd, "args": args}) + b"\n"
    start = time.monotonic()
    deadline = start + timeout
    give_up = min(deadline, start + (timeout if busy_timeout is None else busy_timeout))
    pause = 0.005
    while True:
        reply = _exchange(path, cmd, line, deadline, timeout)
        if reply is not None and not reply.get("busy"):
            break
        why = "the control socket's listen queue is full" if reply is None else str(reply.get("error"))
        if time.monotonic() + pause > give_up:
            raise Busy(f"{why} (tried for {time.monotonic() - start:.1f} s)")
        time.sleep(pause * random.uniform(0.5, 1.5))  # random: those turned away together spread out
        pause = min(2 * pause, 0.1)
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "unknown error")))
    return reply.get("result")


def _exchange(path: str | Path, cmd: str, line: bytes, deadline: float, timeout: float) -> dict | None:
    """One connection: the server's answer, or None when its listen queue is full."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        # a socket with a timeout is non-blocking: connect() returns EAGAIN at once when the
        # listen queue is full (AF_UNIX), instead of waiting for room
        sock.settimeout(max(deadline - time.monotonic(), 1e-3))
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(f"the system is not running (no one listens on {path})") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run this as the service's user "
                               "(for example: sudo -u sovereign sovereign ...)") from None  # fmt: skip
        except BlockingIOError:
            return None
        sock.sendall(line)
        data = bytearray()
        while not data.endswith(b"\n"):
            sock.settimeout(max(deadline - time.monotonic(), 1e-3))
            chunk = sock.recv(1 << 16)
            if not chunk:
                break
            data += chunk
    except TimeoutError:
        raise ControlError(f"the system did not answer {cmd!r} within {timeout:g} s") from None
    except OSError as e:
        if e.errno in (errno.ECONNRESET, errno.EPIPE):
            raise ControlError(f"the system closed the connection during {cmd!r}") from None
        raise ControlError(f"control socket {path}: {e}") from None
    finally:
        sock.close()
    try:
        reply = orjson.loads(data)
    except orjson.JSONDecodeError:
        raise ControlError(f"unreadable answer to {cmd!r}: {bytes(data[:200])!r}") from None
    if not isinstance(reply, dict):
        raise ControlError(f"unreadable answer to {cmd!r}: {bytes(data[:200])!r}")
    return reply


def socket_path(state_dir: str, runtime_dir: str) -> Path:
    """Where the control socket lives: the runtime directory (systemd's RuntimeDirectory),
    or the state directory when none is configured."""
    return Path(runtime_dir or state_dir) / SOCKET_NAME
