"""Times as traders' files write them, to int64 ns since the epoch (UTC).

A `TimeReader` reads one file's time column. Dates: ISO 8601 (`2026-01-02T03:04:05.123Z`,
an offset, a space for the T, up to 9 fraction digits), MetaTrader's `2026.01.02 03:04[:05]`,
`2026/01/02`, Dukascopy's day-first `02.01.2026 03:04:05.000` (a `GMT+0200` suffix read as
an offset), and `NN/NN/YYYY`, day-first or month-first as the whole file settles it. A
date without an offset is UTC. Integers are epoch seconds, milliseconds, microseconds or
nanoseconds, the unit fixed by the file's first integer's magnitude; `1767312000.25`
(a fraction) is seconds. What cannot be told apart is refused, never guessed: a compact
date such as 20260102 (epoch seconds in 1970, or 2 January 2026?), an integer too small
to tell its unit, a slash date whose file never has a day above 12.

Every time must lie in [1970-01-01, 2262-04-11T23:47:16.854775807Z], the range int64
nanoseconds cover from the epoch: the core drops a tick before 1970 and numpy overflows
past 2262, so both are refused here with the value that is out of range.
"""

from __future__ import annotations

import re
from collections.abc import Iterable

NS = 1_000_000_000
MAX_NS = 2**63 - 1
# Magnitude classes of epoch integers (a time from 1973 to 2262 falls in exactly one).
UNITS = (
    ("seconds", 10**11, NS),
    ("milliseconds", 10**14, 10**6),
    ("microseconds", 10**17, 10**3),
    ("nanoseconds", 2**63, 1),
)
_LOWER = {"seconds": 0, "milliseconds": 10**11, "microseconds": 10**14, "nanoseconds": 10**17}
_SMALLEST_EPOCH_S = 10**8  # 1973-03-03: an integer below it in seconds could as well be any unit

_CLOCK = (
    r"(?:[T ]\s*(?P<h>\d{1,2}):(?P<mi>\d{2})(?::(?P<s>\d{2})(?:[.,](?P<f>\d{1,9}))?)?)?"
    r"\s*(?P<tz>Z|UTC|GMT|(?:GMT|UTC)?\s*[+-]\d{2}:?\d{2})?"
)
_YEAR_FIRST = re.compile(r"(?P<y>\d{4})(?P<sep>[-./])(?P<a>\d{1,2})(?P=sep)(?P<b>\d{1,2})" + _CLOCK)
_YEAR_LAST = re.compile(r"(?P<a>\d{1,2})(?P<sep>[./])(?P<b>\d{1,2})(?P=sep)(?P<y>\d{4})" + _CLOCK)
_EPOCH = re.compile(r"-?\d+(?:\.\d+)?")
_COMPACT_DATE = re.compile(r"(19|2[0-2])\d\d(0[1-9]|1[0-2])(0[1-9]|[12]\d|3[01])(\d\d\d\d(\d\d)?)?")


def days_from_civil(y: int, m: int, d: int) -> int:
    """Days since 1970-01-01 of a proleptic Gregorian date (H. Hinnant's algorithm)."""
    y -= m <= 2
    era = (y if y >= 0 else y - 399) // 400
    yoe = y - era * 400
    doy = (153 * (m + (-3 if m > 2 else 9)) + 2) // 5 + d - 1
    doe = yoe * 365 + yoe // 4 - yoe // 100 + doy
    return era * 146097 + doe - 719468


_MONTH_DAYS = (31, 29, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31)


def iso(ns: int) -> str:
    """ns as ISO 8601 to the second (for messages)."""
    import numpy as np

    return str(np.datetime64(ns, "ns").astype("datetime64[s]")) + "Z"


def check_range(ns: int, text: str) -> int:
    if ns < 0:
        raise ValueError(f"time {text} is before 1970-01-01, where this system's times start")
    if ns > MAX_NS:
        raise ValueError(f"time {text} is past 2262-04-11, the last time int64 nanoseconds hold")
    return ns


class TimeReader:
    """Reads one file's time column (see the module). `day_first` settles NN/NN/YYYY dates
    (None: not settled yet; `settle` looks at the whole column)."""

    def __init__(self) -> None:
        self.unit: tuple[str, int, int] | None = None  # epoch integers: (name, below, ns per unit)
        self.day_first: bool | None = None
        self._hours: dict[str, int] = {}  # _canonical's cache

    def settle(self, texts: Iterable[str]) -> None:
        """Fixes day- or month-first for NN/NN/YYYY dates from every value of the column:
        a first number above 12 says day-first, a second above 12 month-first; ValueError
        when the file says both or neither."""
        day = month = None
        for text in texts:
            m = _YEAR_LAST.match(text.strip())
            if m is None or m["sep"] != "/":
                continue
            if int(m["a"]) > 12:
                day = day or text.strip()
            if int(m["b"]) > 12:
                month = month or text.strip()
        if day and month:
            raise ValueError(f"dates {day} (day first) and {month} (month first) in one file")
        if not (day or month):
            raise ValueError(
                "no date with a day above 12, so day/month/year and month/day/year cannot be "
                "told apart: write dates as ISO 8601 (2026-01-02)"
            )
        self.day_first = bool(day)

    def read(self, text: str) -> int:
        """ns since the epoch; ValueError saying what is wrong with `text`."""
        text = text.strip()
        if text.isdigit() or _EPOCH.fullmatch(text):
            return check_range(self._epoch(text), text)
        fast = _canonical(text, self._hours)
        if fast is not None:
            return check_range(fast, text)
        m = _YEAR_FIRST.fullmatch(text)
        if m is not None:
            y, mo, d = int(m["y"]), int(m["a"]), int(m["b"])
        else:
            m = _YEAR_LAST.fullmatch(text)
            if m is None:
                raise ValueError(
                    f"time {text[:40]!r} is not a date and time (ISO 8601 2026-01-02T03:04:05Z, "
                    "2026.01.02 03:04, or an epoch integer)"
                )
            y, a, b = int(m["y"]), int(m["a"]), int(m["b"])
            if m["sep"] == "." or self.day_first:
                d, mo = a, b
            elif self.day_first is None:
                raise ValueError(f"time {text}: day/month order not settled")  # the loader settles it first
            else:
                mo, d = a, b
        if not (1 <= mo <= 12 and 1 <= d <= _MONTH_DAYS[mo - 1]) or (mo == 2 and d == 29 and not _leap(y)):
            raise ValueError(f"time {text}: no such date")
        h, mi, s = int(m["h"] or 0), int(m["mi"] or 0), int(m["s"] or 0)
        if h > 23 or mi > 59 or s > 59:
            raise ValueError(f"time {text}: no such time of day")
        ns = ((days_from_civil(y, mo, d) * 24 + h) * 60 + mi) * 60 + s
        ns = ns * NS + (int(m["f"].ljust(9, "0")) if m["f"] else 0)
        if m["tz"]:
            ns -= _offset_s(m["tz"]) * NS
        return check_range(ns, text)

    def _epoch(self, text: str) -> int:
        if "." in text:  # fractional seconds, exactly
            whole, frac = text.split(".")
            if self.unit is None:
                self.unit = UNITS[0]
            elif self.unit is not UNITS[0]:
                raise ValueError(
                    f"time {text} is in seconds (a fraction), the file's first time in {self.unit[0]}"
                )
            sign = -1 if whole.startswith("-") else 1
            return int(whole) * NS + sign * int(frac[:9].ljust(9, "0"))
        n = int(text)
        unit = self.unit
        if unit is not None and _LOWER[unit[0]] <= abs(n) < unit[1]:
            return n * unit[2]
        unit = next((u for u in UNITS if abs(n) < u[1]), None)
        if unit is None:
            raise ValueError(f"time {text} is past 2262-04-11, the last time int64 nanoseconds hold")
        if self.unit is None:
            check_first_epoch(n, text, unit[0])
            self.unit = unit
        elif unit is not self.unit:
            raise ValueError(
                f"time {text} looks like {unit[0]} where the file's first time is in {self.unit[0]}"
            )
        return n * unit[2]


def check_first_epoch(n: int, text: str, unit: str) -> None:
    """ValueError if a file's first epoch integer `n` (read as `unit`) cannot be told apart
    from another reading: a date written without separators, or a number too small to
    tell seconds from milliseconds (a row number?)."""
    if _COMPACT_DATE.fullmatch(text) and unit in ("seconds", "milliseconds"):
        raise ValueError(
            f"time {text} is ambiguous: a date written without separators, or epoch "
            f"{unit}? Write dates as ISO 8601 (2026-01-02T00:00:00Z) or epoch seconds"
        )
    if 0 <= n < _SMALLEST_EPOCH_S:
        raise ValueError(
            f"time {text} is ambiguous: too small to tell epoch seconds from milliseconds "
            "(before 1973 in seconds); is it a row number? Write ISO 8601 times"
        )


def _canonical(text: str, hours: dict[str, int]) -> int | None:
    """The common case quickly: YYYY-MM-DD HH:MM:SS[.f...][Z] (or T; dots or slashes in the
    date), UTC; None for anything else (the regex then reads it). `hours` caches each
    date and hour's start (rows of a file share them)."""
    n = len(text)
    if n < 19 or text[13] != ":" or text[16] != ":":
        return None
    start = hours.get(text[:13])
    if start is None:
        start = _hour_start(text[:13])
        if start is None:
            return None
        if len(hours) > 100_000:
            hours.clear()
        hours[text[:13]] = start
    end = n - 1 if text[-1] == "Z" else n
    if end == 19:
        frac = ""
    elif text[19] in ".," and 20 < end <= 29:
        frac = text[20:end]
    else:
        return None
    mm, ss = text[14:16], text[17:19]
    if not (mm + ss + frac).isdigit() or mm > "59" or ss > "59":
        return None
    return start + (int(mm) * 60 + int(ss)) * NS + (int(frac.ljust(9, "0")) if frac else 0)


def _hour_start(text: str) -> int | None:
    """ns of YYYY-MM-DD HH (any of - . / in the date, T or a space), or None."""
    if text[4] not in "-./" or text[7] != text[4] or text[10] not in "T ":
        return None
    digits = text[0:4] + text[5:7] + text[8:10] + text[11:13]
    if not digits.isdigit():
        return None
    y, mo, d, h = int(text[0:4]), int(text[5:7]), int(text[8:10]), int(text[11:13])
    if not (1 <= mo <= 12 and 1 <= d <= _MONTH_DAYS[mo - 1]) or (mo == 2 and d == 29 and not _leap(y)):
        return None  # the regex path says what is wrong
    if h > 23:
        return None
    return (days_from_civil(y, mo, d) * 24 + h) * 3600 * NS


def _leap(y: int) -> bool:
    return y % 4 == 0 and (y % 100 != 0 or y % 400 == 0)


def _offset_s(tz: str) -> int:
    tz = tz.replace("GMT", "").replace("UTC", "").replace(":", "").strip()
    if tz in ("", "Z"):
        return 0
    sign = -1 if tz[0] == "-" else 1
    return sign * (int(tz[1:3]) * 3600 + int(tz[3:5]) * 60)


def parse_time(text: str) -> int:
    """ns since the epoch of one time given alone (a command line's --from): any form above."""
    return TimeReader().read(text)
