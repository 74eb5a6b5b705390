"""The numpy dtypes exported from Python agree with the C structs the extension uses."""

import numpy as np
import pytest

from sovereign import _core
from sovereign.core import BAR_DTYPE, ORDER_DTYPE, QUOTE_DTYPE, SIGNAL_DTYPE, TICK_DTYPE


@pytest.mark.parametrize(
    ("ours", "theirs", "size"),
    [
        (TICK_DTYPE, _core.TICK_DTYPE, 56),
        (BAR_DTYPE, _core.BAR_DTYPE, 56),
        (SIGNAL_DTYPE, _core.SIGNAL_DTYPE, 72),
        (ORDER_DTYPE, _core.ORDER_DTYPE, 104),
        (QUOTE_DTYPE, _core.QUOTE_DTYPE, 32),
    ],
)
def test_python_dtype_matches_compiled_struct(ours: np.dtype, theirs: np.dtype, size: int) -> None:
    assert ours.itemsize == theirs.itemsize == size
    assert ours.names == theirs.names
    for name in ours.names:
        assert ours.fields[name][:2] == theirs.fields[name][:2], name  # dtype and offset
    assert ours == theirs


def test_tick_field_values_survive_the_boundary() -> None:
    """Bytes written by numpy are read by C++ at the same offsets (and back)."""
    from sovereign.core import TickRing
    from tests.helpers import ring_name

    t = np.zeros(1, TICK_DTYPE)
    t[0] = (123456789, 1.25, 1.5, 1.375, 7.0, 42, 0x1E, 987654321)
    with TickRing.create(ring_name("rec"), 8) as ring:
        ring.push(t)
        back = ring.pop(1)
    assert back.tobytes() == t.tobytes()
    assert back["symbol"][0] == 42 and back["flags"][0] == 0x1E and back["ask"][0] == 1.5


def test_no_record_has_padding_that_numpy_could_drop() -> None:
    for dt in (TICK_DTYPE, BAR_DTYPE, SIGNAL_DTYPE, ORDER_DTYPE, QUOTE_DTYPE):
        assert sum(dt.fields[n][0].itemsize for n in dt.names) == dt.itemsize
        assert np.concatenate([np.zeros(1, dt), np.zeros(2, dt)]).dtype == dt


def test_signal_fields_are_those_of_design() -> None:
    assert SIGNAL_DTYPE.names == (
        "ts_ns", "agent", "symbol", "side", "flags", "touches", "timeframe_s",
        "conviction", "entry", "stop", "target", "level", "origin_ns",
    )  # fmt: skip
