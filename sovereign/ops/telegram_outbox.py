"""The bot's outgoing messages: a bounded queue and the one task that delivers it.

Nothing is lost to Telegram being slow, down or refusing: a message leaves the queue only
once Telegram has taken all of it. On a network error the sender waits (0.5 s, doubling to
30 s) and tries the same message again; on a 429 it waits the `retry_after` Telegram named;
either way the messages behind it keep their order. A message longer than Telegram's 4096
characters goes as several, split at line ends where it can be, each part sent once. Only a
message Telegram refuses for good (a bad request, a chat the bot was removed from) is given
up, and logged.

Alerts and summaries (`durable`) are also kept in a file (telegram.outbox_file) from the
moment they are queued until Telegram has taken every part, so a bot that is killed, or a
machine that restarts, sends them when it comes back: written whole or not at all (a new
file renamed over the old, mode 0600), read back at the start in their order, the one that
was being sent first, from its first part not yet taken (a part in flight may go twice,
never not at all). A file that cannot be read is kept aside, said in the log, and the bot
starts with an empty queue; one that cannot be written (a full disk) is said in the log
and the queue goes on in memory.

The queue is bounded (telegram.queue_max): when it is full, the oldest message that is not
critical goes (the oldest of all when every one is), and each chat is told later how many of
its messages went, never silently. Sending is spaced to Telegram's limits: a message a
second per chat, one per three seconds in a group (20 a minute), 30 a second in all.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import tempfile
import time
import warnings
from collections import deque
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import timedelta
from pathlib import Path
from typing import Any

import orjson
from telegram.error import BadRequest, Forbidden, InvalidToken, NetworkError, RetryAfter

MAX_TEXT = 4096  # Telegram's limit, in UTF-16 code units
CHAT_SPACING_S = 1.0
GROUP_SPACING_S = 3.0
GLOBAL_SPACING_S = 1 / 30
BACKOFF_FIRST_S = 0.5
BACKOFF_MAX_S = 30.0
OTHER_ERROR_TRIES = 5  # an error that is neither network nor a refusal: tried this often, then given up

log = logging.getLogger("sovereign.telegram")


@dataclass
class Outgoing:
    """One message for one chat. `parts` is the text as sent (split); `sent` counts the parts
    Telegram has taken."""

    chat_id: int
    text: str
    critical: bool = False
    markup: Any = None  # an inline keyboard, on the last part
    parts: list[str] = field(default_factory=list)
    sent: int = 0
    on_sent: Callable[[Any], None] | None = None  # gets the last part's Message
    durable: bool = False  # kept in the outbox file until Telegram has all of it (alerts)

    def __post_init__(self) -> None:
        self.parts = split(self.text)


def units(text: str) -> int:
    """Telegram's length of a text: UTF-16 code units."""
    return len(text.encode("utf-16-le")) // 2


def split(text: str, limit: int = MAX_TEXT) -> list[str]:
    """The text in parts of at most `limit` UTF-16 units, cut after a line end where one
    falls in the part's second half, else at the limit (never inside a surrogate pair)."""
    if not text:
        return ["(empty)"]
    parts = []
    while units(text) > limit:
        cut = _fit(text, limit)
        newline = text.rfind("\n", 0, cut)
        if newline >= cut // 2:
            cut = newline + 1
        parts.append(text[:cut])
        text = text[cut:]
    if text:
        parts.append(text)
    return parts


def _fit(text: str, limit: int) -> int:
    """The most characters of text that fit in limit UTF-16 units."""
    n, used = 0, 0
    for ch in text:
        used += 2 if ord(ch) > 0xFFFF else 1
        if used > limit:
            break
        n += 1
    return n


class Outbox:
    """The bounded queue (see the module doc). Used from the event loop alone."""

    def __init__(self, limit: int, path: str | Path | None = None):
        self.limit = limit
        self.items: deque[Outgoing] = deque()
        self.dropped: dict[int, int] = {}  # chat -> messages dropped since it was last told
        self.ready = asyncio.Event()
        self.path = Path(path) if path else None
        self.inflight: Outgoing | None = None  # taken, not yet all sent: still in the file
        if self.path is not None:
            for m in self._load():
                self.put(m, save=False)

    def put(self, item: Outgoing, save: bool = True) -> None:
        dropped_durable = False
        if len(self.items) >= self.limit:
            victim = next((m for m in self.items if not m.critical), self.items[0])
            self.items.remove(victim)
            self.dropped[victim.chat_id] = self.dropped.get(victim.chat_id, 0) + 1
            dropped_durable = victim.durable
            log.warning("queue full (%d): dropped a message for chat %d", self.limit, victim.chat_id)
        self.items.append(item)
        if save and (item.durable or dropped_durable):
            self.save()
        self.ready.set()

    def done(self, item: Outgoing) -> None:
        """`item` was sent whole, or given up: out of the file."""
        if self.inflight is item:
            self.inflight = None
        if item.durable:
            self.save()

    def progress(self, item: Outgoing) -> None:
        """A part of `item` was taken: a restart goes on from the next one."""
        if item.durable and item.sent < len(item.parts):
            self.save()

    def save(self) -> None:
        if self.path is None:
            return
        waiting = ([self.inflight] if self.inflight is not None else []) + list(self.items)
        data = orjson.dumps([{"chat_id": m.chat_id, "text": m.text, "critical": m.critical, "sent": m.sent}
                             for m in waiting if m.durable])  # fmt: skip
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)  # mode 0600
            try:
                with os.fdopen(fd, "wb") as f:
                    f.write(data)
                    f.flush()
                    os.fsync(f.fileno())
                os.replace(tmp, self.path)
            except BaseException:
                with contextlib.suppress(OSError):
                    os.unlink(tmp)
                raise
        except OSError as e:
            log.error("the outbox file %s cannot be written (%s): alerts wait in memory only", self.path, e)

    def _load(self) -> list[Outgoing]:
        assert self.path is not None
        try:
            raw = self.path.read_bytes()
        except FileNotFoundError:
            return []
        except OSError as e:
            log.error("the outbox file %s cannot be read (%s): starting with an empty queue", self.path, e)
            return []
        try:
            rows = orjson.loads(raw)
            out = []
            for r in rows:
                m = Outgoing(int(r["chat_id"]), str(r["text"]), bool(r["critical"]), durable=True)
                m.sent = min(max(0, int(r["sent"])), len(m.parts) - 1)
                out.append(m)
        except (orjson.JSONDecodeError, TypeError, KeyError, ValueError) as e:
            aside = self.path.with_name(f"{self.path.name}.unreadable-{int(time.time())}")
            with contextlib.suppress(OSError):
                self.path.rename(aside)
            log.error("the outbox file %s is not an outbox (%s): kept as %s, starting with an empty queue",
                      self.path, e, aside.name)  # fmt: skip
            return []
        if out:
            log.info("outbox: %d alert%s not yet sent before the bot stopped, sending them now", len(out),
                     "s" if len(out) > 1 else "")  # fmt: skip
        return out

    def __len__(self) -> int:
        return len(self.items)

    async def take(self) -> Outgoing:
        """The next message; first a chat's notice of what was dropped, once there is room."""
        while True:
            if self.dropped and len(self.items) < self.limit:
                chat, n = self.dropped.popitem()
                return Outgoing(chat, f"⚠ {n} message{'s' if n > 1 else ''} to this chat were dropped: "
                                      f"the queue of {self.limit} was full while Telegram did not take "
                                      "them.", critical=True)  # fmt: skip
            if self.items:
                self.inflight = self.items.popleft()
                return self.inflight
            self.ready.clear()
            await self.ready.wait()


Send = Callable[[int, str, Any], Awaitable[Any]]  # chat, text, markup -> the Message sent


class Sender:
    """Delivers the outbox, one message at a time, in order (see the module doc)."""

    def __init__(self, outbox: Outbox, send: Send):
        self.outbox = outbox
        self.send = send
        self.next_at: dict[int, float] = {}  # chat -> earliest next send (monotonic)
        self.next_any = 0.0
        self.delivered = 0
        self.given_up = 0
        self.current: Outgoing | None = None

    async def run(self) -> None:
        while True:
            self.current = await self.outbox.take()
            await self.deliver(self.current)
            self.outbox.done(self.current)
            self.current = None

    async def deliver(self, m: Outgoing) -> None:
        backoff, other = BACKOFF_FIRST_S, 0
        while m.sent < len(m.parts):
            await self._space(m.chat_id)
            last = m.sent == len(m.parts) - 1
            try:
                message = await self.send(m.chat_id, m.parts[m.sent], m.markup if last else None)
            except RetryAfter as e:
                wait = _retry_after_s(e)
                log.warning("telegram: flood control, retrying in %.1f s (%d queued)", wait, len(self.outbox))
                await asyncio.sleep(wait)
                continue
            except (BadRequest, Forbidden, InvalidToken) as e:  # BadRequest is a NetworkError: first
                self.given_up += 1
                log.error("telegram refused a message to chat %d, given up: %s", m.chat_id, e)
                return
            except NetworkError as e:
                log.warning("telegram: network error, retrying in %.1f s: %s", backoff, e)
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, BACKOFF_MAX_S)
                continue
            except Exception as e:  # neither the network nor a refusal (TelegramError or a defect)
                other += 1
                if other >= OTHER_ERROR_TRIES:
                    self.given_up += 1
                    log.error("telegram: a message to chat %d failed %d times, given up: %s", m.chat_id,
                              other, e)  # fmt: skip
                    return
                log.warning("telegram: %s; retrying in %.1f s", e, backoff)
                await asyncio.sleep(backoff)
                backoff = min(2 * backoff, BACKOFF_MAX_S)
                continue
            m.sent += 1
            self.outbox.progress(m)
            backoff = BACKOFF_FIRST_S
            if m.sent == len(m.parts):
                self.delivered += 1
                if m.on_sent is not None:
                    m.on_sent(message)

    async def _space(self, chat: int) -> None:
        now = time.monotonic()
        at = max(self.next_at.get(chat, 0.0), self.next_any)
        if at > now:
            await asyncio.sleep(at - now)
            now = time.monotonic()
        self.next_at[chat] = now + (GROUP_SPACING_S if chat < 0 else CHAT_SPACING_S)
        self.next_any = now + GLOBAL_SPACING_S


def _retry_after_s(e: RetryAfter) -> float:
    with warnings.catch_warnings():  # PTB 22 warns that it will become a timedelta
        warnings.simplefilter("ignore")
        wait = e.retry_after
    return wait.total_seconds() if isinstance(wait, timedelta) else float(wait)
