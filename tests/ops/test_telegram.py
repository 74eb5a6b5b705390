"""The Telegram bot against a fake Bot API on loopback (tests/ops/fake_telegram.py): the real
`sovereign telegram` process where the test is end to end, talking to a stand-in system on a
real control socket, or to a real running system (halt and resume). Every bot run here logs
at DEBUG, and every line it wrote is searched for the token."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from datetime import date
from decimal import Decimal
from pathlib import Path
from typing import Any

import orjson
import psutil
import pytest

from sovereign.config import ConfigError, from_dict
from sovereign.credentials import Secret
from sovereign.engine.control import COMMANDS, ControlServer, request
from sovereign.engine.sidecar import NICE, Sidecar
from sovereign.ops import telegram as tgbot
from sovereign.ops.telegram_alerts import UNREACHABLE_POLLS, Watch
from sovereign.ops.telegram_outbox import MAX_TEXT, Outbox, Outgoing, split, units
from sovereign.state import views
from sovereign.state.schema import DAY_OPENS_KEY, RISK_STATE_KEY
from sovereign.state.store import StateStore
from tests.helpers import NS, make_risk, quotes_at
from tests.ops.fake_telegram import FakeTelegram

TOKEN = "123456789:AAHk-secret_" + "x" * 24
SECRET = TOKEN.split(":")[1]
CHAT, USER, OTHER_USER, STRANGER, OTHER_CHAT = 1001, 2002, 2003, 6666, 7777
SOV = [sys.executable, "-m", "sovereign.cli"]


def no_token(text: str) -> None:
    assert SECRET not in text and TOKEN not in text, "the token is in the log"


# ---- a stand-in system: a real control socket, canned answers


class FakeSystem:
    def __init__(self, path: Path):
        self.path = path
        self.lock = threading.Lock()
        self.asked: list[tuple[str, dict[str, Any]]] = []
        self.status: dict[str, Any] = {
            "status": "trading", "supervisor_pid": 4242, "newest_quote_age_s": 0.2,
            "account": {"state": "ACTIVE", "why": "", "equity": "100000", "balance": "100000",
                        "day_pnl": "0", "drawdown": 0.0, "open_positions": 0, "feed": "live"},
            "processes": [{"role": r, "health": "ok", "restarts": 0, "why": ""} for r in ("gateway", "risk")],
        }  # fmt: skip
        self.answers: dict[str, Any] = {
            "positions": [], "orders": [],
            "pnl": {"equity": "100500", "today": "2026-12-07", "periods": {
                "day": {"complete": True, "since": "2026-12-07", "start_equity": "100000", "pnl": "500",
                        "ratio": 0.005},
                "week": {"complete": True, "since": "2026-12-07", "start_equity": "100000", "pnl": "500",
                         "ratio": 0.005},
                "month": {"complete": False, "since": "2026-12-02", "start_equity": "99000", "pnl": "1500",
                          "ratio": 0.01515}}},
        }  # fmt: skip
        self.start()

    def start(self) -> None:
        self.server = ControlServer(self.path, COMMANDS)
        self.running = True
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def stop(self) -> None:
        self.running = False
        self.thread.join(5)
        self.server.close()

    def _serve(self) -> None:
        while self.running:
            for r in self.server.poll(0.02):
                with self.lock:
                    self.asked.append((r.cmd, r.args))
                    if r.cmd == "status":
                        self.server.answer(r.conn_id, self.status)
                    elif r.cmd in ("halt", "resume", "flatten"):
                        state = {"halt": "HALTED", "resume": "ACTIVE"}.get(r.cmd, "ACTIVE")
                        self.server.answer(r.conn_id, {"did": f"{r.cmd} done", "state": state, "why": "",
                                                       "open_positions": 0})  # fmt: skip
                    else:
                        self.server.answer(r.conn_id, self.answers.get(r.cmd))

    def set(self, **account: Any) -> None:
        with self.lock:
            self.status = {**self.status, "account": {**self.status["account"], **account}}

    def polls(self) -> int:
        with self.lock:
            return sum(c == "status" for c, _ in self.asked)

    def commands(self) -> list[tuple[str, dict[str, Any]]]:
        with self.lock:
            return [(c, a) for c, a in self.asked if c not in ("status",)]


def telegram_toml(fake: FakeTelegram, **extra: Any) -> str:
    keys = {"enabled": True, "chats": [CHAT], "users": [USER, OTHER_USER], "api_url": fake.url,
            "poll_interval_s": 0.2, **extra}  # fmt: skip
    return "[telegram]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in keys.items())


def _toml(v: Any) -> str:
    if isinstance(v, bool):
        return "true" if v else "false"
    if isinstance(v, str):
        return f'"{v}"'
    if isinstance(v, list):
        return "[" + ", ".join(map(_toml, v)) + "]"
    return repr(v)


class BotProcess:
    """`sovereign telegram` at DEBUG; its whole output is checked for the token at the end."""

    def __init__(self, tmp: Path, fake: FakeTelegram, socket: Path, **extra: Any):
        self.config = tmp / "bot.toml"
        self.config.write_text(telegram_toml(fake, **extra))
        self.log = tmp / "bot.log"
        env = {**os.environ, "SOVEREIGN_TELEGRAM_TOKEN": TOKEN}
        env.pop("CREDENTIALS_DIRECTORY", None)
        self.outbox = tmp / "outbox.json"
        self.proc = subprocess.Popen([*SOV, "telegram", "--config", str(self.config), "--socket", str(socket),
                                      "--log-level", "DEBUG", "--outbox", str(self.outbox)], env=env,
                                     stdout=self.log.open("a"), stderr=subprocess.STDOUT)  # fmt: skip
        fake.wait_for(lambda: any(m == "getUpdates" for m, _ in fake.calls), 30, "the bot to poll")

    def text(self) -> str:
        return self.log.read_text()

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            self.proc.wait(30)
        out = self.text()
        no_token(out)
        return out


@pytest.fixture
def fake() -> Iterator[FakeTelegram]:
    with FakeTelegram(TOKEN) as f:
        yield f


@pytest.fixture
def system(tmp_path: Path) -> Iterator[FakeSystem]:
    s = FakeSystem(tmp_path / "control.sock")
    yield s
    if s.running:
        s.stop()


@pytest.fixture
def bot(tmp_path: Path, fake: FakeTelegram, system: FakeSystem) -> Iterator[BotProcess]:
    b = BotProcess(tmp_path, fake, system.path)
    yield b
    b.stop()
    assert b.proc.returncode == 0, b.text()[-3000:]


def texts(fake: FakeTelegram, chat: int = CHAT) -> list[str]:
    return [p["text"] for p in fake.sent() if p["chat_id"] == chat]


def wait_text(fake: FakeTelegram, needle: str, timeout: float = 30) -> dict[str, Any]:
    """The first message sent, or edited, with `needle` in its text."""
    def found() -> dict[str, Any] | None:
        return next((p for p in fake.sent() + fake.sent("editMessageText") if needle in p["text"]), None)

    return fake.wait_for(found, timeout, f"a message with {needle!r}")  # type: ignore[no-any-return]


# ---- deny by default


def test_only_a_listed_user_in_a_listed_chat_is_answered(fake: FakeTelegram, bot: BotProcess) -> None:
    fake.message(CHAT, STRANGER, "/status Mallory")  # a stranger in our chat
    fake.message(OTHER_CHAT, USER, "/status Elsewhere")  # our user, in a chat not listed
    fake.message(OTHER_CHAT, STRANGER, "/halt Mallory")
    fake.press(CHAT, STRANGER, 1, "y:whatever")  # a stranger's button press
    fake.message(CHAT, USER, "/help")
    wait_text(fake, "/flatten SYMBOL|all")
    time.sleep(0.5)
    assert [p["chat_id"] for p in fake.sent()] == [CHAT]  # the help, nothing else
    assert not fake.sent("answerCallbackQuery")
    log = bot.text()
    assert f"denied: update 1 from chat {CHAT}, user {STRANGER}" in log
    assert f"denied: update 2 from chat {OTHER_CHAT}, user {USER}" in log
    assert f"denied: update 4 from chat {CHAT}, user {STRANGER}" in log
    assert "Mallory" not in log and "Elsewhere" not in log and f"u{STRANGER}" not in log  # ids alone


# ---- commands


def test_read_commands_answer_from_the_system(fake: FakeTelegram, system: FakeSystem,
                                              bot: BotProcess) -> None:  # fmt: skip
    system.answers["positions"] = [{"symbol": 0, "name": "EURUSD", "side": "BUY", "volume": "0.1",
                                    "avg_price": "1.1", "price": 1.2, "sl": "1.0", "tp": None}]  # fmt: skip
    system.answers["orders"] = [{"client_order_id": 7, "ts_ns": 1_796_000_000 * NS, "name": "EURUSD",
                                 "side": 1, "volume": 0.1, "price": 1.1, "state": "FILLED",
                                 "reason": "OK"}]  # fmt: skip
    for cmd in ("/status", "/positions", "/orders open", "/pnl"):
        fake.message(CHAT, USER, cmd)
    wait_text(fake, "Month: +1,500.00 (+1.52%) (history since 2026-12-02 only)")
    got = "\n".join(texts(fake))
    assert "Trading: ACTIVE" in got and "Processes: 2 of 2 healthy" in got
    assert "EURUSD BUY 0.1 @ 1.1 now 1.2 SL 1.0" in got
    assert "#7 " in got and "FILLED" in got
    assert "Day: +500.00 (+0.50%)" in got
    assert ("orders", {"open": True}) in system.commands()


def test_a_reply_of_10_kb_goes_as_parts_of_at_most_4096(fake: FakeTelegram, system: FakeSystem,
                                                          bot: BotProcess) -> None:  # fmt: skip
    rows = [{"symbol": i, "name": f"SYM{i:04d}", "side": "SELL", "volume": "1.25", "avg_price": "1.234567",
             "price": 1.2345, "sl": "1.3", "tp": "1.1"} for i in range(250)]  # fmt: skip
    system.answers["positions"] = rows
    whole = tgbot._positions_text(rows)
    assert len(whole) > 10_000
    fake.message(CHAT, USER, "/positions")
    fake.wait_for(lambda: "".join(texts(fake)) == whole, 30, "every part")
    parts = texts(fake)
    assert len(parts) >= 3 and all(len(p) <= MAX_TEXT for p in parts)
    assert all(p.endswith("\n") for p in parts[:-1])  # cut at line ends


def test_halt_asks_first_and_only_its_user_may_confirm(tmp_path: Path, fake: FakeTelegram,
                                                       system: FakeSystem) -> None:  # fmt: skip
    with InProcessBot(tmp_path, fake, system) as b:
        fake.message(CHAT, USER, "/halt broker maintenance")
        prompt = wait_text(fake, "Halt trading?")
        assert "broker maintenance" in prompt["text"] and not any(c == "halt" for c, _ in system.commands())
        yes = prompt["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        fake.press(CHAT, OTHER_USER, 1, yes)  # listed, but not the one who asked
        fake.wait_for(lambda: fake.sent("answerCallbackQuery"), 10, "the refusal")
        assert "Only the user who asked" in fake.sent("answerCallbackQuery")[0]["text"]
        fake.press(CHAT, USER, 1, yes)
        edit = fake.wait_for(lambda: fake.sent("editMessageText"), 10, "the outcome")[0]
        assert "✅ halt done; trading state HALTED" in edit["text"]
        assert ("halt", {"reason": "telegram: broker maintenance"}) in system.commands()
        fake.press(CHAT, USER, 1, yes)  # the same button again: used up
        fake.wait_for(lambda: len(fake.sent("answerCallbackQuery")) >= 3, 10, "the third answer")
        assert "expired" in fake.sent("answerCallbackQuery")[2]["text"]
        assert [c for c, _ in system.commands()].count("halt") == 1

        fake.message(CHAT, USER, "/resume")
        no = wait_text(fake, "Resume trading")["reply_markup"]["inline_keyboard"][0][1]["callback_data"]
        fake.press(CHAT, USER, 1, no)
        fake.wait_for(lambda: any("Cancelled" in e["text"] for e in fake.sent("editMessageText")), 10,
                      "the cancel")  # fmt: skip
        fake.message(CHAT, USER, "/flatten EURUSD")
        yes = wait_text(fake, "Close the position in EURUSD")["reply_markup"]["inline_keyboard"][0][0]
        for c in b.bot.confirmations.values():
            c.expires = 0.0  # its time is up
        fake.press(CHAT, USER, 1, yes["callback_data"])
        answers = lambda: fake.sent("answerCallbackQuery")[3:]  # noqa: E731
        fake.wait_for(lambda: any("expired" in a.get("text", "") for a in answers()), 10, "the expiry")
        assert not any(c in ("resume", "flatten") for c, _ in system.commands())
        fake.message(CHAT, USER, "/flatten")
        wait_text(fake, "Usage: /flatten SYMBOL")
        b.bot.watch.summary.at, b.bot.watch.summary.last = "00:00", date(2000, 1, 1)  # due now
        summary = wait_text(fake, "Daily summary")["text"]
        assert "Trading: ACTIVE" in summary and "Month: +1,500.00" in summary


class InProcessBot:
    """The bot in this process (its own thread and event loop), to reach into its state."""

    def __init__(self, tmp: Path, fake: FakeTelegram, system: FakeSystem, **extra: Any):
        cfg = tmp / "bot.toml"
        cfg.write_text(telegram_toml(fake, **extra))
        from sovereign.config import load

        self.bot = tgbot.TelegramBot(load(cfg), system.path, Secret(TOKEN))
        self.loop = asyncio.new_event_loop()
        self.stop = asyncio.Event()
        self.thread = threading.Thread(target=lambda: self.loop.run_until_complete(self.bot.run(self.stop)))
        self.fake = fake

    def __enter__(self) -> InProcessBot:
        self.thread.start()
        self.fake.wait_for(lambda: any(m == "getUpdates" for m, _ in self.fake.calls), 30, "the bot to poll")
        return self

    def __exit__(self, *_: Any) -> None:
        self.loop.call_soon_threadsafe(self.stop.set)
        self.thread.join(30)
        self.loop.close()


# ---- alerts, and Telegram misbehaving


def _alert_sequence(system: FakeSystem) -> list[str]:
    """Drive the system through states, one per poll; the alert each makes, in order."""
    steps = [({"state": "HALTED", "why": "operator halt one"}, "HALTED: operator halt one"),
             ({"state": "ACTIVE", "why": "resumed two"}, "ACTIVE again: resumed two"),
             ({"state": "REDUCING", "why": "daily loss three"}, "REDUCING (exits only): daily loss three"),
             ({"state": "HALTED", "why": "max drawdown four"}, "HALTED: max drawdown four"),
             ({"state": "ACTIVE", "why": "resumed five"}, "ACTIVE again: resumed five")]  # fmt: skip
    for account, _ in steps:
        seen = system.polls()
        system.set(**account)
        deadline = time.monotonic() + 30
        while system.polls() < seen + 2:
            assert time.monotonic() < deadline, "the bot stopped polling the system"
            time.sleep(0.02)
    return [want for _, want in steps]


def test_a_429_storm_delays_alerts_but_loses_none_and_keeps_their_order(
    fake: FakeTelegram, system: FakeSystem, bot: BotProcess
) -> None:
    fake.throttle(6, retry_after=1)
    wanted = _alert_sequence(system)
    fake.wait_for(lambda: len(texts(fake)) >= len(wanted), 60, "every alert")
    got = texts(fake)
    assert len(got) == len(wanted) and all(w in g for w, g in zip(wanted, got, strict=True)), got
    assert len(fake.sent("sendMessage(429)")) == 6
    assert "flood control, retrying in 1.0 s" in bot.text()


def test_a_dropped_connection_backs_off_and_recovers(fake: FakeTelegram, system: FakeSystem,
                                                     bot: BotProcess) -> None:  # fmt: skip
    fake.cut(True)
    system.set(state="HALTED", why="during the outage")
    fake.wait_for(lambda: fake.dropped >= 5, 30, "the bot to try through the outage")
    fake.cut(False)
    wait_text(fake, "HALTED: during the outage", 60)
    fake.message(CHAT, USER, "/help")  # polling came back too
    wait_text(fake, "/flatten SYMBOL|all", 60)
    log = bot.text()
    assert "network error, retrying in" in log and "polling for updates failed" in log


def test_the_system_unreachable_and_back(fake: FakeTelegram, system: FakeSystem, bot: BotProcess) -> None:
    system.stop()
    wait_text(fake, "The system does not answer")
    system.start()
    wait_text(fake, "The system answers again")
    fake.message(CHAT, USER, "/status")
    wait_text(fake, "Trading: ACTIVE")
    assert len([t for t in texts(fake) if "does not answer" in t]) == 1  # once, not every poll


def test_malformed_updates_are_acknowledged_and_skipped(fake: FakeTelegram, system: FakeSystem,
                                                       bot: BotProcess) -> None:  # fmt: skip
    fake.push_raw(b"<html>not json{")
    fake.push(message={"text": "/status"})  # no chat, no sender, no date, no id
    fake.push(callback_query={"data": "y:x"})
    fake.push_raw({"message": {"text": "/help"}})  # no update id at all
    fake.push_raw(["not", "an", "update"])
    fake.message(CHAT, USER, "/frobnicate now")
    fake.message(CHAT, USER, "/halt " + "x" * 100_000)  # far past Telegram's own limit
    fake.message(CHAT, USER, "/help")
    wait_text(fake, "/flatten SYMBOL|all")
    sent = texts(fake)
    assert any("Unknown command" in t for t in sent)
    prompt = next(t for t in sent if t.startswith("Halt trading?"))
    assert len(prompt) < 500  # the reason was cut
    assert not any(c == "halt" for c, _ in system.commands())
    assert bot.proc.poll() is None
    assert "cannot be read" in bot.text()


def test_the_token_is_never_logged_even_when_refused(tmp_path: Path, system: FakeSystem) -> None:
    with FakeTelegram("999:wrong-token-of-another-bot") as other:  # answers our token 401
        b = BotProcess.__new__(BotProcess)
        b.config = tmp_path / "bot.toml"
        b.config.write_text(telegram_toml(other))
        env = {**os.environ, "SOVEREIGN_TELEGRAM_TOKEN": TOKEN}
        env.pop("CREDENTIALS_DIRECTORY", None)
        args = ["telegram", "--config", str(b.config), "--socket", str(system.path), "--log-level", "DEBUG"]
        r = subprocess.run([*SOV, *args], env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 2, r.stdout + r.stderr
    assert "Telegram refused the token" in r.stderr and "<token>" in r.stderr
    no_token(r.stdout + r.stderr)


def test_the_token_comes_from_a_private_file_and_must_look_like_one(tmp_path: Path) -> None:
    cfg = from_dict({"telegram": {"token_file": str(tmp_path / "token")}})
    (tmp_path / "token").write_text(TOKEN + "\n")
    (tmp_path / "token").chmod(0o644)
    with pytest.raises(tgbot.CredentialError, match="mode 0600 or 0400"):
        tgbot.load_token(cfg)
    (tmp_path / "token").chmod(0o600)
    assert tgbot.load_token(cfg).reveal() == TOKEN
    (tmp_path / "token").write_text("not-a-token")
    with pytest.raises(tgbot.TokenError, match="not shaped like one") as e:
        tgbot.load_token(cfg)
    assert "not-a-token" not in str(e.value)


# ---- the real system


@pytest.mark.slow
def test_halt_then_resume_reach_the_running_system(tmp_path: Path, fake: FakeTelegram) -> None:
    """The supervisor starts the bot (telegram.enabled); /halt and /resume, each confirmed,
    change the real system's trading state; the halt's alert comes by itself; the read
    commands the supervisor answers for the bot work; at the stop, the bot goes too."""
    state = tmp_path / "state"
    cfg = tmp_path / "sovereign.toml"
    cfg.write_text(f'[system]\nstate_dir = "{state}"\n[feed]\nsymbols = 4\npace = "realtime"\nspeed = 100.0\n'
                   + telegram_toml(fake, users=[USER], poll_interval_s=0.5))  # fmt: skip
    env = {**os.environ, "SOVEREIGN_TELEGRAM_TOKEN": TOKEN}
    env.pop("CREDENTIALS_DIRECTORY", None)
    proc = subprocess.Popen([*SOV, "run", "--config", str(cfg)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    sock = state / "control.sock"

    def account() -> dict[str, Any]:
        return dict(request(sock, "status", timeout=5)["account"])

    try:
        fake.wait_for(lambda: any(m == "getUpdates" for m, _ in fake.calls), 90, "the supervisor's bot")
        bots = [c for c in psutil.Process(proc.pid).children() if "telegram" in c.cmdline()]
        assert len(bots) == 1
        fake.message(CHAT, USER, "/halt checking the bot")
        yes = wait_text(fake, "Halt trading?", 60)["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        fake.press(CHAT, USER, 1, yes)
        wait_text(fake, "✅ halted; trading state HALTED", 60)
        assert account()["state"] == "HALTED" and "telegram: checking the bot" in account()["why"]
        wait_text(fake, "🛑 HALTED: telegram: checking the bot", 60)  # the alert, by polling
        fake.message(CHAT, USER, "/resume")
        yes = wait_text(fake, "Resume trading", 60)["reply_markup"]["inline_keyboard"][0][0]["callback_data"]
        fake.press(CHAT, USER, 1, yes)
        wait_text(fake, "✅ resumed from HALTED", 60)
        assert account()["state"] == "ACTIVE"
        for cmd, answer in (("/positions", "position"), ("/orders", "orders"), ("/pnl", "Day: ")):
            fake.message(CHAT, USER, cmd)
            wait_text(fake, answer, 60)
        assert isinstance(request(sock, "pnl", timeout=5)["periods"]["day"]["pnl"], str)
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out[-3000:]
    assert not bots[0].is_running() or bots[0].status() == psutil.STATUS_ZOMBIE
    no_token(out)
    with StateStore(state, readonly=True) as st:  # risk recorded the day's opening equity for /pnl
        opens = st.read(lambda t: t.get("risk", DAY_OPENS_KEY))
        journaled = st.read(lambda t: [e for _, e in t.items("journal") if e["event"] == "trading_day"])
    assert opens and {str(e["day"]): e["equity"] for e in journaled} == opens


def test_run_no_telegram_starts_no_bot(tmp_path: Path, fake: FakeTelegram) -> None:
    state = tmp_path / "state"
    cfg = tmp_path / "sovereign.toml"
    cfg.write_text(f'[system]\nstate_dir = "{state}"\n[feed]\nsymbols = 2\npace = "realtime"\n'
                   + telegram_toml(fake))  # fmt: skip
    proc = subprocess.Popen([*SOV, "run", "--no-telegram", "--config", str(cfg)], stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 90
        while True:
            try:
                if request(state / "control.sock", "ping", timeout=2)["phase"] == "running":
                    break
            except Exception:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, "the system never came up"
            time.sleep(0.1)
        # the bot would have been started before the trading processes reported ready
        assert not [c for c in psutil.Process(proc.pid).children() if "telegram" in c.cmdline()]
        assert not fake.calls
    finally:
        proc.send_signal(signal.SIGTERM)
        out, _ = proc.communicate(timeout=90)
    assert proc.returncode == 0, out[-3000:]


# ---- the parts, in this process


def test_the_outbox_is_bounded_drops_the_oldest_alerts_first_and_says_so() -> None:
    async def go() -> list[Outgoing]:
        box = Outbox(10)
        box.put(Outgoing(1, "critical first", critical=True))
        for i in range(20):
            box.put(Outgoing(1 if i % 2 else 2, f"alert {i}"))
        box.put(Outgoing(1, "critical last", critical=True))
        assert len(box) == 10 and box.dropped == {1: 6, 2: 6}
        kept = [m.text for m in box.items]
        assert kept[0] == "critical first" and kept[-1] == "critical last"
        assert kept[1:-1] == [f"alert {i}" for i in range(12, 20)]  # the newest alerts
        out = [await box.take()]  # full: the queue first
        out += [await box.take() for _ in range(11)]  # then, with room, each chat's count
        return out

    taken = asyncio.run(go())
    notices = [m for m in taken if "were dropped" in m.text]
    assert sorted((m.chat_id, m.text.split()[1]) for m in notices) == [(1, "6"), (2, "6")]
    assert all(m.critical for m in notices)


def test_split_counts_utf16_and_never_cuts_a_pair() -> None:
    text = ("😀" * 3000) + "\n" + "a" * 5000
    parts = split(text)
    assert "".join(parts) == text and all(units(p) <= MAX_TEXT for p in parts)
    assert split("") == ["(empty)"]
    lines = "\n".join(f"line {i}" for i in range(2000))
    assert all(p.endswith("\n") for p in split(lines)[:-1])


def _status(**account: Any) -> dict[str, Any]:
    base = {"state": "ACTIVE", "why": "", "equity": "100000", "day_pnl": "0", "drawdown": 0.0, "feed": "live"}
    return {"supervisor_pid": 1, "status": "trading", "newest_quote_age_s": 0.1,
            "account": {**base, **account}, "processes": [{"role": "risk", "restarts": 0, "health": "ok"}]}


def test_watch_raises_each_condition_once_and_when_it_ends() -> None:
    w = Watch(from_dict({"risk": {"max_drawdown": 0.1, "daily_loss_limit": 0.03},
                         "telegram": {"stale_feed_s": 30.0, "drawdown_warn_ratio": 0.8}}))  # fmt: skip
    t = 1000.0
    assert w.on_status(_status(), t) == []
    halted = _status(state="HALTED", why="max drawdown", flattening=True)
    first = w.on_status(halted, t + 1)
    assert [a.text for a in first] == ["🛑 HALTED: max drawdown. Every position is being closed."]
    assert w.on_status(halted, t + 2) == []  # deduplicated
    assert [a.key for a in w.on_status(_status(drawdown=0.085), t + 3)] == ["state", "drawdown"]
    assert w.on_status(_status(drawdown=0.09), t + 4) == []
    hit = w.on_status(_status(drawdown=0.1), t + 5)
    assert hit[0].critical and "has hit its limit: 10.00%" in hit[0].text
    assert w.on_status(_status(drawdown=0.075), t + 6) == []  # not re-armed above 90% of the warning
    w.on_status(_status(drawdown=0.0), t + 7)
    assert [a.key for a in w.on_status(_status(drawdown=0.081), t + 8)] == ["drawdown"]  # re-armed
    loss = w.on_status(_status(equity="97600", day_pnl="-2400"), t + 9)  # 2.4% of 100,000: warned
    assert [a.key for a in loss] == ["daily_loss"] and "2.40%" in loss[0].text
    for k in range(UNREACHABLE_POLLS - 1):
        assert w.on_unreachable("no one listens", t + 10 + k) == []
    down = w.on_unreachable("no one listens", t + 20)
    assert down[0].critical and "does not answer: no one listens" in down[0].text
    assert w.on_unreachable("no one listens", t + 21) == []
    assert "answers again (it did not for 0m" in w.on_status(_status(), t + 40)[0].text
    stalled = _status(feed="stalled")
    stalled["newest_quote_age_s"] = 10.0
    assert w.on_status(stalled, t + 41) == []  # not for stale_feed_s yet
    stalled["newest_quote_age_s"] = 31.0
    assert "stale while the market is open" in w.on_status(stalled, t + 42)[0].text
    assert w.on_status(stalled, t + 43) == []
    assert "feed is live again" in w.on_status(_status(), t + 44)[0].text
    closed = _status(feed="closed")
    closed["newest_quote_age_s"] = 4000.0
    assert w.on_status(closed, t + 45) == []  # the market shut: no alarm


def test_watch_restarts_are_coalesced_and_the_broker_goes_down_and_back() -> None:
    w = Watch(from_dict({}))
    s = _status()
    s["bridge"] = {"connected": True}
    w.on_status(s, 0.0)
    s["processes"] = [{"role": "risk", "restarts": 1, "health": "starting", "why": "dead"}]
    one = w.on_status(s, 1.0)
    assert [a.text for a in one] == ["🔄 Process risk was restarted (dead); 1 restarts since the supervisor "
                                     "started."]  # fmt: skip
    s["processes"] = [{"role": "risk", "restarts": 4, "health": "ok", "why": "hung"}]
    assert w.on_status(s, 2.0) == []  # within the quiet minute: counted
    later = w.on_status(s, 62.0)
    assert "was restarted 3 times (hung)" in later[0].text
    s["bridge"] = {"connected": False, "why": "terminal silent 3 s"}
    assert "disconnected: terminal silent 3 s" in w.on_status(s, 63.0)[0].text
    assert w.on_status(s, 64.0) == []
    s["bridge"] = {"connected": True}
    assert "connected again" in w.on_status(s, 65.0)[0].text
    s["supervisor_pid"] = 2
    assert "supervisor restarted" in w.on_status(s, 66.0)[0].text


def test_a_wall_clock_stepped_back_silences_no_restart_alert(tmp_path: Path) -> None:
    """The bot's durations go by the monotonic clock: with the wall clock's, NTP stepping it
    back six hours after a restart alert silenced the next restarts for six hours."""
    cfg = from_dict({"telegram": {"enabled": True, "chats": [CHAT], "users": [USER]}})
    bot = tgbot.TelegramBot(cfg, tmp_path / "control.sock", Secret(TOKEN), tmp_path / "outbox.json")
    said: list[str] = []
    restarts = iter([0, 1, 2])

    async def ask(cmd: str, timeout: float = 0.0, **args: Any) -> Any:
        s = _status()
        s["processes"] = [{"role": "risk", "restarts": next(restarts), "health": "ok", "why": "dead"}]
        return s

    bot.ask, bot.alert = ask, lambda a: said.append(a.text)  # type: ignore[method-assign, assignment]
    mono, wall = [1000.0], [1.8e9]
    bot.clock, bot.wall = (lambda: mono[0]), (lambda: wall[0])
    asyncio.run(bot.look())
    asyncio.run(bot.look())  # risk restarted: said
    mono[0] += 61.0  # a minute later, the wall clock stepped six hours back meanwhile
    wall[0] += 61.0 - 6 * 3600
    asyncio.run(bot.look())  # restarted again: said, the quiet minute being over
    assert [t.split(" (")[0] for t in said] == ["🔄 Process risk was restarted"] * 2, said


def test_the_daily_summary_is_due_once_a_day_at_its_time() -> None:
    w = Watch(from_dict({"telegram": {"summary_at": "17:05"}, "risk": {"day_timezone": "America/New_York"}}))
    import datetime as dt

    zone = dt.timezone(dt.timedelta(hours=-5))
    at = dt.datetime(2026, 12, 6, 17, 5, tzinfo=zone).timestamp()
    assert not w.summary.due(at - 60)  # the first look: today's is still to come
    assert not w.summary.due(at - 1)
    assert w.summary.due(at)
    assert not w.summary.due(at + 3600)
    assert w.summary.due(at + 86_400)
    late = Watch(from_dict({"telegram": {"summary_at": "17:05"},
                            "risk": {"day_timezone": "America/New_York"}}))  # fmt: skip
    assert not late.summary.due(at + 60) and not late.summary.due(at + 120)  # started after it: tomorrow


# ---- P&L of the day, week and month


def test_risk_journals_each_trading_days_opening_equity() -> None:
    r = make_risk()
    r.mark(quotes_at(1.1, 1.1002, ts=1_796_601_600 * NS), 1_796_601_600 * NS)  # 2026-12-07 00:00 UTC
    r.mark(quotes_at(1.1, 1.1002, ts=1_796_688_000 * NS), 1_796_688_000 * NS)  # the next day
    days = [e for e in r.events if e["event"] == "trading_day"]
    assert [e["day"] for e in days] == [20_794, 20_795] and days[0]["equity"] == "100000.0"


def _pnl_state(tmp: Path, days: dict[int, str], equity: str, today: int) -> StateStore:
    store = StateStore(tmp / "s")

    def tx(t: Any) -> None:
        for day, eq in days.items():
            views.keep_day_open(t, day, eq)
        t.put("risk", RISK_STATE_KEY, {"state": "ACTIVE", "why": "", "peak": equity, "day": today,
                                       "day_start": days.get(today, equity), "equity": equity})  # fmt: skip

    store.write(tx)
    return store


def test_pnl_of_the_day_week_and_month(tmp_path: Path) -> None:
    # 2026-12-09 is a Wednesday (day 20796); the week began Monday 12-07 (20794), the month 12-01 (20788)
    store = _pnl_state(tmp_path, {20_786: "90000", 20_788: "95000", 20_794: "98000", 20_796: "99000"},
                       "100000", 20_796)  # fmt: skip
    p = store.read(lambda t: views.pnl(t, 20_796 * 86_400 * NS + 3600 * NS, "UTC", "00:00"))
    store.close()
    assert p["equity"] == "100000" and p["today"] == "2026-12-09"
    d, w, m = (p["periods"][k] for k in ("day", "week", "month"))
    assert (d["pnl"], d["since"], d["complete"]) == ("1000", "2026-12-09", True)
    assert (w["pnl"], w["since"], w["complete"]) == ("2000", "2026-12-07", True)
    assert (m["pnl"], m["since"], m["complete"]) == ("5000", "2026-12-01", True)
    assert Decimal(str(m["ratio"])).quantize(Decimal("0.0001")) == Decimal("0.0526")


def test_pnl_says_when_the_history_is_shorter_than_the_period(tmp_path: Path) -> None:
    store = _pnl_state(tmp_path, {20_795: "98000", 20_796: "99000"}, "100000", 20_796)  # from a Tuesday
    p = store.read(lambda t: views.pnl(t, 0, "UTC", "00:00"))
    store.close()
    w, m = p["periods"]["week"], p["periods"]["month"]
    assert (w["since"], w["complete"]) == (m["since"], m["complete"]) == ("2026-12-08", False)
    text = tgbot._pnl_text(p)
    assert "Week: +2,000.00 (+2.04%) (history since 2026-12-08 only)" in text


def test_pnl_without_a_trading_day_and_the_record_kept_bounded(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s")
    assert store.read(lambda t: views.pnl(t, 0, "UTC", "00:00"))["equity"] is None
    for day in range(100, 300):
        store.write(lambda t, day=day: views.keep_day_open(t, day, str(day)))
    kept = store.read(lambda t: t.get("risk", DAY_OPENS_KEY))
    store.close()
    assert sorted(map(int, kept)) == list(range(300 - views.DAY_OPENS_KEPT, 300))


# ---- config and the supervisor's sidecar


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"enabled": True, "users": [1]}, "telegram.chats: telegram.enabled = true needs"),
        ({"enabled": True, "chats": [1]}, "telegram.users: telegram.enabled = true needs"),
        ({"enabled": "yes"}, "telegram.enabled: expected true or false"),
        ({"users": [0]}, "telegram.users: a user id is a positive integer"),
        ({"chats": [0]}, "telegram.chats: 0 is not a chat id"),
        ({"chats": ["@mychannel"]}, "telegram.chats: expected a list of integers"),
        ({"api_url": "http://api.telegram.org"}, "telegram.api_url: plain http only to this machine"),
        ({"api_url": "ftp://x"}, "telegram.api_url: a string of 7 characters is not a base URL"),
        ({"api_url": "https://x/bot123"}, "telegram.api_url: .* is not a base URL"),
        ({"poll_interval_s": 0}, r"telegram.poll_interval_s: 0.0 is not in \[0.2, 3600\]"),
        ({"queue_max": 5}, r"telegram.queue_max: 5 is not in \[10, 1e\+06\]"),
        ({"summary_at": "5pm"}, "telegram.summary_at: a string of 3 characters is not a time of day"),
        ({"stale_feed_s": 0.5}, r"telegram.stale_feed_s: 0.5 is not in \[1, 86400\]"),
        ({"drawdown_warn_ratio": 1.5}, r"telegram.drawdown_warn_ratio: 1.5 is not in \(0, 1\]"),
        ({"token": TOKEN}, "telegram.token is unknown"),
    ],
)
def test_bad_telegram_config_names_the_key(raw: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=message) as e:
        from_dict({"telegram": raw})
    assert SECRET not in str(e.value)


def test_a_sidecar_is_restarted_with_backoff_and_stopped(tmp_path: Path) -> None:
    mark = tmp_path / "runs"
    side = Sidecar("t", [sys.executable, "-c", f"open({str(mark)!r}, 'a').write('x')"])
    side.start()
    assert side.process is not None
    side.process.wait(30)
    exited = side.check()
    assert exited is not None and exited["exitcode"] == 0 and exited["delay_s"] == 1.0
    deadline = time.monotonic() + 30
    while side.restarts == 0:
        assert time.monotonic() < deadline
        side.check()
        time.sleep(0.05)
    side.process.wait(30)
    assert side.check()["delay_s"] == 2.0  # type: ignore[index]  # doubled: it died again at once
    side.stop()
    sleeper = Sidecar("s", [sys.executable, "-c", "import time; time.sleep(60)"])
    sleeper.start()
    proc = sleeper.process
    assert proc is not None
    assert os.getpriority(os.PRIO_PROCESS, proc.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICE)
    sleeper.stop(timeout=10)
    assert proc is not None and proc.returncode == -signal.SIGTERM
    assert mark.read_text() == "xx"
    wrong = Sidecar("w", [sys.executable, "-c", "import sys; sys.exit(2)"])  # a bad config: said once
    wrong.start()
    assert wrong.process is not None
    wrong.process.wait(30)
    said = wrong.check()
    assert said is not None and "not restarted" in str(said["why"])
    assert wrong.check() is None and wrong.restart_at is None


def test_the_pnl_and_telegram_commands(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from sovereign.cli import main

    _pnl_state(tmp_path, {20_795: "98000", 20_796: "99000"}, "100000", 20_796).close()
    env = {"SOVEREIGN_CONFIG": ""}
    shown = CliRunner().invoke(main, ["pnl", "--state-dir", str(tmp_path / "s")], env=env)
    assert shown.exit_code == 0, shown.output
    lines = [" ".join(line.split()) for line in shown.output.splitlines()]
    assert lines == ["equity 100,000.00 (trading day 2026-12-09)", "day 1,000.00 (+1.01%) since 2026-12-09",
                     "week 2,000.00 (+2.04%) since 2026-12-08 (the history starts there)",
                     "month 2,000.00 (+2.04%) since 2026-12-08 (the history starts there)"]
    as_json = CliRunner().invoke(main, ["pnl", "--state-dir", str(tmp_path / "s"), "--json"], env=env)
    assert '"pnl": "2000"' in as_json.output
    cfg = tmp_path / "c.toml"
    cfg.write_text("[telegram]\nchats = [5]\n")
    refused = CliRunner().invoke(main, ["telegram", "--config", str(cfg)], env=env)
    assert refused.exit_code == 2 and "telegram.enabled is not true" in refused.output
    cfg.write_text("[telegram]\nenabled = true\nchats = [5]\n")
    refused = CliRunner().invoke(main, ["telegram", "--config", str(cfg)], env=env)
    assert refused.exit_code == 2 and "telegram.users: telegram.enabled = true needs" in refused.output


def test_a_status_it_cannot_read_does_not_end_the_alerts(fake: FakeTelegram, system: FakeSystem,
                                                         bot: BotProcess) -> None:  # fmt: skip
    good = system.status
    with system.lock:
        system.status = {"processes": "not a list", "account": {"state": 7, "drawdown": "x"}}
    seen = system.polls()
    fake.wait_for(lambda: system.polls() >= seen + 3, 30, "polls of the unreadable status")
    with system.lock:
        system.status = good
    system.set(state="HALTED", why="after the bad status")
    wait_text(fake, "HALTED: after the bad status")
    assert "looking at the system failed" in bot.text() and bot.proc.poll() is None


# ---- alerts not yet sent survive the bot's restart


def test_the_outbox_file_keeps_alerts_until_telegram_has_them(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"

    async def go() -> None:
        box = Outbox(10, path)
        box.put(Outgoing(CHAT, "A" * (MAX_TEXT + 10), True, durable=True))  # two parts
        box.put(Outgoing(CHAT, "a reply: not kept", True))
        box.put(Outgoing(CHAT, "B", False, durable=True))
        m = await box.take()
        m.sent = 1  # its first part was taken, then the bot was killed
        box.progress(m)
        again = Outbox(10, path)
        assert [(x.text[0], x.sent, x.critical) for x in again.items] == [("A", 1, True), ("B", 0, False)]
        box.done(m)  # sent whole: out of the file
        assert [x.text for x in Outbox(10, path).items] == ["B"]

    asyncio.run(go())
    assert path.stat().st_mode & 0o777 == 0o600
    assert [p.name for p in tmp_path.iterdir()] == ["outbox.json"]  # no temporary file left


def test_an_unreadable_outbox_file_is_kept_aside_and_the_bot_starts_empty(tmp_path: Path) -> None:
    path = tmp_path / "outbox.json"
    for junk in (b"{not json", b'[{"chat_id": "x"}]', b'{"chat_id": 1}'):
        path.write_bytes(junk)
        assert len(Outbox(10, path)) == 0
        assert not path.exists()
    assert len(list(tmp_path.glob("outbox.json.unreadable-*"))) >= 1


def test_alerts_queued_while_telegram_is_away_survive_the_bot_killed(tmp_path: Path, fake: FakeTelegram,
                                                                    system: FakeSystem) -> None:  # fmt: skip
    """The outage outlasts the bot: alerts it queued are sent by the next one, in order,
    though the conditions that raised them have ended (a fresh bot would not raise them)."""
    first = BotProcess(tmp_path, fake, system.path)
    fake.cut(True)
    system.set(state="HALTED", why="while Telegram was away")
    fake.wait_for(lambda: first.outbox.exists() and b"while Telegram was away" in first.outbox.read_bytes(),
                  30, "the halt's alert in the outbox file")  # fmt: skip
    system.set(state="ACTIVE", why="resumed meanwhile")
    fake.wait_for(lambda: b"resumed meanwhile" in first.outbox.read_bytes(), 30, "the resume's alert")
    first.proc.kill()
    first.proc.wait(30)
    assert not any("while Telegram was away" in t for t in texts(fake))
    fake.cut(False)
    second = BotProcess(tmp_path, fake, system.path)
    try:
        wait_text(fake, "ACTIVE again: resumed meanwhile", 60)
        got = [t for t in texts(fake) if "Telegram was away" in t or "resumed meanwhile" in t]
        assert len(got) == 2 and "HALTED: while Telegram was away" in got[0], got  # once each, in order
        fake.wait_for(lambda: orjson.loads(second.outbox.read_bytes()) == [], 30, "the outbox file emptied")
    finally:
        log = second.stop()
    assert "2 alerts not yet sent before the bot stopped, sending them now" in log
