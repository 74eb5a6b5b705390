"""A backup's and a restore's time at the retention's steady state, against today's
unbounded state after the same simulated time (issue 22, "Measured").

Both states hold `--months` of market time at the default pace's rates, per market day and
100 symbols, as measured on a 4 M-tick run of the default sim: 3,740 orders (7 in 10
refused by risk: INTENT and REJECTED journaled; the rest INTENT, APPROVED, SUBMITTING,
FILLED, with an execution), 950 deals a stop or target made (each journaled), about
10,900 journal entries in all, and one worker's 5 MB agent snapshot. The bounded state is
the same one after `Archiver.run` with the default retention (90 days: LMDB keeps 90 to
121 of them); its backup also copies the archive. Each backup is `sovereign state backup`
(a compacting hot copy, then verified record by record in a child), each restore
`sovereign state restore` (verified again, then copied into place).

    python3 -m bench.bench_archive --months 12          # the measurement in docs/runbook.md
    python3 -m pytest bench/bench_archive.py -s         # 4 months, in the benchmark summary

Time grows with the records LMDB holds, so the unbounded state's cost grows with every
month while the bounded one's stays flat after the window fills; the report says so.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

import pytest

from sovereign.ops.maintenance import backup, restore
from sovereign.state.archive import Archive, Archiver, parse_month
from sovereign.state.orders import OrderBook, OrderState
from sovereign.state.schema import deal_key, exec_key
from sovereign.state.store import StateStore, Txn

S = OrderState
DAY = 86_400 * 10**9
ORDERS_A_DAY, DEALS_A_DAY, SUBMITTED = 3740, 950, 0.3
START = parse_month("2026-03")


def build(path: Path, months: int, scale: float = 1.0) -> None:
    """`months` of market days at the default pace's rates (times `scale`)."""
    with StateStore(path) as store:
        book = OrderBook(store)
        store.write(lambda t: t.put_bytes("snapshots", "worker-0", os.urandom(5 << 20)))
        orders, deals = int(ORDERS_A_DAY * scale), int(DEALS_A_DAY * scale)
        cid, ticket = 1, 1

        def day(t: Txn, d: int) -> None:
            nonlocal cid, ticket
            base = START + d * DAY
            for n in range(orders):
                ts = base + n * DAY // orders
                common = {"symbol": n % 100, "side": 1 if n % 2 else -1, "conviction": 0.61803, "ts_ns": ts}
                if n % 10 < 10 * SUBMITTED:
                    fields = {**common, "volume": 0.18, "price": 1.08409, "sl": 1.0759589131530696, "tp": 0.0,
                              "agent": n % 1000, "reason": "OK"}  # fmt: skip
                    book.advance(t, cid, [S.APPROVED, S.SUBMITTING], **fields)
                    ex = {"client_order_id": cid, "symbol": n % 100, "side": common["side"], "volume": "0.18",
                          "price": "1.08409", "commission": "1.260", "realized_pnl": "0", "ts_ns": ts,
                          "retcode": 10009, "reason": "", "ticket": ticket}  # fmt: skip
                    t.put("bridge", exec_key(cid), ex)
                    book.advance(t, cid, [S.FILLED], fill_price="1.08409", ticket=ticket, commission="1.260",
                                 realized_pnl="0")  # fmt: skip
                    ticket += 1
                else:
                    book.advance(t, cid, [S.REJECTED], reason="MAX_POSITIONS", **common)
                cid += 1
            for n in range(deals):
                ts = base + n * DAY // deals
                ex = {"client_order_id": 0, "symbol": n % 100, "side": -1, "volume": "0.18",
                      "price": "1.08112", "commission": "1.260", "realized_pnl": "-53.46", "ts_ns": ts,
                      "retcode": 10009, "reason": "sl", "ticket": ticket}  # fmt: skip
                t.put("bridge", deal_key(ticket), ex)
                t.journal("fill", **ex)
                ticket += 1

        for d in range(round(months * 30.44)):
            store.write(lambda t, d=d: day(t, d))


def _dir_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def measure(work: Path, months: int, scale: float = 1.0, rounds: int = 3) -> dict[str, Any]:
    """Build, archive a copy, then back up and restore each, `rounds` times in turn (the
    two alternate, so that a busy moment of the machine falls on both); the medians."""
    unbounded, bounded = work / "unbounded", work / "bounded"
    t = time.perf_counter()
    build(unbounded / "state", months, scale)
    built_s = time.perf_counter() - t
    shutil.copytree(unbounded, bounded)
    steps: list[float] = []
    with StateStore(bounded / "state") as store:
        archiver = Archiver(store, bounded / "state" / "archive", 90)
        t = time.perf_counter()
        while True:
            s = time.perf_counter()
            more = archiver.step()["more"]
            steps.append(time.perf_counter() - s)
            if not more:
                break
        archive_s = time.perf_counter() - t
    archived = Archive(bounded / "state" / "archive").size()["bytes"]
    out: dict[str, Any] = {"months": months, "build_s": built_s, "archive_s": archive_s,
                           "archive_steps": len(steps), "archive_step_max_s": max(steps),
                           "archive_step_median_s": sorted(steps)[len(steps) // 2],
                           "archive_bytes": archived}  # fmt: skip
    times: dict[str, list[tuple[float, float]]] = {"unbounded": [], "bounded": []}
    for _ in range(rounds):
        for name, root in (("unbounded", unbounded), ("bounded", bounded)):
            for old in ("backup", "restored"):
                shutil.rmtree(root / old, ignore_errors=True)
            t = time.perf_counter()
            made = backup(root / "state", root / "backup")
            backup_s = time.perf_counter() - t
            t = time.perf_counter()
            restore(made["path"], root / "restored")
            times[name].append((backup_s, time.perf_counter() - t))
    for name, root in (("unbounded", unbounded), ("bounded", bounded)):
        with StateStore(root / "state", readonly=True) as store:
            use = store.usage()
            counts = store.read(lambda t: {db: t.count(db) for db in ("orders", "journal", "bridge")})
        b, r = (sorted(x)[len(x) // 2] for x in zip(*times[name], strict=True))
        out[name] = {"lmdb_used_bytes": use["used_bytes"], "records": counts, "backup_s": b, "restore_s": r,
                     "backup_bytes": _dir_bytes(root / "backup"), "rounds": times[name]}  # fmt: skip
    return out


def show(r: dict[str, Any]) -> str:
    u, b = r["unbounded"], r["bounded"]
    mib = 1 << 20
    lines = [
        f"{r['months']} simulated months at the default pace (built in {r['build_s']:.0f} s; archiving "
        f"took {r['archive_s']:.1f} s in {r['archive_steps']} steps, {r['archive_step_median_s']:.2f} s "
        f"the median, {r['archive_step_max_s']:.2f} s the longest; archive "
        f"{r['archive_bytes'] / mib:.1f} MiB)",
        f"{'':10} {'LMDB used':>10} {'records':>10} {'backup':>10} {'backup MiB':>11} {'restore':>9}"
        "   (medians of each round's seconds)",
    ]  # fmt: skip
    for name, x in (("unbounded", u), ("bounded", b)):
        records = sum(x["records"].values())
        lines.append(f"{name:10} {x['lmdb_used_bytes'] / mib:>8.0f} M {records:>10,} {x['backup_s']:>9.2f}s "
                     f"{x['backup_bytes'] / mib:>11.1f} {x['restore_s']:>8.2f}s")  # fmt: skip
    lines.append(f"bounded is {u['backup_s'] / b['backup_s']:.1f}x faster to back up and "
                 f"{u['restore_s'] / b['restore_s']:.1f}x faster to restore")  # fmt: skip
    return "\n".join(lines)


@pytest.mark.slow
@pytest.mark.filterwarnings("ignore::pytest_benchmark.logger.PytestBenchmarkWarning")  # timed here, once
def test_backup_and_restore_at_the_retentions_steady_state(tmp_path: Path, report: Any) -> None:
    r = measure(tmp_path, 4, scale=0.25, rounds=1)
    print("\n" + show(r))
    for name in ("unbounded", "bounded"):
        report("archive", f"backup, {name}", 1 / r[name]["backup_s"], "/s", "backup, unbounded")
        report("archive", f"restore, {name}", 1 / r[name]["restore_s"], "/s", "restore, unbounded")
    assert r["bounded"]["records"]["journal"] < r["unbounded"]["records"]["journal"]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--months", type=int, default=12, help="simulated months in both states")
    ap.add_argument("--scale", type=float, default=1.0, help="times the default pace's rates")
    ap.add_argument("--rounds", type=int, default=3, help="backups and restores of each (the median shown)")
    ap.add_argument("--dir", help="where the states go (default: a temporary directory, removed)")
    args = ap.parse_args()
    work = Path(args.dir) if args.dir else Path(tempfile.mkdtemp(prefix="bench-archive-"))
    try:
        print(show(measure(work, args.months, args.scale, args.rounds)))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
