"""The bridge library across the real cffi boundary, both faces in one process: every
record kind each way, and bad input on every face (a wrong version or layout, a torn or
garbage record, an untrusted file, a stopped or closed peer, a recreated file, text that
does not fit): each gives its error code and message, and nothing is lost."""

from __future__ import annotations

import mmap
import os
import struct
from pathlib import Path

import numpy as np
import pytest

from sovereign.broker.bridge import Bridge, BridgeError, lib, text

L = lib()


@pytest.fixture
def path(tmp_path: Path) -> Path:
    return tmp_path / "bridge.sov"


@pytest.fixture
def pair(path: Path):
    t = Bridge.terminal(str(path))
    e = Bridge.engine(path)
    yield t, e
    e.close()
    t.close()


def ring_geometry(path: Path, ring: int) -> tuple[int, int, int]:
    """(offset of the ring's control block, capacity, record size) from the file's header."""
    with open(path, "rb") as f:
        head = f.read(40 + 16 * L.SB_N_RINGS)
    return struct.unpack_from("<QII", head, 40 + 16 * ring)


def poke(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
        m[offset : offset + len(data)] = data


def slot_offset(path: Path, ring: int, index: int) -> int:
    off, cap, size = ring_geometry(path, ring)
    stride = (16 + size + 7) & ~7
    return off + 128 + (index % cap) * stride


def test_every_record_kind_crosses_both_ways(pair) -> None:
    t, e = pair
    assert t.hello() == e.hello() and t.hello()[0] == L.SB_ABI_VERSION
    t.account(42, 0, True, True, 1000.0, 1001.5, 10.0, "USD", "Demo")
    t.spec("EURUSD.r", True, 5, 1e-5, 1e5, 0.01, 100, 0.01, 10, 3, 2, "EUR", "USD", "EUR")
    t.tick("EURUSD.r", 1_700_000_000_123, 1.1, 1.1002, 0.0, 2.0, 6)
    t.result(7, 123, 1, 10009, 5, 4, 0.1, 1.1002, 1.1, 1.1002, 9, "Request executed é")
    deal = {
        "ticket": 5,
        "order": 4,
        "position": 4,
        "symbol": "EURUSD.r",
        "type": 0,
        "entry": 0,
        "reason": 3,
        "volume": 0.1,
        "price": 1.1002,
        "magic": 77,
        "time_msc": 9,
        "comment": "123",
    }
    t.deal(deal)
    t.position(3, 0, 1, {"ticket": 4, "symbol": "EURUSD.r", "type": 0, "volume": 0.1, "price": 1.1002})
    acc = e.poll(L.SB_RING_ACCOUNT)[0]
    assert (acc["login"], acc["equity"], text(acc["server"])) == (42, 1001.5, "Demo")
    spec = e.poll(L.SB_RING_SPECS)[0]
    assert (text(spec["symbol"]), spec["exists"], spec["filling_mode"], text(spec["currency_profit"])) == (
        "EURUSD.r",
        1,
        3,
        "USD",
    )
    tick = e.poll(L.SB_RING_TICKS)[0]
    assert (tick["time_msc"], tick["ask"], text(tick["symbol"])) == (1_700_000_000_123, 1.1002, "EURUSD.r")
    res = e.poll(L.SB_RING_RESULTS)[0]
    assert (res["request_id"], res["retcode"], text(res["comment"])) == (7, 10009, "Request executed é")
    d = e.poll(L.SB_RING_DEALS)[0]
    assert (d["ticket"], d["magic"], text(d["comment"])) == (5, 77, "123")
    p = e.poll(L.SB_RING_POSITIONS)[0]
    assert (p["snapshot"], p["count"], p["ticket"]) == (3, 1, 4)
    req = np.zeros(1, e.dtypes[L.SB_RING_REQUESTS])[0]
    req["request_id"], req["action"], req["symbol"], req["comment"], req["volume"] = (
        9,
        1,
        b"EURUSD.r",
        b"5",
        0.2,
    )
    assert e.request(req)
    q = t.take_request()
    assert q is not None and (q["request_id"], text(q["comment"]), q["volume"]) == (9, "5", 0.2)
    assert t.take_request() is None
    assert e.poll(L.SB_RING_TICKS).size == 0


def test_a_face_may_not_use_the_other_faces_rings(pair) -> None:
    _t, e = pair
    with pytest.raises(BridgeError) as err:
        e.poll(L.SB_RING_REQUESTS)
    assert err.value.code == L.SB_E_ARG and "may not read" in err.value.message
    with pytest.raises(BridgeError, match="may not write"):
        e.push(L.SB_RING_TICKS, np.zeros(1, e.dtypes[L.SB_RING_TICKS]))


def test_a_full_ring_refuses_and_keeps_what_it_has(pair, path: Path) -> None:
    t, e = pair
    _, cap, _ = ring_geometry(path, L.SB_RING_TICKS)
    ticks = np.zeros(cap + 10, t.dtypes[L.SB_RING_TICKS])
    ticks["symbol"], ticks["time_msc"] = b"X", np.arange(cap + 10)
    assert t.push(L.SB_RING_TICKS, ticks) == cap
    assert t.tick("X", 1, 1.0, 1.0) == L.SB_FULL
    assert t.stats(L.SB_RING_TICKS)["full"] == 2
    got = e.poll(L.SB_RING_TICKS, cap + 10)
    assert np.array_equal(got["time_msc"], np.arange(cap))


def test_a_torn_record_is_reported_and_not_consumed(pair, path: Path) -> None:
    t, e = pair
    for i in range(3):
        t.tick("EURUSD", i, 1.0 + i, 1.1 + i)
    poke(path, slot_offset(path, L.SB_RING_TICKS, 1) + 16 + 8, b"\xff\xff")  # half of a bid overwritten
    first = e.poll(L.SB_RING_TICKS)
    assert first["time_msc"].tolist() == [0]  # the good one before it
    for _ in range(2):  # asked again: the same error, the record still there
        with pytest.raises(BridgeError) as err:
            e.poll(L.SB_RING_TICKS)
        assert (
            err.value.code == L.SB_E_CORRUPT
            and "record 1" in err.value.message
            and "CRC32" in err.value.message
        )
    assert e.pending(L.SB_RING_TICKS) == 2
    e.skip(L.SB_RING_TICKS)
    assert e.poll(L.SB_RING_TICKS)["time_msc"].tolist() == [2]
    assert e.stats(L.SB_RING_TICKS)["corrupt_skipped"] == 1


def test_garbage_in_a_slot_and_a_string_without_its_nul(pair, path: Path) -> None:
    t, e = pair
    t.tick("EURUSD", 0, 1.0, 1.1)
    poke(path, slot_offset(path, L.SB_RING_TICKS, 0), b"\x07" * 8)  # the slot's sequence
    with pytest.raises(BridgeError, match="sequence is not its index"):
        e.poll(L.SB_RING_TICKS)
    e.skip(L.SB_RING_TICKS)
    bad = np.zeros(1, t.dtypes[L.SB_RING_TICKS])
    bad["symbol"] = b"Y" * 32  # no room for the NUL
    with pytest.raises(BridgeError) as err:
        t.push(L.SB_RING_TICKS, bad)
    assert err.value.code == L.SB_E_TEXT
    assert e.pending(L.SB_RING_TICKS) == 0


@pytest.mark.parametrize(
    ("offset", "data", "code", "words"),
    [
        (0, b"NOTMAGIC", "SB_E_MAGIC", "not a Sovereign bridge file"),
        (8, struct.pack("<I", 99), "SB_E_VERSION", "ABI version 99"),
        (40 + 12, struct.pack("<I", 81), "SB_E_LAYOUT", "ticks records are 81 bytes there"),
        (32, struct.pack("<I", 0), "SB_E_NOT_READY", "being set up"),
        (32, struct.pack("<I", 2), "SB_E_RECREATED", "retired"),
    ],
)
def test_the_engine_refuses_a_file_it_cannot_trust_the_layout_of(
    path: Path, offset, data, code, words
) -> None:
    with Bridge.terminal(str(path)):
        poke(path, offset, data)
        with pytest.raises(BridgeError) as err:
            Bridge.engine(path)
        assert err.value.code == getattr(L, code) and words in err.value.message


def test_the_engine_refuses_a_file_of_the_wrong_owner_or_mode_or_a_symlink(
    path: Path, tmp_path: Path
) -> None:
    with Bridge.terminal(str(path)):
        assert path.stat().st_mode & 0o777 == 0o660
        os.chmod(path, 0o664)
        with pytest.raises(BridgeError, match="mode 664") as err:
            Bridge.engine(path)
        assert err.value.code == L.SB_E_PERM
        os.chmod(path, 0o660)
        with pytest.raises(BridgeError, match=f"only a regular file of uid {os.geteuid() + 1}"):
            Bridge.engine(path, owner_uid=os.geteuid() + 1)
        link = tmp_path / "link.sov"
        link.symlink_to(path)
        with pytest.raises(BridgeError) as err:
            Bridge.engine(link)
        assert err.value.code == L.SB_E_IO
        if os.geteuid() == 0:  # a file another user planted
            os.chown(path, 65534, -1)
            with pytest.raises(BridgeError, match="owned by uid 65534"):
                Bridge.engine(path)
            Bridge.engine(path, owner_uid=65534).close()  # the terminal's user, when configured


def test_no_terminal_yet_is_a_clear_error(path: Path) -> None:
    with pytest.raises(BridgeError) as err:
        Bridge.engine(path)
    assert err.value.code == L.SB_E_IO and "is the terminal running the EA?" in err.value.message


def test_a_stopped_then_closed_peer_is_seen(pair) -> None:
    t, e = pair
    rc, _, _ = e.peer(10_000)
    assert rc == L.SB_OK
    rc, age, why = e.peer(-1)  # no beat since the watch began: past any timeout
    assert rc == L.SB_E_PEER_STOPPED and "terminal side has not beaten" in why and age >= 0
    t.beat()
    assert e.peer(10_000)[0] == L.SB_OK
    t.close()
    rc, _, why = e.peer(10_000)
    assert rc == L.SB_E_PEER_CLOSED and "closed" in why


def test_a_peer_that_never_opened_is_stopped(path: Path) -> None:
    with Bridge.terminal(str(path)) as t:
        rc, _, why = t.peer(10_000)
        assert rc == L.SB_E_PEER_STOPPED and "engine side has not opened" in why


def test_a_recreated_file_is_seen_and_its_epoch_differs(pair, path: Path) -> None:
    t, e = pair
    epoch = e.hello()[1]
    t.tick("EURUSD", 1, 1.0, 1.1)
    assert not e.recreated()
    t.close()
    with Bridge.terminal(str(path)) as t2:  # the terminal restarted
        assert e.recreated()
        assert e.poll(L.SB_RING_TICKS)["time_msc"].tolist() == [1]  # the old file's records still read
        with Bridge.engine(path) as e2:
            assert e2.hello()[1] != epoch and t2.hello()[1] == e2.hello()[1]


def test_a_made_up_or_closed_handle_is_refused(pair) -> None:
    _t, e = pair
    assert L.sb_hello(123456, e.ffi.NULL, e.ffi.NULL) == L.SB_E_HANDLE
    handle = e.handle
    e.close()
    assert L.sb_beat(handle) == L.SB_E_HANDLE


def test_text_crosses_as_utf16_and_too_long_is_refused(pair) -> None:
    t, e = pair
    t.tick("ÉUR€", 1, 1.0, 1.1)
    assert text(e.poll(L.SB_RING_TICKS)[0]["symbol"]) == "ÉUR€"
    with pytest.raises(BridgeError, match="longer than 31 bytes") as err:
        t.tick("S" * 32, 1, 1.0, 1.1)
    assert err.value.code == L.SB_E_TEXT
    long_comment = "x" * 200  # the broker's text is cut to its field, never refused
    t.result(1, 1, 1, 10009, comment=long_comment)
    assert text(e.poll(L.SB_RING_RESULTS)[0]["comment"]) == "x" * 63


def test_wine_paths_map_to_the_linux_root(tmp_path: Path) -> None:
    win = "Z:" + str(tmp_path / "w.sov").replace("/", "\\")
    with Bridge.terminal(win):
        assert (tmp_path / "w.sov").is_file()
    with pytest.raises(BridgeError, match="only drive Z:"):
        Bridge.terminal("C:\\x.sov")
