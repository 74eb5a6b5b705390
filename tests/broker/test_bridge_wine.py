"""The Windows DLL as MetaTrader 5 loads it: csrc/bridge/wintest.c (mingw) runs under
Wine, loads sovbridge.dll with LoadLibrary and calls it in the EA's sequence, against
this process's engine face across the one mapped file."""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest

from sovereign.broker.bridge import DLL_NAME, WINTEST_NAME, Bridge, BridgeError, find_file, lib, text

L = lib()
WINE = shutil.which("wine") or shutil.which("wine64")
DLL, WINTEST = find_file(DLL_NAME), find_file(WINTEST_NAME)
CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
if not (WINE and DLL and WINTEST) and not CI:
    pytest.skip(
        f"needs wine and the mingw-built {DLL_NAME} (.ci/deps installs both; then reinstall the package)",
        allow_module_level=True,
    )

N_TICKS = 5000


def win_path(p: Path) -> str:
    return "Z:" + str(p).replace("/", "\\")


def open_engine(path: Path, proc: subprocess.Popen, deadline: float) -> Bridge:
    """The engine's face, once the terminal side has made the file (Wine's first start is slow)."""
    while True:
        try:
            return Bridge.engine(path)
        except BridgeError as e:
            if (
                e.code not in (L.SB_E_IO, L.SB_E_NOT_READY)
                or proc.poll() is not None
                or time.monotonic() > deadline
            ):
                raise


def request(e: Bridge, rid: int, action: int, cid: int = 0, symbol: str = "", side: int = 0) -> None:
    q = np.zeros(1, e.dtypes[L.SB_RING_REQUESTS])[0]
    q["request_id"], q["action"], q["client_order_id"], q["magic"] = rid, action, cid, 77
    q["symbol"], q["comment"], q["type"], q["volume"], q["filling"] = (
        symbol.encode(),
        str(cid).encode(),
        side,
        0.1,
        -1,
    )
    assert e.request(q)


def test_the_dll_under_wine_talks_to_the_linux_engine(tmp_path: Path) -> None:
    assert WINE and DLL and WINTEST, "CI must run this: wine or the DLL is missing (.ci/deps, then reinstall)"
    env = {
        **os.environ,
        "WINEPREFIX": str(tmp_path / "prefix"),
        "WINEDEBUG": "-all",
        "WINEDLLOVERRIDES": "mscoree,mshtml=",
    }
    path = tmp_path / "bridge.sov"
    started = time.monotonic()
    proc = (
        subprocess.Popen(  # umask 007: the terminal's unit gives the file to the engine's group, no one else
            [
                "sh",
                "-c",
                'umask 007; exec "$@"',
                "sh",
                WINE,
                str(WINTEST),
                win_path(DLL),
                win_path(path),
                str(N_TICKS),
            ],
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
    )
    try:
        e = open_engine(path, proc, started + 300)
        opened = time.monotonic() - started
        assert path.stat().st_mode & 0o777 == 0o660
        got: dict[int, list[np.ndarray]] = {r: [] for r in range(L.SB_N_RINGS - 1)}

        def pump() -> None:
            e.beat()
            for r in got:
                batch = e.poll(r)
                if len(batch):
                    got[r].append(batch)

        def count(r: int) -> int:
            return sum(len(b) for b in got[r])

        deadline = time.monotonic() + 120
        while count(L.SB_RING_TICKS) < N_TICKS and time.monotonic() < deadline:
            pump()
        request(e, 1, L.SB_ACTION_DEAL, 101, "EURUSD.r", 0)
        request(e, 2, L.SB_ACTION_DEAL, 102, "GBPUSD.r", 1)
        request(e, 3, L.SB_ACTION_DEAL, 103, "NOSUCH", 0)
        request(e, 4, L.SB_ACTION_LOOKUP, 999)
        request(e, 5, L.SB_ACTION_HISTORY)
        request(e, 6, L.SB_ACTION_POSITIONS)
        while count(L.SB_RING_RESULTS) < 6 and time.monotonic() < deadline:
            pump()
        e.close()  # the test program ends when it sees the engine close
        out, _ = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        subprocess.run(["wineserver", "-k"], env=env, capture_output=True, timeout=60)
    print(f"wine: the terminal side made the file {opened:.2f} s after start (first start of a fresh prefix)")
    assert proc.returncode == 0, out
    lines = [line for line in out.splitlines() if not line.startswith("wine:")]  # a new prefix's notes
    assert lines[:2] == ["loaded", lines[1]] and lines[1].startswith(f"hello abi={L.SB_ABI_VERSION} epoch=")
    assert f"bogus handle rc={L.SB_E_HANDLE}" in lines
    assert any(
        line.startswith(f"error long-symbol rc={L.SB_E_TEXT} symbol: not valid UTF-16 or longer")
        for line in lines
    )
    assert lines[-2:] == ["served 6", "closed rc=0"]

    acc = np.concatenate(got[L.SB_RING_ACCOUNT])
    assert (acc["login"][0], text(acc["currency"][0]), text(acc["server"][0])) == (
        5551234,
        "USD",
        "Demo-Server",
    )
    specs = np.concatenate(got[L.SB_RING_SPECS])
    assert [(text(s), int(x)) for s, x in zip(specs["symbol"], specs["exists"], strict=True)] == [
        ("EURUSD.r", 1),
        ("GBPUSD.r", 1),
        ("NOSUCH", 0),
    ]
    ticks = np.concatenate(got[L.SB_RING_TICKS])
    assert len(ticks) == N_TICKS and np.all(
        np.diff(ticks["time_msc"]) == 1
    )  # in order, none lost, none twice
    results = {int(r["request_id"]): r for r in np.concatenate(got[L.SB_RING_RESULTS])}
    assert [int(results[i]["retcode"]) for i in range(1, 7)] == [
        10009,
        10009,
        10013,
        L.SB_LOOKUP_NONE,
        L.SB_LIST_DONE,
        L.SB_LIST_DONE,
    ]
    assert text(results[1]["comment"]) == "Request executed é"  # UTF-16 in, UTF-8 out
    deals = np.concatenate(got[L.SB_RING_DEALS])
    live, replayed = deals[deals["replay"] == 0], deals[deals["replay"] == 1]
    assert [text(c) for c in live["comment"]] == ["101", "102"] and set(live["magic"]) == {77}
    assert replayed["ticket"].tolist() == live["ticket"].tolist()
    positions = np.concatenate(got[L.SB_RING_POSITIONS])
    assert sorted((text(p["symbol"]), int(p["type"])) for p in positions) == [
        ("EURUSD.r", 0),
        ("GBPUSD.r", 1),
    ]
    assert set(positions["count"]) == {2}
