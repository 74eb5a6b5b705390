"""The Grafana dashboard and its provisioning (deploy/grafana/), without Grafana (it is not
packaged for Debian): the files' structure, that every panel has a title, a datasource and
a PromQL target, that it shows what a trader opens it for, and that every expression
parses (promtool, through a recording rule each). tests/ops/test_prometheus.py runs every
expression against a real Prometheus scraping a running system."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml  # type: ignore[import-untyped]

ROOT = Path(__file__).parent.parent.parent
GRAFANA = ROOT / "deploy" / "grafana"
DASHBOARD = GRAFANA / "dashboards" / "sovereign.json"
INSTALLED = "/opt/sovereign/current"  # where install.sh puts the release, deploy/ included

promtool = shutil.which("promtool")
needs_promtool = pytest.mark.skipif(promtool is None and not os.environ.get("CI"),
                                    reason="promtool is not installed: .ci/deps installs it")  # fmt: skip

# Grafana's variables, as the test gives them to Prometheus
VARIABLES = {"$__rate_interval": "1m", "$instance": ".+"}


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def panels() -> list[dict[str, Any]]:
    """Every panel that queries (rows only group them)."""
    return [p for p in dashboard()["panels"] if p["type"] != "row"]


def expressions() -> list[tuple[int, str, str]]:
    """(panel id, refId, PromQL with Grafana's variables filled in) for every target."""
    out = []
    for p in panels():
        for t in p["targets"]:
            expr = t["expr"]
            for name, value in VARIABLES.items():
                expr = expr.replace(name, value)
            out.append((p["id"], t["refId"], expr))
    return out


def test_provisioning_points_grafana_at_prometheus_and_the_installed_dashboards() -> None:
    sources = yaml.safe_load((GRAFANA / "provisioning" / "datasources" / "sovereign.yml").read_text())
    assert sources["apiVersion"] == 1
    (source,) = sources["datasources"]
    assert source["type"] == "prometheus" and source["url"].startswith("http://127.0.0.1:")
    providers = yaml.safe_load((GRAFANA / "provisioning" / "dashboards" / "sovereign.yml").read_text())
    assert providers["apiVersion"] == 1
    (provider,) = providers["providers"]
    assert provider["type"] == "file"
    # the provider reads the directory install.sh installs this checkout's dashboards/ to
    assert provider["options"]["path"] == f"{INSTALLED}/{DASHBOARD.parent.relative_to(ROOT)}"
    # the dashboard's datasource variable defaults to the provisioned datasource
    (variable,) = [v for v in dashboard()["templating"]["list"] if v["type"] == "datasource"]
    assert variable["name"] == "datasource" and variable["query"] == "prometheus"
    assert variable["current"]["value"] == source["uid"]


def test_every_panel_has_a_unique_id_a_title_a_datasource_and_a_promql_target() -> None:
    d = dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), ids
    assert panels()
    for p in panels():
        assert p["title"].strip() and p.get("description", "").strip(), p["id"]
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["id"]
        assert p["targets"], f"panel {p['id']} {p['title']!r} has no query"
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["id"]
        for t in p["targets"]:
            assert t["datasource"] == p["datasource"] and t["expr"].strip(), (p["id"], t["refId"])
            selectors = re.findall(r"(sovereign_\w+)(\{[^}]*\})?", t["expr"])
            assert selectors, (p["id"], t["refId"])
            for name, labels in selectors:  # each series of the instance chosen at the top
                assert 'instance=~"$instance"' in labels, f"panel {p['id']}: {name} without $instance"


def test_the_panels_fit_the_grid_without_overlapping() -> None:
    taken: set[tuple[int, int]] = set()
    for p in dashboard()["panels"]:
        g = p["gridPos"]
        assert g["x"] >= 0 and g["x"] + g["w"] <= 24 and g["h"] > 0, p["id"]
        cells = {(g["x"] + i, g["y"] + j) for i in range(g["w"]) for j in range(g["h"])}
        assert not cells & taken, f"panel {p['id']} {p['title']!r} overlaps another"
        taken |= cells


def test_it_shows_what_a_trader_opens_it_for() -> None:
    """Equity and drawdown, positions and exposure, orders and rejects by reason, tick-to-order
    p50 and p99, feed freshness (the oldest and per symbol), processes and restarts, the
    trading state, the broker."""
    text = "\n".join(e for _, _, e in expressions())
    for needed in [r"sovereign_equity", r"sovereign_drawdown_ratio", r"sovereign_open_positions",
                   r"sovereign_gross_exposure_ratio", r"sum by \(state\) \(rate\(sovereign_orders_total",
                   r"sum by \(reason\) \(rate\(sovereign_rejections_total",
                   r"histogram_quantile\(0\.5, sum by \(le\) \(rate\(sovereign_tick_to_order_seconds_bucket",
                   r"histogram_quantile\(0\.99, sum by \(le\) \(rate\(sovereign_tick_to_order_seconds_bucket",
                   r"sovereign_quote_age_max_seconds", r"sovereign_quote_age_seconds",
                   r"sovereign_process_up", r"sovereign_process_heartbeat_age_seconds",
                   r"sovereign_process_restarts_total", r"sovereign_trading_state",
                   r"sovereign_broker_connected"]:  # fmt: skip
        assert re.search(needed, text), f"the dashboard does not show {needed}"


def check_rules(promtool: str, path: Path) -> subprocess.CompletedProcess:
    return subprocess.run([promtool, "check", "rules", str(path)], capture_output=True, text=True)


@needs_promtool
def test_every_expression_parses(tmp_path: Path) -> None:
    """Each expression as a recording rule: `promtool check rules` parses every one."""
    assert promtool is not None, "CI must have promtool: .ci/deps installs prometheus"
    rules = [{"record": f"panel_{pid}_{ref}", "expr": expr} for pid, ref, expr in expressions()]
    (tmp_path / "panels.yml").write_text(yaml.safe_dump({"groups": [{"name": "panels", "rules": rules}]}))
    r = check_rules(promtool, tmp_path / "panels.yml")
    assert r.returncode == 0, r.stdout + r.stderr
    assert f"SUCCESS: {len(rules)} rules found" in r.stdout

    (tmp_path / "bad.yml").write_text(yaml.safe_dump({"groups": [{"name": "p", "rules": [
        {"record": "bad", "expr": "sum by (le) (rate(sovereign_fills_total[1m])"}]}]}))  # fmt: skip
    r = check_rules(promtool, tmp_path / "bad.yml")
    assert r.returncode != 0, "promtool accepted an unbalanced expression: the check above proves nothing"
