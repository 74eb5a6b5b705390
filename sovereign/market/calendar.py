"""When the market trades, which trading day a market time is in, and how long a silent
feed has been silent in market time.

Days: a day starts at a wall time in a time zone (risk's day: risk.day_start in
risk.day_timezone; the FX day: 17:00 New York) and follows that zone's daylight saving.
A day is named by the date it ends on, as FX names its value days (the day that starts
Monday 17:00 New York is Tuesday's); a day that starts at midnight by its own date, so
UTC days keep the number they always had: market ns // 86,400 s. A day that starts in
an hour the clocks skip starts when the clocks reach it (03:00 for a 02:30 start); in an
hour they repeat, at its first pass.

The FX week (market.hours = "fx"): from Sunday 17:00 to Friday 17:00 New York (22:00 UTC
in winter, 21:00 in summer), a trading day being open when it is Monday to Friday and
not one of market.holidays ("12-25": the day ending Dec 25 at 17:00 is shut).

Durations never come from the wall clock, which NTP may step by an hour either way:
FeedWatch estimates the market time now from the newest tick time plus the monotonic
time since the feed last moved.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import date, datetime, timedelta, timezone, tzinfo
from zoneinfo import ZoneInfo

from sovereign.config import FeedConfig, MarketConfig

NS = 1_000_000_000
DAY_S = 86_400
DAY_NS = DAY_S * NS
EPOCH = date(1970, 1, 1)
FX_DAY_START = "17:00"  # New York: where FX closes the day and the week
LIVE, STALLED, CLOSED = "live", "stalled", "closed"  # how the whole feed stands (FeedWatch)
# A silence is CLOSED only once it is this much market time long: a feed that ticks through
# the close (a simulated market that runs 24/7) is not called closed between two ticks.
CLOSED_AFTER_NS = NS


def zone(name: str) -> tzinfo:
    """An IANA time zone; "UTC" needs no time zone database."""
    return timezone.utc if name == "UTC" else ZoneInfo(name)


class Days:
    """Days that start at `start` ("HH:MM", wall time) in time zone `zone_name`, each named
    by a key: the date it ends on (its own date when it starts at midnight), as days since
    1970-01-01."""

    def __init__(self, zone_name: str, start: str = "00:00"):
        self.zone = zone(zone_name)
        hours, minutes = (int(x) for x in start.split(":"))
        offset = timedelta(hours=hours, minutes=minutes)
        # The wall time moved so that the day's start lands on the next midnight.
        self.shift = timedelta(days=1) - offset if offset else timedelta(0)
        self.plain_utc = zone_name == "UTC" and not offset
        self._starts: dict[int, int] = {}  # key -> its first instant, ns (facts: never change)

    def key(self, ts_ns: int) -> int:
        """The day market time `ts_ns` is in."""
        if self.plain_utc:
            return ts_ns // DAY_NS
        s = ts_ns // NS
        wall = datetime.fromtimestamp(s, self.zone)
        if not wall.fold:
            return self._named(wall)
        # The clocks went back and show an hour again: a day that began in its first pass
        # stays begun. The first pass ended at the last second before this run of fold=1.
        lo, hi = s - 4 * 3600, s
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if datetime.fromtimestamp(mid, self.zone).fold:
                hi = mid
            else:
                lo = mid
        return max(self._named(wall), self._named(datetime.fromtimestamp(lo, self.zone)))

    def _named(self, wall: datetime) -> int:
        return ((wall.replace(tzinfo=None) + self.shift).date() - EPOCH).days

    def start_ns(self, key: int) -> int:
        """The first instant of day `key`, ns."""
        known = self._starts.get(key)
        if known is not None:
            return known
        # The day named key starts within a day and a half of key's UTC midnight (offsets
        # are -12 h to +14 h): find the first second that is in it or later.
        lo, hi = (key - 2) * DAY_S, (key + 2) * DAY_S  # key(lo) < key <= key(hi)
        while hi - lo > 1:
            mid = (lo + hi) // 2
            if self.key(mid * NS) >= key:
                hi = mid
            else:
                lo = mid
        if len(self._starts) > 64:
            self._starts.clear()
        self._starts[key] = hi * NS
        return hi * NS


def day_date(key: int) -> date:
    return EPOCH + timedelta(days=key)


class MarketCalendar:
    """When the market trades: always, or the FX week less the configured holidays."""

    def __init__(self, config: MarketConfig):
        self.always = config.hours == "always"
        self.days = Days(config.timezone, FX_DAY_START)
        self.holidays = frozenset(config.holidays)

    def open_day(self, key: int) -> bool:
        """Whether trading day `key` (Days.key) is open."""
        if self.always:
            return True
        d = day_date(key)
        return d.weekday() < 5 and f"{d.month:02d}-{d.day:02d}" not in self.holidays

    def is_open(self, ts_ns: int) -> bool:
        return self.always or self.open_day(self.days.key(ts_ns))

    def open_ns(self, a_ns: int, b_ns: int) -> int:
        """How much of [a_ns, b_ns) the market is open, ns."""
        if self.always:
            return max(0, b_ns - a_ns)
        total, t, key = 0, a_ns, self.days.key(a_ns)
        while t < b_ns:
            end = min(b_ns, self.days.start_ns(key + 1))
            if self.open_day(key):
                total += end - t
            t, key = end, key + 1
        return total

    def closed_since(self, ts_ns: int) -> int | None:
        """When the market last closed, if it is closed at ts_ns (None if open): the start
        of the first shut day of the run of shut days ts_ns is in."""
        key = self.days.key(ts_ns)
        if self.open_day(key):
            return None
        first = key
        while first > key - 366 and not self.open_day(first - 1):
            first -= 1
        return self.days.start_ns(first)


def feed_rate(feed: FeedConfig) -> float:
    """Market seconds a feed goes through per second: a paced feed's speed; 1 otherwise
    (a live feed's; at full speed faster, so a silence's market time is underestimated:
    the stale guard fires later, never earlier, and no bar is closed early)."""
    return feed.speed if feed.pace == "realtime" else 1.0


class FeedWatch:
    """How the whole feed stands, from when its newest tick time last moved by the monotonic
    clock `clock` (ns; injectable for tests):

    - LIVE: ticks come, or have not been missing long;
    - CLOSED: silent for a market second or more, and the calendar has shut the market
      since the last tick (or it was shut then, and the feed has been silent
      stale_after_s): no alarm, and no order can fill;
    - STALLED: silent for stale_after_s of open market: every quote is stale.

    The market time now is estimated as the newest tick time plus the silence times
    `rate` (feed_rate); before any tick, from `start_ns` (the caller's wall clock: a date
    to look up, never a duration)."""

    def __init__(self, calendar: MarketCalendar, rate: float = 1.0, *, start_ns: int = 0,
                 clock: Callable[[], int] = time.monotonic_ns):  # fmt: skip
        self.calendar, self.rate, self.clock = calendar, rate, clock
        self.start_ns = start_ns
        self.newest_ns = 0
        self.moved_at = clock()

    def moved(self, newest_ns: int, at_ns: int | None = None) -> None:
        """The feed's newest tick time is `newest_ns`: if it changed, the feed moved now
        (or at monotonic `at_ns`, when known: a restarted process, by the quote board)."""
        if newest_ns != self.newest_ns:
            self.newest_ns = newest_ns
            self.moved_at = self.clock() if at_ns is None else at_ns

    def silent_ns(self) -> int:
        return max(0, self.clock() - self.moved_at)

    def market_now(self) -> int:
        """The market time now, estimated (see the class)."""
        return (self.newest_ns or self.start_ns) + int(self.silent_ns() * self.rate)

    def state(self, stale_after_s: float) -> str:
        silent = self.silent_ns()
        base = self.newest_ns or self.start_ns
        now = base + int(silent * self.rate)
        cal, stale_ns = self.calendar, int(stale_after_s * NS)
        shut = not cal.is_open(now) and now - base >= CLOSED_AFTER_NS
        if shut and (cal.is_open(base) or silent > stale_ns):
            return CLOSED
        if silent > stale_ns and cal.open_ns(base, now) > stale_ns * self.rate:
            return STALLED
        return LIVE
