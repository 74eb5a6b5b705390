"""The control socket on its own: a real Unix socket served by ControlServer in a thread,
real clients, a client of another uid (a forked process that drops to `nobody`)."""

from __future__ import annotations

import os
import queue
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import orjson
import pytest

from sovereign.engine.control import MAX_REQUEST, ControlError, ControlServer, NotRunning, request

NOBODY = 65534


class Served:
    """A ControlServer polled by a thread, as the supervisor polls it. Echoes any command;
    answers `slow` only after 0.3 s and `later` at the next poll (as the supervisor
    answers once risk has); keeps `hold` unanswered until `answer_held`."""

    def __init__(self, path: Path, **kw: object):
        self.srv = ControlServer(path, **kw)  # type: ignore[arg-type]
        self.path = self.srv.path
        self.held: list[int] = []  # conn ids of `hold` requests, in arrival order
        self.to_answer: queue.Queue[tuple[int, object]] = queue.Queue()
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.loop, daemon=True)
        self.thread.start()

    def loop(self) -> None:
        srv, later, next_poll = self.srv, list[tuple[float, int]](), list[int]()
        while not self.stop.is_set():
            reqs = srv.poll(0.01)
            for cid in next_poll:
                srv.answer(cid, "later")
            next_poll.clear()
            for req in reqs:
                if req.cmd == "slow":
                    later.append((time.monotonic() + 0.3, req.conn_id))
                elif req.cmd == "later":
                    next_poll.append(req.conn_id)
                elif req.cmd == "hold":
                    self.held.append(req.conn_id)
                elif req.cmd == "fail":
                    srv.answer(req.conn_id, error="refused for the test")
                else:
                    srv.answer(req.conn_id, {"cmd": req.cmd, "args": req.args})
            for due, cid in [x for x in later if x[0] <= time.monotonic()]:
                later.remove((due, cid))
                srv.answer(cid, "late")
            while not self.to_answer.empty():
                cid, result = self.to_answer.get()
                srv.answer(cid, result)

    def answer_held(self, conn_id: int, result: object) -> None:
        self.to_answer.put((conn_id, result))

    def close(self) -> None:
        self.stop.set()
        self.thread.join()
        self.srv.close()


@pytest.fixture
def served(tmp_path: Path) -> Iterator[Served]:
    s = Served(tmp_path / "control.sock")
    yield s
    s.close()


@pytest.fixture
def server(served: Served) -> ControlServer:
    return served.srv


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


# ---- many clients, and clients that hold connections


HOLDER = """
import selectors, socket, sys
path, n = sys.argv[1], int(sys.argv[2])
sel = selectors.DefaultSelector()

def connect():
    s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    s.connect(path)  # returns once queued: the server may not have accepted it yet
    sel.register(s, selectors.EVENT_READ)

for _ in range(n):
    connect()
print("holding", flush=True)
sel.register(sys.stdin, selectors.EVENT_READ)
while True:
    for key, _ in sel.select():
        if key.fileobj is sys.stdin:
            sys.exit(0)
        try:
            data = key.fileobj.recv(1 << 16)
        except OSError:
            data = b""
        if not data:  # the server let it go (cut off, busy, evicted): take another at once
            sel.unregister(key.fileobj)
            key.fileobj.close()
            connect()
"""


def test_a_script_holding_connections_never_locks_the_operator_out(served: Served) -> None:
    """A local script keeps more connections open than the server has slots, sends nothing,
    and reconnects whenever one is let go: halt, status and resume still get answers."""
    from sovereign.engine.control import MAX_CLIENTS

    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(served.path), str(MAX_CLIENTS + 8)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "holding\n"
        assert request(served.path, "halt", flatten=True)["cmd"] == "halt"
        assert request(served.path, "status")["cmd"] == "status"
        assert request(served.path, "resume")["cmd"] == "resume"
        assert served.srv.evicted > 0  # what let them in: the oldest idle connections went
    finally:
        holder.communicate("", timeout=30)
    assert holder.returncode == 0


def test_an_evicted_connection_is_told_it_may_retry(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    from sovereign.engine import control

    monkeypatch.setattr(control, "MAX_CLIENTS", 1)
    monkeypatch.setattr(control, "RESERVED_SLOTS", 0)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as idle:
        idle.settimeout(5)
        idle.connect(str(served.path))
        wait_until(lambda: len(served.srv.clients) == 1, "the idle connection to take the only slot")
        assert request(served.path, "ping")["cmd"] == "ping"  # let in once the idle one has idled enough
        reply = orjson.loads(idle.makefile("rb").readline())
    assert reply["ok"] is False and reply["busy"] is True and reply["error"].startswith("evicted: idle")
    assert served.srv.evicted == 1


def test_halt_gets_through_while_every_slot_waits_for_an_answer(served: Served) -> None:
    """Every ordinary slot holds a request the server has not answered yet (none can be
    evicted): a halt takes the reserved slot; anything else is answered busy there."""
    from sovereign.engine.control import MAX_CLIENTS

    results: list[object] = []
    holds = [threading.Thread(target=lambda: results.append(request(served.path, "hold")))
             for _ in range(MAX_CLIENTS)]  # fmt: skip
    for t in holds:
        t.start()
    wait_until(lambda: len(served.held) == MAX_CLIENTS, "every slot to hold a request")
    assert request(served.path, "halt", reason="now") == {"cmd": "halt", "args": {"reason": "now"}}
    from sovereign.engine.control import Busy

    with pytest.raises(Busy, match="busy"):
        request(served.path, "status", busy_timeout=0.3)  # retried until then, busy every time
    for cid in served.held:
        served.answer_held(cid, "released")
    for t in holds:
        t.join()
    assert results == ["released"] * MAX_CLIENTS
    assert request(served.path, "status")["cmd"] == "status"


def test_many_concurrent_requests_all_get_answers(served: Served) -> None:
    """200 clients at once, more than the slots and the listen backlog: each waits its
    turn (answered at a later poll, as the supervisor answers once risk has)."""
    n = 200
    start = threading.Barrier(n)
    answers: list[object] = []
    failures: list[str] = []

    def client() -> None:
        start.wait()
        try:
            answers.append(request(served.path, "later"))
        except ControlError as e:
            failures.append(str(e))

    threads = [threading.Thread(target=client) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == [] and answers == ["later"] * n


def test_a_late_answer_never_reaches_the_next_client(served: Served, monkeypatch: pytest.MonkeyPatch) -> None:
    """A request answered "no answer in time", then answered by the caller after all: that
    answer must not go to the next client, even one the kernel gave the same descriptor."""
    from sovereign.engine import control

    monkeypatch.setattr(control, "ANSWER_TIMEOUT_S", 0.2)
    monkeypatch.setattr(control, "LINGER_S", 0.1)
    line = b'{"v": 1, "cmd": "hold"}\n'
    second = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)  # now: it takes no descriptor freed below
    second.settimeout(5)
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as first:
        first.settimeout(5)
        first.connect(str(served.path))
        first.sendall(line)
        reply = orjson.loads(first.makefile("rb").readline())
        assert reply["ok"] is False and "no answer in time" in reply["error"]
        # kept open: the server closes its side after lingering, freeing only its descriptor
        wait_until(lambda: not served.srv.clients, "the first connection to be let go")
        with second:
            second.connect(str(served.path))
            second.sendall(line)
            wait_until(lambda: len(served.held) == 2, "the second request")
            served.answer_held(served.held[0], "meant for the first client")
            served.answer_held(served.held[1], "for the second client")
            reply = orjson.loads(second.makefile("rb").readline())
    assert reply == {"v": 1, "ok": True, "result": "for the second client"}


# ---- the commands and their arguments


def test_arguments_are_type_checked_and_unknown_ones_refused(tmp_path: Path) -> None:
    from sovereign.engine.control import COMMANDS

    served = Served(tmp_path / "control.sock", commands=COMMANDS)
    try:
        refused = {
            ("halt", b'{"flatten": "no"}'): "halt: argument 'flatten' must be true or false, not \"no\"",
            ("halt", b'{"flatten": 1}'): "halt: argument 'flatten' must be true or false, not 1",
            ("halt", b'{"reason": 5}'): "halt: argument 'reason' must be a string, not 5",
            ("halt", b'{"flaten": true}'): "halt: unknown argument 'flaten'; halt takes flatten, reason",
            ("status", b'{"x": 1}'): "status: unknown argument 'x'; status takes no arguments",
            ("flatten", b'{"symbol": null}'): "flatten: argument 'symbol' must be a string, not null",
            ("flatten", b'{"all": "yes"}'): "flatten: argument 'all' must be true or false, not \"yes\"",
            ("quotes", b'{"symbols": [1, "2"]}'): "quotes: argument 'symbols' must be a list of integers",
            ("quotes", b'{"symbols": [true]}'): "quotes: argument 'symbols' must be a list of integers",
            ("frobnicate", b"{}"): "unknown command 'frobnicate'; known: ping, status",
        }
        for (cmd, args), why in refused.items():
            reply = raw(served.path, b'{"v": 1, "cmd": "%s", "args": %s}\n' % (cmd.encode(), args))
            assert reply["ok"] is False and reply["error"].startswith(why), (cmd, args, reply)
        # a huge name is not echoed whole, nor its control characters
        reply = raw(served.path, b'{"v": 1, "cmd": "%s\\u001b[2J"}\n' % (b"x" * 60_000))
        assert reply["ok"] is False and len(reply["error"]) < 500 and reply["error"].isprintable()
        assert served.held == []
        halt = request(served.path, "halt", flatten=True, reason="x")
        assert halt["args"] == {"flatten": True, "reason": "x"}
        assert request(served.path, "flatten", symbol="EURUSD")["args"] == {"symbol": "EURUSD"}
        assert request(served.path, "quotes", symbols=[0, 3])["args"] == {"symbols": [0, 3]}
    finally:
        served.close()


def wait_until(cond: Callable[[], object], what: str, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.01)
