"""The Telegram bot (`sovereign telegram`): alerts, and commands from a phone.

A process of its own, beside the trading system: the supervisor starts it when [telegram]
enables it (or systemd runs it in its own unit, sovereign-telegram.service). It talks to the
system over the control socket alone, as the CLI does, with short timeouts, so a slow or
dead Telegram never slows trading: what it has to say waits in its bounded outbox
(telegram_outbox) until Telegram takes it.

- Alerts: every telegram.poll_interval_s it asks the system for its `status` and turns
  what changed into alerts (telegram_alerts), sent to every listed chat; a daily summary
  at telegram.summary_at.
- Commands: /status, /positions, /orders [open], /pnl, /halt [reason], /resume,
  /flatten SYMBOL|all, /help. /halt, /resume and /flatten ask first, with buttons; only
  the user who asked may confirm, within CONFIRM_TTL_S.
- Deny by default: an update is handled only when its chat is in telegram.chats AND its
  user in telegram.users. Anyone else gets nothing back, not even an error, and is logged
  by numeric id alone (no name, no text).
- Long polling (getUpdates), with PTB's backoff on network errors. An update PTB cannot
  parse is acknowledged as an empty one instead of being fetched again forever.
- The token is in every request's URL: httpx and httpcore log at WARNING only, and every
  log line goes through a formatter that blanks `bot<id>:<secret>` and the token itself.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import re
import secrets
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Coroutine
from dataclasses import dataclass
from decimal import Decimal
from pathlib import Path
from typing import Any

from telegram import InlineKeyboardButton, InlineKeyboardMarkup, Update
from telegram.error import InvalidToken, TelegramError
from telegram.ext import (
    ApplicationBuilder,
    ApplicationHandlerStop,
    CallbackQueryHandler,
    CommandHandler,
    ContextTypes,
    ExtBot,
    MessageHandler,
    TypeHandler,
    filters,
)
from telegram.request import HTTPXRequest

from sovereign import credentials
from sovereign.config import Config
from sovereign.credentials import CredentialError, Secret
from sovereign.engine import control
from sovereign.ops.telegram_alerts import Alert, Watch
from sovereign.ops.telegram_outbox import Outbox, Outgoing, Sender
from sovereign.text import clean

TOKEN_ENV = "SOVEREIGN_TELEGRAM_TOKEN"
CREDENTIAL = "telegram-token"
TOKEN_SHAPE = re.compile(r"\d{1,20}:[\w-]{20,200}")
TOKEN_IN_TEXT = re.compile(r"bot\d+:[\w-]+")
CONFIRM_TTL_S = 120.0
ASK_TIMEOUT_S = 5.0  # status, positions, orders, pnl
ACT_TIMEOUT_S = 15.0  # halt, resume, flatten (risk answers once what it did is durable)
LONG_POLL_S = 10  # getUpdates waits this long for an update
CONNECT_BACKOFF_MAX_S = 60.0
FLUSH_S = 5.0  # at a stop, how long the outbox may take to empty
REASON_CHARS = 200

log = logging.getLogger("sovereign.telegram")


class TokenError(CredentialError):
    """No token, or not one."""


def load_token(config: Config, token_file: str | None = None) -> Secret:
    """telegram.token_file (or --token-file), else $CREDENTIALS_DIRECTORY/telegram-token,
    else $SOVEREIGN_TELEGRAM_TOKEN. Checked for a token's shape; never shown."""
    path = token_file or config.telegram.token_file
    directory = os.environ.get("CREDENTIALS_DIRECTORY")
    if path:
        token = credentials.read_file(path)
    elif directory and (Path(directory) / CREDENTIAL).is_file():
        token = credentials.load(CREDENTIAL)
    elif os.environ.get(TOKEN_ENV):
        token = Secret(os.environ[TOKEN_ENV].strip())
    else:
        raise TokenError(f"no Telegram bot token: set telegram.token_file, or give it to systemd "
                         f"(LoadCredential={CREDENTIAL}:FILE), or set {TOKEN_ENV}")  # fmt: skip
    if not TOKEN_SHAPE.fullmatch(token.reveal()):
        raise TokenError("the Telegram bot token is not shaped like one (digits, a colon, then at least "
                         "20 letters, digits, - or _)")  # fmt: skip
    return token


class Redacting(logging.Formatter):
    """Blanks the token out of every line: in a URL (`bot<id>:<secret>`) and anywhere else."""

    def __init__(self, token: str | None, fmt: str):
        super().__init__(fmt)
        self.token = token

    def format(self, record: logging.LogRecord) -> str:
        text = TOKEN_IN_TEXT.sub("bot<token>", super().format(record))
        return text.replace(self.token, "<token>") if self.token else text


def _no_update_content(record: logging.LogRecord) -> bool:
    """PTB's DEBUG lines that would show what an update holds (a stranger's name and text):
    dropped, so that even at DEBUG a stranger is logged by numeric id alone."""
    if not record.name.startswith("telegram"):
        return True
    msg = str(record.msg)
    return not (msg.startswith("Processing update") or "Received data was" in msg or (
        "finished with return value" in msg and record.args and record.args[0] == "getUpdates"))  # type: ignore[index]


def setup_logging(level: str, token: Secret | None) -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_no_update_content)
    handler.setFormatter(Redacting(token.reveal() if token else None,
                                   "sovereign-telegram: %(levelname)s %(name)s: %(message)s"))  # fmt: skip
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    for name in ("httpx", "httpcore"):  # they log each request's URL, token included, at INFO and DEBUG
        logging.getLogger(name).setLevel(logging.WARNING)


class TolerantBot(ExtBot):
    """An ExtBot whose getUpdates never chokes on one bad update: PTB parses the batch as a
    whole and, when one update fails, fetches the same batch again forever. Here each update
    that does not parse is replaced by an empty one with its id (acknowledged, handled by
    no handler), and one without an integer id is left out."""

    async def _post(self, endpoint: str, data: Any = None, **kw: Any) -> Any:
        result = await super()._post(endpoint, data, **kw)
        if endpoint != "getUpdates":
            return result
        if not isinstance(result, list):
            log.warning("getUpdates answered something not a list: ignored")
            return []
        out = []
        for u in result:
            uid = u.get("update_id") if isinstance(u, dict) else None
            if not isinstance(uid, int) or isinstance(uid, bool):
                log.warning("an update without an update id: ignored")
                continue
            try:
                Update.de_json(u, self)
            except Exception as e:
                log.warning("update %d cannot be read (%s): acknowledged, ignored", uid, type(e).__name__)
                u = {"update_id": uid}
            out.append(u)
        return out


@dataclass
class Confirmation:
    user: int
    chat: int
    cmd: str
    args: dict[str, Any]
    prompt: str
    expires: float  # monotonic
    message_id: int | None = None


Handler = Callable[[Update, ContextTypes.DEFAULT_TYPE], Coroutine[Any, Any, None]]


class TelegramBot:
    def __init__(self, config: Config, socket: str | Path, token: Secret, outbox: str | Path | None = None):
        self.config = config
        self.tg = config.telegram
        self.socket = Path(socket)
        self.chats, self.users = set(self.tg.chats), set(self.tg.users)
        self.outbox = Outbox(self.tg.queue_max, outbox)  # alerts not yet sent survive a restart there
        self.watch = Watch(config)
        # Durations (a restart's quiet minute, how long the system did not answer) by the
        # monotonic clock: a wall clock NTP steps back six hours would silence restarts for
        # six hours. The wall clock only for the summary's time of day.
        self.clock, self.wall = time.monotonic, time.time
        self.confirmations: dict[str, Confirmation] = {}
        base = self.tg.api_url.rstrip("/")
        requests = HTTPXRequest(connection_pool_size=4, connect_timeout=5.0, read_timeout=10.0,
                                write_timeout=10.0)  # fmt: skip
        polling = HTTPXRequest(connect_timeout=5.0, read_timeout=10.0)
        bot = TolerantBot(token.reveal(), base_url=f"{base}/bot", base_file_url=f"{base}/file/bot",
                          request=requests, get_updates_request=polling)  # fmt: skip
        self.app = ApplicationBuilder().bot(bot).job_queue(None).build()
        self.sender = Sender(self.outbox, self._send)
        self.app.add_handler(TypeHandler(Update, self.gate), group=-1)
        commands: dict[str, Handler] = {
            "start": self.cmd_help, "help": self.cmd_help, "status": self.cmd_status,
            "positions": self.cmd_positions, "orders": self.cmd_orders, "pnl": self.cmd_pnl,
            "halt": self.cmd_halt, "resume": self.cmd_resume, "flatten": self.cmd_flatten,
        }  # fmt: skip
        for name, fn in commands.items():
            self.app.add_handler(CommandHandler(name, fn))
        self.app.add_handler(CallbackQueryHandler(self.on_button))
        self.app.add_handler(MessageHandler(filters.COMMAND, self.cmd_unknown))
        self.app.add_error_handler(self.on_error)

    # ---- who may talk to it

    async def gate(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        """Every update first: one not from a listed chat AND a listed user stops here."""
        chat, user = update.effective_chat, update.effective_user
        if chat is not None and user is not None and chat.id in self.chats and user.id in self.users:
            return
        if chat is None and user is None:
            log.info("update %d: nothing to act on, ignored", update.update_id)
        else:
            log.warning("denied: update %d from chat %s, user %s (not listed)", update.update_id,
                        chat.id if chat else "-", user.id if user else "-")  # fmt: skip
        raise ApplicationHandlerStop

    # ---- the system

    async def ask(self, cmd: str, timeout: float = ASK_TIMEOUT_S, **args: Any) -> Any:
        """The system's answer (ControlError when it has none), off the event loop."""
        return await asyncio.to_thread(control.request, self.socket, cmd, timeout, timeout, **args)

    def say(self, chat: int, text: str, *, critical: bool = True, markup: Any = None,
            on_sent: Callable[[Any], None] | None = None, durable: bool = False) -> None:  # fmt: skip
        self.outbox.put(Outgoing(chat, text, critical, markup, on_sent=on_sent, durable=durable))

    def alert(self, a: Alert) -> None:
        log.info("alert %s: %s", a.key, a.text)
        for chat in self.tg.chats:
            self.say(chat, a.text, critical=a.critical, durable=True)

    async def _send(self, chat: int, text: str, markup: Any) -> Any:
        return await self.app.bot.send_message(chat, text, reply_markup=markup)

    async def watch_loop(self) -> None:
        while True:
            try:
                await self.look()
            except Exception:  # a status it cannot read must not end the alerts for good
                log.exception("looking at the system failed")
            await asyncio.sleep(self.tg.poll_interval_s)

    async def look(self) -> None:
        """One poll: the system's status turned into alerts, the summary when due, and the
        confirmations whose time is up."""
        now = self.clock()
        try:
            status = await self.ask("status")
        except control.ControlError as e:
            alerts = self.watch.on_unreachable(str(e), now)
        else:
            alerts = self.watch.on_status(status if isinstance(status, dict) else {}, now)
        for a in alerts:
            self.alert(a)
        if self.watch.summary.due(self.wall()):
            text = await self.summary()
            for chat in self.tg.chats:
                self.say(chat, text, critical=False, durable=True)
        await self.expire()

    async def summary(self) -> str:
        lines = ["📋 Daily summary"]
        for cmd, show in (("status", _status_text), ("pnl", _pnl_text)):
            try:
                lines.append(show(await self.ask(cmd)))
            except control.ControlError as e:
                lines.append(f"{cmd}: {clean(str(e), 200)}")
        return "\n\n".join(lines)

    # ---- commands

    async def cmd_help(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        self.reply(update, HELP)

    async def cmd_unknown(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        self.reply(update, "Unknown command. /help lists what I do.")

    async def cmd_status(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        await self.answer(update, "status", _status_text)

    async def cmd_positions(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        await self.answer(update, "positions", _positions_text)

    async def cmd_orders(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        args = context.args or []
        if args not in ([], ["open"]):
            self.reply(update, "Usage: /orders, or /orders open (those not final yet).")
            return
        await self.answer(update, "orders", _orders_text, open=bool(args))

    async def cmd_pnl(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        await self.answer(update, "pnl", _pnl_text)

    async def cmd_halt(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        reason = clean(" ".join(context.args or []), REASON_CHARS) or "halted from Telegram"
        self.confirm(update, "halt", {"reason": f"telegram: {reason}"},
                     f"Halt trading? No new positions; open ones stay (flatten them apart). "
                     f"Reason: {reason}")  # fmt: skip

    async def cmd_resume(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        self.confirm(update, "resume", {}, "Resume trading (back to ACTIVE; a drawdown halt counts as "
                                           "acknowledged)?")  # fmt: skip

    async def cmd_flatten(self, update: Update, context: ContextTypes.DEFAULT_TYPE) -> None:
        args = context.args or []
        if len(args) != 1:
            self.reply(update, "Usage: /flatten SYMBOL, or /flatten all.")
            return
        if args[0].lower() == "all":
            self.confirm(update, "flatten", {"all": True}, "Close EVERY open position at market?")
        else:
            symbol = clean(args[0], 32)
            self.confirm(update, "flatten", {"symbol": symbol}, f"Close the position in {symbol} at market?")

    def reply(self, update: Update, text: str, markup: Any = None,
              on_sent: Callable[[Any], None] | None = None) -> None:  # fmt: skip
        if update.effective_chat is not None:
            self.say(update.effective_chat.id, text, markup=markup, on_sent=on_sent)

    async def answer(self, update: Update, cmd: str, show: Callable[[Any], str], **args: Any) -> None:
        try:
            result = await self.ask(cmd, **args)
        except control.NotRunning:
            self.reply(update, "The system is not running.")
            return
        except control.ControlError as e:
            self.reply(update, f"{cmd}: {clean(str(e), 300)}")
            return
        self.reply(update, show(result))

    # ---- confirmation of what changes the system

    def confirm(self, update: Update, cmd: str, args: dict[str, Any], prompt: str) -> None:
        user, chat = update.effective_user, update.effective_chat
        if user is None or chat is None:
            return
        token = secrets.token_urlsafe(12)
        c = Confirmation(user.id, chat.id, cmd, args, prompt, time.monotonic() + CONFIRM_TTL_S)
        self.confirmations[token] = c
        buttons = InlineKeyboardMarkup([[InlineKeyboardButton("Confirm", callback_data=f"y:{token}"),
                                         InlineKeyboardButton("Cancel", callback_data=f"n:{token}")]])

        def sent(message: Any) -> None:
            c.message_id = getattr(message, "message_id", None)

        self.reply(update, f"{prompt}\n(Only you can confirm, within {CONFIRM_TTL_S:.0f} s.)", buttons, sent)

    async def on_button(self, update: Update, _: ContextTypes.DEFAULT_TYPE) -> None:
        q = update.callback_query
        if q is None:
            return
        kind, _sep, token = (q.data or "").partition(":")
        c = self.confirmations.get(token)
        if c is None or time.monotonic() > c.expires:
            self.confirmations.pop(token, None)
            await _best_effort(q.answer("This confirmation has expired: nothing was done.", show_alert=True))
            if q.message is not None:
                await _best_effort(q.edit_message_text("⌛ Expired: nothing was done."))
            return
        if q.from_user.id != c.user:
            log.warning("user %d pressed a confirmation of user %d: refused", q.from_user.id, c.user)
            await _best_effort(q.answer("Only the user who asked can confirm this.", show_alert=True))
            return
        del self.confirmations[token]
        if kind != "y":
            await _best_effort(q.answer("Cancelled"))
            await self.edit_or_say(c, f"{c.prompt}\n\nCancelled: nothing was done.")
            return
        await _best_effort(q.answer("Sent"))
        log.info("user %d confirmed %s %s", c.user, c.cmd, c.args)
        try:
            result = await self.ask(c.cmd, ACT_TIMEOUT_S, **c.args)
            outcome = f"✅ {_did_text(result)}"
        except control.ControlError as e:
            outcome = f"❌ {c.cmd} failed: {clean(str(e), 300)}"
        await self.edit_or_say(c, f"{c.prompt}\n\n{outcome}")

    async def edit_or_say(self, c: Confirmation, text: str) -> None:
        """The prompt's message becomes the outcome (its buttons go); where that fails, the
        outcome is sent as a new message, through the outbox, so it is never lost."""
        if c.message_id is not None:
            try:
                await self.app.bot.edit_message_text(text, chat_id=c.chat, message_id=c.message_id)
                return
            except TelegramError as e:
                log.warning("cannot edit the confirmation (%s): sending the outcome", e)
        self.say(c.chat, text)

    async def expire(self) -> None:
        now = time.monotonic()
        for token, c in list(self.confirmations.items()):
            if now > c.expires:
                del self.confirmations[token]
                await self.edit_or_say(c, f"{c.prompt}\n\n⌛ Expired: nothing was done.")

    async def on_error(self, update: object, context: ContextTypes.DEFAULT_TYPE) -> None:
        log.error("handling update %s failed", getattr(update, "update_id", "-"), exc_info=context.error)

    # ---- the process

    async def connect(self, stop: asyncio.Event) -> bool:
        """Initialize (getMe) until Telegram answers, backing off; False when stopped first."""
        wait = 1.0
        while not stop.is_set():
            try:
                await self.app.initialize()
                return True
            except InvalidToken:
                raise
            except TelegramError as e:
                log.warning("telegram unreachable (%s): trying again in %.0f s", e, wait)
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(stop.wait(), wait)
            wait = min(2 * wait, CONNECT_BACKOFF_MAX_S)
        return False

    async def run(self, stop: asyncio.Event) -> None:
        watcher = asyncio.create_task(self.watch_loop())  # alerts queue even while Telegram is away
        sender: asyncio.Task | None = None
        try:
            if not await self.connect(stop):
                return
            sender = asyncio.create_task(self.sender.run())
            assert self.app.updater is not None
            await self.app.updater.start_polling(timeout=LONG_POLL_S, bootstrap_retries=-1,
                                                 allowed_updates=["message", "callback_query"],
                                                 error_callback=_polling_failed)  # fmt: skip
            await self.app.start()
            log.info("running: %d chats, %d users, system socket %s", len(self.chats), len(self.users),
                     self.socket)  # fmt: skip
            stopping = asyncio.create_task(stop.wait())
            await asyncio.wait({stopping, watcher, sender}, return_when=asyncio.FIRST_COMPLETED)
            stopping.cancel()
            await self.app.updater.stop()
            await self.app.stop()
            broken = next((t for t in (watcher, sender) if t.done()), None)
            if broken is not None:  # neither ends but by a defect: out, to be started again
                raise RuntimeError(f"a task of the bot ended: {broken.exception()!r}")
            deadline = time.monotonic() + FLUSH_S
            while (len(self.outbox) or self.sender.current) and time.monotonic() < deadline:
                await asyncio.sleep(0.05)
            unsent = len(self.outbox) + (self.sender.current is not None)
            if unsent:
                log.warning("stopping with %d messages not sent", unsent)
        finally:
            for running in (watcher, sender):
                if running is not None:
                    running.cancel()
                    with contextlib.suppress(asyncio.CancelledError, Exception):
                        await running
            with contextlib.suppress(Exception):
                await self.app.shutdown()


def _polling_failed(e: TelegramError) -> None:
    """getUpdates failed (PTB tries again, backing off): one line, not a traceback a poll."""
    log.warning("polling for updates failed (%s): trying again", e)


async def _best_effort(call: Awaitable[Any]) -> None:
    """A button's answer: nice to have, never worth waiting or failing for."""
    try:
        await call
    except TelegramError as e:
        log.info("a button's answer did not go: %s", e)


def outbox_path(config: Config, given: str | None = None) -> Path:
    """Where alerts wait until Telegram has them: `given` (--outbox), else the unit's state
    directory ($STATE_DIRECTORY: systemd's StateDirectory=), else beside the system's state."""
    if given:
        return Path(given)
    if os.environ.get("STATE_DIRECTORY"):
        return Path(os.environ["STATE_DIRECTORY"].split(":")[0]) / "outbox.json"
    return Path(config.system.state_dir) / "telegram-outbox.json"


def main(config: Config, socket: str | Path, token_file: str | None = None, log_level: str = "INFO",
         outbox: str | None = None) -> int:  # fmt: skip
    """Run the bot until SIGTERM or SIGINT; the exit code."""
    setup_logging(log_level, None)
    try:
        token = load_token(config, token_file)
    except CredentialError as e:
        log.error("%s", e)
        return 2
    setup_logging(log_level, token)
    bot = TelegramBot(config, socket, token, outbox_path(config, outbox))

    async def go() -> None:
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop.set)
        await bot.run(stop)

    try:
        asyncio.run(go())
    except InvalidToken as e:
        log.error("Telegram refused the token: %s", e)
        return 2
    except Exception:
        log.exception("the bot failed")
        return 1
    return 0


# ---- what the answers look like (plain text: nothing in them is taken for markup)

HELP = """Sovereign, from Telegram:
/status — trading state, money, processes, feed
/positions — open positions
/orders — the newest orders (/orders open: those not final)
/pnl — P&L of the day, the week and the month
/halt [reason] — stop opening positions (asks first)
/resume — back to ACTIVE (asks first)
/flatten SYMBOL|all — close at market (asks first)
Alerts come by themselves: halts, limits near, restarts, a stale feed, the broker, the system unreachable."""


def _money(x: Any) -> str:
    try:
        return f"{Decimal(str(x)):,.2f}"
    except Exception:
        return "-"


def _status_text(s: dict[str, Any]) -> str:
    a = s.get("account") or {}
    lines = [f"Sovereign: {clean(s.get('status', ''), 300)}"]
    why = f" ({clean(a['why'], 300)})" if a.get("why") else ""
    lines.append(f"Trading: {a.get('state') or 'no risk state yet'}{why}")
    if a.get("equity") is not None:
        lines.append(f"Equity {_money(a.get('equity'))} · balance {_money(a.get('balance'))} · day P&L "
                     f"{_money(a.get('day_pnl'))} · drawdown {float(a.get('drawdown') or 0):.2%} · "
                     f"open positions {a.get('open_positions', 0)}")  # fmt: skip
    procs = s.get("processes") or []
    bad = [f"{clean(p.get('role'), 40)} {p.get('health')}" for p in procs if p.get("health") != "ok"]
    restarts = sum(int(p.get("restarts") or 0) for p in procs)
    lines.append(f"Processes: {len(procs) - len(bad)} of {len(procs)} healthy"
                 f"{' (' + ', '.join(bad) + ')' if bad else ''}; {restarts} restarts")  # fmt: skip
    age = s.get("newest_quote_age_s")
    heard = f", newest quote {age:.1f} s ago" if age is not None else ""
    lines.append(f"Feed: {a.get('feed', '-')}{heard}")
    b = s.get("bridge")
    if b is not None:
        lines.append("Broker (MT5): " + ("connected" if b.get("connected") else
                                         f"DOWN ({clean(b.get('why') or '', 200)})"))  # fmt: skip
    return "\n".join(lines)


def _positions_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No open positions."
    lines = [f"{len(rows)} open position{'s' if len(rows) > 1 else ''}:"]
    for r in rows:
        now = f" now {r['price']}" if r.get("price") else ""
        stops = "".join(f" {k.upper()} {r[k]}" for k in ("sl", "tp") if r.get(k))
        lines.append(f"{clean(r.get('name'), 32)} {r.get('side')} {r.get('volume')} @ {r.get('avg_price')}"
                     f"{now}{stops}")  # fmt: skip
    return "\n".join(lines)


def _orders_text(rows: list[dict[str, Any]]) -> str:
    if not rows:
        return "No orders."
    lines = [f"The newest {len(rows)} orders:"]
    for o in rows:
        side = {1: "BUY", -1: "SELL"}.get(int(o.get("side") or 0), "-")
        when = time.strftime("%m-%d %H:%M:%S", time.gmtime(o["ts_ns"] / 1e9)) if o.get("ts_ns") else "-"
        why = f" {clean(o['reason'], 40)}" if o.get("reason") not in (None, "OK") else ""
        lines.append(f"#{o.get('client_order_id')} {when} {clean(o.get('name', '-'), 32)} {side} "
                     f"{o.get('volume', '-')} @ {o.get('price', '-')} {o.get('state')}{why}")  # fmt: skip
    return "\n".join(lines)


def _pnl_text(p: dict[str, Any]) -> str:
    if p.get("equity") is None:
        return f"P&L: {clean(p.get('why', 'nothing yet'), 200)}"
    lines = [f"P&L (equity {_money(p['equity'])}):"]
    for name in ("day", "week", "month"):
        d = (p.get("periods") or {}).get(name) or {}
        if d.get("pnl") is None:
            lines.append(f"{name.capitalize()}: not known yet")
            continue
        ratio = f" ({d['ratio']:+.2%})" if d.get("ratio") is not None else ""
        partial = "" if d.get("complete") else f" (history since {d.get('since')} only)"
        sign = "+" if Decimal(d["pnl"]) >= 0 else ""
        lines.append(f"{name.capitalize()}: {sign}{_money(d['pnl'])}{ratio}{partial}")
    return "\n".join(lines)


def _did_text(answer: Any) -> str:
    if not isinstance(answer, dict):
        return "done"
    why = f" ({clean(answer['why'], 300)})" if answer.get("why") else ""
    return (f"{clean(answer.get('did') or 'done', 300)}; trading state {answer.get('state')}{why}; "
            f"open positions {answer.get('open_positions')}")  # fmt: skip
