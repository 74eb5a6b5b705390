"""Market data from CSV files: ticks or bars, in a generic layout or MetaTrader 5's export.

Generic (comma-separated, header row required, columns in any order):
    ticks: time,symbol,bid,ask[,last][,volume]
    bars:  time,symbol,open,high,low,close[,volume]     (timeframe: the smallest step)
    time: ISO 8601 in UTC (2026-01-02T03:04:05.123Z) or an integer epoch in s, ms, us or ns.
MetaTrader 5 (tab-separated, as the terminal's "Export" writes it; one symbol per file,
named by the file: EURUSD_ticks.csv or EURUSD_M1_2026....csv -> EURUSD):
    ticks: <DATE> <TIME> <BID> <ASK> <LAST> <VOLUME> <FLAGS>   (an empty bid/ask: unchanged)
    bars:  <DATE> <TIME> <OPEN> <HIGH> <LOW> <CLOSE> <TICKVOL> <VOL> <SPREAD>

Every row is validated: a number that is not one, NaN or infinity, a zero or negative
price, ask below bid, high/low not enclosing open/close, time going backwards, a
duplicate (a bar time seen before for its symbol, or a tick row repeating the previous
one exactly). What happens to a bad row is the caller's choice (`bad_rows`): "refuse"
stops the load with a DataError naming the file, the line and what is wrong; "skip"
leaves the row out and reports it in `Series.issues` as (line, what), so nothing is
dropped silently.
"""

from __future__ import annotations

import csv
import math
import re
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from sovereign.core import (
    BAR_DTYPE,
    TICK_DTYPE,
    TICK_FLAG_ASK,
    TICK_FLAG_BID,
    TICK_FLAG_LAST,
    TICK_FLAG_VOLUME,
)
from sovereign.errors import OperationalError, UsageError

NS = 1_000_000_000
TICK_COLUMNS = ("time", "symbol", "bid", "ask")
BAR_COLUMNS = ("time", "symbol", "open", "high", "low", "close")


# Symbols all the data files of one load may bring: each costs agents and memory (ten
# agents of 3.8 KiB and their bars), so a file cannot make the machine allocate without
# bound; refused as the name past the limit is read, before anything is allocated for it.
MAX_SYMBOLS = 10_000
# A symbol name: what brokers use (EURUSD, EURUSD.m, US30#, BRN-JAN25, XAU_USD), nothing
# a terminal, a spreadsheet or markup could take for an instruction.
SYMBOL_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._#-]{0,31}")


class DataError(UsageError):
    """A data file cannot be used; the message names the file and line."""


class SymbolListError(OperationalError):
    """The state's symbol list (meta "symbols") is not one the system could have written."""


def check_symbol(name: str) -> str:
    """`name` if it is a valid symbol name, else ValueError showing it safely."""
    if not SYMBOL_NAME.fullmatch(name):
        raise ValueError(f"symbol {name[:40]!a}{'...' if len(name) > 40 else ''} is not 1-32 of "
                         "A-Z a-z 0-9 . _ # - starting with a letter or digit")  # fmt: skip
    return name


class Symbols:
    """Names to ids in the order first seen, in constant time each; at most MAX_SYMBOLS."""

    def __init__(self, where: str):
        self.where = where
        self.ids: dict[str, int] = {}

    @property
    def names(self) -> list[str]:
        return list(self.ids)

    def peek(self, name: str, where: str = "") -> int:
        """The id `name` has, or would get: a new name is checked, and the limit, but not kept."""
        sid = self.ids.get(name)
        if sid is not None:
            return sid
        check_symbol(name)
        if len(self.ids) >= MAX_SYMBOLS:
            raise DataError(f"{where or self.where}: more than {MAX_SYMBOLS} symbols (at {name}); "
                            "split the data")  # fmt: skip
        return len(self.ids)

    def id(self, name: str, where: str = "") -> int:
        """`name`'s id, kept (a new name gets the next one)."""
        sid = self.peek(name, where)
        self.ids.setdefault(name, sid)
        return sid


def known_symbols(stored: object, limit: int = MAX_SYMBOLS) -> list[str]:
    """The state's symbol list (meta "symbols": the names by id) checked: None (a new state)
    is none; anything but a list of at most `limit` distinct valid names is refused with
    SymbolListError, since every position, order and book of the state is keyed by these ids."""
    if stored is None:
        return []
    what = "state meta 'symbols'"
    fix = "its positions and orders cannot be matched to instruments; restore the state from a backup"
    if not isinstance(stored, list) or not all(isinstance(n, str) for n in stored):
        raise SymbolListError(f"{what} is not a list of symbol names: {fix}")
    if len(stored) > limit:
        raise SymbolListError(
            f"{what} holds {len(stored)} symbols, more than the {limit} a system may have: {fix}"
        )
    try:
        for name in stored:
            check_symbol(name)
    except ValueError as e:
        raise SymbolListError(f"{what}: {e}: {fix}") from None
    if len(set(stored)) != len(stored):
        twice = next(n for i, n in enumerate(stored) if n in stored[:i])
        raise SymbolListError(f"{what} names {twice} twice: {fix}")
    return list(stored)


@dataclass
class Series:
    """Rows of one file: ticks or bars (symbol ids index `names`)."""

    kind: str  # "ticks" or "bars"
    records: np.ndarray
    names: list[str]
    spread_points: np.ndarray | None = None  # bars: MT5's <SPREAD> column, else zeros
    issues: list[tuple[int, str]] = field(default_factory=list)  # skipped rows: (line, what)
    path: str = ""


BAD_ROWS = ("refuse", "skip")


class _Rows:
    """Applies the bad-row policy: refuse raises at the first, skip collects them all."""

    def __init__(self, path: Path, bad_rows: str):
        if bad_rows not in BAD_ROWS:
            raise ValueError(f"bad_rows {bad_rows!r}; known: {', '.join(BAD_ROWS)}")
        self.path, self.skip = path, bad_rows == "skip"
        self.issues: list[tuple[int, str]] = []

    def bad(self, line: int, what: str) -> None:
        if not self.skip:
            raise DataError(f"{self.path}:{line}: {what}")
        self.issues.append((line, what))


def parse_time(text: str) -> int:
    """ns since the epoch from ISO 8601 (UTC unless an offset is given) or an integer epoch."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        n = int(text)
        for limit, scale in ((10**11, NS), (10**14, 10**6), (10**17, 10**3)):
            if abs(n) < limit:
                return n * scale
        return n
    iso = text.replace(" ", "T", 1)
    if iso.endswith("Z"):
        iso = iso[:-1] + "+00:00"
    when = datetime.fromisoformat(iso)
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    delta = when - datetime(1970, 1, 1, tzinfo=timezone.utc)
    return (delta.days * 86400 + delta.seconds) * NS + delta.microseconds * 1000


def _number(text: str, what: str) -> float:
    try:
        x = float(text)
    except ValueError:
        raise ValueError(f"{what} {text!r} is not a number") from None
    if not math.isfinite(x):
        raise ValueError(f"{what} is {text}")
    return x


def _price(text: str, what: str) -> float:
    x = _number(text, what)
    if x <= 0:
        raise ValueError(f"{what} {text} is not a positive price")
    return x


def load_csv(path: str | Path, layout: str = "generic", bad_rows: str = "refuse") -> Series:
    """Load one CSV file in `layout` ("generic" or "mt5"); bad rows as `bad_rows` says."""
    path = Path(path)
    rows = _Rows(path, bad_rows)
    try:
        with path.open(newline="") as f:
            if layout == "mt5":
                series = _load_mt5(path, f, rows)
            elif layout == "generic":
                series = _load_generic(path, f, rows)
            else:
                raise ValueError(f"unknown layout {layout!r}; known: generic, mt5")
            series.issues, series.path = rows.issues, str(path)
            return series
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a text file ({e.reason})") from None


def _load_generic(path: Path, f, bad: _Rows) -> Series:  # type: ignore[no-untyped-def]
    reader = csv.reader(f)
    header = [h.strip().lower() for h in next(reader, [])]
    if set(TICK_COLUMNS) <= set(header):
        kind = "ticks"
    elif set(BAR_COLUMNS) <= set(header):
        kind = "bars"
    else:
        raise DataError(
            f"{path}:1: header {','.join(header) or '(empty)'} has neither the tick columns "
            f"({','.join(TICK_COLUMNS)}) nor the bar columns ({','.join(BAR_COLUMNS)})"
        )
    col = {name: header.index(name) for name in header}
    names = Symbols(str(path))
    rows: list[tuple] = []
    last: dict[int, tuple] = {}  # symbol -> its previous row
    for line, row in enumerate(reader, start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            if len(row) != len(header):
                raise ValueError(f"{len(row)} fields, the header has {len(header)}")
            ts = parse_time(row[col["time"]])
            name = row[col["symbol"]].strip()
            if not name:
                raise ValueError("empty symbol")
            volume = _number(row[col["volume"]], "volume") if "volume" in col else 0.0
            if volume < 0:
                raise ValueError(f"volume {volume} is negative")
            if kind == "ticks":
                bid, ask = _price(row[col["bid"]], "bid"), _price(row[col["ask"]], "ask")
                if ask < bid:
                    raise ValueError(f"ask {ask} is below bid {bid}")
                px = _number(row[col["last"]], "last") if "last" in col else bid
                rec: tuple = (ts, bid, ask, px, volume)
            else:
                o, h, lo, c = (_price(row[col[k]], k) for k in ("open", "high", "low", "close"))
                _check_ohlc(o, h, lo, c)
                rec = (ts, o, h, lo, c, volume)
            sym = names.peek(name, f"{path}:{line}")  # kept only once the row is good
            _check_order(last.get(sym), rec, kind, name, row[col["time"]].strip())
        except DataError:
            raise  # the file as a whole, whatever the bad-row policy
        except ValueError as e:
            bad.bad(line, str(e))
            continue
        names.id(name)
        last[sym] = rec
        rows.append((*rec, sym))
    return _series(path, kind, rows, names.names)


def _optional(row: list[str], col: dict[str, int], name: str) -> float:
    text = row[col[name]].strip() if name in col else ""
    return _number(text, name) if text else 0.0


def _check_order(prev: tuple | None, rec: tuple, kind: str, name: str, when: str) -> None:
    """Time order within a symbol; a bar time seen twice or a tick row repeated is a duplicate."""
    if prev is None:
        return
    if rec[0] < prev[0]:
        raise ValueError(f"time goes backwards for {name} ({when})")
    if kind == "bars" and rec[0] == prev[0]:
        raise ValueError(f"duplicate bar time for {name} ({when})")
    if kind == "ticks" and rec == prev:
        raise ValueError(f"duplicate of the previous {name} tick ({when})")


def _check_ohlc(o: float, h: float, lo: float, c: float) -> None:
    if not (lo <= min(o, c) and h >= max(o, c)):
        raise ValueError(f"high {h} / low {lo} do not enclose open {o} and close {c}")


def _load_mt5(path: Path, f, bad: _Rows) -> Series:  # type: ignore[no-untyped-def]
    reader = csv.reader(f, delimiter="\t")
    header = [h.strip().upper() for h in next(reader, [])]
    if header[:4] == ["<DATE>", "<TIME>", "<BID>", "<ASK>"]:
        kind = "ticks"
    elif header[:6] == ["<DATE>", "<TIME>", "<OPEN>", "<HIGH>", "<LOW>", "<CLOSE>"]:
        kind = "bars"
    else:
        raise DataError(
            f"{path}:1: not a MetaTrader 5 export: the header starts {' '.join(header[:4])}, "
            "expected <DATE> <TIME> <BID> <ASK> (ticks) or <DATE> <TIME> <OPEN> ... (bars)"
        )
    col = {name: i for i, name in enumerate(header)}
    rows: list[tuple] = []
    bid = ask = 0.0
    name = path.stem.split("_")[0]
    try:
        check_symbol(name)
    except ValueError as e:
        raise DataError(f"{path}: the file name gives the {e}") from None
    prev: tuple | None = None
    for line, row in enumerate(reader, start=2):
        if not row or not "".join(row).strip():
            continue
        try:
            if len(row) < len(header):
                raise ValueError(f"{len(row)} fields, the header has {len(header)}")
            stamp = f"{row[0].strip().replace('.', '-')}T{row[1].strip()}"
            try:
                ts = parse_time(stamp)
            except ValueError:
                raise ValueError(f"date/time {row[0]} {row[1]} is not YYYY.MM.DD HH:MM:SS[.mmm]") from None
            if kind == "ticks":
                b = _price(row[2], "<BID>") if row[2].strip() else bid
                a = _price(row[3], "<ASK>") if row[3].strip() else ask
                if b == 0 or a == 0:
                    bid, ask = b, a
                    continue  # the first quotes may carry only one side: wait for both
                if a < b:
                    raise ValueError(f"ask {a} is below bid {b}")
                vol = max(_optional(row, col, "<VOLUME>"), 0.0)
                rec: tuple = (ts, b, a, _optional(row, col, "<LAST>"), vol)
            else:
                o, h, lo, c = (_price(row[i], header[i]) for i in range(2, 6))
                _check_ohlc(o, h, lo, c)
                vol = _number(row[col["<TICKVOL>"]], "<TICKVOL>") if "<TICKVOL>" in col else 0.0
                spread = _number(row[col["<SPREAD>"]], "<SPREAD>") if "<SPREAD>" in col else 0.0
                rec = (ts, o, h, lo, c, vol)
            _check_order(prev, rec, kind, name, f"{row[0]} {row[1]}")
        except ValueError as e:
            bad.bad(line, str(e))
            continue
        prev = rec
        if kind == "ticks":
            bid, ask = rec[1], rec[2]
            rows.append((*rec, 0))
        else:
            rows.append((*rec, 0, spread))
    return _series(path, kind, rows, [name])


def _series(path: Path, kind: str, rows: list[tuple], names: list[str]) -> Series:
    if not rows:
        raise DataError(f"{path}: no data rows")
    if kind == "ticks":
        recs = np.zeros(len(rows), TICK_DTYPE)
        cols = np.array(rows, dtype=object).T
        recs["ts_ns"], recs["bid"], recs["ask"], recs["last"], recs["volume"], recs["symbol"] = cols
        recs["flags"] = TICK_FLAG_BID | TICK_FLAG_ASK | TICK_FLAG_LAST | TICK_FLAG_VOLUME
        return Series("ticks", recs, names)
    recs = np.zeros(len(rows), BAR_DTYPE)
    cols = np.array(rows, dtype=object).T
    recs["ts_ns"], recs["open"], recs["high"], recs["low"], recs["close"], recs["volume"] = cols[:6]
    recs["symbol"] = cols[6]
    tf = _timeframe(path, recs)
    recs["timeframe_s"] = tf
    spread = cols[7].astype(float) if len(cols) > 7 else np.zeros(len(rows))
    return Series("bars", recs, names, spread)


def _timeframe(path: Path, bars: np.ndarray) -> int:
    steps = []
    for sym in np.unique(bars["symbol"]):
        ts = bars["ts_ns"][bars["symbol"] == sym]
        d = np.diff(ts)
        if len(d) and (d > 0).any():
            steps.append(int(d[d > 0].min()))
    if not steps:
        raise DataError(f"{path}: cannot tell the bar timeframe from fewer than two bars of a symbol")
    tf_ns = min(steps)
    if tf_ns % NS:
        raise DataError(f"{path}: bars are {tf_ns} ns apart, not a whole number of seconds")
    misaligned = np.flatnonzero(bars["ts_ns"] % tf_ns)
    if len(misaligned):
        raise DataError(
            f"{path}:{int(misaligned[0]) + 2}: bar time is not a multiple of the {tf_ns // NS} s timeframe"
        )
    return tf_ns // NS


def bars_to_ticks(bars: np.ndarray, spread: np.ndarray, point: float) -> np.ndarray:
    """Four ticks per bar (open, the nearer extreme, the other, close), as MetaTrader's
    "OHLC" modelling: up bars go open-low-high-close, down bars open-high-low-close. Bid is
    the bar's price, ask bid + spread points; each tick carries a quarter of the volume."""
    n = len(bars)
    out = np.zeros(4 * n, TICK_DTYPE)
    tf_ns = bars["timeframe_s"].astype(np.int64) * NS
    up = bars["close"] >= bars["open"]
    prices = np.stack([bars["open"], np.where(up, bars["low"], bars["high"]),
                       np.where(up, bars["high"], bars["low"]), bars["close"]], axis=1).ravel()  # fmt: skip
    offsets = np.stack([np.zeros(n, np.int64), tf_ns // 4, tf_ns // 2, tf_ns - 1], axis=1).ravel()
    out["ts_ns"] = np.repeat(bars["ts_ns"], 4) + offsets
    out["bid"] = prices
    out["ask"] = prices + np.repeat(spread, 4) * point
    out["last"] = prices
    out["volume"] = np.repeat(bars["volume"] / 4, 4)
    out["symbol"] = np.repeat(bars["symbol"], 4)
    out["flags"] = TICK_FLAG_BID | TICK_FLAG_ASK | TICK_FLAG_VOLUME
    return out


def load_ticks(
    paths: list[str] | tuple[str, ...],
    layout: str = "generic",
    point: float = 1e-5,
    bad_rows: str = "refuse",
    known: list[str] | tuple[str, ...] = (),
) -> tuple[np.ndarray, list[str]]:
    """All files as one tick stream in time order, and the symbol names (ids index them).
    Bar files become four ticks per bar (bars_to_ticks). `known` names (a state's, by id)
    keep their ids, whatever order the files come in; the files' other names follow them."""
    symbols = Symbols("the state's symbols and the data files" if known else "the data files")
    for name in known:
        symbols.ids.setdefault(name, len(symbols.ids))
    if len(symbols.ids) != len(known):
        raise ValueError("load_ticks: the known symbol names are not distinct")
    parts = []
    for p in paths:
        s = load_csv(p, layout, bad_rows)
        if s.kind == "ticks":
            ticks = s.records
        else:
            assert s.spread_points is not None
            ticks = bars_to_ticks(s.records, s.spread_points, point)
        ids = np.array([symbols.id(n) for n in s.names], np.uint32)
        ticks["symbol"] = ids[ticks["symbol"]]
        parts.append(ticks)
    ticks = np.concatenate(parts)
    return ticks[np.argsort(ticks["ts_ns"], kind="stable")], symbols.names
