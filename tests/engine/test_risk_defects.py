"""Risk, sizing and the paper broker where money is counted: one test per defect that a
review proved (issue 19), each failing on the code before its fix."""

from __future__ import annotations

from decimal import Decimal as D
from pathlib import Path

import numpy as np
import pytest

from sovereign.broker.paper import PaperBroker, Retcode
from sovereign.config import ConfigError, from_dict
from sovereign.core import ORDER_DTYPE, ORDER_FILL, ORDER_REJECT, SIGNAL_DTYPE
from sovereign.engine.coordinator import Coordinator
from sovereign.engine.gateway import execute, report_of
from sovereign.engine.risk import Risk
from sovereign.model import Reason, TradingState
from sovereign.symbols import symbol_specs
from tests.helpers import NS, ids, intent, make_risk, quotes_at

DAY = 86_400 * NS
T0 = 20_000 * DAY + 3_600 * NS  # a market time well inside a day


def no_quotes(symbol: int) -> tuple[int, float, float, int]:
    """A fresh quote board: nothing has ticked yet."""
    return (0, 0.0, 0.0, 0)


def fill(orders: np.ndarray, **fields: object) -> np.ndarray:
    """The broker's report that these approved orders filled as approved."""
    out = orders.copy()
    out["kind"] = ORDER_FILL
    for k, v in fields.items():
        out[k] = v
    return out


def holding(r: Risk, symbol: int, volume: float, price: float, cid: int = 900) -> None:
    """Give risk's book a position as a fill report would."""
    rec = intent(symbol=symbol, cid=cid, side=1 if volume > 0 else -1)
    rec["kind"], rec["volume"], rec["price"], rec["sl"], rec["tp"] = ORDER_FILL, abs(volume), price, 0.0, 0.0
    r.on_reports(rec)


def restarted(r: Risk) -> Risk:
    """A new risk process: its state and book from what the old one persisted."""
    fresh = make_risk(**{k: getattr(r.limits, k) for k in r.limits.__dataclass_fields__})
    fresh.load_dict(r.to_dict())
    fresh.ledger.load_dict(r.ledger.to_dict())
    return fresh


# ---- 1, 2: a restart on a fresh quote board


@pytest.mark.parametrize("volume", [1.0, -1.0])
def test_a_restart_with_open_positions_marks_nothing_until_real_quotes_come(volume: float) -> None:
    r = make_risk()
    holding(r, 0, volume, 1.1)
    r.mark(quotes_at(1.1, 1.1002, T0), T0)
    before = (r.state, r.peak, r.equity, r.day, r.day_start)
    again = restarted(r)
    out = again.mark(no_quotes, 0)  # risk's first mark on a fresh board: clock 0, no quotes
    assert len(out) == 0 and (again.state, again.peak, again.equity, again.day, again.day_start) == before
    out = again.mark(lambda s: (T0, 1.1, 1.1002, 0) if s == 1 else (0, 0.0, 0.0, 0), T0)
    assert len(out) == 0 and again.peak == before[1]  # symbol 0 still has no quote: nothing marked
    again.mark(quotes_at(1.1, 1.1002, T0 + NS), T0 + NS)
    assert again.state is TradingState.ACTIVE and again.equity == before[2]


def test_a_restart_keeps_reducing_and_the_day_and_the_day_never_moves_back() -> None:
    r = make_risk(daily_loss_limit=0.01, max_drawdown=0.05)
    holding(r, 0, 1.0, 1.1)
    r.mark(quotes_at(1.1, 1.1002, T0), T0)
    r.mark(quotes_at(1.088, 1.0882, T0), T0)  # -1200: more than 1% of the day lost
    assert r.state is TradingState.REDUCING
    day, start = r.day, r.day_start
    again = restarted(r)
    again.mark(no_quotes, 0)
    assert (again.state, again.day, again.day_start) == (TradingState.REDUCING, day, start)
    again.mark(quotes_at(1.088, 1.0882, T0 - DAY), T0 - DAY)  # a quote stamped a day earlier
    assert (again.state, again.day, again.day_start) == (TradingState.REDUCING, day, start)
    again.mark(quotes_at(1.088, 1.0882, T0 + DAY), T0 + DAY)
    assert again.state is TradingState.ACTIVE and again.day == day + 1


# ---- 3, 4: orders approved and not reported yet


@pytest.mark.parametrize("batches", [1, 3])
def test_limits_count_approved_orders_that_have_not_filled(batches: int) -> None:
    r = Risk(from_dict({}), symbol_specs(from_dict({}), 30), ids())
    intents = np.concatenate([intent(symbol=s, cid=s + 1) for s in range(30)])
    approved = []
    for part in np.array_split(intents, batches):
        ok, _ = r.on_intents(part, quotes_at(1.1, 1.1002, T0), T0)
        approved.append(ok)
    ok = np.concatenate(approved)
    assert len(ok) <= r.limits.max_open_positions
    gross = float((ok["volume"] * 100_000 * ok["price"]).sum())
    assert gross <= r.limits.max_gross_exposure * 100_000


def test_a_close_in_flight_blocks_the_next_intent_until_its_report() -> None:
    r = make_risk()
    holding(r, 0, 0.18, 1.1)
    close = r.flatten(0, quotes_at(1.1, 1.1002, T0), T0)
    assert len(close) == 1
    _, refused = r.on_intents(intent(side=-1, price=1.1, sl=1.105, cid=2), quotes_at(1.1, 1.1002, T0), T0)
    assert [w for _, w in refused] == [Reason.IN_FLIGHT]
    r.on_reports(fill(close, price=1.1))
    ok, _ = r.on_intents(intent(side=-1, price=1.1, sl=1.105, cid=3), quotes_at(1.1, 1.1002, T0), T0)
    assert [(o["side"], o["volume"]) for o in ok] == [(-1, 0.18)]  # not 0.36: the close was counted


def test_in_reducing_a_close_in_flight_cannot_become_a_new_short() -> None:
    r = make_risk(daily_loss_limit=0.01, max_drawdown=0.05)
    holding(r, 0, 0.18, 1.1)
    r.mark(quotes_at(1.1, 1.1002, T0), T0)
    r.mark(quotes_at(1.04, 1.0402, T0), T0)
    assert r.state is TradingState.REDUCING
    r.flatten(0, quotes_at(1.04, 1.0402, T0), T0)
    ok, refused = r.on_intents(intent(side=-1, price=1.04, sl=1.05, cid=2), quotes_at(1.04, 1.0402, T0), T0)
    assert len(ok) == 0 and [w for _, w in refused] == [Reason.IN_FLIGHT]


# ---- 5: stops on the exit side, beyond the stops level


@pytest.mark.parametrize("side", [1, -1])
def test_a_stop_inside_the_spread_is_refused_by_risk_and_by_the_broker(side: int) -> None:
    r = make_risk()
    price = 1.1002 if side > 0 else 1.1
    _, refused = r.on_intents(intent(side=side, price=price, sl=1.1001), quotes_at(1.1, 1.1002, T0), T0)
    assert [w for _, w in refused] == [Reason.BAD_STOP]
    b = PaperBroker(D(100_000), symbol_specs(from_dict({}), 1))
    b.on_tick(0, T0, 1.1, 1.1002)
    assert b.market_order(1, 0, side, D("0.18"), sl=1.1001).retcode == Retcode.INVALID_STOPS
    assert not b.positions


def test_the_stops_level_keeps_stops_and_targets_that_far_from_the_exit_side() -> None:
    cfg = from_dict({"symbols": {"stops_level": 10}})  # 10 points = 0.0001
    r = Risk(cfg, symbol_specs(cfg, 4), ids())
    _, refused = r.on_intents(intent(sl=1.09995), quotes_at(1.1, 1.1002, T0), T0)
    assert [w for _, w in refused] == [Reason.BAD_STOP]
    ok, _ = r.on_intents(intent(sl=1.0999, tp=1.10005, cid=2), quotes_at(1.1, 1.1002, T0), T0)
    assert ok[0]["sl"] == 1.0999 and ok[0]["tp"] == 0.0  # a target inside the level is dropped
    b = PaperBroker(D(100_000), symbol_specs(cfg, 1))
    b.on_tick(0, T0, 1.1, 1.1002)
    assert b.market_order(1, 0, 1, D("0.1"), sl=1.09995).retcode == Retcode.INVALID_STOPS
    assert b.market_order(2, 0, 1, D("0.1"), sl=1.0999).retcode == Retcode.DONE


# ---- 6: a positioned symbol without a quote at the broker


def test_the_broker_refuses_an_order_when_a_positioned_symbol_has_no_quote_and_does_not_raise() -> None:
    specs = symbol_specs(from_dict({}), 2)
    b = PaperBroker(D(100_000), specs)
    b.on_tick(0, T0, 1.1, 1.1002)
    b.on_tick(1, T0, 1.2, 1.2002)
    b.market_order(1, 1, 1, D("0.1"))
    restarted_broker = PaperBroker(D(100_000), specs)
    restarted_broker.load_dict(b.to_dict())
    restarted_broker.on_tick(0, T0, 1.1, 1.1002)  # symbol 1 has not ticked since the restart
    ex = restarted_broker.market_order(2, 0, 1, D("0.1"))
    assert ex.retcode == Retcode.PRICE_OFF and "symbol 1" in ex.reason
    assert restarted_broker.equity() == D(100_000) - D(0)  # symbol 1 valued at cost until it ticks


# ---- 7: the quote currency converted to the account currency


def fx() -> tuple[Risk, PaperBroker, list[str]]:
    names = ["EURUSD", "USDJPY", "EURGBP", "EURCHF"]
    cfg = from_dict({"broker": {"commission_per_lot": 0.0},
                     "symbols": {"EURGBP": {"rate": 1.27}, "*JPY": {"point": 0.001}}})  # fmt: skip
    specs = symbol_specs(cfg, names)
    return Risk(cfg, specs, ids()), PaperBroker(D(100_000), specs), names


def test_usdjpy_profit_is_booked_in_the_account_currency() -> None:
    r, b, _ = fx()
    b.on_tick(1, T0, 150.00, 150.00)
    b.market_order(1, 1, 1, D(1))
    b.on_tick(1, T0 + NS, 150.50, 150.50)
    ex = b.market_order(2, 1, -1, D(1))
    assert ex.realized_pnl == D(50_000) / D("150.5")  # 332.23 USD, not 50,000
    assert b.balance == D(100_000) + D(50_000) / D("150.5")
    for rec in (intent(symbol=1, cid=1), intent(symbol=1, cid=2, side=-1)):
        r.on_reports(fill(rec, price=150.0 if rec["side"][0] > 0 else 150.5, volume=1.0, sl=0.0, tp=0.0))
    assert r.ledger.balance == b.balance


def test_usdjpy_intents_are_sized_and_eurgbp_is_capped_in_the_account_currency() -> None:
    r, _, _ = fx()
    q = {1: (T0, 150.0, 150.02, 0), 2: (T0, 0.85, 0.8502, 0), 3: (T0, 0.95, 0.9502, 0)}
    ok, refused = r.on_intents(intent(symbol=1, price=150.02, sl=149.52, cid=1), q.__getitem__, T0)
    # 500 USD at risk over 0.5 JPY a unit: 500 / (0.5 * 100000 / 150.02) = 1.5002 lots, capped at
    # 20% of equity: 20000 / (100000 / 150.02 * 150.02 = 100000 USD a lot) = 0.2 lots
    assert not refused and ok[0]["volume"] == 0.2
    ok, refused = r.on_intents(intent(symbol=2, price=0.8502, sl=0.8452, cid=2), q.__getitem__, T0)
    notional = ok[0]["volume"] * 100_000 * 0.8502 * 1.27
    assert not refused and notional <= 0.2 * 100_000 < notional + 0.01 * 100_000 * 0.8502 * 1.27
    _, refused = r.on_intents(intent(symbol=3, price=0.9502, sl=0.9452, cid=3), q.__getitem__, T0)
    assert [w for _, w in refused] == [Reason.NO_RATE]


def test_the_broker_refuses_a_symbol_without_a_rate() -> None:
    _, b, _ = fx()
    b.on_tick(3, T0, 0.95, 0.9502)
    ex = b.market_order(1, 3, 1, D("0.1"))
    assert ex.retcode == Retcode.REJECT and "rate" in ex.reason and not b.positions


def test_symbol_specs_come_from_per_symbol_tables_and_patterns() -> None:
    cfg = from_dict({"symbols": {"contract_size": 100_000, "USDJPY": {"point": 0.001, "stops_level": 5},
                                 "*JPY": {"point": 0.01}, "XAU*": {"contract_size": 100, "lot_step": 0.1}}})
    specs = symbol_specs(cfg, ["USDJPY", "EURJPY", "XAUUSD", "SIM000"])
    assert (specs[0].point, specs[0].stops_level, specs[1].point) == (D("0.001"), 5, D("0.01"))
    assert (specs[2].contract_size, specs[2].lot_step) == (D(100), D("0.1"))
    assert specs[3].contract_size == D(100_000)
    assert specs[1].rate is None and not specs[1].inverse and not specs[1].convertible  # EURJPY: no rate
    with pytest.raises(ConfigError, match=r"symbols\.EURUSD\.bogus"):
        from_dict({"symbols": {"EURUSD": {"bogus": 1}}})
    with pytest.raises(ConfigError, match="symbol name or glob pattern"):
        from_dict({"symbols": {"EUR\x1b[2J": {"point": 0.1}}})
    with pytest.raises(ConfigError, match="quote_currency"):
        from_dict({"symbols": {"US500": {"quote_currency": "dollars"}}})


# ---- 8: exits and reversals are reduce-only


def test_a_reversal_is_a_reduce_only_close_and_a_separately_sized_open() -> None:
    r = make_risk()
    b = PaperBroker(D(100_000), symbol_specs(from_dict({}), 4))
    b.on_tick(0, T0, 1.1, 1.1002)
    holding(r, 0, 0.18, 1.1002)  # risk's book: long 0.18; the broker's stop already closed it
    ok, refused = r.on_intents(intent(side=-1, price=1.1, sl=1.105, cid=2), quotes_at(1.1, 1.1002, T0), T0)
    assert not refused
    assert [(o["reason"], o["volume"]) for o in ok] == [(Reason.CLOSE, 0.18), (Reason.OK, 0.18)]
    results = [execute(b, o) for o in ok]
    assert [ex.retcode for ex in results] == [Retcode.POSITION_CLOSED, Retcode.DONE]
    assert b.ledger.volume(0) == D("-0.18")  # short 0.18, not 0.36


def test_an_exit_in_reducing_finds_nothing_to_close_and_opens_nothing() -> None:
    r = make_risk(daily_loss_limit=0.01, max_drawdown=0.05)
    holding(r, 0, 0.18, 1.1)
    r.mark(quotes_at(1.1, 1.1002, T0), T0)
    r.mark(quotes_at(1.04, 1.0402, T0), T0)
    b = PaperBroker(D(100_000), symbol_specs(from_dict({}), 4))
    b.on_tick(0, T0, 1.04, 1.0402)  # the broker has no position: its stop fired
    ok, _ = r.on_intents(intent(side=-1, price=1.04, sl=1.05, cid=2), quotes_at(1.04, 1.0402, T0), T0)
    assert [o["reason"] for o in ok] == [Reason.REDUCING]
    assert execute(b, ok[0]).retcode == Retcode.POSITION_CLOSED and not b.positions


def test_a_close_is_clipped_to_the_broker_position_and_needs_no_margin() -> None:
    b = PaperBroker(D(1_000), symbol_specs(from_dict({}), 1))
    b.on_tick(0, T0, 1.1, 1.1002)
    assert b.market_order(1, 0, 1, D("0.5")).retcode == Retcode.DONE  # margin 550 of 1000
    b.on_tick(0, T0 + NS, 1.095, 1.0952)  # -250: margin now exceeds equity... almost
    b.on_tick(0, T0 + NS, 1.08, 1.0802)  # equity 0: margin short
    ex = b.market_order(2, 0, -1, D("0.8"), reduce_only=True)
    assert ex.retcode == Retcode.DONE and ex.volume == D("0.5") and not b.positions


# ---- 10, 11: resume and conviction


def test_resume_from_reducing_keeps_the_peak_and_from_halted_says_it_rebases() -> None:
    r = make_risk(daily_loss_limit=0.01, max_drawdown=0.05)
    holding(r, 0, 1.0, 1.1)
    r.mark(quotes_at(1.15, 1.1502, T0), T0)  # peak 105000
    r.mark(quotes_at(1.135, 1.1352, T0 + 1), T0 + 1)  # 103500: a 1.4% loss on the day
    assert r.state is TradingState.REDUCING and r.peak == D("105000")
    did = r.resume()
    assert r.peak == D("105000") and "peak stays" in did and r.state is TradingState.ACTIVE
    r.mark(quotes_at(1.09, 1.0902, T0 + 2), T0 + 2)  # 99000: 5.7% below the true peak
    assert r.state is TradingState.HALTED
    did = r.resume()
    assert "re-based" in did and r.peak == r.equity


def test_conviction_never_multiplies_the_risk_per_trade() -> None:
    cfg = from_dict({})
    coord = Coordinator(cfg, ids())
    sig = np.zeros(10, SIGNAL_DTYPE)
    sig["ts_ns"], sig["agent"], sig["side"], sig["conviction"] = T0, np.arange(10), 1, 0.9
    sig["timeframe_s"], sig["entry"], sig["stop"], sig["target"] = 60, 1.1002, 1.0952, 1.12
    out = coord.on_signals(sig)
    assert len(out) == 1 and out[0]["conviction"] == 1.0 and out[0]["risk"] == cfg.risk.risk_per_trade
    r = make_risk(max_symbol_exposure=100.0, max_gross_exposure=100.0)
    ok, _ = r.on_intents(intent(risk=0.025), quotes_at(1.1, 1.1002, T0), T0)
    assert ok[0]["volume"] == 1.0  # as at 0.005: 500 at risk over 0.005 * 100000 a lot
    for bad in (float("nan"), 0.0, -0.01):
        _, refused = make_risk().on_intents(intent(risk=bad), quotes_at(1.1, 1.1002, T0), T0)
        assert [w for _, w in refused] == [Reason.BAD_INTENT]


# ---- the stale guard by the wall clock, and reports


def test_a_stalled_feed_makes_every_quote_stale() -> None:
    r = make_risk()
    r.set_feed_stalled(True)
    _, refused = r.on_intents(intent(), quotes_at(1.1, 1.1002, T0), T0)
    assert [w for _, w in refused] == [Reason.STALE_QUOTE]
    r.set_feed_stalled(False)
    ok, _ = r.on_intents(intent(cid=2), quotes_at(1.1, 1.1002, T0), T0)
    assert len(ok) == 1


def test_a_lost_order_stops_counting_and_a_rejected_one_too() -> None:
    r = make_risk(max_open_positions=1)
    ok, _ = r.on_intents(intent(), quotes_at(1.1, 1.1002, T0), T0)
    _, refused = r.on_intents(intent(symbol=1, cid=2), quotes_at(1.1, 1.1002, T0), T0)
    assert [w for _, w in refused] == [Reason.MAX_POSITIONS]
    r.forget([int(ok[0]["client_order_id"])])
    assert not r.in_flight and r.events[-1]["event"] == "order_lost"
    ok, _ = r.on_intents(intent(symbol=1, cid=3), quotes_at(1.1, 1.1002, T0), T0)
    rejected = ok.copy()
    rejected["kind"] = ORDER_REJECT
    r.on_reports(rejected)
    assert not r.in_flight


def test_in_flight_orders_survive_a_restart_of_risk() -> None:
    r = make_risk(max_open_positions=1)
    r.on_intents(intent(), quotes_at(1.1, 1.1002, T0), T0)
    again = restarted(r)
    _, refused = again.on_intents(intent(symbol=1, cid=2), quotes_at(1.1, 1.1002, T0), T0)
    assert [w for _, w in refused] == [Reason.MAX_POSITIONS]


def test_an_exit_report_is_the_report_risk_books() -> None:
    b = PaperBroker(D(100_000), symbol_specs(from_dict({}), 1))
    b.on_tick(0, T0, 1.1, 1.1002)
    ex = b.market_order(5, 0, 1, D("0.1"), sl=1.09)
    rec = np.array([report_of(ex, None)], ORDER_DTYPE)
    assert rec["kind"][0] == ORDER_FILL and rec["volume"][0] == 0.1


def test_a_backtest_converts_a_fixed_rate_symbol_and_refuses_one_at_1_over_price() -> None:
    from sovereign.ledger import same_book
    from sovereign.market.sim import simulate_ticks
    from sovereign.research.backtest import Backtest

    cfg = from_dict({"symbols": {"EURGBP": {"rate": 1.27}}})
    bt = Backtest(cfg, ["EURGBP", "EURUSD"], "ticks")
    bt.feed(simulate_ticks(2, 60_000, seed=3))
    assert bt.broker.ledger.balance != D(100_000)  # it traded
    assert same_book(bt.risk.ledger.to_dict(), bt.broker.ledger.to_dict())
    with pytest.raises(ConfigError, match=r"USDJPY converts to USD at 1/price"):
        Backtest(from_dict({}), ["USDJPY"], "ticks")


# ---- 12: a paper fill never at a quote older than the decision's


def test_a_paper_order_waits_for_the_ticks_its_decision_saw(tmp_path: Path) -> None:
    import time

    from sovereign.config import Config
    from sovereign.core import ORDER_APPROVED, OrderRing
    from sovereign.engine.gateway import BrokerLoop
    from tests.helpers import quoted_gateway, ring_name

    store, gw, ticks = quoted_gateway(tmp_path, Config(), 4)
    s, last = int(ticks["symbol"][-1]), int(ticks["ts_ns"][-1])
    later = ticks[-1:].copy()  # the quote risk decided on: on the board, not yet at the broker
    later["ts_ns"], later["bid"], later["ask"] = last + NS, later["bid"] + 0.01, later["ask"] + 0.01
    order = intent(price=float(later["ask"][0]), sl=0.0, tp=0.0, cid=71, symbol=s)
    order["kind"], order["volume"], order["ts_ns"] = ORDER_APPROVED, 0.1, last + NS
    pushed: list[np.ndarray] = []
    with OrderRing.create(ring_name("ap"), 64) as approved:
        loop = BrokerLoop(gw, approved, lambda r: pushed.append(r) if len(r) else None, None, position=0)
        loop.clock_ns = last
        loop.start()
        approved.push(order)
        time.sleep(0.05)  # the broker side takes the order before the feed gives it the batch
        loop.give(0, later)
        while not pushed and loop.is_alive():
            time.sleep(0.001)
        loop.finish()
        loop.join(30)
    loop.check()
    store.close()
    assert pushed[0]["client_order_id"][0] == 71 and pushed[0]["price"][0] == later["ask"][0]


@pytest.mark.parametrize("raw", [{"symbols": {"overrides": {"a": 1}}}, {"symbols": {"overrides": 3}},
                                 {"symbols": {"EURUSD": {"overrides": {"X": {}}}}}])  # fmt: skip
def test_malformed_symbol_tables_are_config_errors(raw: dict) -> None:
    with pytest.raises(ConfigError, match="config key symbols"):
        from_dict(raw)
