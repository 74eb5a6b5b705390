"""The supervisor under faults of its own (issue 22): its log going away (a full disk, a
reader gone) costs log lines, never the system; any exception in its loop drains every
process as a stop does, where it SIGKILLed them all; a child that fails exits 1, never
aborts."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import time
from pathlib import Path

from sovereign.state.store import StateStore
from tests.helpers import LiveSystem, wait_gone

CLI = [sys.executable, "-m", "sovereign.cli"]


def config(tmp: Path) -> Path:
    cfg = tmp / "c.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp / "state"}"\nrecord_days = 0\nworkers = 1\n'
                   '[feed]\nsymbols = 4\npace = "realtime"\nspeed = 60.0\n')  # fmt: skip
    return cfg


def journal(state: Path) -> list[dict]:
    with StateStore(state, readonly=True) as st:
        return st.read(lambda t: [v for _, v in t.items("journal")])


def test_a_log_that_goes_away_costs_lines_not_the_system(tmp_path: Path) -> None:
    system = LiveSystem(config(tmp_path), tmp_path / "unused.log")
    system.proc = subprocess.Popen([*CLI, "run", "--config", str(system.config)], stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        status = system.wait_healthy(90)
        system.proc.stdout.close()  # type: ignore[union-attr]  # every print now fails with EPIPE
        worker = system.pids(status)["worker-0"]
        system.kill(worker)  # its restart is logged: that print raised in the loop, and killed all
        status = system.wait_healthy(60, not_pids=[worker])
        assert {p["role"]: p["restarts"] for p in status["processes"]}["worker-0"] == 1
        assert system.stop() == 0
    finally:
        system.close()
    events = journal(tmp_path / "state")
    assert any(e["event"] == "restart" and e.get("process") == "worker-0" for e in events)
    assert [e["clean"] for e in events if e["event"] == "stopped"] == [True]


SCRIPT = """
import os, sys
from sovereign.config import load, with_absolute_paths
from sovereign.engine import supervisor

def sample(self):
    if os.path.exists({marker!r}):  # once the test has seen the system healthy: a defect in the loop
        raise RuntimeError("injected: a defect in the supervisor's loop")

supervisor.Supervisor.sample = sample
sys.exit(supervisor.Supervisor(with_absolute_paths(load({cfg!r}))).run())
"""


def test_an_exception_in_the_loop_drains_every_process(tmp_path: Path) -> None:
    marker = tmp_path / "now"
    script = textwrap.dedent(SCRIPT.format(cfg=str(config(tmp_path)), marker=str(marker)))
    log = tmp_path / "log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    system = LiveSystem(config(tmp_path), log)
    system.proc = proc
    try:
        status = system.wait_healthy(90)
        children = list(system.pids(status).values())
        marker.touch()
        assert proc.wait(120) == 1, system.tail()
        wait_gone(children, 30)
    finally:
        system.close()
    text = log.read_text()
    assert "injected: a defect in the supervisor's loop" in text
    assert "stopped clean=True" in text, text[-3000:]
    events = journal(tmp_path / "state")
    stops = [e for e in events if e["event"] == "gateway_stats"]
    assert stops, "the gateway never wrote its final stats: it was killed, not stopped"
    assert [e["clean"] for e in events if e["event"] == "stopped"] == [True]


def test_an_answered_halt_is_durable_before_its_answer(tmp_path: Path) -> None:
    """Risk is killed right after it answers the operator's halt (failpoint risk.answered):
    the restarted risk is halted. The answer used to go before the commit, and a kill
    right after it undid the halt (the chaos run lost 5 of 95 resumes that way)."""
    marker = tmp_path / "fired"
    env = {"SOVEREIGN_FAILPOINTS": f"risk.answered={marker}"}
    system = LiveSystem(config(tmp_path), tmp_path / "log", env=env)
    try:
        system.start()
        status = system.wait_healthy(90)
        risk = system.pids(status)["risk"]
        answer = system.request("halt", timeout=10.0, flatten=False, reason="drill")
        assert isinstance(answer, dict) and answer.get("state") == "HALTED", answer
        wait_gone([risk], 30)
        assert marker.exists()  # killed right after the answer
        status = system.wait_healthy(60, not_pids=[risk])
        assert status["account"]["state"] == "HALTED", status["account"]
        assert system.stop() == 0
    finally:
        system.close()


LIMITED = """
import os, resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails (EFBIG), as on a full disk
resource.setrlimit(resource.RLIMIT_FSIZE, ({limit}, {limit}))
os.execv(sys.executable, [sys.executable, "-m", "sovereign.cli", "run", "--config", {cfg!r}])
"""


def test_a_process_that_fails_exits_1_never_aborts(tmp_path: Path) -> None:
    """The gateway's recording failing to write (a full disk; here a file-size limit) raises
    in its main thread while its broker side waits inside a C++ call: it must exit 1 and be
    restarted, not abort with SIGABRT ("terminate called without an active exception") from
    the interpreter's finalization of that thread."""
    cfg = tmp_path / "c.toml"
    cfg.write_text(f'[system]\nstate_dir = "{tmp_path / "state"}"\nworkers = 1\n'
                   '[feed]\nsymbols = 4\n')  # fmt: skip
    log = tmp_path / "log"
    script = textwrap.dedent(LIMITED.format(limit=4 << 20, cfg=str(cfg)))
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-c", script], stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)  # fmt: skip
    system = LiveSystem(cfg, log)
    system.proc = proc
    try:
        end = time.monotonic() + 90
        while time.monotonic() < end and log.read_text().count("restart process=gateway") < 3:
            assert proc.poll() is None, system.tail()
            time.sleep(0.2)
        assert system.stop() == 0, system.tail()
    finally:
        system.close()
    text = log.read_text()
    restarts = [line for line in text.splitlines() if "restart process=gateway" in line]
    assert len(restarts) >= 3, text[-3000:]
    assert "File too large" in text, text[-3000:]
    assert "terminate called" not in text, text[-3000:]
    assert all("exitcode=1 " in line for line in restarts), restarts
