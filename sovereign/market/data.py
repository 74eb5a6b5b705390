"""Market data from CSV files: ticks or bars, as traders' files have them, or MetaTrader 5's export.

Generic: a header row, columns in any order, names in any case; comma, semicolon or tab
separated (one of them; a decimal comma where the separator is not a comma); UTF-8, a
byte-order mark allowed:
    ticks: time,[symbol,]bid,ask[,last][,volume]
    bars:  time,[symbol,]open,high,low,close[,volume][,spread]   (Adj Close and others ignored)
    time:  `time`, `timestamp`, `datetime`, `date` (a date with a separate `time`: MetaTrader's
           pair), ... (ALIASES), in any form times.TimeReader reads, settled by the file.
Without a symbol column the file is one symbol's: `symbol`, else the file name's first word
(EURUSD_H1.csv -> EURUSD). A bar file's timeframe is each symbol's most common spacing
(infer_timeframes). MetaTrader 5 (`layout="mt5"`, or a header starting <DATE>: tab-separated
as the terminal's "Export" writes it; one symbol per file, named as above):
    ticks: <DATE> <TIME> <BID> <ASK> <LAST> <VOLUME> <FLAGS>   (an empty bid/ask: unchanged)
    bars:  <DATE> <TIME> <OPEN> <HIGH> <LOW> <CLOSE> <TICKVOL> <VOL> <SPREAD>

Every row is validated: a number that is not one, NaN or infinity, a zero or negative
price, ask below bid, high/low not enclosing open/close, a time outside 1970-2262, time
going backwards within a symbol, a bar time seen before for its symbol (ticks may share a
time: real feeds stamp several in one millisecond). What happens to a bad row is the
caller's choice (`bad_rows`): "refuse" stops the load with a DataError naming the file,
the line and what is wrong; "skip" leaves the row out and reports it in `Series.issues` as
(line, what), so nothing is dropped silently. What is wrong with the file as a whole (its
header, separators, a line over MAX_LINE, an ambiguous time format, mixed timeframes in a
symbol) is refused under either policy.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
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
from sovereign.market.times import TimeReader, iso, parse_time

__all__ = ["DataError", "Series", "infer_timeframes", "load_csv", "load_ticks", "parse_time"]

NS = 1_000_000_000


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
    timeframes: dict[str, int] = field(default_factory=dict)  # bars: each symbol's, in seconds
    symbol_from: str = ""  # a file without a symbol column: "--symbol" or "the file name"


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


# A line longer than this is not market data (a row of ticks or bars is under 200 bytes):
# refused as it is read, before the csv module's field limit or memory is reached.
MAX_LINE = 64 * 1024
SEPARATORS = {",": "comma", ";": "semicolon", "\t": "tab"}
# Header names as traders' files spell them (lower case, any <> stripped), best first.
# Columns not named here (Adj Close, a Dukascopy AskVolume, ...) are ignored.
ALIASES = {
    "time": ("time", "timestamp", "datetime", "date_time", "date time", "ts", "ts_event", "gmt time",
             "time (utc)", "utc", "local time", "date"),
    "symbol": ("symbol", "ticker", "instrument"),
    "bid": ("bid", "bid_price", "bid price", "bidprice"),
    "ask": ("ask", "ask_price", "ask price", "askprice", "offer"),
    "last": ("last", "last_price"),
    "open": ("open", "open_price"),
    "high": ("high", "high_price"),
    "low": ("low", "low_price"),
    "close": ("close", "close_price"),
    "volume": ("volume", "tickvol", "tick_volume", "vol"),
    "spread": ("spread",),
    "flags": ("flags",),  # which of a tick's fields are set (core.TICK_FLAG_*); default: all
}  # fmt: skip
TICK_NEEDS, BAR_NEEDS = ("bid", "ask"), ("open", "high", "low", "close")


def load_csv(
    path: str | Path, layout: str = "generic", bad_rows: str = "refuse", symbol: str | None = None
) -> Series:
    """Load one CSV file in `layout` ("generic" or "mt5"); bad rows as `bad_rows` says. A
    file without a symbol column is `symbol`'s, else its name's first word (EURUSD_H1.csv:
    EURUSD; `Series.symbol_from` says which)."""
    path = Path(path)
    rows = _Rows(path, bad_rows)
    if layout not in ("generic", "mt5"):
        raise ValueError(f"unknown layout {layout!r}; known: generic, mt5")
    try:
        header_line = next(_lines(path), "")
        if not header_line.strip():
            raise DataError(f"{path}:1: the header row is empty" if header_line else f"{path}: empty file")
        if layout == "mt5" or header_line.lstrip().upper().startswith("<DATE>"):
            series = _load_mt5(path, rows, symbol)
        else:
            series = _load_generic(path, header_line, rows, symbol)
        series.issues, series.path = rows.issues, str(path)
        return series
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    except UnicodeDecodeError as e:
        raise DataError(f"{path}: not a UTF-8 text file ({e.reason})") from None
    except csv.Error as e:
        raise DataError(f"{path}: not CSV ({e})") from None


def _lines(path: Path) -> Iterator[str]:
    """The file's lines (a UTF-8 BOM dropped), each at most MAX_LINE characters."""
    with path.open(newline="", encoding="utf-8-sig") as f:
        readline, n = f.readline, 0
        while line := readline(MAX_LINE + 1):
            n += 1
            if len(line) > MAX_LINE:
                raise DataError(f"{path}:{n}: a line longer than {MAX_LINE // 1024} KiB: not market data")
            yield line


def _separator(path: Path, header_line: str) -> str:
    found = [s for s in SEPARATORS if s in header_line]
    if len(found) > 1:
        both = " and ".join(SEPARATORS[s] for s in found)
        raise DataError(f"{path}:1: mixed separators in the header ({both}): "
                        "use one of comma, semicolon or tab")  # fmt: skip
    return found[0] if found else ","


def _columns(path: Path, header: list[str]) -> tuple[str, dict[str, int]]:
    """The file's kind and where each known column is; a missing column is named."""
    names = [h.strip().strip("<>").strip().lower() for h in header]
    col = {}
    for key, spellings in ALIASES.items():
        at = next((names.index(s) for s in spellings if s in names), None)
        if at is not None:
            col[key] = at
    if "date" in names and "time" in names and col.get("time") == names.index("time"):
        col["date"] = names.index("date")  # MetaTrader's separate date and time columns
    found = ", ".join(h.strip() for h in header) or "(empty)"
    some_bar, some_tick = any(k in col for k in BAR_NEEDS), any(k in col for k in TICK_NEEDS)
    needs: tuple[str, ...]
    if all(k in col for k in BAR_NEEDS) or (some_bar and not some_tick):
        kind, needs = "bars", BAR_NEEDS
    elif some_tick:
        kind, needs = "ticks", TICK_NEEDS
    elif header and _looks_like_data(header):
        raise DataError(f"{path}:1: no header row (the first line is data): add one, such as "
                        "time,open,high,low,close,volume or time,bid,ask")  # fmt: skip
    else:
        listed = ",".join(h.strip() for h in header) or "(empty)"
        raise DataError(f"{path}:1: header {listed} has neither the "
                        "tick columns (time, bid, ask) nor the bar columns (time, open, high, low, close)")
    missing = [k for k in ("time", *needs) if k not in col]
    if missing:
        raise DataError(f"{path}:1: no {' or '.join(missing)} column for {kind} "
                        f"(they need time, {', '.join(needs)}); the header has: {found}")  # fmt: skip
    return kind, col


def _looks_like_data(row: list[str]) -> bool:
    """A time then numbers: a data row where the header should be (MetaTrader 4's and
    Binance's exports have none)."""
    try:
        TimeReader().read(row[0])
        for cell in row[1:]:
            if cell.strip() and not re.fullmatch(r"\d{1,2}:\d\d(:\d\d)?", cell.strip()):
                float(cell)
    except ValueError:
        return False
    return True


def _file_symbol(path: Path, symbol: str | None) -> tuple[str, str]:
    """The symbol of a file without a symbol column, and where it came from."""
    name, source = (symbol, "--symbol") if symbol else (re.split(r"[_\s,]", path.stem)[0], "the file name")
    try:
        return check_symbol(name), source
    except ValueError as e:
        fix = "" if symbol else " (give it with --symbol)"
        raise DataError(f"{path}: {source} gives the {e}{fix}") from None


def _load_generic(path: Path, header_line: str, bad: _Rows, symbol: str | None) -> Series:
    sep = _separator(path, header_line)
    reader = csv.reader(_lines(path), delimiter=sep)
    header = next(reader, [])
    kind, col = _columns(path, header)
    n_fields = len(header)
    file_symbol, symbol_from = (None, "") if "symbol" in col else _file_symbol(path, symbol)
    when = _time_text(col)
    times = TimeReader()
    names = Symbols(str(path))
    rows: list[tuple] = []
    lines: list[int] = []
    flags: list[int] = []
    last: dict[int, tuple] = {}  # symbol -> its previous row
    for row in reader:
        line = reader.line_num
        if not row or not "".join(row).strip():
            continue
        try:
            if len(row) != n_fields:
                raise ValueError(_field_count(row, n_fields, sep))
            if sep != ",":  # a decimal comma (1,0843) where the separator is not one
                row = [c.replace(",", ".") for c in row]
            stamp = when(row)
            if times.day_first is None and "/" in stamp:
                times.settle(when(r) for r in _data_rows(path, sep, n_fields))
            ts = times.read(stamp)
            name = row[col["symbol"]].strip() if file_symbol is None else file_symbol
            if not name:
                raise ValueError("empty symbol")
            volume = _optional(row, col, "volume")
            if volume < 0:
                raise ValueError(f"volume {volume} is negative")
            if kind == "ticks":
                bid, ask = _price(row[col["bid"]], "bid"), _price(row[col["ask"]], "ask")
                if ask < bid:
                    raise ValueError(f"ask {ask} is below bid {bid}")
                px = _number(row[col["last"]], "last") if "last" in col else bid
                rec: tuple = (ts, bid, ask, px, volume)
            else:
                o, h, lo, c = (_price(row[col[k]], k) for k in BAR_NEEDS)
                _check_ohlc(o, h, lo, c)
                rec = (ts, o, h, lo, c, volume, _optional(row, col, "spread"))
            sym = names.peek(name, f"{path}:{line}")  # kept only once the row is good
            _check_order(last.get(sym), rec, kind, name, stamp)
            if "flags" in col:
                flags.append(int(row[col["flags"]]))
        except DataError:
            raise  # the file as a whole, whatever the bad-row policy
        except ValueError as e:
            bad.bad(line, str(e))
            continue
        names.id(name)
        last[sym] = rec
        rows.append((*rec[:6], sym, *rec[6:]) if kind == "bars" else (*rec, sym))
        lines.append(line)
    series = _series(path, kind, rows, names.names, lines)
    series.symbol_from = symbol_from
    if kind == "ticks" and "flags" in col:
        series.records["flags"] = flags
    return series


def _time_text(col: dict[str, int]) -> Callable[[list[str]], str]:
    if "date" in col:
        d, t = col["date"], col["time"]
        return lambda row: f"{row[d].strip()} {row[t].strip()}"
    t = col["time"]
    return lambda row: row[t]


def _data_rows(path: Path, sep: str, n_fields: int) -> Iterator[list[str]]:
    """The file's data rows again, for what only the whole file settles (a date order)."""
    rows = csv.reader(_lines(path), delimiter=sep)
    next(rows, None)
    return (r for r in rows if len(r) == n_fields)


def _field_count(row: list[str], n_fields: int, sep: str) -> str:
    text = sep.join(row)
    for other in SEPARATORS:
        if other != sep and other in text and len(text.split(other)) == n_fields:
            return (f"fields separated by {SEPARATORS[other]} where the header uses {SEPARATORS[sep]}: "
                    "mixed separators")  # fmt: skip
    return f"{len(row)} fields, the header has {n_fields}"


def _optional(row: list[str], col: dict[str, int], name: str) -> float:
    text = row[col[name]].strip() if name in col else ""
    return _number(text, name) if text else 0.0


def _check_order(prev: tuple | None, rec: tuple, kind: str, name: str, when: str) -> None:
    """Time order within a symbol. Ticks may share a time (real feeds stamp several in one
    millisecond, even identical ones); a bar time seen twice is a duplicate."""
    if prev is None:
        return
    if rec[0] < prev[0]:
        raise ValueError(f"time goes backwards for {name} ({when.strip()}, after {iso(prev[0])})")
    if kind == "bars" and rec[0] == prev[0]:
        raise ValueError(f"duplicate bar time for {name} ({when.strip()})")


def _check_ohlc(o: float, h: float, lo: float, c: float) -> None:
    if not (lo <= min(o, c) and h >= max(o, c)):
        raise ValueError(f"high {h} / low {lo} do not enclose open {o} and close {c}")


def _load_mt5(path: Path, bad: _Rows, symbol: str | None) -> Series:
    reader = csv.reader(_lines(path), delimiter="\t")
    header = [h.strip().upper() for h in next(reader, [])]
    if header[:4] == ["<DATE>", "<TIME>", "<BID>", "<ASK>"]:
        kind = "ticks"
    elif header[:6] == ["<DATE>", "<TIME>", "<OPEN>", "<HIGH>", "<LOW>", "<CLOSE>"]:
        kind = "bars"
    else:
        raise DataError(
            f"{path}:1: not a MetaTrader 5 export: the header starts {' '.join(header[:4])}, "
            "expected <DATE> <TIME> <BID> <ASK> (ticks) or <DATE> <TIME> <OPEN> ... (bars), tab-separated"
        )
    col = {name: i for i, name in enumerate(header)}
    rows: list[tuple] = []
    lines: list[int] = []
    bid = ask = 0.0
    name, symbol_from = _file_symbol(path, symbol)
    times = TimeReader()
    prev: tuple | None = None
    for row in reader:
        line = reader.line_num
        if not row or not "".join(row).strip():
            continue
        try:
            if len(row) < len(header):
                raise ValueError(f"{len(row)} fields, the header has {len(header)}")
            ts = times.read(f"{row[0].strip()} {row[1].strip()}")
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
        lines.append(line)
        if kind == "ticks":
            bid, ask = rec[1], rec[2]
            rows.append((*rec, 0))
        else:
            rows.append((*rec, 0, spread))
    series = _series(path, kind, rows, [name], lines)
    series.symbol_from = symbol_from
    return series


def _series(path: Path, kind: str, rows: list[tuple], names: list[str], lines: list[int]) -> Series:
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
    timeframes = infer_timeframes(recs, names, str(path), np.asarray(lines))
    return Series("bars", recs, names, cols[7].astype(float), timeframes=timeframes)


def _spacing(steps: np.ndarray) -> int:
    """The most common step (the smallest of equals)."""
    values, counts = np.unique(steps, return_counts=True)
    return int(values[np.argmax(counts)])


def infer_timeframes(
    bars: np.ndarray, names: list[str], where: str, lines: np.ndarray | None = None
) -> dict[str, int]:
    """Each symbol's timeframe from its bars, written to bars["timeframe_s"]: the most
    common spacing, so gaps, nights and weekends do not change it. Refused (DataError,
    naming the row: `lines` are the rows' file lines, else record numbers from 1): bars
    closer than that (a smaller timeframe among them), a run of MIXED_RUN or more steps of
    one larger spacing (bars of a larger timeframe among them), a bar time that is not a
    multiple of its timeframe (the agents' bars are aligned so), a symbol with one bar when
    no other gives the file one timeframe. Symbols may have different timeframes."""
    def at(i: int) -> str:
        return f"{where}:{int(lines[i])}" if lines is not None else f"{where} record {i + 1}"

    out: dict[str, int] = {}
    alone: list[int] = []
    sym = bars["symbol"]
    for sid in np.unique(sym).tolist():
        rows = np.flatnonzero(sym == sid)
        ts = bars["ts_ns"][rows]
        steps = np.diff(ts)
        if not len(steps):
            alone.append(sid)
            continue
        tf_ns = _spacing(steps)
        name = names[sid]
        if tf_ns % NS:
            raise DataError(f"{at(rows[1])}: {name}'s bars are {tf_ns} ns apart, not whole seconds")
        closer = np.flatnonzero(steps < tf_ns)
        if len(closer):
            i = int(closer[0]) + 1
            raise DataError(f"{at(rows[i])}: {name}'s bar {steps[i - 1] // NS} s after the one before, "
                            f"where most are {tf_ns // NS} s apart: {MIXED}")
        run = _long_run(steps, tf_ns)
        if run is not None:
            raise DataError(f"{at(rows[run + 1])}: {MIXED_RUN} of {name}'s bars in a row are "
                            f"{steps[run] // NS} s apart, where most are {tf_ns // NS} s apart: {MIXED}")
        out[name] = tf_ns // NS
        bars["timeframe_s"][rows] = tf_ns // NS
    if alone:
        if len(set(out.values())) != 1:
            raise DataError(f"{where}: cannot tell the timeframe of {names[alone[0]]} from one bar")
        for sid in alone:
            out[names[sid]] = next(iter(out.values()))
            bars["timeframe_s"][sym == sid] = out[names[sid]]
    misaligned = np.flatnonzero(bars["ts_ns"] % (bars["timeframe_s"].astype(np.int64) * NS))
    if len(misaligned):
        i = int(misaligned[0])
        raise DataError(f"{at(i)}: {names[int(sym[i])]}'s bar time {iso(int(bars['ts_ns'][i]))} is not a "
                        f"multiple of its {bars['timeframe_s'][i]} s timeframe")
    return {n: out[n] for n in names if n in out}


MIXED = "mixed timeframes in one symbol (one timeframe a symbol: split the file)"
# A larger timeframe's bars among a symbol's: this many equal steps in a row, each a
# multiple of the symbol's timeframe. Gaps of a thin market are not so regular.
MIXED_RUN = 20


def _long_run(steps: np.ndarray, tf_ns: int) -> int | None:
    """Where MIXED_RUN or more steps in a row are one spacing other than tf_ns, or None."""
    other = steps != tf_ns
    if other.sum() < MIXED_RUN:
        return None
    change = np.flatnonzero(np.diff(steps)) + 1
    starts = np.concatenate(([0], change))
    ends = np.concatenate((change, [len(steps)]))
    long = np.flatnonzero((ends - starts >= MIXED_RUN) & other[starts])
    return int(starts[long[0]]) if len(long) else None


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
