"""`sovereign mt5 simulate` as its own process: the engine's broker trades through it, the
simulator is SIGKILLed and started again (a terminal restart that recreates the file),
and `--dump` shows from the venue's own books that no order executed twice."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from decimal import Decimal
from pathlib import Path

from sovereign.broker.base import OrderRequest, Outcome
from sovereign.broker.mt5 import MT5Broker, MT5Settings


def simulate(state: Path, *args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "sovereign.cli",
            "mt5",
            "simulate",
            "--state",
            str(state),
            "--symbols",
            "EURUSD,GBPUSD",
            *args,
        ]
    )


def test_orders_survive_kills_of_the_terminal(tmp_path: Path) -> None:
    state = tmp_path / "venue"
    faults = json.dumps({"odds": {"timeout_exec": 0.1, "drop_exec": 0.1, "requote": 0.1}})
    broker = MT5Broker(
        MT5Settings(
            str(state / "bridge.sov"),
            77,
            ["EURUSD", "GBPUSD"],
            settle_s=0.05,
            result_timeout_s=0.5,
            heartbeat_timeout_ms=1000,
        )
    )
    outcomes: list[Outcome] = []
    n, kills = 40, 0
    proc = simulate(state, "--faults", faults)
    try:
        deadline = time.monotonic() + 120
        submitted = 0
        while len(outcomes) < n and time.monotonic() < deadline:
            o, _ = broker.poll()
            outcomes += o
            if broker.connected()[0] and submitted < n and not broker.orders:
                submitted += 1
                broker.submit([OrderRequest(submitted, submitted % 2, 1, Decimal("0.01"))])
                if submitted % 10 == 5:  # the terminal dies with the order in flight
                    time.sleep(0.01)
                    proc.send_signal(signal.SIGKILL)
                    proc.wait()
                    kills += 1
                    proc = simulate(state, "--faults", faults, "--seed", str(kills + 1))
            time.sleep(0.001)
    finally:
        proc.send_signal(signal.SIGTERM if proc.poll() is None else 0)
        proc.kill()
        proc.wait()
        broker.close()
    by = {o.client_order_id: o for o in outcomes}
    assert sorted(by) == list(range(1, n + 1)), broker.why_down
    books = json.loads(
        subprocess.run(
            [sys.executable, "-m", "sovereign.cli", "mt5", "simulate", "--state", str(state), "--dump"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
    )
    done: dict[int, float] = {}
    for d in books["deals"]:
        assert set(d) >= {
            "ticket",
            "order",
            "symbol",
            "type",
            "entry",
            "volume",
            "price",
            "magic",
            "comment",
            "reason",
        }
        done[int(d["comment"])] = round(done.get(int(d["comment"]), 0) + d["volume"], 8)
    for cid, o in by.items():
        assert done.get(cid, 0.0) == float(o.volume) <= 0.01, (cid, o)
    assert kills == 4
