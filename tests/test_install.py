"""install.sh's upgrade (issue 22): the new release is built beside the running one, the
service is stopped before `current` switches to it and started after, so a process the
supervisor restarts never runs newer code than its supervisor; a failed build leaves the
running release untouched; three releases are kept. systemd, the package build and the
service user are stand-ins here (scripts on PATH that log what they were asked, with
where `current` pointed at that moment); the real units are checked in test_systemd. Issue
24: the release carries deploy/ (the Prometheus rules, the Grafana dashboard), every unit is
installed, and the Telegram bot's unit is enabled and started only while the config's
[telegram] lists chats and users."""

from __future__ import annotations

import os
import re
import subprocess
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).parent.parent
pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="install.sh runs as root")

STUBS = {
    # systemctl: each unit's state in files; every call logged with `current` at that moment
    "systemctl": """
        echo "systemctl $* current=$(readlink "$SOVEREIGN_PREFIX/current" || echo none)" >> "$LOG"
        case "$1" in
          is-active) [ "$(cat "$STUBS/active-$3" 2>/dev/null)" = 1 ] ;;
          is-enabled) [ -e "$STUBS/enabled-$3" ] ;;
          stop) echo 0 > "$STUBS/active-$2" ;;
          start|restart) echo 1 > "$STUBS/active-$2" ;;
          enable) shift; for unit in "$@"; do touch "$STUBS/enabled-$unit"; done ;;
          disable) rm -f "$STUBS/enabled-$2" ;;
        esac""",
    "systemd-analyze": "true",
    "getent": "true",
    "groupadd": "true",
    "useradd": "true",
    "chgrp": "true",
    "runuser": 'shift 3; exec "$@"',  # runuser -u sovereign -- CMD...
    # install(1) without -g (no `sovereign` group here)
    "install": """
        args=(); while [ $# -gt 0 ]; do case "$1" in -g) shift 2 ;; *) args+=("$1"); shift ;; esac; done
        exec /usr/bin/install "${args[@]}" """,
    # python3 -m venv DIR: a release whose pip "installs" a sovereign that logs its calls
    "fakepython": """
        [ "$1 $2" = "-m venv" ] || exit 9
        mkdir -p "$3/bin"
        cat > "$3/bin/pip" <<PIP
#!/bin/bash
[ "\\$2" = "--quiet" ] && [ "\\$3" = "--upgrade" ] && exit 0
[ -n "\\$FAIL_BUILD" ] && { echo "build failed" >&2; exit 1; }
echo "pip install release=$3" >> "\\$LOG"
printf '#!/bin/bash\\necho "sovereign \\$* release=$3" >> "\\$LOG"\\n' > "$3/bin/sovereign"
chmod +x "$3/bin/sovereign"
PIP
        ln -s "$(command -v python3)" "$3/bin/python"
        chmod +x "$3/bin/pip" """,
}


def _install(tmp: Path, env: dict[str, str], check: bool = True) -> subprocess.CompletedProcess:
    r = subprocess.run(["bash", str(ROOT / "systemd" / "install.sh")], env=env, capture_output=True,
                       text=True, timeout=120)  # fmt: skip
    assert not check or r.returncode == 0, r.stdout + r.stderr
    return r


def _log(env: dict[str, str]) -> list[str]:
    return Path(env["LOG"]).read_text().splitlines()


def _environment(tmp_path: Path) -> dict[str, str]:
    stubs = tmp_path / "stubs"
    stubs.mkdir()
    for name, body in STUBS.items():
        (stubs / name).write_text("#!/bin/bash\n" + "\n".join(line.strip() for line in body.splitlines()))
        (stubs / name).chmod(0o755)
    (tmp_path / "units").mkdir()
    return {**os.environ, "PATH": f"{stubs}:{os.environ['PATH']}", "STUBS": str(stubs),
            "LOG": str(tmp_path / "log"), "PYTHON": str(stubs / "fakepython"),
            "SOVEREIGN_PREFIX": str(tmp_path / "opt"), "SOVEREIGN_ETC": str(tmp_path / "etc"),
            "SOVEREIGN_UNITS": str(tmp_path / "units"), "SOVEREIGN_VAR": str(tmp_path / "var")}  # fmt: skip


def test_an_upgrade_builds_beside_the_running_release_and_switches_after_the_stop(tmp_path: Path) -> None:
    env = _environment(tmp_path)
    prefix = tmp_path / "opt"

    _install(tmp_path, env)  # a first install: nothing running, nothing stopped
    first = os.readlink(prefix / "current")
    log = _log(env)
    assert not [line for line in log if line.startswith("systemctl stop")]
    assert f"systemctl start sovereign.service current={first}" in log
    assert (tmp_path / "etc" / "sovereign.toml").is_file()

    (tmp_path / "var" / "state").mkdir(parents=True)
    (tmp_path / "var" / "state" / "data.mdb").write_bytes(b"")  # there is state: a backup first
    Path(env["LOG"]).write_text("")
    time.sleep(1.1)  # release names are by the second
    _install(tmp_path, env)  # the upgrade, the service running the first release
    second = os.readlink(prefix / "current")
    log = _log(env)
    assert second != first
    built = log.index(f"pip install release={second}")
    checked = log.index(f"sovereign config check {tmp_path / 'etc' / 'sovereign.toml'} release={second}")
    backup = next(i for i, line in enumerate(log) if line.startswith("sovereign state backup"))
    stop = log.index(f"systemctl stop sovereign.service current={first}")  # still the old one
    start = log.index(f"systemctl start sovereign.service current={second}")
    assert built < checked < backup < stop < start, log
    assert (prefix / "releases" / Path(first).name).is_dir()  # kept for a rollback

    Path(env["LOG"]).write_text("")
    r = _install(tmp_path, {**env, "FAIL_BUILD": "1"}, check=False)  # a build that fails
    assert r.returncode != 0 and "the running release is untouched" in r.stderr
    assert os.readlink(prefix / "current") == second
    assert not [line for line in _log(env) if line.startswith("systemctl stop")]
    assert len(list((prefix / "releases").iterdir())) == 2  # the failed one removed

    for _ in range(2):
        time.sleep(1.1)
        _install(tmp_path, env)
    releases = sorted(p.name for p in (prefix / "releases").iterdir())
    assert len(releases) == 3 and Path(first).name not in releases
    assert Path(os.readlink(prefix / "current")).name == releases[-1]


def _with_telegram(example: str, table: str) -> str:
    """The example config with its [telegram] table (if any) replaced by `table`."""
    kept = re.sub(r"^\[telegram\]\n(?:(?!\[).*\n?)*", "", example, flags=re.M)
    return kept + "\n[telegram]\n" + table


def test_the_release_carries_deploy_and_the_bot_runs_only_when_telegram_is_enabled(tmp_path: Path) -> None:
    env = _environment(tmp_path)
    _install(tmp_path, env)  # the example config does not enable the bot
    current = Path(os.readlink(tmp_path / "opt" / "current"))
    carried = ("deploy", "systemd/mt5")  # the MT5 account's units are copied by hand (the runbook)
    shipped = sorted(p.relative_to(ROOT) for d in carried for p in (ROOT / d).rglob("*") if p.is_file())
    installed = sorted(p.relative_to(current) for d in carried for p in (current / d).rglob("*")
                       if p.is_file())  # fmt: skip
    assert shipped and installed == shipped and any(p.parts[0] == "systemd" for p in shipped)
    assert all((current / f).read_bytes() == (ROOT / f).read_bytes() for f in shipped)
    kinds = (".service", ".socket", ".timer")
    units = sorted(p.name for p in (ROOT / "systemd").iterdir() if p.suffix in kinds)
    assert sorted(p.name for p in (tmp_path / "units").iterdir()) == units
    log = _log(env)
    enable = "systemctl enable sovereign.service sovereign-backup.timer sovereign-metrics.socket"
    assert f"{enable} current={current}" in log
    assert not [line for line in log if "sovereign-telegram.service" in line and "is-" not in line]
    assert (tmp_path / "etc" / "credentials").is_dir()

    config = tmp_path / "etc" / "sovereign.toml"
    example = config.read_text()
    config.write_text(_with_telegram(example, "enabled = true\nchats = [-1001234]\nusers = [42]\n"))
    Path(env["LOG"]).write_text("")
    time.sleep(1.1)  # release names are by the second
    r = _install(tmp_path, env)
    assert "telegram-token is missing" in r.stderr  # said, and the rest goes on
    second = os.readlink(tmp_path / "opt" / "current")
    log = _log(env)
    assert f"systemctl enable sovereign-telegram.service current={second}" in log
    assert f"systemctl start sovereign-telegram.service current={second}" in log

    (tmp_path / "etc" / "credentials" / "telegram-token").write_text("123:abc")
    Path(env["LOG"]).write_text("")
    time.sleep(1.1)
    r = _install(tmp_path, env)  # an upgrade: the running bot stops before the switch, as the system does
    assert "telegram-token is missing" not in r.stderr
    third = os.readlink(tmp_path / "opt" / "current")
    log = _log(env)
    stop = log.index(f"systemctl stop sovereign-telegram.service current={second}")
    start = log.index(f"systemctl start sovereign-telegram.service current={third}")
    assert stop < log.index(f"systemctl start sovereign.service current={third}") < start

    for table in ("enabled = false\nchats = [-1001234]\nusers = [42]\n",  # turned off
                  "enabled = true\nchats = []\nusers = [42]\n"):  # no one to talk to  # fmt: skip
        config.write_text(_with_telegram(example, table))
        (tmp_path / "stubs" / "enabled-sovereign-telegram.service").touch()
        Path(env["LOG"]).write_text("")
        time.sleep(1.1)
        r = _install(tmp_path, env)
        assert "the bot's unit is disabled" in r.stdout, table
        log = _log(env)
        assert any(line.startswith("systemctl disable sovereign-telegram.service") for line in log)
        assert not any(line.startswith("systemctl start sovereign-telegram.service") for line in log)
