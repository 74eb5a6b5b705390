"""The control socket: how the ops CLI talks to a running supervisor.

A Unix stream socket in the runtime directory, mode 0600. One request per connection: a
JSON object (orjson) on one line, `{"v": 1, "cmd": "status", "args": {...}}`, answered by
one line, `{"v": 1, "ok": true, "result": ...}` or `{"v": 1, "ok": false, "error": "..."}`,
then the server closes. The server never blocks: sockets are non-blocking, a request is at
most MAX_REQUEST bytes and must arrive within REQUEST_TIMEOUT_S, and a peer whose uid is
not the server's (SO_PEERCRED) is refused before anything it sends is read, even if the
socket's mode was loosened. A malformed, oversized or unknown request gets an error reply
and changes nothing.

Answers may come later than the request (the supervisor asks risk, which answers on its
own loop): `ControlServer.poll` hands complete requests to the caller, which answers each
with `answer(conn_id, ...)` now or on a later poll; an unanswered request times out with an
error reply.
"""

from __future__ import annotations

import contextlib
import errno
import os
import selectors
import socket
import stat
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

VERSION = 1
MAX_REQUEST = 64 * 1024
MAX_CLIENTS = 32
REQUEST_TIMEOUT_S = 2.0  # to send the request
ANSWER_TIMEOUT_S = 10.0  # for the server to answer it
LINGER_S = 1.0  # after the answer, for the client to close its side
SOCKET_NAME = "control.sock"


class ControlError(RuntimeError):
    """The system answered with an error, or the exchange failed."""


class NotRunning(ControlError):
    """Nothing listens on the control socket: the system is not running."""


@dataclass
class Request:
    conn_id: int
    cmd: str
    args: dict[str, Any]


@dataclass
class _Client:
    sock: socket.socket
    deadline: float
    buf: bytearray = field(default_factory=bytearray)
    out: bytes = b""
    pending: bool = False  # a complete request handed out, not answered yet
    answered: bool = False  # the answer is sent and our side shut: input is discarded until EOF


def _peer_uid(sock: socket.socket) -> int:
    creds = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])


class ControlServer:
    """Listens at `path` (created 0600; a stale socket file is replaced)."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.uid = os.geteuid()
        self.sel = selectors.DefaultSelector()
        self.clients: dict[int, _Client] = {}
        self.refused = 0
        self.errors = 0
        self._remove_stale()
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # born 0600: no window in which another user could connect
        try:
            self.sock.bind(str(self.path))
        finally:
            os.umask(old)
        os.chmod(self.path, 0o600)
        self.sock.listen(16)
        self.sock.setblocking(False)
        self.sel.register(self.sock, selectors.EVENT_READ, None)

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
        for key, events in self.sel.select(timeout):
            if key.data is None:
                self._accept()
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
        now = time.monotonic()
        for cid, c in list(self.clients.items()):
            if now > c.deadline and c.answered:
                self._drop(cid)
            elif now > c.deadline and not c.out:
                why = "no answer in time" if c.pending else f"no request within {REQUEST_TIMEOUT_S} s"
                self.answer(cid, error=why)
        return done

    def _accept(self) -> None:
        try:
            sock, _ = self.sock.accept()
        except (BlockingIOError, InterruptedError):
            return
        sock.setblocking(False)
        uid = _peer_uid(sock)
        cid = sock.fileno()
        self.clients[cid] = _Client(sock, time.monotonic() + REQUEST_TIMEOUT_S)
        self.sel.register(sock, selectors.EVENT_READ, cid)
        if uid != self.uid:
            self.refused += 1
            self.answer(cid, error=f"refused: uid {uid} is not the service's uid {self.uid}")
        elif len(self.clients) > MAX_CLIENTS:
            self.answer(cid, error=f"busy: more than {MAX_CLIENTS} clients connected")

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
        return Request(cid, cmd, args)

    def answer(self, conn_id: int, result: Any = None, *, error: str | None = None) -> None:
        c = self.clients.get(conn_id)
        if c is None or c.out or c.answered:
            return  # gone, or answered already
        if error is not None:
            self.errors += 1
            msg: dict[str, Any] = {"v": VERSION, "ok": False, "error": error}
        else:
            msg = {"v": VERSION, "ok": True, "result": result}
        c.out = orjson.dumps(msg, default=str) + b"\n"
        c.deadline = time.monotonic() + REQUEST_TIMEOUT_S
        try:
            self.sel.modify(c.sock, selectors.EVENT_WRITE, conn_id)
        except KeyError:
            self.sel.register(c.sock, selectors.EVENT_WRITE, conn_id)
        self._write(conn_id, c)

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


def request(path: str | Path, cmd: str, timeout: float = 15.0, **args: Any) -> Any:
    """Send one request; the result, or ControlError with the server's reason.
    NotRunning when nothing listens at path."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.settimeout(timeout)
    try:
        try:
            sock.connect(str(path))
        except (FileNotFoundError, ConnectionRefusedError):
            raise NotRunning(f"the system is not running (no one listens on {path})") from None
        except PermissionError:
            raise ControlError(f"permission denied on {path}: run this as the service's user "
                               "(for example: sudo -u sovereign sovereign ...)") from None  # fmt: skip
        sock.sendall(orjson.dumps({"v": VERSION, "cmd": cmd, "args": args}) + b"\n")
        data = bytearray()
        while not data.endswith(b"\n"):
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
    if not reply.get("ok"):
        raise ControlError(str(reply.get("error", "unknown error")))
    return reply.get("result")


def socket_path(state_dir: str, runtime_dir: str) -> Path:
    """Where the control socket lives: the runtime directory (systemd's RuntimeDirectory),
    or the state directory when none is configured."""
    return Path(runtime_dir or state_dir) / SOCKET_NAME
