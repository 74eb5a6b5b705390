"""The terminal simulator: a stand-in for the Expert Advisor and the trade server behind it.

It drives the real terminal face of the bridge library (the calls the EA makes to the
DLL, in the EA's order) and is an outside venue with books of its own in its state
directory (LMDB, durable per trade: tickets survive its restarts), a price walk of its
own, and faults on a seeded schedule: requotes, price changes, timeouts and lost
connections after executing or not, answers that never come, partial fills, rejects,
stops, targets and stop-outs on the server, manual trades, and terminal restarts that
recreate the mapped file. Netting or hedging accounts.
"""

from __future__ import annotations

import math
import random
import struct
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lmdb
import orjson

from sovereign.broker.bridge import Bridge, lib, text

FAULTS = (
    "requote",
    "price_changed",
    "timeout_exec",
    "timeout_noexec",
    "connection_exec",
    "connection_noexec",
    "partial",
    "reject",
    "drop_exec",
    "restart_exec",
    "restart_noexec",
    "unknown_noexec",
)
CONTRACT = 100_000.0
EXPERT, SL, TP, SO, CLIENT = 3, 4, 5, 6, 0  # DEAL_REASON


@dataclass
class Faults:
    """Per trade request: `script` first (one fault name or "ok" per request, in order),
    then each fault with its probability. Per step: a stop-out, a manual trade."""

    seed: int = 1
    script: list[str] = field(default_factory=list)
    odds: dict[str, float] = field(default_factory=dict)
    stopout_every: int = 0  # steps; 0 never
    manual_every: int = 0

    def __post_init__(self) -> None:
        bad = [f for f in [*self.script, *self.odds] if f not in (*FAULTS, "ok")]
        if bad:
            raise ValueError(f"fault {bad[0]!r} is not one of ok, {', '.join(FAULTS)}")


def _key(ticket: int) -> bytes:
    return struct.pack(">Q", ticket)


class Venue:
    """The trade server's books: account, positions, deals (and their orders), in LMDB."""

    def __init__(self, state_dir: str | Path, hedging: bool = False, balance: float = 100_000.0):
        Path(state_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
        self.env = lmdb.open(str(Path(state_dir) / "venue"), max_dbs=4, map_size=1 << 32)
        self.meta, self.deals = self.env.open_db(b"meta"), self.env.open_db(b"deals")
        self.positions_db, self.by_client = self.env.open_db(b"positions"), self.env.open_db(b"by_client")
        with self.env.begin(write=True) as t:
            if t.get(b"account", db=self.meta) is None:
                t.put(
                    b"account",
                    orjson.dumps({"balance": balance, "next_ticket": 1000, "hedging": hedging,
                                  "created_ms": int(time.time() * 1000)}),
                    db=self.meta,
                )  # fmt: skip
        self.account = orjson.loads(self._get(b"account", self.meta))
        # The trade server's clock, in its own zone, which stamps deals (the Simulator's: deals
        # and ticks on one clock, as a real server has them)
        self.clock_ms: Callable[[], int] = lambda: int(time.time() * 1000)

    def _get(self, key: bytes, db: Any) -> bytes:
        with self.env.begin() as t:
            raw = t.get(key, db=db)
            assert raw is not None, key
            return bytes(raw)

    def close(self) -> None:
        self.env.close()

    @property
    def hedging(self) -> bool:
        return bool(self.account["hedging"])

    def positions(self) -> list[dict[str, Any]]:
        with self.env.begin() as t:
            return [orjson.loads(v) for _, v in t.cursor(db=self.positions_db)]

    def deals_since(self, ticket: int) -> list[dict[str, Any]]:
        with self.env.begin() as t:
            c = t.cursor(db=self.deals)
            if not c.set_range(_key(ticket + 1)):
                return []
            return [orjson.loads(v) for _, v in c]

    def lookup(self, magic: int, comment: str) -> list[dict[str, Any]]:
        """The deals of the orders sent with this magic and comment."""
        with self.env.begin() as t:
            raw = t.get(f"{magic}:{comment}".encode(), db=self.by_client)
            tickets = orjson.loads(raw) if raw else []
            return [orjson.loads(t.get(_key(k), db=self.deals) or b"{}") for k in tickets]

    def trade(
        self,
        symbol: str,
        side: int,
        volume: float,
        price: float,
        magic: int,
        comment: str,
        reason: int,
        sl: float = 0.0,
        tp: float = 0.0,
        close_ticket: int = 0,
    ) -> list[dict[str, Any]]:
        """Execute at `price`; returns the deals (one, or two for a netting reversal), durable."""
        with self.env.begin(write=True) as t:
            acc = orjson.loads(t.get(b"account", db=self.meta) or b"{}")
            order = acc["next_ticket"]
            acc["next_ticket"] += 1
            deals: list[dict[str, Any]] = []

            def deal(entry: int, vol: float, pos: dict[str, Any], profit: float) -> None:
                ticket = acc["next_ticket"]
                acc["next_ticket"] += 1
                acc["balance"] += profit
                d = {
                    "ticket": ticket,
                    "order": order,
                    "position": pos.get("identifier", pos["ticket"]),  # DEAL_POSITION_ID
                    "symbol": symbol,
                    "type": 0 if side > 0 else 1,
                    "entry": entry,
                    "volume": round(vol, 8),
                    "price": price,
                    "profit": profit,
                    "commission": 0.0,
                    "magic": magic,
                    "comment": comment,
                    "reason": reason,
                    "time_msc": self.clock_ms(),
                }
                deals.append(d)
                t.put(_key(ticket), orjson.dumps(d), db=self.deals)

            def opened(vol: float) -> dict[str, Any]:  # a new position of this order's
                return {"ticket": order, "identifier": order, "symbol": symbol, "side": side, "volume": vol,
                        "price": price, "sl": sl, "tp": tp, "magic": magic, "comment": comment}

            held = self._held(t, symbol, close_ticket, acc["hedging"])
            remaining = volume
            if held is not None and held["side"] != side:  # closes (part of) a position
                held_identifier = held.get("identifier", held["ticket"])
                closed = min(remaining, held["volume"])
                profit = round((price - held["price"]) * held["side"] * closed * CONTRACT, 2)
                held["volume"] = round(held["volume"] - closed, 8)
                remaining = round(remaining - closed, 8)
                reversal = remaining > 0 and not acc["hedging"]  # one INOUT deal of the whole volume
                deal(2 if reversal else 1, volume if reversal else closed, held, profit)
                if held["volume"] <= 0:
                    t.delete(_key(held["ticket"]), db=self.positions_db)
                else:
                    t.put(_key(held["ticket"]), orjson.dumps(held), db=self.positions_db)
                held = None if held["volume"] <= 0 else held
                if remaining > 0 and not acc["hedging"]:  # the reversal's new position, same deal:
                    # MT5 gives it the reversing order's ticket (POSITION_TICKET, what a close names)
                    # and keeps its identifier (POSITION_IDENTIFIER, what its deals name)
                    t.put(_key(order), orjson.dumps({**opened(remaining), "identifier": held_identifier}),
                          db=self.positions_db)  # fmt: skip
                    remaining = 0
            if remaining > 0:
                if held is not None and not acc["hedging"]:  # netting: adds to the position
                    total = held["volume"] + remaining
                    held["price"] = (held["price"] * held["volume"] + price * remaining) / total
                    held["volume"], held["sl"], held["tp"] = (
                        round(total, 8),
                        sl or held["sl"],
                        tp or held["tp"],
                    )
                    pos = held
                else:
                    pos = opened(remaining)
                t.put(_key(pos["ticket"]), orjson.dumps(pos), db=self.positions_db)
                deal(0, remaining, pos, 0.0)
            if comment:
                k = f"{magic}:{comment}".encode()
                raw = t.get(k, db=self.by_client)
                t.put(
                    k,
                    orjson.dumps([*(orjson.loads(raw) if raw else []), *(d["ticket"] for d in deals)]),
                    db=self.by_client,
                )
            t.put(b"account", orjson.dumps(acc), db=self.meta)
        self.account = acc
        return deals

    def _held(self, t: Any, symbol: str, ticket: int, hedging: bool) -> dict[str, Any] | None:
        if ticket:
            raw = t.get(_key(ticket), db=self.positions_db)
            return orjson.loads(raw) if raw else None
        if hedging:
            return None
        for _, v in t.cursor(db=self.positions_db):
            p = orjson.loads(v)
            if p["symbol"] == symbol:
                return p
        return None

    def close_position(self, p: dict[str, Any], price: float, reason: int) -> list[dict[str, Any]]:
        return self.trade(
            p["symbol"],
            -p["side"],
            p["volume"],
            price,
            p["magic"],
            f"[{('sl', 'tp', 'so')[reason - SL]}]" if reason in (SL, TP, SO) else "",
            reason,
            close_ticket=p["ticket"],
        )

    def dump(self) -> dict[str, Any]:
        keys = ("ticket", "order", "position", "symbol", "type", "entry", "volume", "price", "magic",
                "comment", "reason")
        return {
            "account": {k: self.account[k] for k in ("balance", "hedging")},
            "deals": [{k: d[k] for k in keys} for d in self.deals_since(0)],
            "positions": self.positions(),
        }


DEFAULT_SYMBOLS = {"EURUSD": 1.10, "GBPUSD": 1.27, "USDJPY": 150.0}
SERVER_OFFSET_MIN = 120  # the trade server's zone: GMT+2, the most common among brokers


class Simulator:
    """The EA and its trade server over the real terminal face. `step` is one timer event."""

    def __init__(
        self,
        state_dir: str | Path,
        bridge_path: str,
        symbols: dict[str, float] | None = None,
        faults: Faults | None = None,
        hedging: bool = False,
        magic_filter: int | None = None,
        speed: float = 1.0,
        server_offset_min: int = SERVER_OFFSET_MIN,
    ):
        self.venue = Venue(state_dir, hedging)
        # Market time runs `speed` times the wall clock from the venue's creation (kept in its
        # books, so it never goes back across restarts): an engine's M1 bars close in a
        # fraction of a second when tests need trades.
        self.speed = speed
        self.origin_ms = int(self.venue.account.get("created_ms", time.time() * 1000))
        # The server stamps ticks and deals in its own zone, `server_offset_min` ahead of UTC (a
        # real one's is commonly GMT+2, +3 in summer); the EA converts every time it writes to
        # the bridge to UTC (mql5/SovereignBridge.mq5: g_offset_ms), as this one does.
        self.offset_ms = server_offset_min * 60_000
        self.venue.clock_ms = self.server_ms
        self.path = bridge_path
        self.mid = dict(symbols or DEFAULT_SYMBOLS)
        self.faults = faults or Faults()
        self.rng = random.Random(self.faults.seed)
        self.script = deque(self.faults.script)
        self.outbox: deque[Callable[[], int]] = deque()
        self.steps = self.requests = self.restarts = 0
        self.bridge: Bridge | None = None
        self.L = lib()

    def market_ms(self) -> int:
        """Market time in UTC, as the bridge carries it: ticks, deals and answers."""
        return int(self.origin_ms + (time.time() * 1000 - self.origin_ms) * self.speed)

    def server_ms(self) -> int:
        """The trade server's clock, in its own zone."""
        return self.market_ms() + self.offset_ms

    # ---- the EA's sequence: open, hello, account, specs, then timer steps, close

    def open(self) -> None:
        self.bridge = Bridge.terminal(self.path)
        self.bridge.hello()
        self.outbox.clear()  # a new file: what the old one had not sent is gone, as in a real restart
        self._account()
        for name in self.mid:
            digits = 3 if name.endswith("JPY") else 5
            self.bridge.spec(
                name,
                True,
                digits,
                10.0**-digits,
                CONTRACT,
                0.01,
                100.0,
                0.01,
                0,
                1,
                2,
                name[:3],
                name[3:],
                name[:3],
            )

    def close(self) -> None:
        if self.bridge is not None:
            self.bridge.close()
            self.bridge = None

    def restart(self) -> None:
        """The terminal restarts: a new bridge file (the old one is retired), same books."""
        self.close()
        self.restarts += 1
        self.open()

    def _account(self) -> None:
        assert self.bridge is not None
        acc = self.venue.account
        self.bridge.account(
            5551234,
            2 if self.venue.hedging else 0,
            True,
            True,
            acc["balance"],
            acc["balance"],
            0.0,
            "USD",
            "Simulated-Server",
        )

    def quote(self, symbol: str) -> tuple[float, float]:
        mid = self.mid[symbol]
        point = 0.001 if symbol.endswith("JPY") else 0.00001
        return round(mid - point, 6), round(mid + point, 6)

    def step(self, max_requests: int = 64) -> None:
        if self.bridge is None:
            self.open()
        b = self.bridge
        assert b is not None
        self.steps += 1
        b.beat()
        while self.outbox and self.outbox[0]() != self.L.SB_FULL:
            self.outbox.popleft()
        now = self.server_ms() - self.offset_ms  # the EA's conversion to UTC
        for name in self.mid:  # the price walk, and a tick each
            self.mid[name] *= math.exp(self.rng.gauss(0, 0.0002))
            bid, ask = self.quote(name)
            b.tick(name, now, bid, ask, 0.0, 1.0, 6)
        self._server_side()
        if self.steps % 50 == 0:
            self._account()
        for _ in range(max_requests):
            if self.bridge is None or self.outbox:
                break
            q = self.bridge.take_request()
            if q is None:
                break
            self._serve(q)

    def _send(self, push: Callable[[], int]) -> None:
        """Push now, or queue behind what is waiting (a full ring is retried each step, in order)."""
        if self.outbox or push() == self.L.SB_FULL:
            self.outbox.append(push)

    def _deal_out(self, d: dict[str, Any], replay: bool = False) -> None:
        b = self.bridge
        assert b is not None
        utc = {**d, "time_msc": d["time_msc"] - self.offset_ms}  # stamped by the server, in its zone
        self._send(lambda: b.deal(utc, replay))

    def _position_out(self, rid: int, i: int, n: int, row: dict[str, Any]) -> Callable[[], int]:
        b = self.bridge
        assert b is not None
        return lambda: b.position(rid, i, n, row)

    def _server_side(self) -> None:
        """Stops and targets, scheduled stop-outs and manual trades."""
        f = self.faults
        for p in self.venue.positions():
            bid, ask = self.quote(p["symbol"])
            px = bid if p["side"] > 0 else ask
            hit_sl = p["sl"] and (px <= p["sl"] if p["side"] > 0 else px >= p["sl"])
            hit_tp = p["tp"] and (px >= p["tp"] if p["side"] > 0 else px <= p["tp"])
            if hit_sl or hit_tp:
                for d in self.venue.close_position(p, px, SL if hit_sl else TP):
                    self._deal_out(d)
        if f.stopout_every and self.steps % f.stopout_every == 0:
            for p in self.venue.positions():
                bid, ask = self.quote(p["symbol"])
                for d in self.venue.close_position(p, bid if p["side"] > 0 else ask, SO):
                    self._deal_out(d)
        if f.manual_every and self.steps % f.manual_every == 0:
            name = sorted(self.mid)[self.steps // f.manual_every % len(self.mid)]
            bid, ask = self.quote(name)
            for d in self.venue.trade(name, 1, 0.01, ask, 0, "", CLIENT):
                self._deal_out(d)

    def _fault(self) -> str:
        if self.script:
            return self.script.popleft()
        for name, p in self.faults.odds.items():
            if self.rng.random() < p:
                return name
        return "ok"

    def _serve(self, q: Any) -> None:
        b = self.bridge
        assert b is not None
        L, rid, cid, action = self.L, int(q["request_id"]), int(q["client_order_id"]), int(q["action"])
        now = self.market_ms()
        magic, comment = int(q["magic"]), text(q["comment"])
        if action == L.SB_ACTION_LOOKUP:
            deals = self.venue.lookup(magic, comment)
            vol = sum(d["volume"] for d in deals)
            vwap = sum(d["volume"] * d["price"] for d in deals) / vol if vol else 0.0
            last = deals[-1] if deals else {"ticket": 0, "order": 0}
            code = L.SB_LOOKUP_FOUND if deals else L.SB_LOOKUP_NONE
            self._send(
                lambda: b.result(
                    rid, cid, action, code, last["ticket"], last["order"], vol, vwap, time_msc=now
                )
            )
        elif action == L.SB_ACTION_HISTORY:
            for d in self.venue.deals_since(int(q["since"])):
                self._deal_out(d, replay=True)
            self._send(lambda: b.result(rid, 0, action, L.SB_LIST_DONE, time_msc=now))
        elif action == L.SB_ACTION_POSITIONS:
            ps = self.venue.positions()
            for i, p in enumerate(ps):
                self._send(self._position_out(rid, i, len(ps), {**p, "type": 0 if p["side"] > 0 else 1}))
            self._send(lambda: b.result(rid, 0, action, L.SB_LIST_DONE, time_msc=now))
        elif action == L.SB_ACTION_DEAL:
            self._order(q, now)
        else:
            self._send(lambda: b.result(rid, cid, action, 10013, comment=f"unknown action {action}"))

    def _order(self, q: Any, now: int) -> None:
        b = self.bridge
        assert b is not None
        rid, cid, action = int(q["request_id"]), int(q["client_order_id"]), int(q["action"])
        symbol, magic, comment = text(q["symbol"]), int(q["magic"]), text(q["comment"])
        side, volume = (1 if int(q["type"]) == 0 else -1), float(q["volume"])

        def answer(code: int, why: str, deal: dict[str, Any] | None = None, vol: float = 0.0) -> None:
            bid, ask = self.quote(symbol) if symbol in self.mid else (0.0, 0.0)
            d = deal or {"ticket": 0, "order": 0, "price": 0.0}
            self._send(
                lambda: b.result(
                    rid, cid, action, code, d["ticket"], d["order"], vol, d["price"], bid, ask, now, why
                )
            )

        if symbol not in self.mid:
            return answer(10013, f"Invalid request: no symbol {symbol}")
        # The EA's TimeGMT(): the computer's clock, which the engine set the expiry by (not the
        # server's time, whose zone would expire every request on a GMT+2 server)
        if q["expire_msc"] and time.time() * 1000 > int(q["expire_msc"]):
            return answer(10007, "Request canceled: it expired before it was executed")
        self.requests += 1
        fault = self._fault()
        bid, ask = self.quote(symbol)
        price = ask if side > 0 else bid
        if fault in ("requote", "price_changed"):
            return answer(10004 if fault == "requote" else 10020, fault.replace("_", " ").capitalize())
        if fault == "reject":
            return answer(10019, "No money")
        if fault in ("timeout_noexec", "connection_noexec"):
            return answer(10012 if fault == "timeout_noexec" else 10031, "No answer from the server")
        if fault == "unknown_noexec":
            return answer(10099, "A code no documentation lists")
        if fault == "restart_noexec":
            return self.restart()
        position = next((p for p in self.venue.positions() if p["ticket"] == int(q["position"])), None)
        if int(q["position"]) and position is None:
            return answer(10036, "Position already closed")
        if position is not None and position["side"] == side:  # a close by ticket goes against it
            return answer(10013, "Invalid request: a close on the position's own side")
        if position is not None and volume > position["volume"] + 1e-9:
            return answer(10038, "Close volume exceeds the current position volume")
        if fault == "partial":
            volume = max(0.01, round(volume / 2 - 0.005, 2))
        deals = self.venue.trade(
            symbol,
            side,
            volume,
            price,
            magic,
            comment,
            EXPERT,
            float(q["sl"]),
            float(q["tp"]),
            int(q["position"]),
        )
        if fault == "restart_exec":
            return self.restart()
        if fault in ("connection_exec", "drop_exec"):
            if fault == "connection_exec":
                answer(10031, "No connection")
            return None  # the transaction notice is lost with the connection
        for d in deals:
            self._deal_out(d)
        if fault == "timeout_exec":
            return answer(10012, "Request timed out")
        answer(10010 if fault == "partial" else 10009, "Request executed", deals[-1], volume)
        return None

    def run(self, duration_s: float | None = None, pace_s: float = 0.001) -> None:
        end = None if duration_s is None else time.monotonic() + duration_s
        try:
            while end is None or time.monotonic() < end:
                self.step()
                time.sleep(pace_s)
        finally:
            self.close()
            self.venue.close()


def dump(state_dir: str | Path) -> dict[str, Any]:
    v = Venue(state_dir)
    try:
        return v.dump()
    finally:
        v.close()
