"""One error root (issue 21, item 6): every error the system raises on purpose is a
SovereignError that carries its exit code, and the CLI catches that root once."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from sovereign.config import ConfigError
from sovereign.credentials import CredentialError
from sovereign.engine.control import Busy, ControlError, NotRunning
from sovereign.errors import OperationalError, SovereignError, UsageError
from sovereign.market.data import DataError
from sovereign.ops.maintenance import OpsError
from sovereign.state.orders import LifecycleError
from sovereign.state.store import StateError

KINDS = [(ConfigError, 2), (DataError, 2), (CredentialError, 2), (StateError, 1), (ControlError, 1),
         (NotRunning, 1), (Busy, 1), (OpsError, 1), (LifecycleError, 1)]  # fmt: skip


@pytest.mark.parametrize(("cls", "code"), KINDS)
def test_every_error_has_the_root_and_its_exit_code(cls: type, code: int) -> None:
    assert issubclass(cls, SovereignError) and cls.exit_code == code
    assert issubclass(cls, UsageError if code == 2 else OperationalError)


def test_the_cli_answers_each_kind_with_its_code(tmp_path: Path) -> None:
    cli = [sys.executable, "-m", "sovereign.cli"]
    bad = tmp_path / "bad.toml"
    bad.write_text("[risk]\nmax_drawdown = 3\n")
    r = subprocess.run([*cli, "run", "--config", str(bad)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2 and r.stderr.startswith("sovereign: config key risk.max_drawdown")
    r = subprocess.run([*cli, "state", "backup", str(tmp_path / "b"), "--state-dir", str(tmp_path / "none")],
                       capture_output=True, text=True, timeout=60)  # fmt: skip
    assert r.returncode == 1 and r.stderr == f"sovereign: no state at {tmp_path / 'none'} to back up\n"
    assert "Traceback" not in r.stderr
