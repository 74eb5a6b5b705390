"""Market data in Parquet, where research data lives (pandas, the NautilusTrader catalog).

Read: the columns data.ALIASES names, in any case (ticks: time, bid, ask[, last][, volume];
bars: time, open, high, low, close[, volume][, spread]), a `symbol` column or one symbol a
file, and what the NautilusTrader catalog writes: `ts_event` as uint64 ns (bars: `ts_init`,
which it stamps at a bar's close, less one bar of the file's bar_type, since a bar here is
stamped at its start), prices as its fixed-point binary (16 bytes: raw / 1e16; 8 bytes:
raw / 1e9) rounded to the schema's price_precision, `bid_price`/`ask_price`, and the symbol
from the schema's instrument_id (EUR/USD.SIM -> EURUSD). Time: timestamp[any unit, any tz]
(stored UTC), an integer epoch (unit by magnitude, as CSV), or text (times.TimeReader).
Without a symbol column the symbol is the caller's `--symbol`, else instrument_id, else the
file name's first word. A column missing is named with what the file has. Rows are checked
as CSV rows are (data.py), vectorized; a bad row is named by its row number (from 1).

Written (`write`): time as timestamp[ns, UTC], symbol as a dictionary of strings, the
records' other fields as they are (float64, flags and timeframe_s uint32), and the kind in
the schema's metadata (b"sovereign"), so a file read back gives the same records exactly.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sovereign.core import TICK_FLAG_ASK, TICK_FLAG_BID, TICK_FLAG_LAST, TICK_FLAG_VOLUME
from sovereign.market.data import ALIASES, BAR_NEEDS, TICK_NEEDS, DataError, _file_symbol, _Rows, check_symbol
from sovereign.market.times import MAX_NS, NS, UNITS, TimeReader, check_first_epoch

SUFFIX = ".parquet"
ALL_FLAGS = TICK_FLAG_BID | TICK_FLAG_ASK | TICK_FLAG_LAST | TICK_FLAG_VOLUME  # where a file gives none
_TIME_NAMES = (*ALIASES["time"], "ts_init", "__index_level_0__")
_META_KEY = b"sovereign"


class ParquetFile:
    """One file's checked columns, by record field name (ts_ns, bid, ..., symbol ids)."""

    def __init__(
        self,
        kind: str,
        columns: dict[str, np.ndarray],
        names: list[str],
        issues: list[tuple[int, str]],
        symbol_from: str,
        rows: np.ndarray,
    ):
        self.kind, self.columns, self.names, self.issues = kind, columns, names, issues
        self.symbol_from, self.rows = symbol_from, rows  # rows: the kept rows' numbers (from 1)


def read(path: str | Path, bad_rows: str = "refuse", symbol: str | None = None) -> ParquetFile:
    """The file's rows, checked; DataError for a file that cannot be used (see the module)."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    path = Path(path)
    try:
        table = pq.read_table(path)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from None
    except pa.ArrowException as e:
        raise DataError(f"{path}: not a Parquet file ({str(e)[:200]})") from None
    meta = table.schema.metadata or {}
    lower = {name.strip().lower(): name for name in table.column_names}
    col = {"time": next((lower[s] for s in _TIME_NAMES if s in lower), "")}
    for key, spellings in ALIASES.items():  # the best spelling first, as data._columns
        at = next((lower[s] for s in spellings if s in lower), None)
        if at is not None and key != "time":
            col[key] = at
    found = ", ".join(table.column_names) or "(none)"
    kind, needs = ("bars", BAR_NEEDS) if any(k in col for k in BAR_NEEDS) else ("ticks", TICK_NEEDS)
    missing = [k for k in ("time", *needs) if not col.get(k)]
    if missing:
        raise DataError(
            f"{path}: no {' or '.join(missing)} column for {kind} (they need time, {', '.join(needs)}); "
            f"the file has: {found}"
        )
    n = table.num_rows
    if not n:
        raise DataError(f"{path}: no data rows")
    rows = _Rows(path, bad_rows)
    bad = _Bad(n)
    bar_step = _nautilus_bar_step(path, meta) if kind == "bars" and "ts_init" in lower else 0
    ts = _times(path, table.column(lower["ts_init"] if bar_step else col["time"]), bad)
    if bar_step:  # NautilusTrader stamps a bar's ts_init at its close; ours is the period's start
        ts = np.where(bad.good, ts - bar_step * NS, ts)
        _flag(bad, ts < 0, "time is before 1970-01-01, where this system's times start")
    digits = meta.get(b"price_precision", b"")  # NautilusTrader's: prices are rounded to it
    precision = int(digits) if digits.isdigit() else -1
    out: dict[str, np.ndarray] = {"ts_ns": ts}
    fields = ("bid", "ask", "last", "volume") if kind == "ticks" else (*BAR_NEEDS, "volume", "spread")
    for key in fields:
        if key in col:
            out[key] = _numbers(
                path, table.column(col[key]), key, precision if key not in ("volume", "spread") else -1
            )
    if kind == "ticks":
        out.setdefault("last", out["bid"].copy())
        if "flags" in lower:
            flags = table.column(lower["flags"]).combine_chunks().fill_null(ALL_FLAGS)
            out["flags"] = np.asarray(flags.to_numpy(zero_copy_only=False), np.uint32)
    names, ids, symbol_from = _symbols(path, table, col, meta, symbol)
    out["symbol"] = ids
    _check_values(kind, out, bad)
    _check_order(kind, out, bad, names)
    for row in np.flatnonzero(~bad.good).tolist():
        rows.bad(row + 1, bad.what[bad.code[row]])
    keep = bad.good
    if not keep.any():
        raise DataError(f"{path}: no data rows (all {n} skipped)")
    return ParquetFile(
        kind, {k: v[keep] for k, v in out.items()}, names, rows.issues, symbol_from, np.flatnonzero(keep) + 1
    )


_BAR_UNITS = {"SECOND": 1, "MINUTE": 60, "HOUR": 3600, "DAY": 86_400, "WEEK": 604_800}


def _nautilus_bar_step(path: Path, meta: dict[bytes, bytes]) -> int:
    """Seconds per bar of a NautilusTrader bar file (its bar_type, as EUR/USD.SIM-1-MINUTE-BID-
    EXTERNAL), 0 when the file is not one; DataError for bars that are not time bars."""
    bar_type = meta.get(b"bar_type", b"").decode("utf-8", "replace")
    if not bar_type:
        return 0
    m = re.search(r"-(\d+)-([A-Z]+)-[A-Z]+-[A-Z]+$", bar_type)
    if m is None or m[2] not in _BAR_UNITS:
        raise DataError(f"{path}: bar type {bar_type[:80]!r} is not of time bars (N-SECOND .. N-WEEK)")
    return int(m[1]) * _BAR_UNITS[m[2]]


def _times(path: Path, column: Any, bad: _Bad) -> np.ndarray:
    import pyarrow as pa  # type: ignore[import-untyped]

    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    t = column.type
    if pa.types.is_dictionary(t):
        column, t = column.dictionary_decode(), t.value_type
    if column.null_count:
        _flag(bad, column.is_null().to_numpy(zero_copy_only=False), "no time")
        column = column.fill_null(pa.scalar(0 if not pa.types.is_string(t) else "1970-01-01", t))
    if pa.types.is_date(t):
        column, t = column.cast(pa.timestamp("s")), pa.timestamp("s")
    if pa.types.is_timestamp(t):
        scale = {"s": 10**9, "ms": 10**6, "us": 10**3, "ns": 1}[t.unit]
        raw = np.asarray(column.cast(pa.int64()).to_numpy(zero_copy_only=False), np.int64)
        _flag(bad, raw < 0, "time is before 1970-01-01, where this system's times start")
        _flag(bad, raw > MAX_NS // scale, "time is past 2262-04-11, the last time int64 nanoseconds hold")
        return np.where(raw > MAX_NS // scale, 0, raw) * scale
    if pa.types.is_integer(t):
        raw = column.to_numpy(zero_copy_only=False)
        if pa.types.is_unsigned_integer(t):  # Nautilus: uint64 ns
            over = raw > np.uint64(MAX_NS)
            _flag(bad, over, "time is past 2262-04-11, the last time int64 nanoseconds hold")
            raw = np.where(over, 0, raw).astype(np.int64)
        raw = raw.astype(np.int64)
        at = int(np.argmax(bad.good))  # the unit is the first good time's (as a CSV file's first)
        first = int(raw[at])
        name, below, scale = next((u for u in UNITS if abs(first) < u[1]), UNITS[-1])
        try:
            check_first_epoch(first, str(first), name)
        except ValueError as e:
            raise DataError(f"{path}:{at + 1}: {e}") from None
        lower = 0 if name == "seconds" else next(u[1] for u in reversed(UNITS) if u[1] < below)
        other = (np.abs(raw) >= below) | (np.abs(raw) < lower) & (raw != 0)
        _flag(bad, other, f"time is not in {name}, the unit of the file's first time")
        _flag(bad, raw < 0, "time is before 1970-01-01, where this system's times start")
        _flag(bad, raw > MAX_NS // scale, "time is past 2262-04-11, the last time int64 nanoseconds hold")
        return np.where(raw > MAX_NS // scale, 0, raw) * scale
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        reader, out = TimeReader(), np.zeros(len(column), np.int64)
        texts = column.to_pylist()
        if any("/" in (x or "") for x in texts[:1]):
            try:
                reader.settle(x or "" for x in texts)
            except ValueError as e:
                raise DataError(f"{path}: {e}") from None
        for i, text in enumerate(texts):
            try:
                out[i] = reader.read(text or "")
            except ValueError as e:
                bad.one(i, str(e))
        return out
    raise DataError(f"{path}: the time column is {t}: expected a timestamp, an integer epoch or text")


def _numbers(path: Path, column: Any, key: str, precision: int) -> np.ndarray:
    import pyarrow as pa  # type: ignore[import-untyped]

    column = column.combine_chunks() if hasattr(column, "combine_chunks") else column
    t = column.type
    if pa.types.is_fixed_size_binary(t) and t.byte_width in (8, 16):  # NautilusTrader's fixed point
        raw = np.frombuffer(column.buffers()[1], np.uint8)[column.offset * t.byte_width :]
        raw = raw[: len(column) * t.byte_width].reshape(len(column), t.byte_width)
        if t.byte_width == 8:
            x = raw.copy().view("<i8")[:, 0].astype(np.float64) / 1e9
        else:
            words = raw.copy().view("<u8")
            x = (words[:, 1].view("<i8").astype(np.float64) * 2.0**64 + words[:, 0].astype(np.float64)) / 1e16
        return np.round(x, precision) if precision >= 0 else x
    if pa.types.is_integer(t) or pa.types.is_floating(t) or pa.types.is_decimal(t):
        return np.asarray(column.cast(pa.float64()).to_numpy(zero_copy_only=False), np.float64)
    raise DataError(f"{path}: the {key} column is {t}: expected numbers")


def _symbols(
    path: Path, table: Any, col: dict[str, str], meta: dict[bytes, bytes], symbol: str | None
) -> tuple[list[str], np.ndarray, str]:
    if "symbol" in col:
        import pyarrow as pa  # type: ignore[import-untyped]

        column = table.column(col["symbol"]).combine_chunks()
        if column.null_count:
            row = int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0]) + 1
            raise DataError(f"{path}:{row}: no symbol")
        if pa.types.is_dictionary(column.type):  # as written: the names keep their order (their ids)
            encoded = pa.DictionaryArray.from_arrays(column.indices, column.dictionary.cast("string"))
        else:
            encoded = column.cast("string").dictionary_encode()
        names = [str(x) for x in encoded.dictionary.to_pylist()]
        for name in names:
            try:
                check_symbol(name)
            except ValueError as e:
                raise DataError(f"{path}: {e}") from None
        return names, np.asarray(encoded.indices.to_numpy(zero_copy_only=False), np.uint32), ""
    ids = np.zeros(table.num_rows, np.uint32)
    instrument = meta.get(b"instrument_id", b"").decode("utf-8", "replace")
    if instrument and not symbol:  # NautilusTrader: SYMBOL.VENUE, FX as EUR/USD
        name = re.sub(r"\.[^.]*$", "", instrument).replace("/", "")
        try:
            return [check_symbol(name)], ids, "the file's instrument_id"
        except ValueError:
            pass
    name, source = _file_symbol(path, symbol)
    return [name], ids, source


class _Bad:
    """What is wrong with each row: the first thing found (an index into `what`), or -1."""

    def __init__(self, n: int) -> None:
        self.code = np.full(n, -1, np.int32)
        self.what: list[str] = []

    @property
    def good(self) -> np.ndarray:
        return self.code < 0

    def one(self, row: int, what: str) -> None:
        if self.code[row] < 0:
            self.code[row] = len(self.what)
            self.what.append(what)

    def flag(self, mask: np.ndarray, what: str) -> None:
        new = mask & (self.code < 0)
        if new.any():
            self.code[new] = len(self.what)
            self.what.append(what)


def _flag(bad: _Bad, mask: np.ndarray, what: str) -> None:
    bad.flag(np.asarray(mask, bool), what)


def _check_values(kind: str, c: dict[str, np.ndarray], bad: _Bad) -> None:
    prices = ("bid", "ask") if kind == "ticks" else BAR_NEEDS
    for key in prices:
        _flag(bad, ~np.isfinite(c[key]), f"{key} is not a finite number")
        _flag(bad, c[key] <= 0, f"{key} is not a positive price")
    for key in ("volume", "spread"):
        if key in c:
            _flag(bad, ~np.isfinite(c[key]) | (c[key] < 0), f"{key} is not a number >= 0")
    if kind == "ticks":
        _flag(bad, c["ask"] < c["bid"], "ask is below bid")
    else:
        lo, hi = np.minimum(c["open"], c["close"]), np.maximum(c["open"], c["close"])
        _flag(bad, (c["low"] > lo) | (c["high"] < hi), "high / low do not enclose open and close")


def _check_order(kind: str, c: dict[str, np.ndarray], bad: _Bad, names: list[str]) -> None:
    """Time order within each symbol among the rows otherwise good, as data._check_order:
    a row before the latest time so far goes backwards, a bar at it is a duplicate."""
    good = bad.good
    for sid in np.unique(c["symbol"]).tolist():
        rows = np.flatnonzero((c["symbol"] == sid) & good)
        ts = c["ts_ns"][rows]
        before = np.concatenate(([np.iinfo(np.int64).min], np.maximum.accumulate(ts)[:-1]))
        _flag(bad, _rows_mask(len(good), rows[ts < before]), f"time goes backwards for {names[sid]}")
        if kind == "bars":
            _flag(bad, _rows_mask(len(good), rows[ts == before]), f"duplicate bar time for {names[sid]}")


def _rows_mask(n: int, rows: np.ndarray) -> np.ndarray:
    mask = np.zeros(n, bool)
    mask[rows] = True
    return mask


def write(path: str | Path, kind: str, records: np.ndarray, names: list[str], meta: dict[str, Any]) -> Path:
    """`records` (a .sovdata kind's) as a Parquet file at `path`, atomically."""
    import pyarrow as pa  # type: ignore[import-untyped]
    import pyarrow.parquet as pq  # type: ignore[import-untyped]

    from sovereign.files import atomic_writer

    path = Path(path)
    columns: dict[str, Any] = {
        "time": pa.array(np.asarray(records["ts_ns"], np.int64), pa.timestamp("ns", "UTC"))
    }
    columns["symbol"] = pa.DictionaryArray.from_arrays(
        pa.array(np.asarray(records["symbol"], np.int32)), pa.array(names, pa.string())
    )
    for name in records.dtype.names or ():
        if name not in ("ts_ns", "symbol"):
            columns[name] = pa.array(np.ascontiguousarray(records[name]))
    schema_meta = {_META_KEY: orjson.dumps({"kind": kind, **meta}, default=str)}
    table = pa.table(columns).replace_schema_metadata(schema_meta)
    try:
        with atomic_writer(path) as f:
            pq.write_table(table, f)
    except (OSError, pa.ArrowException) as e:
        raise DataError(f"{path}: cannot write: {getattr(e, 'strerror', None) or e}") from None
    return path
