"""A backtest's saved state (Backtest.snapshot / restore, `backtest --save-state/--resume`)
is data, never code: a file crafted with a pickle payload is refused and runs nothing;
truncated, garbled, other-version and ill-typed files are refused with a ValueError;
every kind of run (ticks, bars, with kept signals) resumes exactly."""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import pickle
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sovereign.market.datafile import Market, write
from sovereign.research import backtest as engine
from tests.research.test_backtest import CONFIG, _outcome, bar_market, sim_market

CLI = [sys.executable, "-m", "sovereign.cli"]
OLD_MAGIC = b"SOVBT\x00\x01\x00"  # format 1: a pickle behind a sha256 anyone can recompute


class _Payload:
    """Unpickled, it would run a shell command that creates `marker`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (os.system, (f"touch {self.marker}",))


def _pickle_file(marker: Path) -> bytes:
    """A format-1 state file whose pickle creates `marker`, its checksum right."""
    body = pickle.dumps({"names": ["A"], "evil": _Payload(marker)})
    return OLD_MAGIC + hashlib.sha256(body).digest() + body


def _sealed(body: bytes) -> bytes:
    """A body behind this version's magic and a correct checksum: what a forger writes."""
    return engine.SNAPSHOT_MAGIC + hashlib.sha256(body).digest() + body


def _members(blob: bytes) -> dict[str, bytes]:
    body = blob[len(engine.SNAPSHOT_MAGIC) + 32 :]
    with zipfile.ZipFile(io.BytesIO(body)) as z:
        return {name: z.read(name) for name in z.namelist()}


def _rezip(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_STORED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return _sealed(buf.getvalue())


def _npy(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.lib.format.write_array(buf, arr, allow_pickle=True)
    return buf.getvalue()


def _state_doc(blob: bytes) -> dict:
    raw = _members(blob)["state.npy"]
    return orjson.loads(np.load(io.BytesIO(raw), allow_pickle=False).tobytes())


def _with_doc(blob: bytes, doc: dict) -> bytes:
    members = _members(blob)
    members["state.npy"] = _npy(np.frombuffer(orjson.dumps(doc), np.uint8))
    return _rezip(members)


@pytest.fixture(scope="module")
def mid_run() -> bytes:
    """A bars run stopped halfway: positions, pending orders, quotes, a live book."""
    m = bar_market(3, 4_000)
    bt = engine.Backtest(CONFIG, m.names, m.kind, keep_signals=True)
    bt.feed(m.records[: len(m.records) // 2])
    assert bt.out.fills and bt.broker.positions
    return bt.snapshot()


# ---- a pickle payload never runs


def test_a_state_file_with_a_pickle_payload_is_refused_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    with pytest.raises(ValueError, match="format 1"):
        engine.Backtest.restore(_pickle_file(marker))
    assert not marker.exists()


def test_the_cli_refuses_a_pickle_payload_and_runs_nothing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    state = tmp_path / "run.state"
    state.write_bytes(_pickle_file(marker))
    data = write(tmp_path / "d.sovdata", sim_market(1, 5_000))
    r = subprocess.run([*CLI, "backtest", str(data), "--resume", str(state), "--out", str(tmp_path / "o")],
                       capture_output=True, text=True, cwd=tmp_path)  # fmt: skip
    assert r.returncode == 2 and f"cannot resume from {state}:" in r.stderr, r.stderr
    assert not marker.exists()


def test_a_pickled_array_inside_the_state_is_refused(mid_run: bytes, tmp_path: Path) -> None:
    """An npz member holding an object array (a pickle) with the checksum made right."""
    marker = tmp_path / "pwned"
    members = _members(mid_run)
    evil = np.empty(1, object)
    evil[0] = _Payload(marker)
    for name in ("q_bid.npy", "pool.npy", "state.npy"):
        forged = _rezip({**members, name: _npy(evil)})
        with pytest.raises(ValueError, match=r"pickle|object"):
            engine.Backtest.restore(forged)
    assert not marker.exists()


def test_nothing_in_the_package_unpickles() -> None:
    root = Path(engine.__file__).parents[1]  # the whole package
    for path in root.rglob("*.py"):
        text = path.read_text()
        assert "pickle.load" not in text and "import pickle" not in text, path


# ---- damage, other versions, other files


def test_truncated_garbled_and_foreign_files_are_refused(mid_run: bytes) -> None:
    for cut in (0, 5, 8, 39, 40, 41, len(mid_run) // 2, len(mid_run) - 1):
        with pytest.raises(ValueError):
            engine.Backtest.restore(mid_run[:cut])
    for at in (3, 20, 60, len(mid_run) // 3, len(mid_run) - 10):
        broken = bytearray(mid_run)
        broken[at] ^= 0x55
        with pytest.raises(ValueError):
            engine.Backtest.restore(bytes(broken))
    with pytest.raises(ValueError, match="not a backtest snapshot"):
        engine.Backtest.restore(b"PK\x03\x04" + mid_run)
    with pytest.raises(ValueError, match="not a backtest snapshot"):
        engine.Backtest.restore(orjson.dumps({"names": ["A"]}))


def test_a_state_of_another_version_is_refused(mid_run: bytes) -> None:
    body = mid_run[len(engine.SNAPSHOT_MAGIC) :]
    other = engine.SNAPSHOT_MAGIC[:5] + b"\x00\x63\x00" + body
    with pytest.raises(ValueError, match="format 99"):
        engine.Backtest.restore(other)


def test_garbage_with_a_right_checksum_is_refused(mid_run: bytes) -> None:
    for body in (b"", b"garbage", b"PK\x03\x04" + b"\x00" * 100, _members(mid_run)["pool.npy"]):
        with pytest.raises(ValueError):
            engine.Backtest.restore(_sealed(body))


def test_missing_and_extra_members_are_refused(mid_run: bytes) -> None:
    members = _members(mid_run)
    for name in members:
        with pytest.raises(ValueError, match=name.removesuffix(".npy")):
            engine.Backtest.restore(_rezip({k: v for k, v in members.items() if k != name}))
    with pytest.raises(ValueError, match="extra"):
        engine.Backtest.restore(_rezip({**members, "extra.npy": members["q_ts.npy"]}))


def test_arrays_of_the_wrong_type_or_shape_are_refused(mid_run: bytes) -> None:
    members = _members(mid_run)
    for name, arr in (("q_ts.npy", np.zeros(3, np.float64)), ("q_bid.npy", np.zeros(4)),
                      ("pending.npy", np.zeros(2, np.int64)), ("q_ask.npy", np.zeros((3, 1)))):  # fmt: skip
        with pytest.raises(ValueError, match=name.removesuffix(".npy")):
            engine.Backtest.restore(_rezip({**members, name: _npy(arr)}))


def _paths(doc: object, at: tuple = ()) -> list[tuple]:
    """Every path to a leaf of a decoded JSON document."""
    if isinstance(doc, dict):
        return [p for k, v in doc.items() for p in _paths(v, (*at, k))] or [at]
    if isinstance(doc, list):
        return [p for i, v in enumerate(doc) for p in _paths(v, (*at, i))] or [at]
    return [at]


def _set(doc: object, path: tuple, value: object) -> object:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(doc, dict):
        return {**doc, head: _set(doc[head], rest, value)}
    assert isinstance(doc, list)
    return [_set(v, rest, value) if i == head else v for i, v in enumerate(doc)]


@settings(max_examples=150, deadline=None)
@given(data=st.data())
def test_a_field_of_the_wrong_type_is_refused_with_a_value_error(mid_run: bytes, data: st.DataObject) -> None:
    """Each leaf of the state document replaced by a value of another JSON type (the
    checksum made right): restore refuses it with a ValueError and nothing else, or, where
    the value still means something, resumes."""
    doc = _state_doc(mid_run)
    path = data.draw(st.sampled_from(_paths(doc)))
    old = doc
    for p in path:
        old = old[p]
    values = [None, True, "x", "NaN", "-1", -1, 2**64 - 1, 1.5, float("1e300"), [], {}, [1, 2], {"a": 1}]
    value = data.draw(st.sampled_from([v for v in values if v != old or type(v) is not type(old)]))
    forged = _with_doc(mid_run, _set(doc, path, value))  # type: ignore[arg-type]
    with contextlib.suppress(ValueError):
        engine.Backtest.restore(forged)


@settings(max_examples=200, deadline=None)
@given(at=st.floats(0, 1, exclude_max=True), xor=st.integers(1, 255))
def test_any_byte_changed_with_the_checksum_made_right_is_refused_with_a_value_error(
    mid_run: bytes, at: float, xor: int
) -> None:
    """A byte anywhere in the archive changed (a zip or npy header, a member's contents,
    which its CRC-32 then refuses): restore refuses it with a ValueError and nothing else,
    or resumes where the byte means nothing (some of the zip directory's fields)."""
    body = bytearray(mid_run[len(engine.SNAPSHOT_MAGIC) + 32 :])
    body[int(at * len(body))] ^= xor
    with contextlib.suppress(ValueError):
        engine.Backtest.restore(_sealed(bytes(body)))


def test_symbols_out_of_range_are_refused(mid_run: bytes) -> None:
    doc = _state_doc(mid_run)
    ledger = doc["broker"]["account"]["ledger"]
    pos = next(iter(ledger["positions"].values()))
    for path, value in ((("broker", "account", "ledger", "positions"), {"7": pos}),
                        (("risk", "ledger", "positions"), {"3": pos}),
                        (("broker", "raw", 0, 0), 2**32),
                        (("coordinator", "volume", 0, 0), -1),
                        (("risk", "notional", 0, 0), 3)):  # fmt: skip
        with pytest.raises(ValueError, match="symbol"):
            engine.Backtest.restore(_with_doc(mid_run, _set(doc, path, value)))  # type: ignore[arg-type]


# ---- exact round trips


def test_restoring_and_saving_again_gives_the_same_bytes(mid_run: bytes) -> None:
    assert engine.Backtest.restore(mid_run).snapshot() == mid_run


@settings(max_examples=4, deadline=None)
@given(cut=st.floats(0.05, 0.95))
def test_a_bars_run_resumed_with_kept_signals_equals_one_run(cut: float) -> None:
    m = BARS
    whole = engine.Backtest(CONFIG, m.names, m.kind, keep_signals=True, mark_interval_s=900)
    whole.feed(m.records)
    at = int(len(m.records) * cut)
    first = engine.Backtest(CONFIG, m.names, m.kind, keep_signals=True, mark_interval_s=900)
    first.feed(m.records[:at])
    second = engine.Backtest.restore(first.snapshot())
    second.feed(m.records[at:])
    for bt in (whole, second):
        bt.finish()
    assert _outcome(second) == _outcome(whole) and len(whole.out.fills) > 20
    for bt in (whole, second):  # kept in batches as they were fed: one batch each, to compare
        bt.out.signals = [np.concatenate(bt.out.signals)]
    assert np.array_equal(second.out.signals[0], whole.out.signals[0])
    assert second.snapshot() == whole.snapshot()  # the same state, to the last counter


BARS = bar_market(3, 6_000)


def test_an_empty_run_round_trips() -> None:
    bt = engine.Backtest(CONFIG, ["A", "B"], "ticks")
    again = engine.Backtest.restore(bt.snapshot())
    assert again.names == ["A", "B"] and again.snapshot() == bt.snapshot()
    again.feed(Market("ticks", sim_market(2, 20_000).records, ["A", "B"]).records)
