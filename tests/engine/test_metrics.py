"""Metrics: the board's layout and its writers, and a real running system scraped over
HTTP (and through `sovereign metrics`): counters rise and never go back, not even across a
worker's SIGKILL; the gauges are `sovereign status`'s; `promtool check metrics` is clean;
bad [metrics] listen values and an address in use are refused, naming the key."""

from __future__ import annotations

import itertools
import math
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from prometheus_client.parser import text_string_to_metric_families

from sovereign.config import ConfigError, from_dict
from sovereign.engine.exporter import LISTEN_ENV, Exporter, ListenError
from sovereign.engine.metrics import BUCKETS_S, COUNTERS, GAUGES, Histogram, Meter, MetricsBoard
from sovereign.engine.runtime import shm_prefix
from sovereign.state.store import StateStore
from tests.helpers import LiveSystem, VenueSim, mt5_tables, toml_text

Samples = dict[tuple[str, frozenset], float]
SYMBOLS = 4


def parse(text: str) -> Samples:
    """Every sample of an exposition: (name, labels) -> value."""
    return {(s.name, frozenset(s.labels.items())): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}  # fmt: skip


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples[(name, frozenset(labels.items()))]


def scrape(url: str) -> str:
    with urllib.request.urlopen(url, timeout=10) as r:
        assert r.status == 200 and r.headers["Content-Type"].startswith("text/plain")
        return str(r.read().decode())


def without_listen_env() -> dict[str, str]:
    """This process's environment without the test session's override (conftest.py): the
    system takes [metrics] listen from its config file."""
    return {k: v for k, v in os.environ.items() if k != LISTEN_ENV}


def write_config(tmp: Path, **metrics: str) -> Path:
    cfg = tmp / "sovereign.toml"
    tables: dict[str, dict[str, object]] = {
        "system": {"state_dir": str(tmp / "state"), "workers": 1, "snapshot_interval_s": 1.0},
        "feed": {"symbols": SYMBOLS, "pace": "realtime", "speed": 2000.0},
        "market": {"hours": "always"},
    }
    if metrics:
        tables["metrics"] = dict(metrics)
    cfg.write_text(toml_text(tables))
    return cfg


# ---- the layout, without a system


@pytest.mark.parametrize(
    ("listen", "why"),
    [
        ("127.0.0.1", "is not an address like"),
        (":9817", "is not an address like"),
        ("127.0.0.1:65536", "port 65536 is not in [0, 65535]"),
        ("127.0.0.300:9817", "the host is not an IPv4 address"),
        ("[::1:9817", "is not an address like"),
        ("[127.0.0.1]:9817", "the part in brackets is not an IPv6 address"),
        ("http://127.0.0.1:9817", "is not an address like"),
        ("127.0.0.1:98a", "is not an address like"),
    ],
)
def test_a_bad_listen_value_is_refused_naming_the_key(listen: str, why: str) -> None:
    with pytest.raises(ConfigError) as e:
        from_dict({"metrics": {"listen": listen}})
    assert str(e.value).startswith("config key metrics.listen: ") and why in str(e.value)


@pytest.mark.parametrize("listen", ["", "127.0.0.1:0", "0.0.0.0:9817", "[::1]:9817", "localhost:9100"])
def test_good_listen_values_are_taken(listen: str) -> None:
    assert from_dict({"metrics": {"listen": listen}}).metrics.listen == listen


def test_a_restarted_process_counts_on_from_its_slot_and_gauges_start_unpublished() -> None:
    board = MetricsBoard(f"sovtest-{uuid.uuid4().hex}-metrics", 2)
    try:
        assert all(math.isnan(board.slots[g][k]) for g in GAUGES for k in range(2))
        assert all(not board.slots[c][k].any() for c in COUNTERS for k in range(2))
        first = Meter(board, 1)
        first.publish({"equity": 1000.0}, ticks=5, orders=[2, 1], commit_sum=0.25)
        first.publish(ticks=7)  # a total since the process started, not an increment
        # the process dies; its successor counts from 0 on top of what the slot holds
        second = Meter(board, 1)
        second.publish(ticks=3, orders=[1], commit_sum=0.5)
        s = board.slots[1]
        assert (s["ticks"], list(s["orders"][:3]), s["commit_sum"]) == (10, [3, 1, 0], 0.75)
        assert s["equity"] == 1000.0 and board.slots["ticks"][0] == 0  # the other slot is its own
        del first, second, s  # their views of the board, before it is unmapped
    finally:
        board.close()
    assert not board.path.exists()


def test_a_histogram_counts_each_value_in_the_first_bucket_it_does_not_exceed() -> None:
    h = Histogram()
    for ns in (1, 25_000, 25_001, 10**10, 10**10 + 1):
        h.observe_ns(ns)
    h.observe_since(np.array([0, 1_000, 999_000], np.int64), 1_000_000)  # origin 0: no tick led to it
    counts = dict(zip([*BUCKETS_S, math.inf], h.counts, strict=True))
    assert counts[0.000025] == 3 and counts[0.00005] == 1  # 1 ns, 1 us and 25 us are le=25us; 25.001 us not
    assert counts[0.001] == 1 and counts[10.0] == 1 and counts[math.inf] == 1  # 999 us; 10 s; over 10 s
    assert sum(h.counts) == 7 and h.sum_s == pytest.approx((1 + 25_000 + 25_001 + 2 * 10**10 + 1 + 999_000
                                                             + 1_000) / 1e9)  # fmt: skip


class Nothing:
    def collect(self) -> Iterator:
        return iter(())

    def close(self) -> None:
        pass


def test_an_address_in_use_is_refused_naming_the_key_and_ipv6_loopback_serves() -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        with pytest.raises(ListenError) as e:
            Exporter(Nothing()).listen(f"127.0.0.1:{port}", "config key metrics.listen")  # type: ignore[arg-type]
        said = f"config key metrics.listen: cannot listen on 127.0.0.1:{port}: the address is in use"
        assert said in str(e.value)
    finally:
        taken.close()
    if not socket.has_ipv6:
        return
    exporter = Exporter(Nothing())  # type: ignore[arg-type]
    try:
        url = exporter.listen("[::1]:0", "config key metrics.listen")
    except ListenError as e:  # a kernel without IPv6 on loopback
        pytest.skip(str(e))
    try:
        assert url.startswith("http://[::1]:") and scrape(url) == ""
    finally:
        exporter.close()


# ---- a running system


@pytest.fixture(scope="module")
def system(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveSystem]:
    """One system for the module: 4 symbols on one worker, paced, the market always open;
    the exporter on a free port (the session's SOVEREIGN_METRICS_LISTEN, conftest.py)."""
    tmp = tmp_path_factory.mktemp("metrics")
    s = LiveSystem(write_config(tmp), tmp / "log.txt")
    s.start()
    try:
        s.wait_healthy(90)
        yield s
    finally:
        s.close()


def url_of(s: LiveSystem) -> str:
    status = s.status(10)
    assert status is not None and status["metrics"], s.tail()
    return str(status["metrics"])


def wait_for(s: LiveSystem, cond, timeout: float, what: str) -> Samples:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while True:
        samples = parse(scrape(url_of(s)))
        if cond(samples):
            return samples
        assert time.monotonic() < deadline, f"timed out waiting for {what}: {s.tail()}"
        time.sleep(0.2)


def test_a_scrape_shows_the_flow_orders_and_each_symbols_quote(system: LiveSystem) -> None:
    url = url_of(system)
    assert url.startswith("http://127.0.0.1:") and not url.endswith(":9817/metrics")
    assert f"metrics={url}" in system.tail(100_000)  # the start line says where
    first = parse(scrape(url))
    later = wait_for(system, lambda x: value(x, "sovereign_fills_total") > 0
                     and value(x, "sovereign_ticks_total", process="worker-0")
                     > value(first, "sovereign_ticks_total", process="worker-0"), 90, "a fill")  # fmt: skip
    for process in ("gateway", "worker-0"):
        assert value(later, "sovereign_ticks_total", process=process) > 0
    assert value(later, "sovereign_orders_total", state="filled") > 0
    assert value(later, "sovereign_tick_to_order_seconds_count") > 0
    assert value(later, "sovereign_tick_to_order_seconds_bucket", le="+Inf") == value(
        later, "sovereign_tick_to_order_seconds_count")
    assert value(later, "sovereign_commit_seconds_count") > 0
    assert value(later, "sovereign_commit_seconds_sum") > 0
    for role in ("gateway", "coordinator", "risk", "worker-0"):
        assert value(later, "sovereign_process_up", process=role) == 1
        assert 0 <= value(later, "sovereign_process_heartbeat_age_seconds", process=role) < 10
    assert value(later, "sovereign_ring_capacity", ring="ticks-0") == 65536
    assert value(later, "sovereign_broker_connected") == 1 and value(later, "sovereign_market_open") == 1
    assert value(later, "sovereign_build_info", version="0.1.0", python=sys.version.split()[0]) == 1
    ages = {dict(k[1])["symbol"]: v for k, v in later.items() if k[0] == "sovereign_quote_age_seconds"}
    assert sorted(ages) == [f"SIM{s:03d}" for s in range(SYMBOLS)]
    assert all(0 <= a < 10 for a in ages.values())  # each quoted at 2000x: within milliseconds
    assert value(later, "sovereign_quote_age_max_seconds") == max(ages.values())


@pytest.mark.skipif(shutil.which("promtool") is None, reason="no promtool (Debian's prometheus): .ci/deps")
def test_promtool_finds_nothing_wrong_with_a_real_scrape(system: LiveSystem) -> None:
    wait_for(system, lambda x: value(x, "sovereign_fills_total") > 0, 90, "a fill")
    r = subprocess.run(["promtool", "check", "metrics"], input=scrape(url_of(system)), capture_output=True,
                       text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0 and not r.stdout.strip() and not r.stderr.strip(), r.stdout + r.stderr


def test_sovereign_metrics_prints_one_scrape_that_parses(system: LiveSystem) -> None:
    r = subprocess.run([sys.executable, "-m", "sovereign.cli", "metrics", "--config", str(system.config)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 0, r.stderr
    names = {f.name for f in text_string_to_metric_families(r.stdout)}
    assert names == {f.name for f in text_string_to_metric_families(scrape(url_of(system)))}
    assert {"sovereign_ticks", "sovereign_equity", "sovereign_tick_to_order_seconds"} <= names


def test_a_killed_worker_counts_a_restart_and_no_counter_goes_back(system: LiveSystem) -> None:
    before = wait_for(system, lambda x: value(x, "sovereign_signals_total", process="worker-0") > 0, 90,
                      "a signal")  # fmt: skip
    restarts = value(before, "sovereign_process_restarts_total", process="worker-0")
    victim = system.pids()["worker-0"]
    system.kill(victim)
    scrapes, deadline = [before], time.monotonic() + 90
    while True:  # every scrape through the restart, each against the one before it
        scrapes.append(parse(scrape(url_of(system))))
        now = scrapes[-1]
        if (value(now, "sovereign_process_restarts_total", process="worker-0") == restarts + 1
                and value(now, "sovereign_process_up", process="worker-0") == 1
                and system.pids().get("worker-0") not in (None, victim)
                and value(now, "sovereign_ticks_total", process="worker-0")
                > value(before, "sovereign_ticks_total", process="worker-0") + 1000):  # fmt: skip
            break
        assert time.monotonic() < deadline, f"worker-0 never came back counted: {system.tail()}"
        time.sleep(0.05)
    assert any(value(x, "sovereign_process_up", process="worker-0") == 0 for x in scrapes)  # seen down
    for a, b in itertools.pairwise(scrapes):
        for key, v in a.items():
            if key[0].endswith(("_total", "_bucket", "_count", "_sum")):
                assert b[key] >= v, (key, v, b[key])


def test_the_account_gauges_are_what_sovereign_status_says(system: LiveSystem) -> None:
    wait_for(system, lambda x: value(x, "sovereign_fills_total") > 0, 90, "a fill")
    halted = system.request("halt", timeout=10, flatten=True, reason="metrics test")
    assert halted is not None and halted["state"] == "HALTED"

    def flat(x: Samples) -> bool:  # halted, flat and marked so: nothing moves equity any more
        money = value(x, "sovereign_equity", currency="USD"), value(x, "sovereign_balance", currency="USD")
        return (value(x, "sovereign_open_positions") == 0 and money[0] == money[1]
                and value(x, "sovereign_trading_state", state="halted") == 1)

    wait_for(system, flat, 60, "flat after a halt")
    status = system.status(10)
    assert status is not None
    account, samples = status["account"], parse(scrape(url_of(system)))
    assert value(samples, "sovereign_balance", currency="USD") == float(account["balance"])
    assert value(samples, "sovereign_equity", currency="USD") == float(account["equity"])
    assert value(samples, "sovereign_drawdown_ratio") == pytest.approx(account["drawdown"])
    assert value(samples, "sovereign_open_positions") == account["open_positions"] == 0
    # the feed runs on while halted: its newest quote is seconds old, as the gauge says (the
    # status once took the wall clock less the board's monotonic stamps: 56 years)
    assert 0 <= status["newest_quote_age_s"] <= value(samples, "sovereign_quote_age_max_seconds") + 10
    assert value(samples, "sovereign_trading_state", state="active") == 0
    assert value(samples, "sovereign_drawdown_limit_ratio") == 0.10  # the defaults
    assert value(samples, "sovereign_daily_loss_limit_ratio") == 0.03
    assert value(samples, "sovereign_gross_exposure_ratio") == 0
    procs = {p["role"]: p for p in status["processes"]}
    assert {r for (n, labels), v in samples.items() if n == "sovereign_process_restarts_total" and v == 0
            for _, r in labels} >= {r for r, p in procs.items() if p["restarts"] == 0}  # fmt: skip
    rings = {r["name"]: r["capacity"] for r in status["rings"]}
    assert rings == {dict(k[1])["ring"]: v for k, v in samples.items() if k[0] == "sovereign_ring_capacity"}
    assert system.request("resume", timeout=10) is not None


# ---- [metrics] listen at start


def test_an_address_in_use_stops_the_start_naming_the_key(tmp_path: Path) -> None:
    taken = socket.socket()
    taken.bind(("127.0.0.1", 0))
    taken.listen()
    port = taken.getsockname()[1]
    try:
        cfg = write_config(tmp_path, listen=f"127.0.0.1:{port}")
        r = subprocess.run([sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg)],
                           capture_output=True, text=True, timeout=120, env=without_listen_env())  # fmt: skip
    finally:
        taken.close()
    assert r.returncode == 1, r.stdout + r.stderr
    assert (f"sovereign: cannot start: config key metrics.listen: cannot listen on 127.0.0.1:{port}: the "
            "address is in use") in r.stderr  # fmt: skip
    assert "started" not in r.stdout  # nothing was spawned
    with StateStore(tmp_path / "state") as store:
        prefix = shm_prefix(store, tmp_path / "state")
    assert not list(Path("/dev/shm").glob(f"{prefix}-*"))  # every segment made was removed


def test_a_bad_listen_value_stops_the_start_with_exit_2(tmp_path: Path) -> None:
    cfg = write_config(tmp_path, listen="localhost")
    r = subprocess.run([sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=120, env=without_listen_env())  # fmt: skip
    assert r.returncode == 2 and "config key metrics.listen: " in r.stderr, r.stderr
    env = {**without_listen_env(), LISTEN_ENV: "127.0.0.1:99999"}  # the override is checked as strictly
    cfg = write_config(tmp_path)
    r = subprocess.run([sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg)],
                       capture_output=True, text=True, timeout=120, env=env)  # fmt: skip
    assert r.returncode != 0 and f"environment variable {LISTEN_ENV}: port 99999" in r.stderr, r.stderr


def test_with_the_exporter_off_sovereign_metrics_still_answers(tmp_path: Path) -> None:
    s = LiveSystem(write_config(tmp_path, listen=""), tmp_path / "log.txt", env=without_listen_env())
    s.start()
    try:
        status = s.wait_healthy(90)
        assert status["metrics"] is None and "metrics=off" in s.tail()
        text = s.request("metrics", timeout=10)
        assert isinstance(text, str)
        samples = parse(text)
        assert value(samples, "sovereign_process_up", process="gateway") == 1
        r = subprocess.run([sys.executable, "-m", "sovereign.cli", "status", "--config", str(s.config)],
                           capture_output=True, text=True, timeout=60)  # fmt: skip
        assert "metrics: off" in r.stdout, r.stdout
        assert s.stop() == 0
    finally:
        s.close()


def test_on_mt5_the_broker_is_down_until_the_terminal_comes_then_orders_flow(tmp_path: Path) -> None:
    venue = VenueSim(tmp_path / "venue")
    (tmp_path / "venue").mkdir()
    cfg = tmp_path / "sovereign.toml"
    cfg.write_text(mt5_tables(tmp_path / "state", venue, ["EURUSD", "GBPUSD"]))
    s = LiveSystem(cfg, tmp_path / "log.txt")
    s.start()
    try:
        s.wait_healthy(60)  # without its terminal
        down = wait_for(s, lambda x: ("sovereign_broker_connected", frozenset()) in x, 30, "the gateway's")
        assert value(down, "sovereign_broker_connected") == 0
        venue.start()
        up = wait_for(s, lambda x: value(x, "sovereign_broker_connected") == 1
                      and value(x, "sovereign_orders_total", state="filled") > 0, 120, "a fill")  # fmt: skip
        assert value(up, "sovereign_fills_total") >= value(up, "sovereign_orders_total", state="filled")
        assert value(up, "sovereign_tick_to_order_seconds_count") > 0
        assert value(up, "sovereign_commit_seconds_count") > 0
        assert value(up, "sovereign_ticks_total", process="gateway") > 0
        assert sorted(dict(k[1])["symbol"] for k in up if k[0] == "sovereign_quote_age_seconds") == ["EURUSD",
                                                                                                     "GBPUSD"]
        assert s.stop() == 0
    finally:
        s.close()
        venue.stop()


def test_sovereign_metrics_of_a_system_that_is_not_running_exits_3(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-m", "sovereign.cli", "metrics", "--state-dir", str(tmp_path)],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 3 and "the system is not running" in r.stderr and not r.stdout, r.stderr
