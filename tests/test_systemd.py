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
