"""The shared nouns: what two or more processes name (why an order was refused or sent, the
trading state). Anything here is plain data, with no behaviour that depends on a process."""

from __future__ import annotations

from enum import Enum, IntEnum


class Reason(IntEnum):
    """Why risk refused an intent, or why it sent an order of its own."""

    OK = 0
    HALTED = 1
    REDUCING = 2  # refused: exits only; on an order: an exit made while reducing (reduce-only)
    MAX_POSITIONS = 3
    SYMBOL_EXPOSURE = 4
    GROSS_EXPOSURE = 5
    ORDER_RATE = 6
    PRICE_BAND = 7
    STALE_QUOTE = 8
    NO_QUOTE = 9
    VOLUME_TOO_SMALL = 10
    BAD_STOP = 11
    ALREADY_POSITIONED = 12
    UNKNOWN_SYMBOL = 13
    IN_FLIGHT = 14  # an order for the symbol is approved and not reported yet
    NO_RATE = 15  # no conversion from the symbol's quote currency to the account's
    BAD_INTENT = 16  # a side that is not +1/-1, or a risk fraction that is not a number > 0
    MARKET_CLOSED = 17  # the market calendar has the market shut (a weekend, a holiday)
    NO_SPEC = 18  # an outside venue (MT5) has not sent the symbol's trading specs yet
    FLATTEN = 20  # an order of risk's own: closing everything (reduce-only)
    EXIT_SL = 21  # execution reports: the broker closed at the stop-loss
    EXIT_TP = 22  # ... at the take-profit
    CLOSE = 23  # risk's close of the position an opposite intent reverses (reduce-only)
    BROKER = 30  # the broker refused the order (the report's retcode says why)


# Orders that may only reduce a position: the gateway sends them reduce-only, clipped to
# the broker's position when executed (nothing to close: nothing traded).
REDUCE_ONLY = frozenset({Reason.REDUCING, Reason.FLATTEN, Reason.CLOSE})


def reduce_only(reason: int) -> bool:
    return reason in REDUCE_ONLY


class TradingState(str, Enum):
    ACTIVE = "ACTIVE"
    REDUCING = "REDUCING"
    HALTED = "HALTED"
