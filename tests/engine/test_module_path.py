"""Nothing is imported from the directory an operator stands in (issue 20, item 3): a
`socket.py` there ran in all five children of `sovereign run`, and a
`sovereign/__init__.py` there ran as root in `state verify`'s reader."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

SOVEREIGN = shutil.which("sovereign")


def plant(where: Path, module: str, marker: Path) -> None:
    path = where / module
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"open({str(marker)!r}, 'a').write('ran\\n')\n")


def test_run_imports_nothing_from_its_working_directory(tmp_path: Path) -> None:
    assert SOVEREIGN is not None, "the sovereign entry point is not installed (pip install -e .)"
    cwd, marker = tmp_path / "here", tmp_path / "ran"
    for module in ("socket.py", "selectors.py", "numpy.py", "lmdb.py", "orjson.py"):
        plant(cwd, module, marker)
    (cwd / "c.toml").write_text('[system]\nstate_dir = "state"\nrecord_days = 0\n[feed]\nsymbols = 4\n')
    r = subprocess.run([SOVEREIGN, "run", "--config", "c.toml", "--max-ticks", "20000"], cwd=cwd,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert not marker.exists(), marker.read_text()
    assert (cwd / "state" / "data.mdb").is_file()  # the relative state_dir still means ./state


def test_state_verify_imports_nothing_from_its_working_directory(tmp_path: Path) -> None:
    assert SOVEREIGN is not None
    state, cwd, marker = tmp_path / "state", tmp_path / "here", tmp_path / "ran"
    subprocess.run([SOVEREIGN, "run", "--state-dir", str(state), "--max-ticks", "5000"], check=True,
                   capture_output=True, timeout=120, cwd=tmp_path)  # fmt: skip
    plant(cwd, "sovereign/__init__.py", marker)
    plant(cwd, "sovereign/ops/maintenance.py", marker)
    r = subprocess.run([SOVEREIGN, "state", "verify", "--state-dir", str(state)], cwd=cwd,
                       capture_output=True, text=True, timeout=120)  # fmt: skip
    assert not marker.exists(), (r.stdout, r.stderr)
    assert r.returncode == 0, r.stdout + r.stderr
