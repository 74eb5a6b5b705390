"""Sweeps: the spec and its errors, grid and random expansion, a sweep on the local pool,
a sweep killed midway that resumes without redoing its finished cells, and the same sweep
on a real local Ray cluster (its own loopback-only network namespace) giving the local
pool's results cell by cell."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import orjson
import pytest

from sovereign.market.datafile import write
from sovereign.research import sweep_spec
from sovereign.research.sweep_spec import SpecError
from tests.helpers import interruptible, m1_walk

NS = 1_000_000_000
T0 = 1_767_225_600 * NS  # 2026-01-01
ROOT = Path(__file__).parent.parent.parent



SPEC = """
data = "data.sovdata"
[config.market]
hours = "always"
[params]
risk.risk_per_trade = [0.002, 0.005]
coordinator.threshold = [0.5, 0.7]
[groups]
all = ["*"]
eur = ["EUR*"]
[walk_forward]
train = "3d"
test = "1d"
step = "2d"
"""


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    write(tmp_path / "data.sovdata", m1_walk(["EURUSD", "GBPUSD"], 6))
    return tmp_path


def spec_at(folder: Path, text: str) -> Path:
    path = folder / "spec.toml"
    path.write_text(text)
    return path


def sovereign(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "sovereign.cli", *args],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=600,
        **kw,
    )  # type: ignore[call-overload]


# ---- the spec


@pytest.mark.parametrize(
    ("text", "says"),
    [
        ('data = "d.sovdata"\nbogus = 1', "sweep spec key bogus is unknown"),
        ("[params]\nrisk.risk_per_trade = [0.002]", "sweep spec key data"),
        (
            'data = "d.sovdata"\n[params]\nrisk.risk_per_trade = 0.002',
            "params.risk.risk_per_trade: expected a list",
        ),
        (
            'data = "d.sovdata"\n[params]\nrisk.risk_per_trade = []',
            "params.risk.risk_per_trade: an empty list",
        ),
        (
            'data = "d.sovdata"\n[params]\nrisk.risk_per_trade = [0.002, 0.5]',
            "params.risk.risk_per_trade = 0.5: config key risk.risk_per_trade: 0.5 is not in (0, 0.1]",
        ),
        (
            'data = "d.sovdata"\n[params]\nrisk.risk_per_trad = [0.002]',
            "config key risk.risk_per_trad is unknown",
        ),
        (
            'data = "d.sovdata"\n[params]\nrisk.risk_per_trade = {low = 0.001, high = 0.01}',
            "a range ({low, high}) is for a random search",
        ),
        ('data = "d.sovdata"\n[search]\nkind = "random"', "search.samples is missing"),
        ('data = "d.sovdata"\n[search]\nkind = "grid"\nsamples = 3', "search.samples: only a random search"),
        ('data = "d.sovdata"\n[search]\nkind = "best"', "search.kind: 'best' is not 'grid' or 'random'"),
        ('data = "d.sovdata"\n[search]\nobjective = "luck"', "search.objective: 'luck' is not one of"),
        (
            'data = "d.sovdata"\n[search]\nkind = "random"\nsamples = 2\n[params]\nrisk.max_drawdown = '
            "{low = 0.3, high = 0.1}",
            "params.risk.max_drawdown: a range needs numbers low < high",
        ),
        (
            'data = "d.sovdata"\n[walk_forward]\ntrain = "90x"\ntest = "1d"',
            "walk_forward.train: expected a duration",
        ),
        ('data = "d.sovdata"\n[walk_forward]\ntrain = "9d"', "walk_forward.test: train and test go together"),
        ('data = "d.sovdata"\n[walk_forward]\ncount = 2\ntrain = "9d"', "walk_forward.count: give count"),
        (
            'data = "d.sovdata"\n[walk_forward]\ntest_share = 1.5',
            "walk_forward.test_share: expected a number",
        ),
        ('data = "d.sovdata"\n[groups]\nmajors = "EURUSD"\nnone = []', "groups.none: expected a list"),
        ('data = "d.sovdata"\nconfig = "missing.toml"', "sweep spec key config: "),
    ],
)
def test_a_bad_spec_is_refused_naming_its_key(tmp_path: Path, text: str, says: str) -> None:
    with pytest.raises(SpecError) as e:
        sweep_spec.load(spec_at(tmp_path, text))
    assert says in str(e.value)


def test_a_spec_that_does_not_fit_the_data_is_refused_by_the_cli(folder: Path) -> None:
    r = sovereign(
        "sweep",
        str(spec_at(folder, 'data = "data.sovdata"\n[walk_forward]\ntrain = "5d"\ntest = "2d"')),
        "--out",
        str(folder / "out"),
    )
    assert r.returncode == 2, r.stderr
    assert "walk_forward.train: train 5d + test 2d is longer than the data (6.0 days)" in r.stderr
    r = sovereign(
        "sweep",
        str(spec_at(folder, 'data = "data.sovdata"\n[groups]\nyen = ["*JPY"]')),
        "--out",
        str(folder / "out"),
    )
    assert r.returncode == 2 and "groups.yen: no symbol of the data matches *JPY" in r.stderr
    r = sovereign("sweep", str(folder / "nowhere.toml"))
    assert r.returncode == 2 and "nowhere.toml does not exist" in r.stderr


def test_a_grid_is_every_combination_in_order(tmp_path: Path) -> None:
    spec = sweep_spec.load(
        spec_at(
            tmp_path,
            'data = "d.sovdata"\n[params]\nrisk.risk_per_trade = [0.002, 0.005]\n'
            "coordinator.threshold = [0.5, 0.6, 0.7]",
        )
    )
    pts = sweep_spec.points(spec)
    assert len(pts) == 6
    assert pts[0] == {"risk.risk_per_trade": 0.002, "coordinator.threshold": 0.5}
    assert pts[-1] == {"risk.risk_per_trade": 0.005, "coordinator.threshold": 0.7}
    assert len({tuple(p.values()) for p in pts}) == 6
    raw = sweep_spec.raw_config(spec, pts[1])
    assert raw["risk"]["risk_per_trade"] == 0.002 and raw["coordinator"]["threshold"] == 0.6


def test_a_random_search_is_seeded_within_its_ranges(tmp_path: Path) -> None:
    text = (
        'data = "d.sovdata"\n[search]\nkind = "random"\nsamples = 40\nseed = {seed}\n[params]\n'
        "risk.risk_per_trade = {{low = 0.001, high = 0.02, log = true}}\n"
        "risk.max_open_positions = {{low = 1, high = 9}}\ncoordinator.threshold = [0.5, 0.6]\n"
    )
    a = sweep_spec.points(sweep_spec.load(spec_at(tmp_path, text.format(seed=7))))
    b = sweep_spec.points(sweep_spec.load(spec_at(tmp_path, text.format(seed=7))))
    c = sweep_spec.points(sweep_spec.load(spec_at(tmp_path, text.format(seed=8))))
    assert a == b and a != c and len(a) == 40
    assert all(0.001 <= p["risk.risk_per_trade"] <= 0.02 for p in a)
    assert all(
        isinstance(p["risk.max_open_positions"], int) and 1 <= p["risk.max_open_positions"] <= 9 for p in a
    )
    assert {p["coordinator.threshold"] for p in a} == {0.5, 0.6}
    # a log scale: about half the draws below the geometric middle, far more than a linear one puts there
    assert 10 <= sum(p["risk.risk_per_trade"] < (0.001 * 0.02) ** 0.5 for p in a) <= 30
    few = sweep_spec.points(
        sweep_spec.load(
            spec_at(
                tmp_path,
                'data = "d.sovdata"\n[search]\nkind = "random"\n'
                "samples = 50\n[params]\ncoordinator.threshold = [0.5, 0.6]",
            )
        )
    )
    assert sorted(p["coordinator.threshold"] for p in few) == [0.5, 0.6]  # repeated draws are one point


def test_walk_forward_windows() -> None:
    day = 86_400 * NS
    w = sweep_spec.windows(sweep_spec.Walk("3d", "1d", "2d"), T0, T0 + 6 * day)
    assert [(x.train, x.test) for x in w] == [
        ((T0, T0 + 3 * day), (T0 + 3 * day, T0 + 4 * day)),
        ((T0 + 2 * day, T0 + 5 * day), (T0 + 5 * day, T0 + 6 * day)),
    ]
    w = sweep_spec.windows(sweep_spec.Walk(count=4, test_share=0.25), T0, T0 + 8 * day)
    assert [(x.train, x.test) for x in w][1] == (
        (T0 + 2 * day, T0 + 3 * day + day // 2),
        (T0 + 3 * day + day // 2, T0 + 4 * day),
    )


# ---- running


def _cells(out: Path) -> dict[str, dict[str, object]]:
    return {p.stem: orjson.loads(p.read_bytes()) for p in (out / "cells").glob("*.json")}


def test_a_sweep_on_the_local_pool_writes_every_cell_and_its_results(folder: Path) -> None:
    r = sovereign("sweep", str(spec_at(folder, SPEC)), "--out", str(folder / "out"), "--workers", "2")
    assert r.returncode == 0, r.stderr
    assert "sweep: 16 cells (4 points × 2 groups × 2 windows)" in r.stdout
    assert "16 cells run on a local pool of 2 processes" in r.stdout
    cells = _cells(folder / "out")
    assert len(cells) == 16
    doc = orjson.loads((folder / "out" / "results.json").read_bytes())
    assert len(doc["rows"]) == 16 and doc["run"]["ran"] == 16
    row = doc["rows"][0]
    assert row["point"] == {"risk.risk_per_trade": 0.002, "coordinator.threshold": 0.5}
    assert row["group"] == "all" and row["window"] == 1
    assert row["train_from"] == "2026-01-01T00:00:00.000Z" and row["test_to"] == "2026-01-05T00:00:00.000Z"
    assert row["in_sample"]["trades"] > 0 and row["out_of_sample"]["trades"] > 0
    eur = next(c for c in cells.values() if c["group"] == "eur")
    assert eur["symbols"] == ["EURUSD"]
    header = (folder / "out" / "results.csv").read_text().splitlines()[0].split(",")
    assert header[:5] == ["cell", "risk.risk_per_trade", "coordinator.threshold", "group", "window"]
    assert "is_sharpe" in header and "oos_sharpe" in header
    page = (folder / "out" / "report.html").read_text()
    assert "risk.risk_per_trade × coordinator.threshold" in page and "coordinator.threshold × group" in page
    assert page.count("data:image/png;base64,") == 4  # 3 heatmaps (3 dimensions) and the equity curves
    again = sovereign("sweep", str(folder / "spec.toml"), "--out", str(folder / "out"))
    assert "0 cells run" in again.stdout and "16 from the cache" in again.stdout
    # a cell whose inputs change is another cell: a new base value reruns them all
    spec_at(
        folder,
        SPEC.replace('hours = "always"', 'hours = "always"\n[config.broker]\ncommission_per_lot = 5.0'),
    )
    changed = sovereign("sweep", str(folder / "spec.toml"), "--out", str(folder / "out"))
    assert "16 cells run" in changed.stdout and len(_cells(folder / "out")) == 32


def test_agent_sets_are_swept_as_alternative_lists(folder: Path) -> None:
    text = """
data = "data.sovdata"
[config.agents]
preset = "none"
[config.market]
hours = "always"
[params]
"agents.sets" = [[{symbols = ["*"], timeframe = "M5"}],
                 [{symbols = ["EUR*"], timeframe = "M1", k = 2}, {symbols = ["*"], timeframe = "M15"}]]
"""
    r = sovereign("sweep", str(spec_at(folder, text)), "--out", str(folder / "out"))
    assert r.returncode == 0, r.stderr
    doc = orjson.loads((folder / "out" / "results.json").read_bytes())
    first, second = doc["rows"]
    assert (first["agents.sets"], second["agents.sets"]) == ("#1", "#2")
    assert second["point"]["agents.sets"][0] == {"symbols": ["EUR*"], "timeframe": "M1", "k": 2}
    assert first["in_sample"]["signals"] != second["in_sample"]["signals"]
    bad = text.replace('k = 2', 'k = 99')
    r = sovereign("sweep", str(spec_at(folder, bad)), "--out", str(folder / "out"))
    assert r.returncode == 2 and "params.agents.sets = [{" in r.stderr and "agents.sets[1].k" in r.stderr


def _semaphores() -> set[str]:
    return {p.name for p in Path("/dev/shm").glob("sem.mp-*")}


def _unmapped(names: set[str]) -> set[str]:
    """Of these /dev/shm names, those no live process maps."""
    mapped: set[str] = set()
    for maps in Path("/proc").glob("[0-9]*/maps"):
        with contextlib.suppress(OSError):
            mapped.update(line.rsplit("/", 1)[-1].strip() for line in maps.read_text().splitlines()
                          if "/dev/shm/sem.mp-" in line)  # fmt: skip
    return names - mapped


def test_a_sweep_killed_midway_resumes_without_redoing_its_cells(folder: Path) -> None:
    out = folder / "out"
    spec = spec_at(folder, SPEC)
    had = _semaphores()
    try:
        _killed_midway_then_resumed(out, spec)
    finally:  # the kill took the pool's resource tracker too: the semaphores it would have unlinked
        for name in _unmapped(_semaphores() - had):
            (Path("/dev/shm") / name).unlink(missing_ok=True)


def _killed_midway_then_resumed(out: Path, spec: Path) -> None:
    cmd = [sys.executable, "-m", "sovereign.cli", "sweep", str(spec), "--out", str(out), "--workers", "1"]
    p = subprocess.Popen(
        cmd, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True
    )  # its pool's workers too: the whole group is killed
    try:
        deadline = time.monotonic() + 300
        while (
            len(list((out / "cells").glob("*.json"))) < 3 and p.poll() is None and time.monotonic() < deadline
        ):
            time.sleep(0.05)
        assert p.poll() is None, "the sweep ended before it could be killed"
    finally:
        os.killpg(p.pid, signal.SIGKILL)
        p.wait()
    _wait_group_gone(p.pid)
    before = {path.name: path.stat().st_mtime_ns for path in (out / "cells").glob("*.json")}
    assert 3 <= len(before) < 16
    assert not list((out / "cells").glob(".*"))  # no half-written file
    r = sovereign("sweep", str(spec), "--out", str(out), "--workers", "2")
    assert r.returncode == 0, r.stderr
    ran = [line for line in r.stdout.splitlines() if line.startswith("cell ")]
    assert len(ran) == 16 - len(before)  # each finished cell is not run again
    assert f"{16 - len(before)} cells run" in r.stdout and f"{len(before)} from the cache" in r.stdout
    assert all((out / "cells" / name).stat().st_mtime_ns == t for name, t in before.items())
    assert len(_cells(out)) == 16


# 96 cells: Ctrl-C after the second finds the sweep far from its end, however slow this
# test's own polling is on a loaded machine
MANY = SPEC.replace("[0.002, 0.005]", "[0.001, 0.002, 0.003, 0.004, 0.005, 0.006]").replace(
    "[0.5, 0.7]", "[0.4, 0.5, 0.6, 0.7]")


def test_ctrl_c_stops_a_sweep_saying_how_to_resume(folder: Path) -> None:
    out = folder / "out"
    cmd = [sys.executable, "-m", "sovereign.cli", "sweep", str(spec_at(folder, MANY)), "--out", str(out),
           "--workers", "1"]  # fmt: skip
    p = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         start_new_session=True, preexec_fn=interruptible)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while len(list((out / "cells").glob("*.json"))) < 2 and p.poll() is None:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        os.killpg(p.pid, signal.SIGINT)  # as a terminal's Ctrl-C: the whole foreground group
        _, stderr = p.communicate(timeout=60)
    finally:
        if p.poll() is None:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
    assert p.returncode == 130, stderr
    assert "stopped after" in stderr and "the same command resumes" in stderr
    _wait_group_gone(p.pid)  # the pool's workers ended with it
    assert 2 <= len(list((out / "cells").glob("*.json"))) < 96


def test_workers_are_for_the_local_pool_alone(folder: Path) -> None:
    r = sovereign("sweep", str(spec_at(folder, SPEC)), "--ray", "auto", "--workers", "2")
    assert r.returncode == 2 and "--workers is for the local pool" in r.stderr
    below_a_file = folder / "data.sovdata" / "out"
    r = sovereign("sweep", str(folder / "spec.toml"), "--out", str(below_a_file))
    assert r.returncode == 1 and f"cannot write to {below_a_file}: Not a directory" in r.stderr


def _wait_group_gone(pgid: int) -> None:
    for _ in range(200):
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.05)
    raise AssertionError(f"processes of group {pgid} are still there")


# ---- Ray


def loopback_ray_or_skip() -> None:
    """Ray installed, and a network namespace of our own (root, CAP_SYS_ADMIN: CI runs as
    root); without them the test is skipped, except under CI, where it fails."""
    try:
        import ray  # noqa: F401
    except ImportError:
        if os.environ.get("CI"):
            raise
        pytest.skip("Ray is not installed (pip install -e '.[test]' installs it)")
    r = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"], capture_output=True, text=True)
    if r.returncode != 0:
        why = f"cannot make a loopback-only network namespace (unshare -n): {r.stderr.strip()}"
        if os.environ.get("CI"):
            raise AssertionError(why)
        pytest.skip(why)


def sweep_on_loopback_ray(spec: Path, out: Path, cpus: int, timeout: float = 420) -> tuple[int, str, str]:
    """`sovereign sweep SPEC --ray ADDRESS` against a Ray head of its own (`ray start
    --head`, `cpus` CPUs), both in a network namespace with loopback alone: Ray listens on
    the machine's interface whatever it is told, so nothing of it may see one. HOME and
    RAY_TMPDIR are a temporary folder of its own (a local ray.init writes ~/.ray/auth_token;
    short, for Ray's socket paths), token auth is off, and the head is stopped by its own
    process group (never `ray stop`, which stops every Ray on the host). Nothing is left:
    no process, no folder. Returns the exit code, stdout and stderr."""
    home = Path(tempfile.mkdtemp(prefix="sovray", dir="/tmp"))
    script = (
        "set -e; ip link set lo up; "
        f"{sys.executable} -m ray.scripts.scripts start --head --port=0 --num-cpus={cpus} "
        '--include-dashboard=false --disable-usage-stats > "$RAY_TMPDIR/start.log" 2>&1 '
        '|| { cat "$RAY_TMPDIR/start.log"; exit 97; }; '
        'ADDRESS=$(cat "$RAY_TMPDIR/ray/ray_current_cluster"); '
        f'{sys.executable} -m sovereign.cli sweep {spec} --out {out} --ray "$ADDRESS"'
    )
    env = {**os.environ, "HOME": str(home), "RAY_TMPDIR": str(home), "RAY_AUTH_MODE": "disabled"}
    try:
        p = subprocess.Popen(["unshare", "-n", "sh", "-c", script], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
        try:
            stdout, stderr = p.communicate(timeout=timeout)
        finally:
            _stop_group(p)
    finally:
        shutil.rmtree(home, ignore_errors=True)
    return p.returncode, stdout, stderr


def test_a_sweep_on_a_local_ray_cluster_gives_the_local_pools_results(folder: Path) -> None:
    loopback_ray_or_skip()
    spec = spec_at(folder, SPEC)
    local = sovereign("sweep", str(spec), "--out", str(folder / "local"), "--workers", "2")
    assert local.returncode == 0, local.stderr
    default_dir_there = Path("/tmp/ray").exists()  # Ray's default temp dir: ours must not use it
    code, stdout, stderr = sweep_on_loopback_ray(spec, folder / "ray", cpus=2)
    assert code == 0, stdout + stderr
    assert default_dir_there or not Path("/tmp/ray").exists()
    assert "16 cells run on the Ray cluster at 127.0.0.1:" in stdout and "(2 CPUs)" in stdout
    a, b = _cells(folder / "local"), _cells(folder / "ray")
    assert set(a) == set(b) and len(a) == 16
    for key in a:
        a[key].pop("seconds")
        b[key].pop("seconds")
        assert a[key] == b[key], key
    assert (
        orjson.loads((folder / "ray" / "results.json").read_bytes())["rows"]
        == orjson.loads((folder / "local" / "results.json").read_bytes())["rows"]
    )


def _stop_group(p: subprocess.Popen[str]) -> None:
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(p.pid, sig)
        except ProcessLookupError:
            break
        for _ in range(100):
            try:
                os.killpg(p.pid, 0)
            except ProcessLookupError:
                break
            time.sleep(0.05)
    if p.poll() is None:
        p.kill()
    p.wait()
    _wait_group_gone(p.pid)
