"""The MT5 bridge library (csrc/bridge/sovbridge.h) through cffi, both faces: the engine's
(`Bridge.engine`, used by mt5.py) and the terminal's (`Bridge.terminal`, used by the
terminal simulator exactly as the EA uses the DLL). The header's contract holds: no call
blocks, a record is consumed only once checked and copied, and an error comes back as a
`BridgeError` carrying the library's code and message.

Records cross as numpy structured arrays whose dtypes are read from the C structs, so
the Python side cannot drift from the C layout.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

import numpy as np
from cffi import FFI  # type: ignore[import-untyped]

import sovereign

LIB_NAME = "libsovbridge.so"
DLL_NAME = "sovbridge.dll"
WINTEST_NAME = "sovbridge_wintest.exe"


class BridgeError(RuntimeError):
    """A bridge call failed: `code` is the library's SB_E_* status, the text its message."""

    def __init__(self, code: int, message: str):
        super().__init__(f"{message} ({code})")
        self.code = code
        self.message = message


def _candidates(name: str) -> list[Path]:
    """Where an installed build file may be: beside this module, and under each directory
    of the sovereign package (an editable install keeps the built files in site-packages)."""
    dirs = [Path(__file__).parent / "_bridge"]
    dirs += [Path(p) / "broker" / "_bridge" for p in sovereign.__path__]
    return [d / name for d in dirs]


def find_file(name: str) -> Path | None:
    """The installed build file `name` (the library, its header, the DLL, the Windows test
    program), or None. SOVEREIGN_BRIDGE_DIR names another directory to look in first."""
    extra = os.environ.get("SOVEREIGN_BRIDGE_DIR")
    for p in ([Path(extra) / name] if extra else []) + _candidates(name):
        if p.is_file():
            return p
    if name == "sovbridge.h":  # a source checkout
        src = Path(__file__).resolve().parents[2] / "csrc" / "bridge" / name
        return src if src.is_file() else None
    return None


def _cdef_text(header: str) -> str:
    m = re.search(r"/\* cdef-begin.*?\*/(.*)/\* cdef-end \*/", header, re.S)
    if m is None:
        raise RuntimeError("sovbridge.h has no cdef-begin/cdef-end section")
    text = m.group(1).replace("SB_API ", "")
    return re.sub(r"/\*.*?\*/", "", text, flags=re.S)


class _Lib:
    """The loaded library and its constants (loaded once per process)."""

    _loaded: _Lib | None = None

    def __init__(self) -> None:
        header, lib = find_file("sovbridge.h"), find_file(LIB_NAME)
        if header is None or lib is None:
            raise BridgeError(
                -2,
                f"the MT5 bridge library is not built ({LIB_NAME} and sovbridge.h not found "
                f"in {_candidates(LIB_NAME)[0].parent}): reinstall the package",
            )
        self.ffi = FFI()
        self.ffi.cdef(_cdef_text(header.read_text()))
        self.lib: Any = self.ffi.dlopen(str(lib))
        self.path = lib

    @classmethod
    def get(cls) -> _Lib:
        if cls._loaded is None:
            cls._loaded = _Lib()
        return cls._loaded


def lib() -> Any:
    """The cffi library object (its constants: `lib().SB_RING_TICKS` ...)."""
    return _Lib.get().lib


_NUMPY = {"int32_t": "<i4", "uint32_t": "<u4", "int64_t": "<i8", "uint64_t": "<u8", "double": "<f8"}


def record_dtype(ctype: str) -> np.dtype:
    """The numpy dtype of a C record (`sb_tick` ...), field for field, offsets included."""
    ffi = _Lib.get().ffi
    t = ffi.typeof(ctype)
    names, formats, offsets = [], [], []
    for name, field in t.fields:
        ft = field.type
        if ft.kind == "array":
            fmt = f"S{ft.length}" if ft.item.cname == "char" else (_NUMPY[ft.item.cname], (ft.length,))
        else:
            fmt = _NUMPY[ft.cname]
        names.append(name)
        formats.append(fmt)
        offsets.append(field.offset)
    return np.dtype({"names": names, "formats": formats, "offsets": offsets, "itemsize": ffi.sizeof(t)})


def _w(ffi: Any, s: str) -> Any:
    """A NUL-terminated UTF-16 copy of s (what MQL5 passes for a string)."""
    return ffi.from_buffer("uint16_t[]", (s + "\0").encode("utf-16-le"))


RING_TYPES = ("sb_tick", "sb_spec", "sb_account", "sb_result", "sb_deal", "sb_position", "sb_request")


class Bridge:
    """One open handle on a bridge file, the engine's face or the terminal's."""

    def __init__(self, handle: int, face: str):
        L = _Lib.get()
        self.ffi, self.lib, self.handle, self.face = L.ffi, L.lib, handle, face
        self.dtypes = [record_dtype(t) for t in RING_TYPES]
        self._err = self.ffi.new("char[]", 400)

    # ---- opening

    @classmethod
    def engine(cls, path: str | os.PathLike[str], owner_uid: int = -1) -> Bridge:
        """Map an existing bridge file (the terminal made it). BridgeError if it is absent,
        not trusted (owner, mode), of another version or layout, or not ready yet."""
        L = _Lib.get()
        err = L.ffi.new("char[]", 400)
        h = L.lib.sbe_open(os.fsencode(path), owner_uid, err, 400)
        if h <= 0:
            raise BridgeError(int(h), L.ffi.string(err).decode(errors="replace"))
        return cls(int(h), "engine")

    @classmethod
    def terminal(cls, path: str) -> Bridge:
        """Create the bridge file anew, as the EA does (a Wine path `Z:\\...` or a POSIX path)."""
        L = _Lib.get()
        err = L.ffi.new("uint16_t[]", 400)
        h = L.lib.sbt_open_w(_w(L.ffi, path), err, 400)
        if h <= 0:
            raise BridgeError(int(h), _wstring(L.ffi, err))
        return cls(int(h), "terminal")

    def close(self) -> None:
        if self.handle:
            self.lib.sb_close(self.handle)
            self.handle = 0

    def __enter__(self) -> Bridge:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- both faces

    def error(self) -> str:
        self.lib.sb_error(self.handle, self._err, 400)
        return str(self.ffi.string(self._err).decode(errors="replace"))

    def check(self, rc: int) -> int:
        """rc if it is SB_OK/EMPTY/FULL, else raise BridgeError with the handle's message."""
        if rc < 0:
            raise BridgeError(rc, self.error() if rc != self.lib.SB_E_HANDLE else "not an open bridge handle")
        return rc

    def hello(self) -> tuple[int, int]:
        """(this library's ABI version, the file's epoch)."""
        abi, epoch = self.ffi.new("uint32_t *"), self.ffi.new("uint64_t *")
        self.check(self.lib.sb_hello(self.handle, abi, epoch))
        return int(abi[0]), int(epoch[0])

    def beat(self) -> None:
        self.check(self.lib.sb_beat(self.handle))

    def peer(self, timeout_ms: int) -> tuple[int, int, str]:
        """(status, ms since the other side last beat, message): SB_OK, SB_E_PEER_STOPPED
        or SB_E_PEER_CLOSED; never raises for those."""
        age = self.ffi.new("int64_t *")
        rc = self.lib.sb_peer(self.handle, timeout_ms, age)
        if rc in (self.lib.SB_E_PEER_STOPPED, self.lib.SB_E_PEER_CLOSED):
            return rc, int(age[0]), self.error()
        self.check(rc)
        return rc, int(age[0]), ""

    def pending(self, ring: int) -> int:
        return int(self.check(self.lib.sb_pending(self.handle, ring)))

    def stats(self, ring: int) -> dict[str, int]:
        s = self.ffi.new("sb_ring_stats *")
        self.check(self.lib.sb_stats(self.handle, ring, s))
        return {"pushed": s.pushed, "popped": s.popped, "full": s.full, "corrupt_skipped": s.corrupt_skipped}

    # ---- engine face

    def poll(self, ring: int, max_records: int = 4096) -> np.ndarray:
        """Up to max_records records of a terminal-to-engine ring. A bad record stops the
        batch: the good ones before it are returned first; the next call raises
        BridgeError(SB_E_CORRUPT) and the record stays until `skip`."""
        out = np.empty(max_records, self.dtypes[ring])
        got = self.ffi.new("int32_t *")
        rc = self.lib.sbe_poll(self.handle, ring, self.ffi.from_buffer(out), out.itemsize, max_records, got)
        if rc < 0 and got[0] == 0:
            self.check(rc)
        return out[: got[0]]

    def skip(self, ring: int) -> None:
        self.check(self.lib.sbe_skip(self.handle, ring))

    def request(self, rec: np.ndarray) -> bool:
        """Send one request (a record of the sb_request dtype); False when the ring is full."""
        buf = np.ascontiguousarray(rec, self.dtypes[self.lib.SB_RING_REQUESTS]).reshape(1)
        return (
            self.check(self.lib.sbe_request(self.handle, self.ffi.from_buffer("sb_request[]", buf)))
            == self.lib.SB_OK
        )

    def recreated(self) -> bool:
        """Whether the terminal side made a new bridge file (this handle's is retired or gone)."""
        rc = self.lib.sbe_check(self.handle)
        if rc == self.lib.SB_E_RECREATED:
            return True
        self.check(rc)
        return False

    # ---- terminal face (the simulator calls what the EA calls)

    def push(self, ring: int, records: np.ndarray) -> int:
        """Push records of a terminal-to-engine ring; returns how many fitted."""
        buf = np.ascontiguousarray(records, self.dtypes[ring])
        n = self.ffi.new("int32_t *")
        rc = self.lib.sbt_push(self.handle, ring, self.ffi.from_buffer(buf), buf.itemsize, len(buf), n)
        if rc < 0:
            self.check(rc)
        return int(n[0])

    def take_request(self) -> np.void | None:
        out = np.zeros(1, self.dtypes[self.lib.SB_RING_REQUESTS])
        rc = self.check(self.lib.sbt_take_request(self.handle, self.ffi.from_buffer("sb_request[]", out)))
        return None if rc == self.lib.SB_EMPTY else out[0]

    def account(
        self,
        login: int,
        margin_mode: int,
        connected: bool,
        trade_allowed: bool,
        balance: float,
        equity: float,
        margin: float,
        currency: str,
        server: str,
    ) -> int:
        f = self.ffi
        return self.check(
            self.lib.sbt_account_w(
                self.handle,
                login,
                margin_mode,
                int(connected),
                int(trade_allowed),
                1,
                balance,
                equity,
                margin,
                equity - margin,
                _w(f, currency),
                _w(f, server),
            )
        )

    def spec(
        self,
        symbol: str,
        exists: bool,
        digits: int = 0,
        point: float = 0,
        contract_size: float = 0,
        volume_min: float = 0,
        volume_max: float = 0,
        volume_step: float = 0,
        stops_level: int = 0,
        filling_mode: int = 0,
        execution_mode: int = 0,
        base: str = "",
        profit: str = "",
        margin: str = "",
    ) -> int:
        f = self.ffi
        return self.check(
            self.lib.sbt_spec_w(
                self.handle,
                _w(f, symbol),
                int(exists),
                digits,
                point,
                point,
                1.0,
                contract_size,
                volume_min,
                volume_max,
                volume_step,
                stops_level,
                filling_mode,
                execution_mode,
                4,
                _w(f, base),
                _w(f, profit),
                _w(f, margin),
            )
        )

    def tick(
        self,
        symbol: str,
        time_msc: int,
        bid: float,
        ask: float,
        last: float = 0.0,
        volume: float = 0.0,
        flags: int = 6,
    ) -> int:
        """One tick, as the EA forwards it; SB_FULL when the engine is not reading."""
        return self.check(
            self.lib.sbt_tick_w(self.handle, _w(self.ffi, symbol), time_msc, bid, ask, last, volume, flags)
        )

    def result(
        self,
        request_id: int,
        cid: int,
        action: int,
        retcode: int,
        deal: int = 0,
        order: int = 0,
        volume: float = 0,
        price: float = 0,
        bid: float = 0,
        ask: float = 0,
        time_msc: int = 0,
        comment: str = "",
    ) -> int:
        return self.check(
            self.lib.sbt_result_w(
                self.handle,
                request_id,
                cid,
                action,
                retcode,
                deal,
                order,
                volume,
                price,
                bid,
                ask,
                time_msc,
                _w(self.ffi, comment),
            )
        )

    def deal(self, d: dict[str, Any], replay: bool = False) -> int:
        f = self.ffi
        return self.check(
            self.lib.sbt_deal_w(
                self.handle,
                d["ticket"],
                d["order"],
                d["position"],
                _w(f, d["symbol"]),
                d["type"],
                d["entry"],
                d["reason"],
                d["volume"],
                d["price"],
                d.get("profit", 0.0),
                d.get("commission", 0.0),
                0.0,
                d["magic"],
                d["time_msc"],
                int(replay),
                _w(f, d["comment"]),
            )
        )

    def position(self, snapshot: int, index: int, count: int, p: dict[str, Any]) -> int:
        f = self.ffi
        return self.check(
            self.lib.sbt_position_w(
                self.handle,
                snapshot,
                index,
                count,
                p.get("ticket", 0),
                _w(f, p.get("symbol", "")),
                p.get("type", 0),
                p.get("volume", 0.0),
                p.get("price", 0.0),
                p.get("sl", 0.0),
                p.get("tp", 0.0),
                0.0,
                p.get("magic", 0),
                p.get("time_msc", 0),
                _w(f, p.get("comment", "")),
            )
        )


def _wstring(ffi: Any, buf: Any) -> str:
    n = 0
    while buf[n]:
        n += 1
    return bytes(ffi.buffer(buf, 2 * n)).decode("utf-16-le", errors="replace")


def text(field: bytes) -> str:
    """A record's char array as str (NUL-terminated UTF-8; the library checked the NUL)."""
    return field.split(b"\0", 1)[0].decode(errors="replace")
