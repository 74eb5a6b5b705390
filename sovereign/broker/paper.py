"""PaperBroker: market orders filled on the live tick stream, netting positions, and an
account kept exactly.

Money is Decimal throughout. A float price from the feed becomes Decimal(repr(price)),
the shortest decimal that is that float, so 1.1 stays 1.1. A position keeps its open lots
first-in first-out, so realized P&L is an exact sum (no running average to round). The
quote currency is taken as the account currency. Return codes are MT5's TRADE_RETCODE_*.
Transport-free: the gateway (live) and the backtest drive the same class.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field
from decimal import Decimal
from enum import IntEnum


class Retcode(IntEnum):
    REJECT = 10006
    DONE = 10009
    INVALID_VOLUME = 10014
    INVALID_STOPS = 10016
    NO_MONEY = 10019
    PRICE_OFF = 10021  # no quote for the symbol yet


@dataclass(frozen=True)
class SymbolSpec:
    contract_size: Decimal = Decimal(100_000)
    lot_step: Decimal = Decimal("0.01")
    min_lot: Decimal = Decimal("0.01")
    max_lot: Decimal = Decimal(100)
    point: Decimal = Decimal("0.00001")


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


@dataclass
class Position:
    lots: deque[tuple[Decimal, Decimal]] = field(default_factory=deque)  # (signed volume, price)
    sl: Decimal | None = None
    tp: Decimal | None = None

    @property
    def volume(self) -> Decimal:
        return sum((v for v, _ in self.lots), Decimal(0))


def to_decimal(price: float) -> Decimal:
    return Decimal(repr(float(price)))


class PaperBroker:
    def __init__(self, balance: Decimal, specs: dict[int, SymbolSpec], *,
                 commission_per_lot: Decimal = Decimal(0), slippage_points: int = 0,
                 leverage: Decimal = Decimal(100)):
        self.balance = Decimal(balance)
        self.specs = specs
        self.commission_per_lot = Decimal(commission_per_lot)
        self.slippage_points = slippage_points
        self.leverage = Decimal(leverage)
        self.positions: dict[int, Position] = {}
        self.quotes: dict[int, tuple[int, Decimal, Decimal]] = {}  # symbol -> (ts, bid, ask)

    # ---- market data

    def on_tick(self, symbol: int, ts_ns: int, bid: float, ask: float) -> list[Execution]:
        """Update the quote; close the position at market if its stop or target is hit."""
        b, a = to_decimal(bid), to_decimal(ask)
        self.quotes[symbol] = (ts_ns, b, a)
        pos = self.positions.get(symbol)
        if pos is None or not pos.lots:
            return []
        vol = pos.volume
        exit_price = b if vol > 0 else a  # a long closes at the bid, a short at the ask
        hit = ""
        if pos.sl is not None and (exit_price <= pos.sl if vol > 0 else exit_price >= pos.sl):
            hit = "sl"
        elif pos.tp is not None and (exit_price >= pos.tp if vol > 0 else exit_price <= pos.tp):
            hit = "tp"
        if not hit:
            return []
        return [self._fill(0, symbol, -1 if vol > 0 else 1, abs(vol), None, None, hit)]

    # ---- orders

    def market_order(self, client_order_id: int, symbol: int, side: int, volume: Decimal,
                     sl: float | None = None, tp: float | None = None) -> Execution:
        """Fill a market order at the current quote (ask to buy, bid to sell) plus slippage.
        sl/tp, when given, become the position's (netting: the newest order sets them)."""
        spec = self.specs.get(symbol)
        quote = self.quotes.get(symbol)
        volume = Decimal(volume)
        if spec is None or quote is None:
            return self._reject(client_order_id, symbol, side, volume, Retcode.PRICE_OFF,
                                f"no quote for symbol {symbol}")
        if side not in (1, -1):
            return self._reject(client_order_id, symbol, side, volume, Retcode.REJECT, f"side {side}")
        if not (spec.min_lot <= volume <= spec.max_lot) or volume % spec.lot_step != 0:
            return self._reject(client_order_id, symbol, side, volume, Retcode.INVALID_VOLUME,
                                f"volume {volume} is not a multiple of {spec.lot_step} in "
                                f"[{spec.min_lot}, {spec.max_lot}]")
        _, bid, ask = quote
        dsl = None if sl is None else to_decimal(sl)
        dtp = None if tp is None else to_decimal(tp)
        ref = ask if side > 0 else bid
        if (dsl is not None and (dsl >= ref if side > 0 else dsl <= ref)) or (
            dtp is not None and (dtp <= ref if side > 0 else dtp >= ref)
        ):
            return self._reject(client_order_id, symbol, side, volume, Retcode.INVALID_STOPS,
                                f"sl {sl} / tp {tp} on the wrong side of {ref}")
        if self._margin_after(symbol, side * volume, ref) > self.equity():
            return self._reject(client_order_id, symbol, side, volume, Retcode.NO_MONEY,
                                "not enough free margin")
        return self._fill(client_order_id, symbol, side, volume, dsl, dtp, "")

    # ---- account

    def equity(self) -> Decimal:
        return self.balance + sum((self.unrealized(s) for s in self.positions), Decimal(0))

    def unrealized(self, symbol: int) -> Decimal:
        pos = self.positions.get(symbol)
        if pos is None or not pos.lots:
            return Decimal(0)
        _, bid, ask = self.quotes[symbol]
        mark = bid if pos.volume > 0 else ask
        size = self.specs[symbol].contract_size
        return sum(((mark - p) * v * size for v, p in pos.lots), Decimal(0))

    def margin(self) -> Decimal:
        return sum((self._margin_of(s, p.volume) for s, p in self.positions.items()), Decimal(0))

    # ---- internals

    def _margin_of(self, symbol: int, volume: Decimal, price: Decimal | None = None) -> Decimal:
        if volume == 0:
            return Decimal(0)
        if price is None:
            _, bid, ask = self.quotes[symbol]
            price = (bid + ask) / 2
        return abs(volume) * self.specs[symbol].contract_size * price / self.leverage

    def _margin_after(self, symbol: int, delta: Decimal, price: Decimal) -> Decimal:
        pos = self.positions.get(symbol)
        current = pos.volume if pos else Decimal(0)
        others = self.margin() - self._margin_of(symbol, current)
        return others + self._margin_of(symbol, current + delta, price)

    def _fill(self, cid: int, symbol: int, side: int, volume: Decimal, sl: Decimal | None,
              tp: Decimal | None, reason: str) -> Execution:
        ts, bid, ask = self.quotes[symbol]
        spec = self.specs[symbol]
        price = (ask if side > 0 else bid) + side * self.slippage_points * spec.point
        pos = self.positions.setdefault(symbol, Position())
        direction_before = pos.volume > 0 if pos.lots else None
        realized = Decimal(0)
        left = volume
        while left > 0 and pos.lots and (pos.lots[0][0] > 0) != (side > 0):  # close FIFO
            lot_vol, lot_price = pos.lots[0]
            take = min(left, abs(lot_vol))
            realized += (price - lot_price) * take * spec.contract_size * (1 if lot_vol > 0 else -1)
            left -= take
            if take == abs(lot_vol):
                pos.lots.popleft()
            else:
                pos.lots[0] = (lot_vol + side * take, lot_price)
        if left > 0:
            pos.lots.append((side * left, price))
        if not pos.lots:
            pos.sl = pos.tp = None
        elif (pos.volume > 0) != direction_before or sl is not None or tp is not None:
            pos.sl, pos.tp = sl, tp  # a new or flipped position never inherits the old stops
        commission = self.commission_per_lot * volume
        self.balance += realized - commission
        return Execution(cid, symbol, side, volume, price, commission, realized, ts, Retcode.DONE, reason)

    def _reject(
        self, cid: int, symbol: int, side: int, volume: Decimal, code: Retcode, why: str
    ) -> Execution:
        ts = self.quotes.get(symbol, (0, None, None))[0]
        zero = Decimal(0)
        return Execution(cid, symbol, side, volume, zero, zero, zero, ts, code, why)
