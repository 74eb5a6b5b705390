"""`sovereign mt5 install-ea` from an installed package (issue 23): the build installs the
Expert Advisor's source and, where mingw-w64 built it, the DLL beside the bridge library, so
the command needs no source checkout."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

from sovereign.broker.bridge import DLL_NAME, find_file
from tests.helpers import code_snapshot

ROOT = Path(__file__).resolve().parents[2]
EA = "SovereignBridge.mq5"


def test_the_build_installs_the_expert_advisor_beside_the_bridge_library() -> None:
    ea = find_file(EA)
    assert ea is not None and ea.parent.name == "_bridge", (
        f"{EA} is not installed with the package: reinstall it (python3 -m pip install -e .)"
    )
    assert ea.read_bytes() == (ROOT / "mql5" / EA).read_bytes()


def test_install_ea_works_from_an_installed_package_without_a_checkout(tmp_path: Path) -> None:
    # An installed package: the sources and the built files, nowhere near mql5/ or csrc/.
    env = code_snapshot(tmp_path / "site")
    built = find_file(EA)
    assert built is not None
    shutil.copytree(built.parent, tmp_path / "site" / "sovereign" / "broker" / "_bridge")
    assert not (tmp_path / "site" / "mql5").exists()
    terminal = tmp_path / "terminal" / "MQL5"
    (terminal / "Experts").mkdir(parents=True)

    def install_ea(folder: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run([sys.executable, "-m", "sovereign.cli", "mt5", "install-ea", str(folder)],
                              cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)  # fmt: skip

    done = install_ea(terminal.parent)  # the install folder holding MQL5 will do
    if find_file(DLL_NAME) is None:  # no mingw-w64 when the package was built: say how to get the DLL
        assert done.returncode != 0 and "gcc-mingw-w64-x86-64" in done.stderr + done.stdout
        return
    assert done.returncode == 0, done.stderr
    assert (terminal / "Experts" / EA).read_bytes() == (ROOT / "mql5" / EA).read_bytes()
    assert (terminal / "Libraries" / DLL_NAME).read_bytes() == find_file(DLL_NAME).read_bytes()  # type: ignore[union-attr]
    assert "Allow DLL imports" in done.stdout

    refused = install_ea(tmp_path / "elsewhere")
    assert refused.returncode != 0 and "is not a terminal's MQL5 folder" in refused.stderr + refused.stdout
