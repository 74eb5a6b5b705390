"""The alert rules (deploy/prometheus/) with promtool, and a real Prometheus (Debian's) on
loopback scraping a running system: the target is up, every series of docs/metrics.md is
there, every rule evaluates, every dashboard query returns data, and HALTED goes pending
then firing after `sovereign halt`. CI installs prometheus (.ci/deps); without it the
tests skip here and fail under CI."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import pytest
import yaml  # type: ignore[import-untyped]

from tests.ops.test_grafana import expressions, panels

if TYPE_CHECKING:
    from tests.helpers import LiveSystem

ROOT = Path(__file__).parent.parent.parent
RULES = ROOT / "deploy" / "prometheus" / "sovereign-rules.yml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "sovereign-rules.test.yml"
EXAMPLE = ROOT / "deploy" / "prometheus" / "prometheus.yml"
METRICS_DOC = ROOT / "docs" / "metrics.md"

promtool = shutil.which("promtool")
prometheus = shutil.which("prometheus")
needs_prometheus = pytest.mark.skipif((promtool is None or prometheus is None) and not os.environ.get("CI"),
                                      reason="prometheus is not installed: .ci/deps installs it")  # fmt: skip
RUNBOOK = ROOT / "docs" / "runbook.md"

T = TypeVar("T")


def run(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    assert promtool is not None, "CI must have promtool: .ci/deps installs Debian's prometheus"
    return subprocess.run([promtool, *args], capture_output=True, text=True, cwd=cwd, timeout=120)


@needs_prometheus
def test_the_rules_parse_and_their_unit_tests_pass() -> None:
    r = run("check", "rules", str(RULES))
    assert r.returncode == 0, r.stdout + r.stderr
    r = run("test", "rules", str(RULE_TESTS))
    assert r.returncode == 0 and "SUCCESS" in r.stdout, r.stdout + r.stderr


def _seconds(duration: str) -> int:
    """A Prometheus duration ("1h30m", "0s") in seconds."""
    units = {"d": 86400, "h": 3600, "m": 60, "s": 1}
    parts = re.findall(r"(\d+)([dhms])", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(int(n) * units[u] for n, u in parts)


def _failures(rules: dict, tmp: Path) -> set[tuple[str, int]]:
    """(alertname, eval time) of every case of the unit tests that fails against `rules`."""
    (tmp / "rules.yml").write_text(yaml.safe_dump(rules))
    tests = yaml.safe_load(RULE_TESTS.read_text())
    tests["rule_files"] = ["rules.yml"]
    (tmp / "tests.yml").write_text(yaml.safe_dump(tests))
    out = run("test", "rules", "tests.yml", cwd=tmp)
    failed = re.findall(r"alertname: (\w+), time: (\w+),", out.stdout + out.stderr)
    return {(name, _seconds(at)) for name, at in failed}


@needs_prometheus
def test_every_alert_has_a_quiet_a_pending_and_a_firing_case(tmp_path: Path) -> None:
    """promtool checks firing alerts only; a case that expects none is a pending one when the
    alert fires there once its `for:` is gone, and a quiet one when it still does not."""
    rules = yaml.safe_load(RULES.read_text())
    alerts = {r["alert"]: r for g in rules["groups"] for r in g["rules"] if "alert" in r}
    for rule in alerts.values():
        assert rule["labels"]["severity"] in ("critical", "warning", "none"), rule["alert"]
        assert rule["annotations"]["summary"] and rule["annotations"]["description"], rule["alert"]
    assert not _failures(rules, tmp_path)
    without_for = yaml.safe_load(RULES.read_text())
    for group in without_for["groups"]:
        for rule in group["rules"]:
            rule.pop("for", None)
    now_firing = _failures(without_for, tmp_path)
    cases: dict[str, dict[str, int]] = {name: {"quiet": 0, "pending": 0, "firing": 0} for name in alerts}
    for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]:
        for case in test["alert_rule_test"]:
            name, at = case["alertname"], _seconds(case["eval_time"])
            kind = "firing" if case["exp_alerts"] else "pending" if (name, at) in now_firing else "quiet"
            cases[name][kind] += 1
    for name, rule in alerts.items():
        if name == "Watchdog":  # fires from the first evaluation, always: no pending, no quiet
            assert "for" not in rule and rule["expr"] == "vector(1)" and cases[name]["firing"]
            continue
        assert "for" in rule and all(cases[name].values()), f"{name}: {cases[name]}"


@needs_prometheus
def test_the_example_scrape_config_is_valid_and_scrapes_the_default_address() -> None:
    from sovereign.config import Config

    r = run("check", "config", str(EXAMPLE))
    assert r.returncode == 0, r.stdout + r.stderr
    example = yaml.safe_load(EXAMPLE.read_text())
    assert example["rule_files"] == [RULES.name]
    (job,) = [j for j in example["scrape_configs"] if j["job_name"] == "sovereign"]
    assert job["static_configs"] == [{"targets": [Config().metrics.listen]}]


def test_the_runbook_says_what_each_alert_means_and_what_to_do() -> None:
    rules = yaml.safe_load(RULES.read_text())
    rows = dict(re.findall(r"^\| `(\w+)` \| (\w+) \|", RUNBOOK.read_text(), re.M))
    for group in rules["groups"]:
        for rule in group["rules"]:
            assert rows.get(rule["alert"]) == rule["labels"]["severity"], f"{rule['alert']}: no runbook row"


# ---- a real Prometheus scraping a real system


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def documented_series() -> list[tuple[str, str]]:
    """(name, type) of every metric in docs/metrics.md's table."""
    rows = re.findall(r"^\| `(sovereign_\w+)` \| (\w+)", METRICS_DOC.read_text(), re.M)
    assert len(rows) >= 20, "docs/metrics.md's table was not found"
    return rows


class Prometheus:
    """Debian's prometheus on a loopback port, its TSDB and config in a temporary directory."""

    def __init__(self, tmp: Path, target: str, rules: Path):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = {
            "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
            "rule_files": [str(rules)],
            "scrape_configs": [{"job_name": "sovereign", "static_configs": [{"targets": [target]}]}],
        }
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.log = tmp / "prometheus.log"
        assert prometheus is not None
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [prometheus, f"--config.file={tmp / 'prometheus.yml'}", f"--storage.tsdb.path={tmp / 'tsdb'}",
                 f"--web.listen-address=127.0.0.1:{self.port}", "--rules.alert.resend-delay=2s"],
                stdout=log, stderr=subprocess.STDOUT, cwd=tmp)  # fmt: skip
        # loopback only, whatever proxy the environment names
        self.opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def ready(self) -> bool:
        assert self.proc.poll() is None, f"prometheus exited: {self.log.read_text()[-3000:]}"
        try:
            with self.opener.open(f"{self.url}/-/ready", timeout=5) as r:
                return bool(r.status == 200)
        except (urllib.error.URLError, ConnectionError):  # not listening yet, or starting
            return False

    def get(self, path: str, **params: str) -> Any:
        assert self.proc.poll() is None, f"prometheus exited: {self.log.read_text()[-3000:]}"
        url = f"{self.url}{path}?{urllib.parse.urlencode(params)}"
        try:
            with self.opener.open(url, timeout=10) as r:
                body = json.loads(r.read())
        except urllib.error.HTTPError as e:  # a bad query answers 400 with the parser's error
            body = json.loads(e.read())
        return body

    def query(self, expr: str) -> list[dict]:
        body = self.get("/api/v1/query", query=expr)
        assert body["status"] == "success", f"{expr}: {body.get('error')}"
        return body["data"]["result"]

    def alerts(self, name: str) -> list[dict]:
        return [a for a in self.get("/api/v1/alerts")["data"]["alerts"] if a["labels"]["alertname"] == name]

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


def wait_for(value: Callable[[], T], timeout: float, what: str) -> T:
    """value()'s first true result, polled every 0.2 s."""
    deadline = time.monotonic() + timeout
    while not (found := value()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return found


@contextlib.contextmanager
def running_system(tmp: Path, listen: str) -> Iterator[LiveSystem]:
    from tests.helpers import LiveSystem, toml_text  # the engine, only for the test that runs it

    config = tmp / "sovereign.toml"
    config.write_text(toml_text({
        "system": {"state_dir": str(tmp / "state"), "snapshot_interval_s": 2.0, "record_days": 0},
        "feed": {"symbols": 12, "pace": "realtime", "speed": 300.0},
        "risk": {"max_orders_per_minute": 600},
        "metrics": {"listen": listen},
    }))  # fmt: skip
    # the variable takes the place of [metrics] listen (conftest.py sets it to port 0)
    system = LiveSystem(config, tmp / "system.log", env={**os.environ, "SOVEREIGN_METRICS_LISTEN": listen})
    try:
        system.start()
        system.wait_healthy(120)
        yield system
    finally:
        system.close()


# Dashboard panels whose query may rightly return nothing in a short healthy run (panel id:
# "its title: why"). None: even panel 16, "Rejects by reason", has data before the first
# refusal, because the exporter publishes every reason's counter from 0 (bounded labels).
MAY_BE_EMPTY: dict[int, str] = {}


def _has_data(result: list[dict]) -> bool:
    return any(r["value"][1] not in ("NaN", "+Inf", "-Inf") for r in result)


def _rules_with_short_fors(tmp: Path) -> Path:
    """The rules with every `for:` at 5 s: pending long enough to be seen, firing within the test."""
    rules = yaml.safe_load(RULES.read_text())
    for group in rules["groups"]:
        for rule in group["rules"]:
            if "for" in rule:
                rule["for"] = "5s"
    (tmp / "rules.yml").write_text(yaml.safe_dump(rules))
    return tmp / "rules.yml"


def _every_documented_series_is_scraped(server: Prometheus) -> None:
    for name, kind in documented_series():
        series = f"{name}_bucket" if kind == "histogram" else name
        wait_for(lambda s=series: server.query(f'{s}{{job="sovereign"}}'), 30, f"{series} in Prometheus")  # type: ignore[misc]


def _every_panel_returns_data(server: Prometheus) -> None:
    titles = {p["id"]: p["title"] for p in panels()}
    assert all(titles[pid].startswith(why.split(":")[0]) for pid, why in MAY_BE_EMPTY.items()), titles
    # rates and latency quantiles need orders in their window
    wait_for(lambda: _has_data(server.query("sum(sovereign_orders_total) > 0")), 120, "an order")

    def without_data() -> dict[tuple[int, str], str]:
        """(panel id, refId): query, for each query that shows nothing; each must parse
        (query() asserts that Prometheus accepted it)."""
        return {(pid, ref): expr for pid, ref, expr in expressions()
                if pid not in MAY_BE_EMPTY and not _has_data(server.query(expr))}  # fmt: skip

    deadline = time.monotonic() + 90
    while (empty := without_data()) and time.monotonic() < deadline:
        time.sleep(0.5)
    assert not empty, f"panels without data: {empty}"


def _every_rule_evaluates(server: Prometheus, rules: Path) -> None:
    expected = sum(len(g["rules"]) for g in yaml.safe_load(rules.read_text())["groups"])
    groups = server.get("/api/v1/rules")["data"]["groups"]
    evaluated = [r for g in groups for r in g["rules"]]
    assert len(evaluated) == expected
    errors = [(r["name"], r.get("lastError")) for r in evaluated if r["health"] != "ok"]
    assert not errors, errors
    assert [a["state"] for a in server.alerts("Watchdog")] == ["firing"]


def _halted(server: Prometheus, state: str) -> list[dict]:
    return [a for a in server.alerts("SovereignTradingHalted") if a["state"] == state]


@needs_prometheus
def test_a_real_prometheus_scrapes_the_system_runs_every_panel_and_alerts_on_halt(tmp_path: Path) -> None:
    rules = _rules_with_short_fors(tmp_path)
    target = f"127.0.0.1:{free_port()}"
    with running_system(tmp_path, target) as system:
        server = Prometheus(tmp_path, target, rules)
        try:
            wait_for(server.ready, 60, "prometheus to be ready")
            up = wait_for(lambda: [t for t in server.get("/api/v1/targets")["data"]["activeTargets"]
                                   if t["health"] == "up"], 60, "the scrape target to be up")  # fmt: skip
            assert [(t["labels"]["job"], t["scrapeUrl"]) for t in up] == [
                ("sovereign", f"http://{target}/metrics")]  # fmt: skip
            assert [r["value"][1] for r in server.query('up{job="sovereign"}')] == ["1"]
            _every_documented_series_is_scraped(server)
            _every_panel_returns_data(server)
            _every_rule_evaluates(server, rules)

            # halted through the CLI (the control socket): the alert goes pending, then fires
            assert not server.alerts("SovereignTradingHalted")
            halt = [sys.executable, "-m", "sovereign.cli", "halt", "--reason", "prometheus test",
                    "--config", str(system.config)]  # fmt: skip
            r = subprocess.run(halt, capture_output=True, text=True, timeout=60)
            assert r.returncode == 0, r.stdout + r.stderr
            (pending,) = wait_for(lambda: _halted(server, "pending"), 30, "SovereignTradingHalted pending")
            assert pending["labels"]["state"] == "halted" and pending["labels"]["severity"] == "critical"
            assert pending["annotations"]["summary"] == f"Trading is HALTED on {target}"
            wait_for(lambda: _halted(server, "firing"), 30, "SovereignTradingHalted firing")
        finally:
            server.close()
