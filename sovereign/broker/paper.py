"""PaperBroker: market orders filled on the live tick stream, netting positions, and an
account kept exactly (a Ledger: Decimal money, first-in first-out lots).

Return codes are MT5's TRADE_RETCODE_*. Every execution gets a ticket, and the broker
remembers the client ids it executed recently, so after a crash an order left in
SUBMITTING is resolved by asking it (`find`), never by sending it again. Its whole state
(but the executions, which the gateway keeps one record each) round-trips through
`to_dict`/`load_dict` for the gateway to persist with each fill.
Transport-free: the gateway (live) and the backtest drive the same class.
"""

from __future__ import annotations

import math
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from decimal import Decimal
from enum import IntEnum
from typing import Any

import numpy as np

from sovereign.broker.base import AccountInfo, BrokerPosition, Deal, OrderRequest, Outcome
from sovereign.core import first_touch, last_of_each
from sovereign.files import (
    encode_float,
    want_decimal,
    want_dict,
    want_float,
    want_int,
    want_list,
    want_str,
)
from sovereign.ledger import ZERO, Ledger, Position, to_decimal
from sovereign.symbols import SymbolSpec

__all__ = ["Execution", "PaperBroker", "Position", "Retcode", "SymbolSpec", "to_decimal"]
REMEMBERED_ORDERS = 100_000  # client ids kept for `find` after a crash


class Retcode(IntEnum):
    REJECT = 10006
    DONE = 10009
    INVALID_VOLUME = 10014
    INVALID_STOPS = 10016
    NO_MONEY = 10019
    PRICE_OFF = 10021  # no quote for the symbol yet
    POSITION_CLOSED = 10036  # a reduce-only order found no position to reduce


@dataclass(frozen=True)
class Execution:
    client_order_id: int
    symbol: int
    side: int  # +1 bought, -1 sold
    volume: Decimal
    price: Decimal
    commission: Decimal
    realized_pnl: Decimal  # of the volume this execution closed, before commission
    ts_ns: int
    retcode: Retcode
    reason: str = ""  # "", "sl", "tp", or why it was rejected
    ticket: int = 0  # the broker's deal ticket, 0 for a rejection

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        for k in ("volume", "price", "commission", "realized_pnl"):
            d[k] = str(d[k])
        d["retcode"] = int(self.retcode)
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Execution:
        return cls(**{**d, "volume": Decimal(d["volume"]), "price": Decimal(d["price"]),
                      "commission": Decimal(d["commission"]), "realized_pnl": Decimal(d["realized_pnl"]),
                      "retcode": Retcode(d["retcode"])})  # fmt: skip


class PaperBroker:
    def __init__(self, balance: Decimal, specs: dict[int, SymbolSpec], *,
                 commission_per_lot: Decimal = Decimal(0), slippage_points: int = 0,
                 leverage: Decimal = Decimal(100)):
        self.ledger = Ledger(Decimal(balance), specs)
        self.specs = specs
        self.commission_per_lot = Decimal(commission_per_lot)
        self.slippage_points = slippage_points
        self.leverage = Decimal(leverage)
        self._float_size = {s: float(spec.contract_size) for s, spec in specs.items()}
        self._quotes: dict[int, tuple[int, Decimal, Decimal]] = {}  # symbol -> (ts, bid, ask)
        self._raw: dict[int, tuple[int, float, float]] = {}  # newer float quotes from on_ticks
        self.next_ticket = 1
        self.executed: OrderedDict[int, Execution] = OrderedDict()  # recent, by client id
        self._answers: list[Execution] = []  # `submit`'s, until `poll`

    @property
    def quotes(self) -> dict[int, tuple[int, Decimal, Decimal]]:
        """symbol -> (ts_ns, bid, ask), the latest of each, as Decimals."""
        for s in list(self._raw):
            self.quote(s)
        return self._quotes

    def quote(self, symbol: int) -> tuple[int, Decimal, Decimal] | None:
        raw = self._raw.pop(symbol, None)
        if raw is not None:
            self._quotes[symbol] = (raw[0], to_decimal(raw[1]), to_decimal(raw[2]))
        return self._quotes.get(symbol)

    @property
    def balance(self) -> Decimal:
        return self.ledger.balance

    @property
    def positions(self) -> dict[int, Position]:
        return self.ledger.positions

    # ---- market data

    def on_tick(self, symbol: int, ts_ns: int, bid: float, ask: float) -> list[Execution]:
        """Update the quote; close the position at market if its stop or target is hit."""
        b, a = to_decimal(bid), to_decimal(ask)
        self._raw.pop(symbol, None)
        self._quotes[symbol] = (ts_ns, b, a)
        pos = self.positions.get(symbol)
        hit = "" if pos is None else _exit_hit(pos, b, a)
        if pos is None or not hit:
            return []
        return [self._fill(0, symbol, -1 if pos.volume > 0 else 1, abs(pos.volume), None, None, hit)]

    def on_ticks(self, ticks: np.ndarray) -> list[Execution]:
        """A batch of ticks (TICK_DTYPE, time order): stops and targets are checked tick by
        tick for symbols with a position, and every symbol ends on its last quote. The
        exits are filled in tick order across symbols, as on_tick for each tick in turn
        would: so a batch split anywhere gives the same deals with the same tickets (a
        replay after a crash shows the broker ticks in other batches than live did)."""
        if len(ticks) == 0:
            return []
        hits: list[tuple[int, int]] = []  # (tick index, symbol) of each position's exit
        watched = [s for s in self.ledger.open_symbols() if self.positions[s].sl or self.positions[s].tp]
        for s in watched:  # few positions: one C++ scan each, then each candidate decided exactly
            pos = self.positions[s]
            long = pos.volume > 0
            never = -math.inf if long else math.inf  # an absent stop or target is never touched
            sl = float(pos.sl) if pos.sl is not None else never
            tp = float(pos.tp) if pos.tp is not None else -never
            lo, hi = (sl, tp) if long else (tp, sl)
            j = first_touch(ticks, s, long, lo, hi, 0)
            while j >= 0:  # float screening, Decimal decision
                _, bid, ask = ticks[j].item()[:3]
                if _exit_hit(pos, to_decimal(bid), to_decimal(ask)):
                    hits.append((j, s))
                    break
                j = first_touch(ticks, s, long, lo, hi, j + 1)
        out: list[Execution] = []
        for j, s in sorted(hits):  # one symbol's exit does not move another's
            ts, bid, ask = ticks[j].item()[:3]
            out += self.on_tick(s, ts, bid, ask)
        # Every symbol ends on its last quote; converted to Decimal only when used.
        last = ticks[last_of_each(ticks)]
        self._raw.update(zip(last["symbol"].tolist(), zip(last["ts_ns"].tolist(), last["bid"].tolist(),
                                                        last["ask"].tolist(), strict=True), strict=True))
        return out

    def set_quote(self, symbol: int, ts_ns: int, bid: float, ask: float) -> None:
        """Take a quote without checking stops and targets (bar backtests check them
        against each bar's high and low with `close_at`)."""
        self._raw[symbol] = (ts_ns, bid, ask)

    def set_quotes(self, quotes: dict[int, tuple[int, float, float]]) -> None:
        """`set_quote` for many symbols at once: symbol -> (ts_ns, bid, ask)."""
        self._raw.update(quotes)

    def close_at(self, symbol: int, price: Decimal, reason: str) -> Execution:
        """Close the whole position at `price` (a stop or target touched inside a bar),
        with the configured slippage against the trader and commission."""
        vol = self.ledger.volume(symbol)
        return self._fill(0, symbol, -1 if vol > 0 else 1, abs(vol), None, None, reason, at=price)

    def find(self, client_order_id: int) -> Execution | None:
        """The execution of an order this broker took, if it took it (crash recovery)."""
        return self.executed.get(client_order_id)

    # ---- orders

    def market_order(self, client_order_id: int, symbol: int, side: int, volume: Decimal,
                     sl: float | None = None, tp: float | None = None, *,
                     reduce_only: bool = False) -> Execution:  # fmt: skip
        """Fill a market order at the current quote (ask to buy, bid to sell) plus slippage.
        sl/tp, when given, become the position's (netting: the newest order sets them).

        A reduce-only order (an exit, a flatten) is clipped to the position it finds here,
        whatever the sender's book said: with nothing to close it is refused
        (POSITION_CLOSED) and nothing is traded, so it can never open or grow a position."""
        spec = self.specs.get(symbol)
        volume = Decimal(volume)
        if spec is None:
            return self._reject(client_order_id, symbol, side, volume, Retcode.REJECT,
                                f"unknown symbol {symbol}")
        if not spec.convertible:
            return self._reject(client_order_id, symbol, side, volume, Retcode.REJECT,
                                f"symbol {symbol} has no rate to the account currency")  # fmt: skip
        quote = self.quote(symbol)
        if quote is None:
            return self._reject(client_order_id, symbol, side, volume, Retcode.PRICE_OFF,
                                f"no quote for symbol {symbol}")
        if side not in (1, -1):
            return self._reject(client_order_id, symbol, side, volume, Retcode.REJECT, f"side {side}")
        if not (spec.min_lot <= volume <= spec.max_lot) or volume % spec.lot_step != 0:
            return self._reject(client_order_id, symbol, side, volume, Retcode.INVALID_VOLUME,
                                f"volume {volume} is not a multiple of {spec.lot_step} in "
                                f"[{spec.min_lot}, {spec.max_lot}]")
        held = self.ledger.volume(symbol)
        if reduce_only:
            if held == 0 or (held > 0) == (side > 0):
                return self._reject(client_order_id, symbol, side, volume, Retcode.POSITION_CLOSED,
                                    f"reduce-only: no {'short' if side > 0 else 'long'} position to close")
            return self._fill(client_order_id, symbol, side, min(volume, abs(held)), None, None, "")
        _, bid, ask = quote
        dsl = None if sl is None else to_decimal(sl)
        dtp = None if tp is None else to_decimal(tp)
        if not spec.stops_ok(side, dsl, dtp, bid, ask):
            return self._reject(client_order_id, symbol, side, volume, Retcode.INVALID_STOPS,
                                f"sl {sl} / tp {tp} not beyond {bid if side > 0 else ask} by the stops level "
                                f"({spec.stops_level} points)")  # fmt: skip
        ref = ask if side > 0 else bid
        if abs(held + side * volume) > abs(held):  # only an order that adds exposure needs margin
            unquoted = [s for s in self.positions if s != symbol and self.quote(s) is None]
            if unquoted:
                return self._reject(client_order_id, symbol, side, volume, Retcode.PRICE_OFF,
                                    f"no quote yet for positioned symbol {unquoted[0]}: margin unknown")
            if self._short_of_margin(symbol, side * volume, ref):
                return self._reject(client_order_id, symbol, side, volume, Retcode.NO_MONEY,
                                    "not enough free margin")
        return self._fill(client_order_id, symbol, side, volume, dsl, dtp, "")

    # ---- the Broker interface (base.py): the methods above, in its terms

    def connected(self) -> tuple[bool, str]:
        return True, ""

    def submit(self, orders: Sequence[OrderRequest]) -> None:
        """Each order filled (or refused) at once, as `market_order`; answers through `poll`."""
        for o in orders:
            self._answers.append(self.market_order(o.client_order_id, o.symbol, o.side, o.volume, o.sl, o.tp,
                                                   reduce_only=o.reduce_only))  # fmt: skip

    def poll(self) -> tuple[list[Outcome], list[Deal]]:
        done, self._answers = self._answers, []
        return [_outcome(ex) for ex in done], [_deal(ex) for ex in done if ex.retcode == Retcode.DONE]

    def resolve(self, client_order_ids: Sequence[int],
                requests: dict[int, OrderRequest] | None = None) -> None:  # fmt: skip
        for cid in client_order_ids:
            ex = self.find(cid)
            why = "not executed before a crash"
            lost = Execution(cid, -1, 0, ZERO, ZERO, ZERO, ZERO, 0, Retcode.REJECT, why)
            self._answers.append(ex or lost)

    def open_positions(self) -> list[BrokerPosition]:
        out = []
        for s, p in self.positions.items():
            price = p.lots[0][1] if p.lots else ZERO
            side = 1 if p.volume > 0 else -1
            sl, tp = float(p.sl or 0), float(p.tp or 0)
            out.append(BrokerPosition(0, s, side, abs(p.volume), price, sl, tp, 0))
        return out

    def deals_since(self, ticket: int) -> list[Deal]:
        """The recent client executions (exits by stop or target are the caller's to keep)."""
        return sorted((_deal(ex) for ex in self.executed.values() if ex.ticket > ticket),
                      key=lambda d: d.ticket)  # fmt: skip

    def account_info(self) -> AccountInfo:
        return AccountInfo(self.balance, self.equity(), self.margin(), "", 0, True)

    def symbol_specs(self) -> dict[int, SymbolSpec]:
        return self.specs

    # ---- account

    def equity(self) -> Decimal:
        return self.balance + sum((self.unrealized(s) for s in self.ledger.open_symbols()), Decimal(0))

    def unrealized(self, symbol: int) -> Decimal:
        """Open P&L at the quote (account currency); a position without a quote yet (a
        restarted broker) is valued at cost, 0, until its first tick."""
        quote = self.quote(symbol)
        if not self.ledger.volume(symbol) or quote is None:
            return ZERO
        return self.ledger.unrealized(symbol, quote[1], quote[2])

    def to_dict(self) -> dict[str, Any]:
        """The account (positions, balance) and ticket counter; executions are persisted
        one by one by the caller (Execution.to_dict), quotes come back with the next tick."""
        return {"ledger": self.ledger.to_dict(), "next_ticket": self.next_ticket}

    def load_dict(self, d: dict[str, Any]) -> None:
        self.ledger.load_dict(d["ledger"])
        self.next_ticket = int(d["next_ticket"])

    def to_state(self) -> dict[str, Any]:
        """All of the broker's state as JSON-able data, for a backtest to save between runs:
        `to_dict`, and what a live gateway need not keep: the quotes (exact, and the raw
        floats not converted yet) and the recent executions."""
        return {
            "account": self.to_dict(),
            "quotes": [[s, ts, str(bid), str(ask)] for s, (ts, bid, ask) in self._quotes.items()],
            "raw": [[s, ts, encode_float(bid), encode_float(ask)] for s, (ts, bid, ask) in self._raw.items()],
            "executed": [ex.to_dict() for ex in self.executed.values()],
        }

    def load_state(self, d: Any) -> None:
        """`to_state`'s data back, each field checked against this broker's symbols; a bad
        one raises ValueError naming it, and leaves the broker as it was."""
        d = want_dict(d, "broker", {"account", "quotes", "raw", "executed"})
        account = want_dict(d["account"], "broker", {"ledger", "next_ticket"})
        ledger = checked_ledger(account["ledger"], "broker.ledger", self.specs)
        next_ticket = want_int(account["next_ticket"], "broker.next_ticket", 1)
        quotes, raw = {}, {}
        for q in want_list(d["quotes"], "broker.quotes"):
            s, ts, bid, ask = want_list(q, "broker.quotes", 4)
            quotes[_symbol(s, "broker.quotes", self.specs)] = (
                want_int(ts, "broker.quotes time"), want_decimal(bid, "broker.quotes bid"),
                want_decimal(ask, "broker.quotes ask"))  # fmt: skip
        for q in want_list(d["raw"], "broker.raw"):
            s, ts, bid, ask = want_list(q, "broker.raw", 4)
            raw[_symbol(s, "broker.raw", self.specs)] = (
                want_int(ts, "broker.raw time"), want_float(bid, "broker.raw bid"),
                want_float(ask, "broker.raw ask"))  # fmt: skip
        executed = want_list(d["executed"], "broker.executed")
        if len(executed) > REMEMBERED_ORDERS:
            raise ValueError(f"broker.executed: {len(executed)} executions, more than {REMEMBERED_ORDERS}")
        remembered = OrderedDict((ex.client_order_id, ex) for ex in
                                 (_checked_execution(x, self.specs) for x in executed))  # fmt: skip
        self.load_dict({"ledger": ledger, "next_ticket": next_ticket})
        self._quotes, self._raw, self.executed = quotes, raw, remembered

    def margin(self) -> Decimal:
        return sum((self._margin_of(s, p.volume) for s, p in self.positions.items()), Decimal(0))

    # ---- internals

    def _margin_of(self, symbol: int, volume: Decimal, price: Decimal | None = None) -> Decimal:
        if volume == 0:
            return Decimal(0)
        if price is None:
            _, bid, ask = self.quote(symbol)  # type: ignore[misc]
            price = (bid + ask) / 2
        spec = self.specs[symbol]
        return spec.to_account(abs(volume) * spec.contract_size * price / self.leverage, price)

    def _short_of_margin(self, symbol: int, delta: Decimal, price: Decimal) -> bool:
        """Whether the margin after an order of `delta` lots at `price` exceeds equity.

        Screened in float first: when the two differ by far more than float rounding over
        these sums could move them (1e-9 of the magnitudes summed; doubles round at 1e-16),
        the float answer is the exact one. A close call is decided in Decimal."""
        lev = float(self.leverage)
        margin = equity = 0.0
        scale = abs(float(self.balance))
        for s, pos in self.positions.items():
            raw = self._raw.get(s)
            if raw is not None:
                bid, ask = raw[1], raw[2]
            else:
                _, b, a = self._quotes[s]
                bid, ask = float(b), float(a)
            size, vol, spec = self._float_size[s], float(pos.volume), self.specs[s]
            cost = 0.0
            for v, p in pos.lots:
                cost += float(v) * float(p)
            mark = bid if vol > 0 else ask
            value = mark * vol
            rate = spec.factor(mark)
            equity += (value - cost) * size * rate
            scale += (abs(value) + abs(cost)) * size * rate
            if s != symbol:
                mid = (bid + ask) / 2
                m = abs(vol) * size * mid / lev * spec.factor(mid)
                margin += m
                scale += m
        px = float(price)
        after = abs(float(self.ledger.volume(symbol) + delta)) * self._float_size[symbol] * px / lev
        after *= self.specs[symbol].factor(px)
        margin += after
        equity += float(self.balance)
        if abs(margin - equity) > 1e-9 * (scale + after):
            return margin > equity
        return self._margin_after(symbol, delta, price) > self.equity()

    def _margin_after(self, symbol: int, delta: Decimal, price: Decimal) -> Decimal:
        pos = self.positions.get(symbol)
        current = pos.volume if pos else Decimal(0)
        others = self.margin() - self._margin_of(symbol, current)
        return others + self._margin_of(symbol, current + delta, price)

    def _fill(self, cid: int, symbol: int, side: int, volume: Decimal, sl: Decimal | None,
              tp: Decimal | None, reason: str, at: Decimal | None = None) -> Execution:
        ts, bid, ask = self.quote(symbol)  # type: ignore[misc]
        base = at if at is not None else (ask if side > 0 else bid)
        spec = self.specs[symbol]
        # A price is a float64 where it travels (DESIGN.md section 2): the fill is at the one
        # its report carries, or risk books the lot at another price than the broker.
        price = to_decimal(float(base + side * self.slippage_points * spec.point))
        per_lot = self.commission_per_lot if spec.commission_per_lot is None else spec.commission_per_lot
        commission = per_lot * volume
        realized = self.ledger.fill(symbol, side, volume, price, commission, sl, tp)
        ex = Execution(cid, symbol, side, volume, price, commission, realized, ts, Retcode.DONE, reason,
                       self.next_ticket)
        self.next_ticket += 1
        if cid:
            self.executed[cid] = ex
            if len(self.executed) > REMEMBERED_ORDERS:
                self.executed.popitem(last=False)
        return ex

    def _reject(
        self, cid: int, symbol: int, side: int, volume: Decimal, code: Retcode, why: str
    ) -> Execution:
        ts = (self.quote(symbol) or (0, None, None))[0]
        zero = Decimal(0)
        return Execution(cid, symbol, side, volume, zero, zero, zero, ts, code, why)


def _outcome(ex: Execution) -> Outcome:
    done = ex.retcode == Retcode.DONE
    state = "FILLED" if done else "REJECTED"
    tickets = (ex.ticket,) if done else ()
    volume = ex.volume if done else ZERO
    return Outcome(ex.client_order_id, ex.symbol, ex.side, state, int(ex.retcode), volume, ex.price, tickets,
                   ex.reason)  # fmt: skip


def _deal(ex: Execution) -> Deal:
    reason = {"sl": 4, "tp": 5}.get(ex.reason, 3)
    return Deal(ex.ticket, ex.ticket, 0, ex.symbol, ex.side, 0, ex.volume, ex.price, ex.commission,
                ex.realized_pnl, 0, ex.client_order_id, reason, ex.ts_ns // 1_000_000)  # fmt: skip


def checked_ledger(d: Any, name: str, specs: dict[int, SymbolSpec]) -> dict[str, Any]:
    """A `Ledger.to_dict` read back from a file, checked for `Ledger.load_dict`: exact
    amounts, symbols of `specs`, open positions of lots all on one side. Raises ValueError
    naming the first bad field."""
    d = want_dict(d, name, {"balance", "positions"})
    want_decimal(d["balance"], f"{name}.balance")
    if type(d["positions"]) is not dict:
        raise ValueError(f"{name}.positions: not an object")
    for key, pos in d["positions"].items():
        symbol = int(key) if key.isdigit() and len(key) < 10 else -1
        if key != str(_symbol(symbol, f"{name}.positions", specs)):
            raise ValueError(f"{name}.positions: symbol {key!r} is not written as {symbol}")
        at = f"{name}.positions.{key}"
        pos = want_dict(pos, at, {"lots", "sl", "tp"})
        lots = [want_list(lot, f"{at}.lots", 2) for lot in want_list(pos["lots"], f"{at}.lots")]
        sides = {want_decimal(v, f"{at}.lots volume").compare(ZERO) for v, _ in lots}
        for _, price in lots:
            want_decimal(price, f"{at}.lots price")
        if not lots or len(sides) != 1 or 0 in sides:
            raise ValueError(f"{at}.lots: an open position is lots of volume all on one side, not zero")
        for k in ("sl", "tp"):
            if pos[k] is not None:
                want_decimal(pos[k], f"{at}.{k}")
    return d


def _symbol(v: Any, name: str, specs: dict[int, SymbolSpec]) -> int:
    if type(v) is not int or v not in specs:
        raise ValueError(f"{name}: symbol {str(v)[:20]!r} is not one of 0..{len(specs) - 1}")
    return v


def _checked_execution(d: Any, specs: dict[int, SymbolSpec]) -> Execution:
    """An `Execution.to_dict` read back from a file, checked."""
    name = "broker.executed"
    d = want_dict(d, name, {"client_order_id", "symbol", "side", "volume", "price", "commission",
                            "realized_pnl", "ts_ns", "retcode", "reason", "ticket"})  # fmt: skip
    if type(d["retcode"]) is not int or d["retcode"] not in set(Retcode):
        raise ValueError(f"{name}: retcode {str(d['retcode'])[:20]!r} is not a Retcode")
    money = {k: want_decimal(d[k], f"{name} {k}") for k in ("volume", "price", "commission", "realized_pnl")}
    return Execution(want_int(d["client_order_id"], f"{name} client id", 1),
                     _symbol(d["symbol"], name, specs), want_int(d["side"], f"{name} side", -1, 1),
                     ts_ns=want_int(d["ts_ns"], f"{name} time"),
                     retcode=Retcode(d["retcode"]), reason=want_str(d["reason"], f"{name} reason"),
                     ticket=want_int(d["ticket"], f"{name} ticket", 0), **money)  # fmt: skip


def _exit_hit(pos: Position, bid: Decimal, ask: Decimal) -> str:
    """"sl" or "tp" if this quote closes the position (a long at the bid, a short at the
    ask), else ""."""
    long = pos.volume > 0
    exit_price = bid if long else ask
    if pos.sl is not None and (exit_price <= pos.sl if long else exit_price >= pos.sl):
        return "sl"
    if pos.tp is not None and (exit_price >= pos.tp if long else exit_price <= pos.tp):
        return "tp"
    return ""
