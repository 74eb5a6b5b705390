"""Market data in Sovereign's own binary form (`.sovdata`), and the loader backtests use.

A `.sovdata` file is a header and fixed-size little-endian records, so a year of ticks
opens as a memory map with no parsing:

    magic   8 B   b"SOVDATA\\0"
    version u32   FORMAT_VERSION
    length  u32   of the JSON header that follows
    header  JSON  kind ("ticks" | "bars"), symbols, timeframe_s (bars), source files,
                  plus whatever the writer adds (a recording: the config it ran with);
                  padded with spaces to a multiple of 64 bytes
    records       FILE_TICK_DTYPE (48 B) or FILE_BAR_DTYPE (64 B), time order

Files written by `sovereign data import` are complete when renamed into place. A
recording is appended to while the system runs; a record cut short by a crash at its end
is ignored and reported (`Market.issues`), never read as a tick.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sovereign.core import TICK_FLAG_ASK, TICK_FLAG_BID, TICK_FLAG_LAST, TICK_FLAG_VOLUME
from sovereign.credentials import json_default
from sovereign.files import atomic_writer
from sovereign.market import parquet
from sovereign.market.data import (
    MAX_SYMBOLS,
    NS,
    DataError,
    Symbols,
    check_symbol,
    infer_timeframes,
    load_csv,
)

MAGIC = b"SOVDATA\x00"
FORMAT_VERSION = 1
SUFFIX = ".sovdata"
_PREFIX = 16  # magic + version + header length

FILE_TICK_DTYPE = np.dtype(
    [("ts_ns", "<i8"), ("bid", "<f8"), ("ask", "<f8"), ("last", "<f8"), ("volume", "<f8"),
     ("symbol", "<u4"), ("flags", "<u4")]
)  # fmt: skip
FILE_BAR_DTYPE = np.dtype(
    [("ts_ns", "<i8"), ("open", "<f8"), ("high", "<f8"), ("low", "<f8"), ("close", "<f8"),
     ("volume", "<f8"), ("spread", "<f8"), ("symbol", "<u4"), ("timeframe_s", "<u4")]
)  # fmt: skip
DTYPES = {"ticks": FILE_TICK_DTYPE, "bars": FILE_BAR_DTYPE}


@dataclass
class Market:
    """One time-ordered stream of ticks or bars over any number of symbols."""

    kind: str  # "ticks" or "bars"
    records: np.ndarray  # FILE_TICK_DTYPE or FILE_BAR_DTYPE
    names: list[str]
    issues: list[tuple[str, int, str]] = field(default_factory=list)  # (file, line or record, what)
    # The first .sovdata file's header, and from `load`: kind, symbols, and for bars
    # timeframes_s (each symbol's, in seconds) and timeframe_s (the smallest of them).
    meta: dict[str, Any] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)  # what a reader should know (a symbol from a file name)

    @property
    def timeframe_s(self) -> int:
        """Bars: the timeframe in seconds (the smallest, where symbols have their own); ticks: 0."""
        if self.kind != "bars" or not len(self.records):
            return 0
        return int(self.meta.get("timeframe_s") or self.records["timeframe_s"][0])

    def between(self, start_ns: int | None, end_ns: int | None) -> Market:
        """The records with start <= ts < end (either bound may be None)."""
        ts = self.records["ts_ns"]
        a = 0 if start_ns is None else int(np.searchsorted(ts, start_ns, "left"))
        b = len(ts) if end_ns is None else int(np.searchsorted(ts, end_ns, "left"))
        return Market(self.kind, self.records[a:b], self.names, self.issues, self.meta, self.notes)


def header_bytes(meta: dict[str, Any]) -> bytes:
    body = orjson.dumps(meta, default=json_default)
    body += b" " * (-(len(body) + _PREFIX) % 64)
    return MAGIC + FORMAT_VERSION.to_bytes(4, "little") + len(body).to_bytes(4, "little") + body


def read_header(path: Path) -> tuple[dict[str, Any], int]:
    """The header of a .sovdata file and the offset of its first record."""
    try:
        with path.open("rb") as f:
            prefix = f.read(_PREFIX)
            if len(prefix) < _PREFIX or prefix[:8] != MAGIC:
                raise DataError(f"{path}: not a {SUFFIX} file (no SOVDATA magic)")
            version = int.from_bytes(prefix[8:12], "little")
            if version != FORMAT_VERSION:
                raise DataError(f"{path}: format version {version}; this build reads {FORMAT_VERSION}")
            length = int.from_bytes(prefix[12:16], "little")
            body = f.read(length)
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror}") from None
    try:
        meta = orjson.loads(body)
        if len(body) != length or meta.get("kind") not in DTYPES or not isinstance(meta.get("symbols"), list):
            raise ValueError("kind or symbols missing")
    except ValueError as e:
        raise DataError(f"{path}: corrupt header ({e})") from None
    return meta, _PREFIX + length


def write(path: str | Path, market: Market, **extra: Any) -> Path:
    """Write `market` to `path` (.sovdata), atomically: complete or not there."""
    path = Path(path)
    meta = {"kind": market.kind, "symbols": market.names, "rows": len(market.records), **extra}
    if market.kind == "bars":
        meta["timeframe_s"] = market.timeframe_s
    try:  # a fresh temporary file, renamed over the destination: a symlink there is replaced
        with atomic_writer(path) as f:
            f.write(header_bytes(meta))
            f.write(np.ascontiguousarray(market.records, DTYPES[market.kind]).data)
    except OSError as e:
        raise DataError(f"{path}: cannot write: {e.strerror or e}") from None
    return path


def save(path: str | Path, market: Market, **extra: Any) -> Path:
    """`market` as the file `path` names by its suffix: .sovdata (`write`), .parquet
    (parquet.write) or .csv (the generic layout: ISO times to the nanosecond, every field,
    so it loads back the same), atomically."""
    path = Path(path)
    if path.suffix == SUFFIX:
        return write(path, market, **extra)
    meta: dict[str, Any] = {"symbols": market.names, **extra}
    if market.kind == "bars":
        meta["timeframe_s"] = market.timeframe_s
    if path.suffix == parquet.SUFFIX:
        return parquet.write(path, market.kind, market.records, market.names, meta)
    if path.suffix != ".csv":
        raise DataError(f"{path}: write .sovdata, .parquet or .csv")
    r = market.records
    fields = (("bid", "ask", "last", "volume", "flags") if market.kind == "ticks"
              else ("open", "high", "low", "close", "volume", "spread"))  # fmt: skip
    try:
        with atomic_writer(path) as f:
            f.write(("time,symbol," + ",".join(fields) + "\n").encode())
            for a in range(0, len(r), 100_000):  # str(float) is its repr: it reads back the same
                block = r[a:a + 100_000]
                times = (block["ts_ns"].astype("datetime64[ns]").astype(str)).tolist()
                names = [market.names[s] for s in block["symbol"].tolist()]
                cols = [block[name].tolist() for name in fields]
                rows = zip(times, names, *cols, strict=True)
                f.write("".join(f"{t}Z,{n},{','.join(map(str, v))}\n" for t, n, *v in rows).encode())
    except OSError as e:
        raise DataError(f"{path}: cannot write: {e.strerror or e}") from None
    return path


def open_file(path: str | Path) -> Market:
    """A .sovdata file as a Market; the records are a read-only memory map."""
    path = Path(path)
    meta, offset = read_header(path)
    dtype = DTYPES[meta["kind"]]
    size = path.stat().st_size - offset
    n, tail = divmod(size, dtype.itemsize)
    issues = []
    if tail:
        cut = f"the last record is cut short ({tail} of {dtype.itemsize} bytes): ignored"
        issues.append((str(path), n, cut))
    if "rows" in meta and meta["rows"] != n:
        raise DataError(f"{path}: the header promises {meta['rows']} records, the file holds {n}")
    names = meta.get("symbols")
    if not isinstance(names, list) or len(names) > MAX_SYMBOLS or not all(isinstance(x, str) for x in names):
        raise DataError(f"{path}: the header's symbols are not a list of at most {MAX_SYMBOLS} names")
    try:
        for name in names:
            check_symbol(name)
    except ValueError as e:
        raise DataError(f"{path}: the header's {e}") from None
    records = np.memmap(path, dtype, "r", offset, (n,)) if n else np.zeros(0, dtype)
    return Market(meta["kind"], records, list(names), issues, meta)


def from_series(kind: str, parts: list[tuple[np.ndarray, list[str], np.ndarray | None]]) -> np.ndarray:
    """CSV rows (data.Series records) in the file layout."""
    out = []
    for recs, _, spread in parts:
        f = np.zeros(len(recs), DTYPES[kind])
        for name in f.dtype.names or ():
            if name == "spread":
                f["spread"] = 0.0 if spread is None else spread
            else:
                f[name] = recs[name]
        out.append(f)
    return np.concatenate(out) if out else np.zeros(0, DTYPES[kind])


def load(paths: list[str] | tuple[str, ...], layout: str = "generic", bad_rows: str = "refuse",
         symbol: str | None = None) -> Market:  # fmt: skip
    """Any mix of .sovdata, Parquet and CSV files (`layout`), as one time-ordered Market.
    Files must agree on the kind (ticks or bars); a symbol keeps one timeframe across them
    (symbols may differ), and two files may not both cover a stretch of one symbol's time.
    `symbol` names the symbol of files that have no symbol column (see data.load_csv)."""
    if not paths:
        raise DataError("no data files given")
    symbols = Symbols("the data files")
    parts: list[np.ndarray] = []
    issues: list[tuple[str, int, str]] = []
    notes: list[str] = []
    kinds: dict[str, str] = {}
    spans: dict[str, list[tuple[int, int, str]]] = {}  # symbol -> (first, last, file) of each file
    meta: dict[str, Any] = {}
    for p in paths:
        kind, recs, file_names, issues_here, symbol_from = _read(str(p), layout, bad_rows, symbol)
        if str(p).endswith(SUFFIX):
            meta = meta or open_file(p).meta
        if symbol_from:
            hint = " (--symbol sets it)" if symbol_from != "--symbol" else ""
            notes.append(f"{p}: symbol {file_names[0]} from {symbol_from}{hint}")
        kinds[str(p)] = kind
        issues += issues_here
        ids = np.array([symbols.id(n) for n in file_names], np.uint32)
        if len(recs):
            recs = np.array(recs)  # off the map: symbols are renumbered
            recs["symbol"] = ids[recs["symbol"]]
            parts.append(recs)
            for sid, first, last in _spans(recs):
                spans.setdefault(symbols.names[sid], []).append((first, last, str(p)))
    if len(set(kinds.values())) > 1:
        raise DataError("cannot mix tick and bar files: " + ", ".join(f"{p} ({k})" for p, k in kinds.items()))
    kind = next(iter(kinds.values()))
    _no_overlap(spans, kind)
    records = np.concatenate(parts) if parts else np.zeros(0, DTYPES[kind])
    if len(records) and (np.diff(records["ts_ns"]) < 0).any():  # files, or one file's symbols in blocks
        records = records[np.argsort(records["ts_ns"], kind="stable")]
    meta = {**meta, "kind": kind, "symbols": symbols.names}
    if kind == "bars" and len(records):
        meta["timeframes_s"] = _timeframes(records, symbols.names)
        meta["timeframe_s"] = min(meta["timeframes_s"].values())
    return Market(kind, records, symbols.names, issues, meta, notes)


def _read(
    path: str, layout: str, bad_rows: str, symbol: str | None
) -> tuple[str, np.ndarray, list[str], list[tuple[str, int, str]], str]:
    """One file: its kind, records (the file layout), names, skipped rows and where its symbol came from."""
    if path.endswith(SUFFIX):
        m = open_file(path)
        if len(m.records) and m.records["ts_ns"][0] < 0:  # an import before times were checked
            raise DataError(f"{path} record 1: time {int(m.records['ts_ns'][0])} ns is before 1970-01-01")
        return m.kind, m.records, m.names, m.issues, ""
    if path.endswith(parquet.SUFFIX):
        pf = parquet.read(path, bad_rows, symbol)
        recs = np.zeros(len(pf.columns["ts_ns"]), DTYPES[pf.kind])
        if pf.kind == "ticks":
            recs["flags"] = TICK_FLAG_BID | TICK_FLAG_ASK | TICK_FLAG_LAST | TICK_FLAG_VOLUME
        for name, values in pf.columns.items():
            recs[name] = values
        if pf.kind == "bars" and len(recs):
            infer_timeframes(recs, pf.names, path, pf.rows)
        return pf.kind, recs, pf.names, [(path, row, what) for row, what in pf.issues], pf.symbol_from
    s = load_csv(path, layout, bad_rows, symbol)
    recs = from_series(s.kind, [(s.records, s.names, s.spread_points)])
    return s.kind, recs, s.names, [(path, line, what) for line, what in s.issues], s.symbol_from


def _spans(recs: np.ndarray) -> list[tuple[int, int, int]]:
    """(symbol, first time, last time) of each symbol of one file's records."""
    order = np.argsort(recs["symbol"], kind="stable")
    sym, ts = recs["symbol"][order], recs["ts_ns"][order]
    starts = np.flatnonzero(np.concatenate(([True], sym[1:] != sym[:-1])))
    ends = np.concatenate((starts[1:], [len(sym)])) - 1
    pairs = zip(starts.tolist(), ends.tolist(), strict=True)
    return [(int(sym[a]), int(ts[a : b + 1].min()), int(ts[a : b + 1].max())) for a, b in pairs]


def _no_overlap(spans: dict[str, list[tuple[int, int, str]]], kind: str) -> None:
    """Two files of one symbol must not share time (the same data twice would interleave):
    bars may not meet at one time; ticks may (a file cut inside one millisecond)."""
    for name, ranges in spans.items():
        ranges.sort()
        for (a0, a1, fa), (b0, b1, fb) in itertools.pairwise(ranges):
            if b0 < a1 or (kind == "bars" and b0 == a1):
                raise DataError(f"{name}'s data in {fa} ({_iso(a0)} .. {_iso(a1)}) and in {fb} "
                                f"({_iso(b0)} .. {_iso(b1)}) overlap: give each stretch of time once")


def _timeframes(records: np.ndarray, names: list[str]) -> dict[str, int]:
    """Each symbol's bar timeframe; one symbol with two (from two files) is refused."""
    pairs = np.unique(np.stack([records["symbol"], records["timeframe_s"]]).astype(np.int64), axis=1)
    out: dict[str, int] = {}
    for sid, tf in pairs.T.tolist():
        if names[sid] in out:
            raise DataError(f"{names[sid]} has bars of {out[names[sid]]} s and of {tf} s in the files: "
                            "one timeframe a symbol")  # fmt: skip
        out[names[sid]] = tf
    return out


TIMEFRAME_NAMES = {60: "M1", 300: "M5", 900: "M15", 1800: "M30", 3600: "H1", 14_400: "H4", 86_400: "D1",
                   604_800: "W1"}  # fmt: skip


def timeframe_name(seconds: int) -> str:
    """M1, H4, ... or '90 s'."""
    return TIMEFRAME_NAMES.get(int(seconds), f"{int(seconds)} s")


def info(market: Market, gap_s: float | None = None) -> dict[str, Any]:
    """Per symbol: rows, first and last time, its timeframe (bars), and the gaps (no data
    for longer than gap_s; default: 2 of its bars, or 10 minutes of ticks). Weekend closes
    show as gaps too: they are listed, not judged."""
    r = market.records
    timeframes = market.meta.get("timeframes_s")
    if not timeframes:
        timeframes = _timeframes(r, market.names) if market.kind == "bars" and len(r) else {}
    symbols = []
    for sid, name in enumerate(market.names):
        ts = r["ts_ns"][r["symbol"] == sid]
        if not len(ts):
            symbols.append({"symbol": name, "rows": 0})
            continue
        tf = timeframes.get(name, 0)
        gap_ns = int((gap_s if gap_s is not None else (2 * tf if tf else 600)) * NS)
        steps = np.diff(ts)
        big = np.flatnonzero(steps > gap_ns)
        longest = np.argsort(steps[big])[::-1][:5]
        symbols.append({
            "symbol": name, "rows": len(ts), **({"timeframe_s": tf} if tf else {}),
            "first": _iso(int(ts[0])), "last": _iso(int(ts[-1])), "gaps": len(big),
            "longest_gaps": [{"from": _iso(int(ts[big[i]])), "to": _iso(int(ts[big[i] + 1])),
                              "hours": round(float(steps[big[i]]) / NS / 3600, 2)} for i in longest],
        })  # fmt: skip
    out: dict[str, Any] = {"kind": market.kind, "rows": len(r), "symbols": symbols}
    if timeframes:
        out["timeframe_s"], out["timeframes_s"] = min(timeframes.values()), timeframes
    if len(r):
        out["first"], out["last"] = _iso(int(r["ts_ns"][0])), _iso(int(r["ts_ns"][-1]))
    out["bad_rows"] = [{"file": f, "line": line, "what": what} for f, line, what in market.issues]
    out["notes"] = list(market.notes)
    return out


def _iso(ns: int) -> str:
    return np.datetime64(ns, "ns").astype("datetime64[ms]").astype(str) + "Z"
