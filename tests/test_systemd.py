"""The units in systemd/: `systemd-analyze verify` passes on each, every service's sandbox
rates 1.0 or lower by `systemd-analyze security --offline=true`, the unit's timeouts agree
with the config's defaults, and each unit reaches exactly the network it needs: the trading
system none (its exporter through a proxy joining its private namespace), the Telegram bot
Telegram's published ranges and the local resolver. CI installs Debian's systemd package
for systemd-analyze (.ci/deps)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from sovereign.config import Config

UNITS = Path(__file__).parent.parent / "systemd"
INSTALLED = "/opt/sovereign/current/bin/sovereign"  # where install.sh puts the entry point

analyze = shutil.which("systemd-analyze")
pytestmark = pytest.mark.skipif(analyze is None and not os.environ.get("CI"),
                                reason="systemd-analyze is not installed (.ci/deps installs it)")  # fmt: skip


def staged(tmp: Path) -> list[Path]:
    """Every unit, with ExecStart pointing at this environment's real `sovereign` entry point
    instead of /opt/sovereign (verify checks that the program exists and is executable)."""
    exe = shutil.which("sovereign")
    assert exe is not None, "the sovereign entry point is not installed (pip install -e .)"
    out = []
    for unit in UNIT_FILES:
        text = unit.read_text()
        (tmp / unit.name).write_text(text.replace(INSTALLED, exe))
        out.append(tmp / unit.name)
    return out


UNIT_FILES = sorted(p for p in UNITS.iterdir() if p.suffix in (".service", ".socket", ".timer"))


def test_the_units_are_the_ones_install_sh_installs() -> None:
    names = {p.name for p in UNIT_FILES}
    assert {"sovereign.service", "sovereign-telegram.service", "sovereign-metrics.socket"} <= names
    install = (UNITS / "install.sh").read_text()
    assert all(name in install for name in names), names


def test_every_unit_verifies(tmp_path: Path) -> None:
    assert analyze is not None, "CI must have systemd-analyze: .ci/deps installs Debian's systemd"
    r = subprocess.run([analyze, "verify", *map(str, staged(tmp_path))], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_every_service_sandbox_rates_1_or_lower(tmp_path: Path) -> None:
    assert analyze is not None
    services = [unit for unit in staged(tmp_path) if unit.suffix == ".service"]
    assert len(services) >= 4
    for unit in services:
        r = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True)
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
        assert found, r.stdout + r.stderr
        assert float(found.group(1)) <= 1.0, f"{unit.name}: {found.group(1)} {found.group(2)}\n{r.stdout}"


def _seconds(unit: str, key: str) -> float:
    found = re.search(rf"^{key}=(\d+)$", unit, re.M)
    assert found, key
    return float(found.group(1))


def test_unit_timeouts_match_the_engine() -> None:
    unit = (UNITS / "sovereign.service").read_text()
    system = Config().system
    assert "Type=notify" in unit and "NotifyAccess=main" in unit and "Restart=on-failure" in unit
    # systemd must not kill a graceful shutdown, nor give up before the supervisor has
    # had the chance to replace a hung worker itself
    assert _seconds(unit, "TimeoutStopSec") > system.shutdown_timeout_s
    assert _seconds(unit, "WatchdogSec") > 2 * system.heartbeat_timeout_s
    example = (UNITS / "sovereign.toml").read_text()
    assert f"shutdown_timeout_s = {system.shutdown_timeout_s}" in example


def test_install_script_parses() -> None:
    r = subprocess.run(["bash", "-n", str(UNITS / "install.sh")], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_service_has_its_own_dev_shm_and_works_in_root() -> None:
    """PrivateDevices bind-mounts the host's /dev/shm: the service needs a tmpfs of its own
    there, or any local user can plant or read its segments (issue 20, item 2); and it
    imports nothing from a working directory (item 3)."""
    unit = (UNITS / "sovereign.service").read_text()
    assert re.search(r"^TemporaryFileSystem=/dev/shm(:\S*)?$", unit, re.M), "no private /dev/shm"
    for name in ("sovereign.service", "sovereign-backup.service"):
        text = (UNITS / name).read_text()
        assert re.search(r"^WorkingDirectory=/$", text, re.M) and "PYTHONSAFEPATH=1" in text, name
    install = (UNITS / "install.sh").read_text()
    assert re.search(r"^cd /( |$)", install, re.M), "install.sh must leave the checkout first"


def _values(unit: str, key: str) -> list[str]:
    """Every value of `key` in a unit's text, space-separated lists split."""
    return [v for line in re.findall(rf"^{key}=(.*)$", unit, re.M) for v in line.split()]


TELEGRAM_RANGES = {  # https://core.telegram.org/resources/cidr.txt
    "91.108.56.0/22", "91.108.4.0/22", "91.108.8.0/22", "91.108.16.0/22", "91.108.12.0/22",
    "149.154.160.0/20", "91.105.192.0/23", "91.108.20.0/22", "185.76.151.0/24", "2001:b28:f23d::/48",
    "2001:b28:f23f::/48", "2001:67c:4e8::/48", "2001:b28:f23c::/48", "2a0a:f280::/32",
}  # fmt: skip


def test_the_trading_system_has_no_network_and_its_exporter_is_proxied_to_the_host_loopback() -> None:
    """The service keeps a private network namespace (its loopback alone, IP filtered to it);
    the exporter listens there, and a socket on the host's loopback proxies into it."""
    unit = (UNITS / "sovereign.service").read_text()
    assert _values(unit, "PrivateNetwork") == ["yes"]
    assert _values(unit, "IPAddressDeny") == ["any"] and _values(unit, "IPAddressAllow") == ["localhost"]
    assert set(_values(unit, "RestrictAddressFamilies")) == {"AF_UNIX", "AF_INET", "AF_INET6"}
    # the bot needs the internet: it runs in its own unit, not as the supervisor's sidecar
    assert "--no-telegram" in _values(unit, "ExecStart")
    listen = "127.0.0.1:9817"  # [metrics] listen's default, which deploy/prometheus scrapes
    socket = (UNITS / "sovereign-metrics.socket").read_text()
    assert _values(socket, "ListenStream") == [listen]
    assert _values(socket, "IPAddressDeny") == ["any"] and _values(socket, "IPAddressAllow") == ["localhost"]
    proxy = (UNITS / "sovereign-metrics.service").read_text()
    assert _values(proxy, "ExecStart")[0] == "/lib/systemd/systemd-socket-proxyd"
    assert _values(proxy, "ExecStart")[-1] == listen
    assert _values(proxy, "JoinsNamespaceOf") == ["sovereign.service"]
    assert _values(proxy, "PrivateNetwork") == ["yes"] and _values(proxy, "PrivateTmp") == ["yes"]
    # a scrape never starts the trading system
    assert _values(proxy, "Requisite") == ["sovereign.service"] and "Requires=sovereign.service" not in proxy
    assert _values(proxy, "IPAddressDeny") == ["any"] and _values(proxy, "IPAddressAllow") == ["localhost"]


def test_the_telegram_bot_reaches_telegram_and_the_local_resolver_alone() -> None:
    unit = (UNITS / "sovereign-telegram.service").read_text()
    main = (UNITS / "sovereign.service").read_text()
    assert _values(unit, "ExecStart")[1:] == ["telegram", "--config", "/etc/sovereign/sovereign.toml"]
    assert _values(unit, "User") == _values(main, "User") == ["sovereign"]
    assert _values(unit, "LoadCredential") == ["telegram-token:/etc/sovereign/credentials/telegram-token"]
    assert "TOKEN" not in " ".join(_values(unit, "Environment")).upper()
    assert "PrivateNetwork=" not in unit
    assert _values(unit, "IPAddressDeny") == ["any"]
    assert set(_values(unit, "IPAddressAllow")) == TELEGRAM_RANGES | {"localhost"}
    # the rest of the sandbox is the trading system's
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "PrivateUsers",
                "NoNewPrivileges", "CapabilityBoundingSet", "ProtectKernelTunables", "ProtectProc",
                "RestrictNamespaces", "MemoryDenyWriteExecute", "SystemCallArchitectures", "WorkingDirectory",
                "UMask"):  # fmt: skip
        assert _values(unit, key) == _values(main, key), key
    assert "PYTHONSAFEPATH=1" in _values(unit, "Environment")


MT5 = UNITS / "mt5"  # the MT5 account's files: not installed by install.sh (docs/runbook.md says how)


def _keys(text: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in text.splitlines() if re.match(r"^[A-Za-z]+=", line))


def test_the_mt5_terminal_unit_verifies_and_keeps_a_sandbox(tmp_path: Path) -> None:
    """The terminal's template, as instance account1 (xvfb-run, which this machine may lack,
    staged as /bin/true: verify checks that the program exists)."""
    assert analyze is not None
    unit = tmp_path / "mt5-terminal@account1.service"
    unit.write_text((MT5 / "mt5-terminal@.service").read_text().replace("/usr/bin/xvfb-run", "/bin/true"))
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert found and float(found.group(1)) <= 4.0, r.stdout + r.stderr  # Wine needs the network, W+X


def test_the_engine_with_the_mt5_drop_in_keeps_its_sandbox(tmp_path: Path) -> None:
    """sovereign.service with mt5-bridge.conf in its .d directory (systemd-analyze reads a
    unit's drop-ins beside it): it verifies, still rates 1.0 or lower, still has no network,
    and the drop-in took (the bridge's group, other users visible)."""
    assert analyze is not None
    exe = shutil.which("sovereign")
    assert exe is not None
    unit = tmp_path / "sovereign.service"
    unit.write_text((UNITS / "sovereign.service").read_text().replace(INSTALLED, exe))
    (tmp_path / "sovereign.service.d").mkdir()
    (tmp_path / "sovereign.service.d" / "mt5-bridge.conf").write_text((MT5 / "mt5-bridge.conf").read_text())
    r = subprocess.run([analyze, "verify", str(unit)], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr
    r = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True)
    found = re.search(r"Overall exposure level for \S+: (\d+\.\d+)", r.stdout)
    assert found and float(found.group(1)) <= 1.0, r.stdout
    assert "✓ PrivateNetwork=" in r.stdout, r.stdout
    took = "✗ SupplementaryGroups=" in r.stdout and "✗ PrivateUsers=" in r.stdout  # the drop-in's settings
    assert took, r.stdout


def bridge_dir_line() -> tuple[str, str, str, str]:
    """The tmpfiles.d line of the bridge's directory: path, mode, user, group."""
    (line,) = [ln for ln in (MT5 / "sovereign-bridge.conf").read_text().splitlines()
               if ln.strip() and not ln.startswith("#")]  # fmt: skip
    kind, path, mode, user, group, _age = line.split()
    assert kind == "d"
    return path, mode, user, group


def test_the_mt5_files_agree_on_the_bridge_directory_its_users_and_group() -> None:
    path, mode, user, group = bridge_dir_line()
    assert mode == "2770"  # setgid: the group of every file made in it; no one else reaches it
    terminal = _keys((MT5 / "mt5-terminal@.service").read_text())
    dropin = _keys((MT5 / "mt5-bridge.conf").read_text())
    assert (terminal["User"], terminal["Group"], terminal["UMask"]) == (user, group, "0007")
    # each account its own Wine prefix (a private /tmp per unit: one wineserver per prefix)
    assert "WINEPREFIX=/srv/mt5/%i/wine" in terminal["Environment"] and terminal["PrivateTmp"] == "yes"
    assert path in terminal["ReadWritePaths"].split() and dropin["ReadWritePaths"] == path
    assert dropin["SupplementaryGroups"] == group and dropin["PrivateUsers"] == "no"
    runbook = (UNITS.parent / "docs" / "runbook.md").read_text()
    assert f'bridge = "{path}/bridge.sov"' in runbook  # the config the runbook gives
    for name in ("mt5-terminal@.service", "sovereign-bridge.conf", "mt5-bridge.conf"):
        assert f"systemd/mt5/{name}" in runbook, name
