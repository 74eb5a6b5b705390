"""The units in systemd/: `systemd-analyze verify` passes on each, the service's sandbox
rates 2.0 or lower ("OK") by `systemd-analyze security --offline=true`, and the unit's
timeouts agree with the config's defaults. CI installs Debian's systemd package for
systemd-analyze (.ci/deps)."""

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
    """The units with ExecStart pointing at this environment's real `sovereign` entry point
    instead of /opt/sovereign (verify checks that the program exists and is executable)."""
    exe = shutil.which("sovereign")
    assert exe is not None, "the sovereign entry point is not installed (pip install -e .)"
    out = []
    for name in ("sovereign.service", "sovereign-backup.service", "sovereign-backup.timer"):
        text = (UNITS / name).read_text()
        assert name.endswith(".timer") or INSTALLED in text
        (tmp / name).write_text(text.replace(INSTALLED, exe))
        out.append(tmp / name)
    return out


def test_every_unit_verifies(tmp_path: Path) -> None:
    assert analyze is not None, "CI must have systemd-analyze: .ci/deps installs Debian's systemd"
    r = subprocess.run([analyze, "verify", *map(str, staged(tmp_path))], capture_output=True, text=True)
    assert r.returncode == 0 and not r.stderr.strip(), r.stderr


def test_the_service_sandbox_rates_ok(tmp_path: Path) -> None:
    assert analyze is not None
    for unit in staged(tmp_path):
        if unit.suffix != ".service":
            continue
        r = subprocess.run([analyze, "security", "--offline=true", str(unit)], capture_output=True, text=True)
        found = re.search(r"Overall exposure level for \S+: (\d+\.\d+) (\w+)", r.stdout)
        assert found, r.stdout + r.stderr
        assert float(found.group(1)) <= 2.0, f"{unit.name}: {found.group(1)} {found.group(2)}\n{r.stdout}"


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
    # No network until a feature needs it (the paper broker needs none): a feature that does
    # (the MT5 bridge's terminal on loopback, the Telegram bot) allows exactly its addresses.
    assert re.search(r"^IPAddressDeny=any$", unit, re.M) and re.search(r"^PrivateNetwork=yes$", unit, re.M)
    assert "IPAddressAllow=" not in unit
    install = (UNITS / "install.sh").read_text()
    assert re.search(r"^cd /( |$)", install, re.M), "install.sh must leave the checkout first"
