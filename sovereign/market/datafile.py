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

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import orjson

from sovereign.credentials import json_default
from sovereign.files import atomic_writer
from sovereign.market.data import MAX_SYMBOLS, NS, DataError, Symbols, check_symbol, load_csv

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
    meta: dict[str, Any] = field(default_factory=dict)  # the first file's header

    @property
    def timeframe_s(self) -> int:
        return int(self.records["timeframe_s"][0]) if self.kind == "bars" and len(self.records) else 0

    def between(self, start_ns: int | None, end_ns: int | None) -> Market:
        """The records with start <= ts < end (either bound may be None)."""
        ts = self.records["ts_ns"]
        a = 0 if start_ns is None else int(np.searchsorted(ts, start_ns, "left"))
        b = len(ts) if end_ns is None else int(np.searchsorted(ts, end_ns, "left"))
        return Market(self.kind, self.records[a:b], self.names, self.issues, self.meta)


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


def load(paths: list[str] | tuple[str, ...], layout: str = "generic", bad_rows: str = "refuse") -> Market:
    """Any mix of .sovdata and CSV files (`layout`), as one time-ordered Market. Files must
    agree on the kind (ticks or bars) and, for bars, the timeframe."""
    if not paths:
        raise DataError("no data files given")
    symbols = Symbols("the data files")
    parts: list[np.ndarray] = []
    issues: list[tuple[str, int, str]] = []
    kinds: dict[str, str] = {}
    meta: dict[str, Any] = {}
    for p in paths:
        if str(p).endswith(SUFFIX):
            m = open_file(p)
            kind, recs, file_names, issues_here = m.kind, m.records, m.names, m.issues
            meta = meta or m.meta
        else:
            s = load_csv(p, layout, bad_rows)
            kind, file_names = s.kind, s.names
            recs = from_series(s.kind, [(s.records, s.names, s.spread_points)])
            issues_here = [(str(p), line, what) for line, what in s.issues]
        kinds[str(p)] = kind
        issues += issues_here
        ids = np.array([symbols.id(n) for n in file_names], np.uint32)
        if len(recs):
            recs = np.array(recs)  # off the map: symbols are renumbered
            recs["symbol"] = ids[recs["symbol"]]
            parts.append(recs)
    if len(set(kinds.values())) > 1:
        raise DataError("cannot mix tick and bar files: " + ", ".join(f"{p} ({k})" for p, k in kinds.items()))
    kind = next(iter(kinds.values()))
    records = np.concatenate(parts) if parts else np.zeros(0, DTYPES[kind])
    if len(parts) > 1:
        records = records[np.argsort(records["ts_ns"], kind="stable")]
    if kind == "bars" and len(records) and len(np.unique(records["timeframe_s"])) > 1:
        found = sorted(set(records["timeframe_s"].tolist()))
        raise DataError(f"bar files of different timeframes: {found} s")
    return Market(kind, records, symbols.names, issues, meta)


def info(market: Market, gap_s: float | None = None) -> dict[str, Any]:
    """Per symbol: rows, first and last time, and the gaps (no data for longer than gap_s;
    default: 2 bars, or 10 minutes of ticks). Weekend closes show as gaps too: they are
    listed, not judged."""
    r = market.records
    tf = market.timeframe_s
    gap_ns = int((gap_s if gap_s is not None else (2 * tf if tf else 600)) * NS)
    symbols = []
    for sid, name in enumerate(market.names):
        ts = r["ts_ns"][r["symbol"] == sid]
        if not len(ts):
            symbols.append({"symbol": name, "rows": 0})
            continue
        steps = np.diff(ts)
        big = np.flatnonzero(steps > gap_ns)
        longest = np.argsort(steps[big])[::-1][:5]
        symbols.append({
            "symbol": name, "rows": len(ts), "first": _iso(int(ts[0])), "last": _iso(int(ts[-1])),
            "gaps": len(big),
            "longest_gaps": [{"from": _iso(int(ts[big[i]])), "to": _iso(int(ts[big[i] + 1])),
                              "hours": round(float(steps[big[i]]) / NS / 3600, 2)} for i in longest],
        })  # fmt: skip
    out: dict[str, Any] = {"kind": market.kind, "rows": len(r), "symbols": symbols}
    if tf:
        out["timeframe_s"] = tf
    if len(r):
        out["first"], out["last"] = _iso(int(r["ts_ns"][0])), _iso(int(r["ts_ns"][-1]))
    out["bad_rows"] = [{"file": f, "line": line, "what": what} for f, line, what in market.issues]
    return out


def _iso(ns: int) -> str:
    return np.datetime64(ns, "ns").astype("datetime64[ms]").astype(str) + "Z"
