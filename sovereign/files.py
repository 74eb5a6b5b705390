"""Files the CLI writes where someone else may have been first (reports, saved backtest
state), and the checks for reading such a file back as data.

Writing: `write_atomic` writes a temporary file in the destination's directory (a name
no one can guess, created exclusively), syncs it and renames it onto the destination.
The rename replaces whatever entry is there, a symlink included, and never follows it:
a link planted at the destination is replaced, its target untouched. A reader sees the
old file or the new one, never half of one.

Reading: the `want_*` functions take a value decoded from an untrusted file (JSON from
orjson: dict, list, str, int, float, bool or None) and return it as the type asked for,
or raise ValueError naming the field and what it should be.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Iterator
from decimal import Decimal, InvalidOperation
from pathlib import Path
from typing import Any, BinaryIO

__all__ = [
    "atomic_writer",
    "encode_float",
    "want_bool",
    "want_decimal",
    "want_dict",
    "want_float",
    "want_int",
    "want_list",
    "want_str",
    "write_atomic",
]  # fmt: skip


def write_atomic(path: str | Path, data: bytes) -> None:
    """Write `data` to `path` as a new file (mode 0666 less the umask), replacing any file
    or symlink there without following it. On an error the destination is unchanged and
    no temporary file is left. Raises OSError (IsADirectoryError for a directory there)."""
    with atomic_writer(path) as f:
        f.write(data)


@contextlib.contextmanager
def atomic_writer(path: str | Path) -> Iterator[BinaryIO]:
    """`write_atomic` for data written in parts: a file to write to, in place at `path`
    only once the block ends without an error."""
    path = Path(path)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            os.fchmod(f.fileno(), 0o666 & ~_umask())  # mkstemp makes 0600; a plain open the umask's
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    with contextlib.suppress(OSError):  # the rename itself durable; not every filesystem allows it
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _umask() -> int:
    """The process's umask: read from /proc (Linux) without changing it, else set and put back."""
    with contextlib.suppress(OSError, ValueError), open("/proc/self/status") as f:
        for line in f:
            if line.startswith("Umask:"):
                return int(line.split()[1], 8)
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


# ---- reading untrusted data back


def want_int(v: Any, name: str, lo: int = -(2**63), hi: int = 2**63 - 1) -> int:
    """An integer in [lo, hi] (not a bool)."""
    if type(v) is not int or not lo <= v <= hi:
        raise ValueError(f"{name}: {_show(v)} is not an integer in [{lo}, {hi}]")
    return v


def want_float(v: Any, name: str) -> float:
    """A float as `encode_float` writes it: a JSON number, or 'nan', 'inf', '-inf'. An int
    stays an int (it was one when written)."""
    if type(v) in (int, float) and math.isfinite(v):
        return v  # type: ignore[no-any-return]
    if v in ("nan", "inf", "-inf"):
        return float(v)
    raise ValueError(f"{name}: {_show(v)} is not a number")


def encode_float(x: float) -> float | str:
    """A float for JSON, which has no NaN or infinity: those as 'nan', 'inf', '-inf'."""
    return x if math.isfinite(x) else repr(float(x))


def want_str(v: Any, name: str, max_len: int = 1 << 16) -> str:
    if type(v) is not str or len(v) > max_len:
        raise ValueError(f"{name}: {_show(v)} is not a string of at most {max_len} characters")
    return v


def want_bool(v: Any, name: str) -> bool:
    if type(v) is not bool:
        raise ValueError(f"{name}: {_show(v)} is not true or false")
    return v


def want_decimal(v: Any, name: str) -> Decimal:
    """An exact amount written as a string ("1.2345"): finite, of a sane size."""
    if type(v) is str and len(v) <= 64:
        try:
            d = Decimal(v)
        except InvalidOperation:
            d = Decimal("NaN")
        if d.is_finite() and abs(d.adjusted()) <= 40:
            return d
    raise ValueError(f"{name}: {_show(v)} is not an amount as a decimal string")


def want_list(v: Any, name: str, n: int | None = None) -> list[Any]:
    """A list; of exactly n items when n is given."""
    if type(v) is not list or (n is not None and len(v) != n):
        raise ValueError(f"{name}: {_show(v)} is not a list" + ("" if n is None else f" of {n} items"))
    return v


def want_dict(v: Any, name: str, keys: set[str], optional: frozenset[str] = frozenset()) -> dict[str, Any]:
    """An object with exactly `keys`, and any of `optional`."""
    if type(v) is not dict:
        raise ValueError(f"{name}: {_show(v)} is not an object")
    missing, extra = keys - set(v), set(v) - keys - optional
    if missing or extra:
        what = f"lacks {sorted(missing)[0]!r}" if missing else f"has an unknown key {_show(sorted(extra)[0])}"
        raise ValueError(f"{name} {what}")
    return v


def _show(v: Any) -> str:
    """A value for an error message, bounded."""
    text = repr(v)
    return text if len(text) <= 40 else text[:37] + "..."
