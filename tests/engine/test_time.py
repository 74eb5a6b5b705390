"""Time a decade brings: risk's day in a configured zone across daylight saving and leap
days, market times past 2038 and in 2100 from the feed to the CLI, weekends and holidays
(no stale alarm while the market is shut, no bars for the closed hours), and a wall clock
stepped an hour either way by NTP (durations are on the monotonic clock)."""

from __future__ import annotations

import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import orjson
import pytest

from sovereign.config import Config, from_dict
from sovereign.core import ORDER_FILL, TICK_DTYPE, AgentPool
from sovereign.engine.risk import Risk, apply_command
from sovereign.engine.runtime import RUNNING, Heartbeats
from sovereign.engine.worker import FLUSH_GRACE_NS, BarClock
from sovereign.market.calendar import CLOSED, LIVE, STALLED, FeedWatch, MarketCalendar, day_date
from sovereign.market.feeds import Feed
from sovereign.model import Reason, TradingState
from sovereign.state.store import StateStore
from tests.helpers import NS, intent, make_risk, quotes_at, ticks
from tests.ops.test_ops import sov


def utc(text: str) -> int:
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()) * NS


def reducing(r: Risk, t: int) -> None:
    """Risk at market time t, long 0.18 lots that lost more than the day's 1%: REDUCING."""
    r.mark(quotes_at(1.1, 1.1002, t), t)
    ok, _ = r.on_intents(intent(), quotes_at(1.1, 1.1002, t), t)
    filled = ok.copy()
    filled["kind"] = ORDER_FILL
    r.on_reports(filled)
    r.mark(quotes_at(1.04, 1.0402, t), t)
    assert r.state is TradingState.REDUCING


def state_at(r: Risk, when: str) -> TradingState:
    t = utc(when)
    r.mark(quotes_at(1.04, 1.0402, t), t)
    return r.state


# ---- risk's day


@pytest.mark.parametrize(
    ("monday", "last", "first"),
    [  # the Mondays after the changes of 2027: New York 17:00 is 21:00 UTC in summer, 22:00 in winter
        ("2027-03-15T12:00:00", "2027-03-15T20:59:59", "2027-03-15T21:00:00"),
        ("2027-11-08T12:00:00", "2027-11-08T21:59:59", "2027-11-08T22:00:00"),
    ],
)
def test_the_daily_loss_day_turns_at_17_00_new_york_across_daylight_saving(monday: str, last: str,
                                                                          first: str) -> None:  # fmt: skip
    ny = make_risk(daily_loss_limit=0.01, day_timezone="America/New_York", day_start="17:00")
    reducing(ny, utc(monday))
    assert state_at(ny, last) is TradingState.REDUCING
    assert state_at(ny, first) is TradingState.ACTIVE and ny.why == "a new trading day"
    assert str(day_date(ny.day)) == first[:8] + f"{int(first[8:10]) + 1:02d}"  # named by the day it ends on
    # The default keeps the UTC day risk always had: reduced on until midnight UTC.
    plain = make_risk(daily_loss_limit=0.01)
    reducing(plain, utc(monday))
    assert state_at(plain, first) is TradingState.REDUCING
    assert state_at(plain, monday[:10] + "T23:59:59") is TradingState.REDUCING
    next_day = f"{monday[:8]}{int(monday[8:10]) + 1:02d}T00:00:00"
    assert state_at(plain, next_day) is TradingState.ACTIVE and plain.day == utc(next_day) // (86_400 * NS)


@pytest.mark.parametrize(
    ("zone", "start", "turns"),
    [("UTC", "00:00", ["2028-02-29T00:00:00", "2028-03-01T00:00:00"]),
     ("America/New_York", "17:00", ["2028-02-28T22:00:00", "2028-02-29T22:00:00"])],
)  # fmt: skip
def test_a_leap_day_is_a_trading_day_of_its_own(zone: str, start: str, turns: list[str]) -> None:
    r = make_risk(daily_loss_limit=0.01, day_timezone=zone, day_start=start)
    reducing(r, utc("2028-02-28T12:00:00"))
    days = [r.day]
    for t in turns:
        r.state = TradingState.REDUCING  # a loss on each day (how, the test above shows)
        r.mark(quotes_at(1.04, 1.0402, utc(t) - NS), utc(t) - NS)
        assert r.state is TradingState.REDUCING
        assert state_at(r, t) is TradingState.ACTIVE
        days.append(r.day)
    assert days == [days[0], days[0] + 1, days[0] + 2]
    assert str(day_date(days[1])) == "2028-02-29"


def test_a_reload_moves_the_day_to_the_new_zone() -> None:
    r = make_risk(daily_loss_limit=0.01)
    reducing(r, utc("2027-06-14T12:00:00"))
    limits = from_dict({"risk": {"daily_loss_limit": 0.01, "day_timezone": "America/New_York",
                                 "day_start": "17:00"}}).risk  # fmt: skip
    apply_command(r, ("reload", limits), quotes_at(1.04, 1.0402), utc("2027-06-14T12:00:00"))
    assert state_at(r, "2027-06-14T21:00:00") is TradingState.ACTIVE


# ---- past 2038, and 2100


@pytest.mark.parametrize("start", ["2039-06-17T20:59:00", "2100-02-28T23:59:00"])
def test_market_times_past_2038_through_the_feed_the_pool_and_risk(start: str) -> None:
    assert TICK_DTYPE["ts_ns"] == np.dtype("<i8")
    feed = Feed(from_dict({"feed": {"symbols": 3, "start": start, "tick_interval_s": 0.5}}))
    got = np.concatenate([feed.next(512) for _ in range(4)])
    assert len(got) == 2048 and int(got["ts_ns"][0]) >= utc(start) and np.all(np.diff(got["ts_ns"]) >= 0)
    assert feed.clock_ns == int(got["ts_ns"][-1])
    pool = AgentPool()
    for s in range(3):
        pool.add_agent(s, 60)
    assert pool.on_ticks(got).dtype.names and pool.stats()["ticks"] == 2048
    assert sum(pool.stats()["rejected"].values()) == 0
    pool.flush(int(got["ts_ns"][-1]) + 120 * NS)
    assert pool.agent_state(0)["bars"] >= 4  # minutes of 2039 or of 2100 (past Feb 28: no 29th)
    r = make_risk(day_timezone="America/New_York", day_start="17:00")
    last = int(got["ts_ns"][-1])
    r.mark(quotes_at(1.1, 1.1002, last), last)
    named = datetime.fromtimestamp(last // NS, timezone.utc)
    assert str(day_date(r.day)) == ("2039-06-18" if named.year == 2039 else "2100-03-01")


def test_orders_of_2039_and_2100_show_their_dates_in_the_cli(tmp_path: Path) -> None:
    state = tmp_path / "state"
    times = {1: utc("2039-01-19T03:14:08"), 2: utc("2100-03-01T17:00:00")}  # 2038's 32-bit end, plus 1 s
    with StateStore(state) as st:
        st.write(lambda t: (
            t.put("meta", "symbols", ["EURUSD"]),
            *(t.put("orders", cid, {"client_order_id": cid, "state": "FILLED", "symbol": 0, "side": 1,
                                    "ts_ns": ts, "volume": 0.1, "price": 1.1})
              for cid, ts in times.items()),
        ))  # fmt: skip
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[system]\nstate_dir = "{state}"\n')
    shown = sov("orders", config=cfg).stdout
    assert "2039-01-19 03:14:08" in shown and "2100-03-01 17:00:00" in shown
    rows = orjson.loads(sov("orders", "--json", config=cfg).stdout)
    assert {r["client_order_id"]: r["ts_ns"] for r in rows} == times


# ---- weekends and holidays


def friday_then_sunday() -> np.ndarray:
    """A tick each 10 s from Friday 2027-01-08 21:50 to the close (22:00 UTC), then from
    Sunday's open at 22:00 New York winter time, two minutes of them."""
    start = utc("2027-01-08T21:50:00")
    friday = [(start + k * 10 * NS, 1.1 + k * 1e-5, 1.1002 + k * 1e-5) for k in range(60)]
    sunday = [(utc("2027-01-10T22:00:05") + k * 10 * NS, 1.2, 1.2002) for k in range(13)]
    return ticks(friday + sunday)


def test_a_weekend_gap_makes_no_bars_for_the_closed_hours() -> None:
    data = friday_then_sunday()
    pool = AgentPool()
    pool.add_agent(0, 60)
    pool.on_ticks(data[:60])
    assert pool.agent_state(0)["bars"] == 9  # 21:50 .. 21:58 closed, 21:59 open
    pool.on_ticks(data[60:])
    # The first Sunday tick closed Friday's 21:59 bar and opened 22:00: two minutes of Sunday
    # make two bars; 2,880 flat minutes of weekend make none.
    assert pool.agent_state(0)["bars"] == 9 + 1 + 2
    assert pool.stats()["rejected"]["late"] == 0


def test_the_weeks_last_bar_closes_at_fridays_close_not_at_sundays_first_tick() -> None:
    data = friday_then_sunday()
    now = [10**12]
    bar_clock = BarClock(Config(), clock=lambda: now[0])
    pool = AgentPool()
    pool.add_agent(0, 60)
    pool.on_ticks(data[:60])
    clock = int(data["ts_ns"][59])  # 21:59:50, the gateway's clock: silent from here
    pool.flush(bar_clock.cut(clock))
    for silent_s in (1, 11):  # by the estimate 21:59:51, 22:00:01: the bar may yet take a tick
        now[0] = 10**12 + silent_s * NS
        pool.flush(bar_clock.cut(clock))
        assert pool.agent_state(0)["bars"] == 9
    assert clock - FLUSH_GRACE_NS < utc("2027-01-08T22:00:00")  # the gateway's clock alone: open till Sunday
    now[0] = 10**12 + 12 * NS  # 22:00:02: the market shut, the grace passed
    assert bar_clock.cut(clock) == utc("2027-01-08T22:00:00")
    pool.flush(bar_clock.cut(clock))
    assert pool.agent_state(0)["bars"] == 10
    now[0] += 48 * 3600 * NS  # all weekend: nothing more closes, nothing is made
    pool.flush(bar_clock.cut(clock))
    assert pool.agent_state(0)["bars"] == 10
    pool.on_ticks(data[60:])  # Sunday: the next bar opens at the first tick
    assert pool.agent_state(0)["bars"] == 12 and pool.stats()["rejected"]["late"] == 0


def test_risk_refuses_while_the_market_is_closed_and_journals_no_stall() -> None:
    r = make_risk()
    t = utc("2027-01-08T21:59:58")
    apply_command(r, ("feed", CLOSED), quotes_at(1.1, 1.1002, t), t)
    _, refused = r.on_intents(intent(), quotes_at(1.1, 1.1002, t), t)
    assert [w for _, w in refused] == [Reason.MARKET_CLOSED] and r.account()["feed"] == CLOSED
    apply_command(r, ("feed", LIVE), quotes_at(1.1, 1.1002, t), t)
    ok, _ = r.on_intents(intent(cid=2), quotes_at(1.1, 1.1002, t), t)
    assert len(ok) == 1
    _, answer = apply_command(r, ("feed", STALLED), quotes_at(1.1, 1.1002, t), t)
    assert "feed stalled" in answer["did"]
    apply_command(r, ("feed", False), quotes_at(1.1, 1.1002, t), t)  # a recording from before the calendar
    assert [e["event"] for e in r.events] == ["market_closed", "market_open", "feed_stalled", "feed_back"]
    assert r.state is TradingState.ACTIVE  # no halt, no reduce


# ---- a wall clock stepped by NTP


@pytest.mark.parametrize("step_s", [3600, -3600])
def test_a_stepped_wall_clock_fires_no_stale_guard_no_bar_and_no_hung_heartbeat(
    monkeypatch: pytest.MonkeyPatch, step_s: int
) -> None:
    """The system's clocks as built for a live run (monotonic by default), the wall clock
    stepped by an hour after they started: the feed stays live, no bar closes early, and a
    heartbeat is as young as it is."""
    watch = FeedWatch(MarketCalendar(Config().market), start_ns=time.time_ns())
    bar_clock = BarClock(Config())
    hb = Heartbeats(f"sov-test-hb-{uuid.uuid4().hex[:12]}", 1)
    try:
        market = utc("2027-01-06T12:00:00")  # a Wednesday
        watch.moved(market)
        cut = bar_clock.cut(market)
        wall, wall_ns = time.time(), time.time_ns()
        monkeypatch.setattr(time, "time", lambda: wall + step_s)
        monkeypatch.setattr(time, "time_ns", lambda: wall_ns + step_s * NS)
        hb.beat(0, RUNNING)
        assert watch.state(5.0) == LIVE and abs(watch.market_now() - market) < NS
        assert bar_clock.cut(market) - cut < NS
        assert abs(time.monotonic_ns() - int(hb.slots[0]["beat_ns"])) < NS  # what the supervisor ages
    finally:
        hb.close()


@pytest.mark.parametrize("step_s", [3600, -3600])
def test_a_paced_feed_keeps_its_pace_when_the_wall_clock_steps(monkeypatch: pytest.MonkeyPatch,
                                                               step_s: int) -> None:  # fmt: skip
    feed = Feed(from_dict({"feed": {"symbols": 2, "pace": "realtime", "start": "2027-01-06T12:00:00"}}))
    feed.next(4096)  # the pace starts at the first tick
    wall_ns = time.time_ns()
    monkeypatch.setattr(time, "time_ns", lambda: wall_ns + step_s * NS)
    released = len(feed.next(4096))
    assert released < 10 and feed.due_in() < 2.0  # a second's ticks at most; not an hour's, nor a wait of one
