"""Risk's sizing and limits, one intent at a time (the defects and the properties have
their own files)."""

from __future__ import annotations

from sovereign.core import (
    ORDER_APPROVED,
    ORDER_FILL,
    ORDER_REJECT,
)
from sovereign.model import Reason, TradingState
from tests.helpers import NS, intent, make_risk, quotes_at


def test_risk_sizes_from_the_stop_distance_and_rounds_down_to_the_lot_step() -> None:
    r = make_risk(max_symbol_exposure=100.0, max_gross_exposure=100.0)
    ok, refused = r.on_intents(intent(), quotes_at(1.1000, 1.1002), 1000 * NS)
    assert not refused
    # 100000 * 0.005 = 500 at risk; 0.005 price distance * 100000 per lot = 500 per lot -> 1.00 lot
    assert (ok[0]["kind"], ok[0]["volume"], ok[0]["price"], ok[0]["sl"]) == (
        ORDER_APPROVED,
        1.0,
        1.1002,
        1.0952,
    )
    ok, _ = r.on_intents(intent(risk=0.00333, cid=2, symbol=1), quotes_at(1.1000, 1.1002), 1000 * NS)
    assert ok[0]["volume"] == 0.66  # 0.666 rounded down


def test_risk_caps_size_by_exposure_and_refuses_with_reasons() -> None:
    r = make_risk()
    ok, _ = r.on_intents(intent(), quotes_at(1.1000, 1.1002), 1000 * NS)
    assert ok[0]["volume"] == 0.18  # 20% of 100000 equity / 110020 per lot
    cases = [
        (intent(sl=1.2), quotes_at(1.1, 1.1002), Reason.BAD_STOP),
        (intent(price=1.2), quotes_at(1.1, 1.1002), Reason.PRICE_BAND),
        (intent(), quotes_at(1.1, 1.1002, ts=990 * NS), Reason.STALE_QUOTE),
        (intent(), quotes_at(1.1, 1.1002, ts=0), Reason.NO_QUOTE),
        (intent(symbol=9), quotes_at(1.1, 1.1002), Reason.UNKNOWN_SYMBOL),
        (intent(sl=0.5, risk=1e-6), quotes_at(1.1, 1.1002), Reason.VOLUME_TOO_SMALL),
    ]
    for rec, q, why in cases:
        fresh = make_risk()
        _, refused = fresh.on_intents(rec, q, 1000 * NS)
        assert [w for _, w in refused] == [why], why


def test_gross_exposure_values_other_positions_at_the_last_mark_as_equity_is() -> None:
    r = make_risk(max_symbol_exposure=100.0, max_gross_exposure=1.5)
    held = intent(symbol=0, cid=1)
    held["kind"], held["volume"], held["price"] = ORDER_FILL, 1.0, 1.1002
    r.on_reports(held)
    r.mark(quotes_at(1.1, 1.1002), 1000 * NS)  # equity 99980; symbol 0 worth 1.0 * 100000 * 1.1

    def moved(s: int) -> tuple[int, float, float, int]:  # symbol 0's quote doubled since the mark
        return (1000 * NS, 2.2, 2.2002, 0) if s == 0 else (1000 * NS, 1.1, 1.1002, 0)

    ok, refused = r.on_intents(intent(symbol=1, cid=2), moved, 1000 * NS)
    # Room 1.5 * 99980 - 110000 = 39970 at the mark's bid (not at 2.2, where there is none).
    assert not refused and ok[0]["volume"] == 0.36
    _, refused = r.on_intents(intent(symbol=3, cid=6), moved, 1000 * NS)
    assert [w for _, w in refused] == [Reason.GROSS_EXPOSURE]  # the approved order counts while in flight
    gone = ok.copy()
    gone["kind"] = ORDER_REJECT
    r.on_reports(gone)  # the broker refused it: no longer exposure
    more = held.copy()
    more["client_order_id"], more["volume"] = 3, 0.1
    r.on_reports(more)  # the position changed after the mark: valued at the quote now
    _, refused = r.on_intents(intent(symbol=2, cid=4), moved, 1000 * NS)
    assert [w for _, w in refused] == [Reason.GROSS_EXPOSURE]
    r.mark(quotes_at(1.1, 1.1002), 1000 * NS)
    ok, refused = r.on_intents(intent(symbol=2, cid=5), moved, 1000 * NS)
    assert not refused and ok[0]["volume"] == 0.26  # room 1.5 * 99978 - 1.1 * 110000 = 28967


def test_risk_limits_positions_and_order_rate() -> None:
    r = make_risk(max_open_positions=1, max_orders_per_minute=2)
    ok, _ = r.on_intents(intent(symbol=0), quotes_at(1.1, 1.1002), 1000 * NS)
    fill = ok.copy()
    fill["kind"] = ORDER_FILL
    r.on_reports(fill)
    _, refused = r.on_intents(intent(symbol=1, cid=2), quotes_at(1.1, 1.1002), 1000 * NS)
    assert refused[0][1] == Reason.MAX_POSITIONS
    _, refused = r.on_intents(intent(symbol=0, cid=3), quotes_at(1.1, 1.1002), 1000 * NS)
    assert refused[0][1] == Reason.ALREADY_POSITIONED
    r2 = make_risk(max_orders_per_minute=2)
    for cid in range(3):
        r2.on_intents(intent(symbol=cid, cid=cid), quotes_at(1.1, 1.1002), 1000 * NS)
    assert r2.rejected[Reason.ORDER_RATE] == 1


def test_daily_loss_reduces_until_the_next_day_and_drawdown_halts_and_flattens() -> None:
    r = make_risk(daily_loss_limit=0.01, max_drawdown=0.05)
    day0 = 20000 * 86400 * NS
    r.mark(quotes_at(1.1, 1.1002, day0), day0)
    ok, _ = r.on_intents(intent(), quotes_at(1.1, 1.1002, day0), day0)
    fill = ok.copy()
    fill["kind"] = ORDER_FILL
    r.on_reports(fill)  # long 0.18 at 1.1002
    r.mark(quotes_at(1.04, 1.0402, day0), day0)  # -0.0602 * 18000 = -1083.6: more than 1% lost
    assert r.state is TradingState.REDUCING
    _, refused = r.on_intents(intent(symbol=1, cid=2, price=1.0402), quotes_at(1.04, 1.0402, day0), day0)
    assert refused[0][1] == Reason.REDUCING
    ok, _ = r.on_intents(intent(side=-1, price=1.04, sl=1.05, cid=3), quotes_at(1.04, 1.0402, day0), day0)
    assert ok[0]["volume"] == 0.18 and ok[0]["reason"] == Reason.REDUCING  # a close, not a reversal
    refused = ok.copy()
    refused["kind"] = ORDER_REJECT
    r.on_reports(refused)  # the broker refused the close: the position stays open
    r.mark(quotes_at(1.04, 1.0402, day0 + 86400 * NS), day0 + 86400 * NS)
    assert r.state is TradingState.ACTIVE
    out = r.mark(quotes_at(0.8, 0.8002, day0 + 86400 * NS), day0 + 86400 * NS)
    assert r.state is TradingState.HALTED and "max drawdown" in r.why
    assert len(out) == 1 and (out[0]["side"], out[0]["volume"], out[0]["reason"]) == (
        -1,
        0.18,
        Reason.FLATTEN,
    )
    _, refused = r.on_intents(
        intent(symbol=2, cid=9, price=0.8002), quotes_at(0.8, 0.8002), day0 + 86400 * NS
    )
    assert refused[0][1] == Reason.HALTED
    assert [e["state"] for e in r.events if e["event"] == "trading_state"] == ["REDUCING", "ACTIVE", "HALTED"]


