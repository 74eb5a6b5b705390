"""A fake Telegram Bot API on loopback (standard library only), for the bot's tests.

`https://api.telegram.org/bot<token>/<method>` becomes `http://127.0.0.1:<port>/bot<token>/<method>`
(port 0: any free one). It answers getMe, deleteWebhook, getUpdates (offset acknowledges,
timeout waits for an update), sendMessage, editMessageText and answerCallbackQuery, and
records every call (a sendMessage answered 429 as "sendMessage(429)"). Switches:
`throttle(n, retry_after)` answers the next n sendMessage calls with 429; `cut(True)` closes
every connection without an answer, a getUpdates waiting for updates too; `push_raw` queues
a getUpdates answer that is not JSON, or an entry that is no update. A wrong token is
answered 401, as Telegram does.
"""

from __future__ import annotations

import contextlib
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs

DROP = object()  # an answer that is no answer: the connection is closed
TEXT_FIELDS = {"text", "callback_query_id", "reason"}  # sent as plain strings, never JSON


class FakeTelegram:
    def __init__(self, token: str):
        self.token = token
        self.lock = threading.Condition()
        self.updates: list[Any] = []  # dicts, or bytes: a raw answer to one getUpdates
        self.next_update = 1
        self.next_message = 1
        self.calls: list[tuple[str, dict[str, Any]]] = []
        self.throttled = 0
        self.retry_after = 1
        self.drop = False
        self.dropped = 0
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self.server.daemon_threads = True
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}"

    def __enter__(self) -> FakeTelegram:
        self.thread.start()
        return self

    def __exit__(self, *_: Any) -> None:
        with self.lock:
            self.lock.notify_all()
        self.server.shutdown()
        self.server.server_close()

    # ---- what a test does

    def push(self, **update: Any) -> int:
        """Queue an update (message=..., callback_query=...); its update_id."""
        with self.lock:
            uid = self.next_update
            self.next_update += 1
            self.updates.append({"update_id": uid, **update})
            self.lock.notify_all()
        return uid

    def push_raw(self, raw: Any) -> None:
        """Queue something that is not a well-formed update: bytes are one getUpdates answer as
        they are; anything else goes in the update list as it is."""
        with self.lock:
            self.updates.append(raw)
            self.lock.notify_all()

    def message(self, chat: int, user: int, text: str) -> int:
        command = [{"type": "bot_command", "offset": 0, "length": len(text.split()[0])}]
        return self.push(message={"message_id": 1000 + self.next_update, "date": int(time.time()),
                                  "chat": {"id": chat, "type": "private" if chat > 0 else "group"},
                                  "from": {"id": user, "is_bot": False, "first_name": f"u{user}"},
                                  "text": text, "entities": command if text.startswith("/") else []})

    def press(self, chat: int, user: int, message_id: int, data: str) -> int:
        return self.push(callback_query={"id": f"cb{self.next_update}", "chat_instance": "ci", "data": data,
                                         "from": {"id": user, "is_bot": False, "first_name": f"u{user}"},
                                         "message": {"message_id": message_id, "date": int(time.time()),
                                                     "chat": {"id": chat, "type": "private"}, "text": "?"}})

    def cut(self, on: bool) -> None:
        """Drop every connection (those waiting in getUpdates too) while on."""
        with self.lock:
            self.drop = on
            self.lock.notify_all()

    def throttle(self, n: int, retry_after: int = 1) -> None:
        with self.lock:
            self.throttled, self.retry_after = n, retry_after

    def sent(self, method: str = "sendMessage") -> list[dict[str, Any]]:
        with self.lock:
            return [p for m, p in self.calls if m == method]

    def wait_for(self, cond: Any, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while True:
            with self.lock:
                got = cond()
            if got:
                return got
            assert time.monotonic() < deadline, f"timed out waiting for {what}; calls: {self.calls[-20:]}"
            time.sleep(0.05)

    # ---- the API

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        fake = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *_: Any) -> None:
                pass

            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
                if fake.drop:
                    with fake.lock:
                        fake.dropped += 1
                    self.close_connection = True
                    self.connection.close()
                    return
                _, _, rest = self.path.partition("/bot")
                token, _, method = rest.partition("/")
                if token != fake.token:
                    self._answer(401, {"ok": False, "error_code": 401, "description": "Unauthorized"})
                    return
                params = _params(self.headers.get("Content-Type", ""), body)
                status, result = fake.call(method, params)
                if result is DROP:  # cut while it waited
                    self.close_connection = True
                    self.connection.close()
                    return
                self._answer(status, result)

            def _answer(self, status: int, result: Any) -> None:
                data = result if isinstance(result, bytes) else json.dumps(result).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # the client gave up
                    self.wfile.write(data)

        return Handler

    def call(self, method: str, p: dict[str, Any]) -> tuple[int, Any]:
        if method == "getUpdates":
            return 200, self._get_updates(p)
        with self.lock:
            throttled = method == "sendMessage" and self.throttled > 0
            self.calls.append((f"{method}(429)" if throttled else method, p))
            if throttled:
                self.throttled -= 1
                return 429, {"ok": False, "error_code": 429,
                             "description": f"Too Many Requests: retry after {self.retry_after}",
                             "parameters": {"retry_after": self.retry_after}}
            if method == "getMe":
                return 200, _ok({"id": int(self.token.split(":")[0]), "is_bot": True,
                                 "first_name": "Sovereign", "username": "sovereign_test_bot",
                                 "can_join_groups": True,
                                 "can_read_all_group_messages": False, "supports_inline_queries": False})
            if method in ("deleteWebhook", "answerCallbackQuery", "setMyCommands"):
                return 200, _ok(True)
            if method in ("sendMessage", "editMessageText"):
                mid = int(p.get("message_id") or 0) or self.next_message
                self.next_message += method == "sendMessage"
                chat = int(p["chat_id"])
                return 200, _ok({"message_id": mid, "date": int(time.time()), "text": p.get("text", ""),
                                 "chat": {"id": chat, "type": "private" if chat > 0 else "group"}})
        return 404, {"ok": False, "error_code": 404, "description": "Not Found: method not found"}

    def _get_updates(self, p: dict[str, Any]) -> Any:
        offset, timeout = int(p.get("offset") or 0), float(p.get("timeout") or 0)
        deadline = time.monotonic() + min(timeout, 5.0)
        with self.lock:
            self.calls.append(("getUpdates", p))
            while True:
                # acknowledged: every update below offset (a raw entry goes once it was answered)
                self.updates = [u for u in self.updates if not (isinstance(u, dict) and
                                                                isinstance(u.get("update_id"), int) and
                                                                u["update_id"] < offset)]  # fmt: skip
                if self.updates and isinstance(self.updates[0], bytes):
                    return self.updates.pop(0)
                if self.updates:
                    batch = []
                    for u in self.updates:
                        if isinstance(u, bytes):
                            break
                        batch.append(u)
                    # an entry without a usable id cannot be acknowledged: it is answered once
                    self.updates = [u for u in self.updates if isinstance(u, bytes) or (
                        isinstance(u, dict) and isinstance(u.get("update_id"), int))]  # fmt: skip
                    return _ok(batch)
                if self.drop:
                    self.dropped += 1
                    return DROP
                remaining = deadline - time.monotonic()
                if remaining <= 0 or self.server is None:
                    return _ok([])
                self.lock.wait(remaining)


def _ok(result: Any) -> dict[str, Any]:
    return {"ok": True, "result": result}


def _params(kind: str, body: bytes) -> dict[str, Any]:
    """PTB sends form fields, each JSON-encoded but for plain strings."""
    if kind.startswith("application/json"):
        return dict(json.loads(body or b"{}"))
    out: dict[str, Any] = {}
    for k, v in parse_qs(body.decode(), keep_blank_values=True).items():
        out[k] = v[0]
        if k not in TEXT_FIELDS:
            with contextlib.suppress(ValueError):
                out[k] = json.loads(v[0])
    return out
