"""The test harness's LiveSystem (tests/helpers.py), which the soak, the chaos runs and the
system tests kill processes with: a process the status lists with pid 0 (waiting out its
restart backoff) is never "killed": os.kill(0, SIGKILL) is a SIGKILL of the caller's own
process group. That is how the 12-year soak's driver died twice with no traceback, at a
whole-system kill while the gateway was in its backoff, leaving the system running on."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

PROGRAM = r"""
import sys
sys.path.insert(0, {root!r})
from pathlib import Path
from tests.helpers import LiveSystem
Path("sovereign.toml").write_text('[system]\nstate_dir = "state"\n')
system = LiveSystem(Path("sovereign.toml").resolve(), Path("supervisor.log").resolve())
status = {{"processes": [{{"role": "gateway", "pid": 0}}, {{"role": "risk", "pid": 4194304}}]}}
pids = system.pids(status)
for pid in (0, *pids.values()):
    system.kill(pid)
print("alive", sorted(pids.items()))
"""


def test_a_pid_0_in_a_status_kills_nothing(tmp_path: Path) -> None:
    r = subprocess.run([sys.executable, "-c", PROGRAM.format(root=str(ROOT))], cwd=tmp_path,
                       capture_output=True, text=True, timeout=60, start_new_session=True)  # fmt: skip
    assert r.returncode == 0, (r.returncode, r.stderr)  # the old harness: -9, its own group killed
    assert r.stdout.strip() == "alive [('risk', 4194304)]"
