"""What tests/engine/test_risk_properties.py holds risk and the paper broker to, kept apart from
them: a market of random-walk quotes on each symbol's point grid, and a reference book
in exact fractions whose money conversion is written out here by symbol name (not read
from sovereign.symbols), so a conversion wrong in the shared Ledger cannot agree with it."""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass
from decimal import Decimal
from fractions import Fraction
from typing import Any

from sovereign.broker.paper import Execution, Retcode

NAMES = ("EURUSD", "USDJPY", "EURGBP", "EURCHF")  # account USD: quoted in USD, JPY (base USD), GBP, CHF
NO_RATE = 3  # EURCHF: neither currency is the account's and no rate is configured
GBP_RATE = "1.27"  # USD per GBP, the config's fixed rate for EURGBP
POINTS = (Fraction("0.00001"), Fraction("0.001"), Fraction("0.00001"), Fraction("0.00001"))
START = (110_000, 150_000, 85_000, 95_000)  # mid prices in points: 1.1, 150.0, 0.85, 0.95
CONTRACT = 100_000


def frac(x: float | Decimal | str) -> Fraction:
    """The exact value risk and the broker give a float (its shortest repr), or a Decimal."""
    return Fraction(repr(x)) if isinstance(x, float) else Fraction(x)


def to_account(symbol: int, amount: Fraction, price: Fraction) -> Fraction:
    """`amount` in the symbol's quote currency, made at `price`, in USD."""
    if NAMES[symbol] == "EURUSD":
        return amount
    if NAMES[symbol] == "USDJPY":
        return amount / price
    if NAMES[symbol] == "EURGBP":
        return amount * Fraction(GBP_RATE)
    raise AssertionError(f"{NAMES[symbol]} has no rate to USD: nothing should have been traded in it")


def notional(symbol: int, volume: Fraction, price: Fraction) -> Fraction:
    return to_account(symbol, abs(volume) * CONTRACT * price, price)


def config(risk: dict[str, Any], broker: dict[str, Any], eurusd_stops_level: int) -> dict[str, Any]:
    """The raw config (sovereign.config.from_dict) of the market above."""
    return {"risk": risk, "broker": {"initial_balance": 100_000.0, **broker},
            "symbols": {"EURGBP": {"rate": float(GBP_RATE)}, "USDJPY": {"point": 0.001},
                        "EURUSD": {"stops_level": eurusd_stops_level}}}  # fmt: skip


class Market:
    """Each symbol's mid and spread in points, within half and twice its start. Prices are
    on the point grid, as the sim's and MT5's are; or, as a replay of bars makes them
    (sovereign.market.data.bars_to_ticks), the bid on the grid and the ask bid + spread * point
    in floats (1.2068 + 18 * 1e-5 = 1.2069800000000002)."""

    def __init__(self, float_asks: bool = False) -> None:
        self.mid = list(START)
        self.spread = [20] * len(NAMES)
        self.float_asks = float_asks

    def move(self, symbol: int, points: int, spread: int) -> tuple[float, float]:
        lo, hi = START[symbol] // 2, START[symbol] * 2
        self.mid[symbol] = min(hi, max(lo, self.mid[symbol] + points))
        self.spread[symbol] = spread
        return self.quote(symbol)

    def quote(self, symbol: int) -> tuple[float, float]:
        return self.price(symbol, 0), self.price(symbol, self.spread[symbol])

    def price(self, symbol: int, points_above_bid: int) -> float:
        """The float a feed would print for the bid plus some points (negative: below)."""
        bid = self.mid[symbol] - self.spread[symbol] // 2
        if self.float_asks:
            return float(bid * POINTS[symbol]) + points_above_bid * float(POINTS[symbol])
        return float((bid + points_above_bid) * POINTS[symbol])


@dataclass
class ReferenceBook:
    """Netting positions as first-in first-out lots and a USD balance, in fractions."""

    balance: Fraction
    lots: dict[int, deque[list[Fraction]]]

    @classmethod
    def opened(cls, balance: float) -> ReferenceBook:
        return cls(frac(balance), {})

    def volume(self, symbol: int) -> Fraction:
        return sum((v for v, _ in self.lots.get(symbol, ())), Fraction(0))

    def apply(self, ex: Execution) -> Fraction:
        """Book a done execution; returns the P&L it realized in USD (before commission)."""
        if ex.retcode != Retcode.DONE:
            return Fraction(0)
        lots = self.lots.setdefault(ex.symbol, deque())
        price, left, realized = frac(ex.price), frac(ex.volume), Fraction(0)
        while left and lots and (lots[0][0] > 0) != (ex.side > 0):
            take = min(left, abs(lots[0][0]))
            sign = 1 if lots[0][0] > 0 else -1
            realized += (price - lots[0][1]) * take * CONTRACT * sign
            lots[0][0] += ex.side * take
            left -= take
            if not lots[0][0]:
                lots.popleft()
        if left:
            lots.append([ex.side * left, price])
        if not lots:
            del self.lots[ex.symbol]
        realized = to_account(ex.symbol, realized, price)
        self.balance += realized - frac(ex.commission)
        return realized
