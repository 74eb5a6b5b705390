"""The market calendar: the FX week in New York time (daylight saving included), holidays,
days that start at a wall time in a zone, and a silent feed's state on the monotonic clock:
closed while the market is shut (no alarm), stalled only after stale_after_s of open market."""

from __future__ import annotations

from datetime import datetime, timezone

import numpy as np
import pytest

from sovereign.config import ConfigError, MarketConfig, from_dict
from sovereign.market.calendar import (
    CLOSED,
    DAY_NS,
    LIVE,
    NS,
    STALLED,
    Days,
    FeedWatch,
    MarketCalendar,
    day_date,
)


def utc(text: str) -> int:
    """ns since the epoch of a UTC time like '2027-01-08T22:00:00'."""
    return int(datetime.fromisoformat(text).replace(tzinfo=timezone.utc).timestamp()) * NS


FX = MarketCalendar(MarketConfig())


class Clock:
    """A monotonic clock the test moves by hand (ns)."""

    def __init__(self) -> None:
        self.ns = 10**12

    def __call__(self) -> int:
        return self.ns

    def sleep(self, seconds: float) -> None:
        self.ns += int(seconds * NS)


# ---- the FX week


@pytest.mark.parametrize(
    ("closes", "opens"),
    [  # New York 17:00 is 22:00 UTC in winter, 21:00 UTC in summer
        ("2027-01-08T22:00:00", "2027-01-10T22:00:00"),  # EST
        ("2027-07-09T21:00:00", "2027-07-11T21:00:00"),  # EDT
        ("2039-06-17T21:00:00", "2039-06-19T21:00:00"),  # past 2038
        ("2100-03-12T22:00:00", "2100-03-14T21:00:00"),  # 2100: closes in EST, opens in EDT (Mar 14)
    ],
)
def test_fx_trades_sunday_to_friday_17_00_new_york(closes: str, opens: str) -> None:
    close, open_ = utc(closes), utc(opens)
    assert FX.is_open(close - NS) and not FX.is_open(close)
    assert not FX.is_open(open_ - NS) and FX.is_open(open_)
    assert not FX.is_open((close + open_) // 2)
    assert FX.closed_since(open_ - NS) == close and FX.closed_since(open_) is None
    # Of a silence from a second before the close to 3 s after the open, 4 s were open market.
    assert FX.open_ns(close - NS, open_ + 3 * NS) == 4 * NS


def test_holidays_shut_the_fx_day_that_ends_on_them() -> None:
    # Christmas 2026 is a Friday: shut from Thursday's 17:00 New York to Sunday's.
    assert FX.is_open(utc("2026-12-24T21:59:59")) and not FX.is_open(utc("2026-12-24T22:00:00"))
    assert FX.closed_since(utc("2026-12-27T21:59:59")) == utc("2026-12-24T22:00:00")
    assert FX.is_open(utc("2026-12-27T22:00:00"))
    # Christmas 2028 is a Monday: the weekend runs on to Monday's 17:00.
    assert not FX.is_open(utc("2028-12-25T21:59:59")) and FX.is_open(utc("2028-12-25T22:00:00"))
    assert FX.closed_since(utc("2028-12-25T12:00:00")) == utc("2028-12-22T22:00:00")
    # A holiday on a leap day, and a calendar that never shuts.
    leap = MarketCalendar(MarketConfig(holidays=("02-29",)))
    assert not leap.is_open(utc("2028-02-29T12:00:00")) and leap.is_open(utc("2028-02-29T22:00:00"))
    assert leap.is_open(utc("2026-12-25T12:00:00"))
    always = MarketCalendar(MarketConfig(hours="always"))
    saturday = utc("2027-01-09T12:00:00")
    assert always.is_open(saturday) and always.closed_since(saturday) is None
    assert always.open_ns(utc("2027-01-08T00:00:00"), utc("2027-01-11T00:00:00")) == 3 * DAY_NS


# ---- days


def test_utc_midnight_days_keep_the_key_they_always_had() -> None:
    days, zoned = Days("UTC"), Days("UTC", "17:00")
    for ts in np.random.default_rng(7).integers(utc("2000-01-01T00:00:00"), utc("2199-12-31T00:00:00"), 500):
        assert days.key(int(ts)) == int(ts) // DAY_NS
        assert zoned.key(int(ts)) == (int(ts) + 7 * 3600 * NS) // DAY_NS  # 17:00 UTC: named by the next date


@pytest.mark.parametrize(
    ("before", "after", "named"),
    [
        ("2027-03-12T21:59:59", "2027-03-12T22:00:00", "2027-03-13"),  # Friday, EST
        ("2027-03-15T20:59:59", "2027-03-15T21:00:00", "2027-03-16"),  # Monday after the spring change, EDT
        ("2027-11-05T20:59:59", "2027-11-05T21:00:00", "2027-11-06"),  # Friday before the autumn change
        ("2027-11-08T21:59:59", "2027-11-08T22:00:00", "2027-11-09"),  # Monday after it, EST
        ("2028-02-28T21:59:59", "2028-02-28T22:00:00", "2028-02-29"),  # the leap day
        ("2028-02-29T21:59:59", "2028-02-29T22:00:00", "2028-03-01"),
        ("2100-02-28T21:59:59", "2100-02-28T22:00:00", "2100-03-01"),  # 2100 has no Feb 29
    ],
)
def test_a_new_york_17_00_day_turns_at_17_00_new_york_summer_and_winter(before: str, after: str,
                                                                        named: str) -> None:  # fmt: skip
    days = Days("America/New_York", "17:00")
    assert days.key(utc(after)) == days.key(utc(before)) + 1
    assert str(day_date(days.key(utc(after)))) == named
    assert days.start_ns(days.key(utc(after))) == utc(after)


def test_utc_days_around_leap_days_and_2100() -> None:
    days = Days("UTC")
    for date in ("2028-02-29", "2028-03-01", "2100-03-01", "2039-01-01"):
        start = utc(f"{date}T00:00:00")
        assert days.key(start) == days.key(start - 1) + 1 and str(day_date(days.key(start))) == date
    assert days.key(utc("2100-03-01T00:00:00")) - days.key(utc("2100-02-28T00:00:00")) == 1


def test_a_day_start_the_clocks_skip_or_repeat() -> None:
    # 02:30 New York does not exist on 2027-03-14: that day starts when the clocks reach 03:00.
    skipped = Days("America/New_York", "02:30")
    key = skipped.key(utc("2027-03-14T07:00:00"))
    assert key == skipped.key(utc("2027-03-14T06:59:59")) + 1
    assert skipped.start_ns(key) == utc("2027-03-14T07:00:00")
    # 01:30 happens twice on 2027-11-07 (05:30 and 06:30 UTC): the day starts at the first,
    # and the second does not take it back.
    repeated = Days("America/New_York", "01:30")
    first = utc("2027-11-07T05:30:00")
    assert repeated.start_ns(repeated.key(first)) == first
    keys = [repeated.key(first + m * 60 * NS) for m in range(-30, 120)]
    assert keys == sorted(keys) and keys[30] == keys[0] + 1 == keys[-1]


# ---- a silent feed


def test_a_weekend_silence_is_closed_not_stalled_and_a_silent_open_is_stalled() -> None:
    clock = Clock()
    watch = FeedWatch(FX, clock=clock)
    watch.moved(utc("2027-01-08T21:59:58"))  # Friday's last tick
    clock.sleep(1)
    assert watch.state(5.0) == LIVE
    clock.sleep(2)  # 22:00:01 by the estimate: the market has shut since the last tick
    assert watch.state(5.0) == CLOSED
    clock.sleep(47 * 3600)  # all weekend: no stall, no alarm
    assert watch.state(5.0) == CLOSED
    # Sunday 22:00 opens; the broker sends nothing: stalled once 5 s of open market have passed
    # (Friday's last 2 s count).
    clock.ns = clock.ns - watch.silent_ns() + utc("2027-01-10T22:00:02") - utc("2027-01-08T21:59:58")
    assert watch.state(5.0) == LIVE
    clock.sleep(2)
    assert watch.state(5.0) == STALLED
    watch.moved(utc("2027-01-10T22:00:04"))  # ticks again
    assert watch.state(5.0) == LIVE


def test_a_silence_in_the_week_stalls_as_before_and_a_feed_ticking_through_the_weekend_stays_live() -> None:
    clock = Clock()
    watch = FeedWatch(FX, clock=clock)
    watch.moved(utc("2027-01-06T12:00:00"))  # a Wednesday
    clock.sleep(5)
    assert watch.state(5.0) == LIVE
    clock.sleep(0.001)
    assert watch.state(5.0) == STALLED
    # A simulated market runs 24/7: ticks across the close and through Saturday are live.
    t = utc("2027-01-08T21:59:59")
    for _ in range(100):
        watch.moved(t)
        clock.sleep(0.5)
        assert watch.state(5.0) == LIVE
        t += NS // 2
    clock.sleep(5)  # and a silence of a simulated Saturday is closed, not stalled
    assert watch.state(5.0) == CLOSED


def test_always_hours_stall_exactly_as_risk_did_and_a_paced_feed_runs_at_its_speed() -> None:
    clock = Clock()
    watch = FeedWatch(MarketCalendar(MarketConfig(hours="always")), clock=clock)
    watch.moved(utc("2027-01-09T12:00:00"))  # a Saturday: no matter
    clock.sleep(5)
    assert watch.state(5.0) == LIVE
    clock.sleep(0.001)
    assert watch.state(5.0) == STALLED
    paced = FeedWatch(FX, rate=600.0, clock=clock)  # 10 market minutes a second
    paced.moved(utc("2027-01-08T21:00:00"))
    clock.sleep(6.1)  # 61 market minutes: past the close
    assert paced.market_now() == utc("2027-01-08T22:01:00") and paced.state(5.0) == CLOSED


def test_before_any_tick_the_market_time_is_the_start_given() -> None:
    clock = Clock()
    saturday = FeedWatch(FX, start_ns=utc("2027-01-09T12:00:00"), clock=clock)
    wednesday = FeedWatch(FX, start_ns=utc("2027-01-06T12:00:00"), clock=clock)
    clock.sleep(6)
    assert (saturday.state(5.0), wednesday.state(5.0)) == (CLOSED, STALLED)


# ---- configuration


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        ({"market": {"hours": "nyse"}}, "market.hours: a string of 4 characters is not one of 'fx'"),
        ({"market": {"timezone": "Mars/Olympus"}}, "market.timezone: a string of 12 characters is not"),
        ({"market": {"timezone": "../../etc/passwd"}}, "market.timezone: .* is not a time zone"),
        ({"market": {"holidays": ["12-25", "02-30"]}}, "market.holidays: item 2 .* is not a month and day"),
        ({"market": {"holidays": ["1-1"]}}, "market.holidays: item 1 .* is not a month and day"),
        ({"market": {"holidays": "12-25"}}, "market.holidays: expected a list of strings"),
        ({"risk": {"day_timezone": "New York"}}, "risk.day_timezone: .* is not a time zone"),
        ({"risk": {"day_start": "24:00"}}, "risk.day_start: .* is not a time of day like '17:00'"),
        ({"risk": {"day_start": "5pm"}}, "risk.day_start: .* is not a time of day"),
        ({"risk": {"day_start": 17}}, "risk.day_start: expected a string, got 17"),
    ],
)
def test_bad_calendar_config_names_the_key(raw: dict, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        from_dict(raw)


def test_good_calendar_config_and_its_defaults() -> None:
    cfg = from_dict({"market": {"hours": "always", "timezone": "Nowhere/AtAll"},  # "always" uses no zone
                     "risk": {"day_timezone": "America/New_York", "day_start": "17:00"}})  # fmt: skip
    assert (cfg.market.hours, cfg.risk.day_start) == ("always", "17:00")
    default = from_dict({})
    assert (default.market.hours, default.market.timezone, default.market.holidays) == (
        "fx", "America/New_York", ("12-25", "01-01"))
    assert (default.risk.day_timezone, default.risk.day_start) == ("UTC", "00:00")  # the day risk always had
