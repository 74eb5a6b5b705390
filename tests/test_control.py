"""The control socket on its own: a real Unix socket served by ControlServer in a thread,
real clients, a client of another uid (a forked process that drops to `nobody`)."""

from __future__ import annotations

import os
import shutil
import socket
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import orjson
import pytest

from sovereign.control import MAX_REQUEST, ControlError, ControlServer, NotRunning, request

NOBODY = 65534


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ControlServer]:
    """Echoes `ping`; answers `slow` only after 0.3 s, from a later poll."""
    srv = ControlServer(tmp_path / "control.sock")
    stop = threading.Event()

    def loop() -> None:
        later: list[tuple[float, int]] = []
        while not stop.is_set():
            for req in srv.poll(0.01):
                if req.cmd == "slow":
                    later.append((time.monotonic() + 0.3, req.conn_id))
                elif req.cmd == "fail":
                    srv.answer(req.conn_id, error="refused for the test")
                else:
                    srv.answer(req.conn_id, {"cmd": req.cmd, "args": req.args})
            for due, cid in [x for x in later if x[0] <= time.monotonic()]:
                later.remove((due, cid))
                srv.answer(cid, "late")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    yield srv
    stop.set()
    thread.join()
    srv.close()


def raw(path: Path, payload: bytes, delay: float = 0.0) -> dict:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        s.settimeout(5)
        s.connect(str(path))
        time.sleep(delay)
        s.sendall(payload)
        return orjson.loads(s.makefile("rb").readline())


def test_request_and_answer(server: ControlServer) -> None:
    assert request(server.path, "ping", x=1) == {"cmd": "ping", "args": {"x": 1}}
    assert request(server.path, "slow") == "late"  # answered from a later poll
    assert server.path.stat().st_mode & 0o777 == 0o600


def test_malformed_oversized_and_foreign_versions_get_error_replies(server: ControlServer) -> None:
    cases = {
        b"{nope\n": "not JSON",
        b"42\n": "expected a JSON object",
        b'{"v": 2, "cmd": "ping"}\n': "unsupported protocol version 2",
        b'{"cmd": "ping"}\n': "unsupported protocol version None",
        b'{"v": 1, "cmd": 5}\n': "'cmd' must be a string",
        b'{"v": 1, "cmd": "ping", "args": []}\n': "'args' an object",
        b"a" * (MAX_REQUEST + 10): f"larger than {MAX_REQUEST} bytes",
    }
    for payload, why in cases.items():
        reply = raw(server.path, payload)
        assert reply["v"] == 1 and reply["ok"] is False and why in reply["error"], (payload[:30], reply)
    assert request(server.path, "ping") == {"cmd": "ping", "args": {}}  # still serving


def test_a_silent_client_neither_blocks_others_nor_stays_forever(server: ControlServer) -> None:
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.settimeout(5)
        idle.connect(str(server.path))
        idle.sendall(b'{"v": 1, "cmd"')  # half a request, then nothing
        assert request(server.path, "ping")["cmd"] == "ping"  # served meanwhile
        reply = orjson.loads(idle.makefile("rb").readline())  # cut off after REQUEST_TIMEOUT_S
        assert reply["ok"] is False and "no request within" in reply["error"]


def test_client_errors(tmp_path: Path, server: ControlServer) -> None:
    with pytest.raises(NotRunning, match="not running"):
        request(tmp_path / "nobody-here.sock", "ping")
    with pytest.raises(ControlError, match="refused for the test"):  # the server's reason, as raised
        request(server.path, "fail")


def test_a_stale_socket_is_replaced_and_a_live_one_is_not(tmp_path: Path) -> None:
    path = tmp_path / "s.sock"
    dead = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    dead.bind(str(path))
    dead.close()  # a crashed run's leftover: nobody listens
    first = ControlServer(path)
    try:
        with pytest.raises(ControlError, match="already listening"):
            ControlServer(path)
    finally:
        first.close()
    path.write_text("not a socket")
    with pytest.raises(ControlError, match="not a socket"):
        ControlServer(path)


def _as_nobody(path: Path, delay: float = 0.0) -> str:
    """Connect from a forked child running as uid nobody, and send a ping `delay` seconds
    after connecting; what happened, as text."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover (the child)
        try:
            os.setgid(NOBODY)
            os.setuid(NOBODY)
            try:
                reply = raw(path, b'{"v": 1, "cmd": "ping"}\n', delay)
                out = f"reply: {reply}"
            except PermissionError:
                out = "EACCES"
            except OSError as e:
                out = f"error: {e!r}"
            os.write(w, out.encode())
        finally:
            os._exit(0)
    os.close(w)
    os.waitpid(pid, 0)
    with os.fdopen(r) as f:
        return f.read()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to run a client as another uid")
def test_a_client_of_another_uid_is_refused() -> None:
    # a directory nobody can reach (pytest's tmp_path is under a 0700 directory): the
    # socket's own mode and the uid check must be what stops it
    reachable = Path(tempfile.mkdtemp(prefix="sov-uid-", dir="/tmp"))
    os.chmod(reachable, 0o755)
    srv = ControlServer(reachable / "control.sock")
    stop = threading.Event()

    def loop() -> None:
        while not stop.is_set():
            for req in srv.poll(0.01):
                srv.answer(req.conn_id, "pong")

    thread = threading.Thread(target=loop, daemon=True)
    thread.start()
    try:
        assert _as_nobody(srv.path) == "EACCES"  # mode 0600
        os.chmod(srv.path, 0o666)  # even with the mode loosened, the uid check refuses
        got = _as_nobody(srv.path)
        assert got.startswith("reply:") and "refused: uid 65534" in got and "'ok': False" in got, got
        # refused before its request arrives: the server keeps its side open to read and
        # discard it, so the client gets the answer, not a reset connection
        got = _as_nobody(srv.path, delay=0.2)
        assert got.startswith("reply:") and "refused: uid 65534" in got, got
        assert srv.refused == 2
        assert request(srv.path, "ping") == "pong"
    finally:
        stop.set()
        thread.join()
        srv.close()
        shutil.rmtree(reachable)
