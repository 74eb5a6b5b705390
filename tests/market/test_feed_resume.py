"""A feed resumed from its mark (issue 22): the same data goes on exactly after the mark's
last tick, other data after its market time; the market clock never goes back; the sim
can be taken as bytes and started again from another market's last prices."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import orjson
import pytest

from sovereign.config import from_dict
from sovereign.market.feeds import Feed
from sovereign.market.sim import SimMarket

NS = 1_000_000_000
T0 = 1_767_657_600 * NS  # 2026-01-06, a Tuesday
SIM = {"symbols": 5, "start": "2026-03-03T00:00:00", "tick_interval_s": 0.5}


def take(feed: Feed, batches: list[int]) -> np.ndarray:
    return np.concatenate([feed.next(n) for n in batches])


def kept(feed: Feed) -> dict[str, Any]:
    """The mark as the gateway keeps it: through orjson and back."""
    return orjson.loads(orjson.dumps(feed.mark().to_dict()))


def write_csv(path: Path, rows: list[tuple[int, str, float]]) -> str:
    lines = [f"{ts},{sym},{px:.5f},{px + 0.0002:.5f},1" for ts, sym, px in rows]
    path.write_text("time,symbol,bid,ask,volume\n" + "\n".join(lines) + "\n")
    return str(path)


def replay_cfg(*files: str, **feed: object) -> Any:
    return from_dict({"feed": {"kind": "replay", "files": list(files), **feed}})


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    a = [(T0 + k * NS, "EURUSD", 1.1 + (k % 50) * 1e-5) for k in range(3000)]
    b = [(T0 + k * NS + NS // 2, "USDJPY", 93.0 + (k % 70) * 1e-3) for k in range(3000)]
    return write_csv(tmp_path / "eur.csv", a), write_csv(tmp_path / "jpy.csv", b)


@pytest.mark.parametrize("cut", [[1], [2048, 17], [4096, 2048, 2048, 500], [300] * 19])
def test_a_replay_resumed_from_its_mark_goes_on_with_the_next_tick(files: tuple[str, str],
                                                                   cut: list[int]) -> None:  # fmt: skip
    whole = take(Feed(replay_cfg(*files)), [6000])
    first = Feed(replay_cfg(*files))
    before = take(first, cut)
    again = Feed(replay_cfg(*files))
    again.resume(kept(first))
    assert again.resumed["mode"] == "exact" and again.clock_ns == first.clock_ns
    after = take(again, [700] * 10)
    assert np.array_equal(np.concatenate([before, after]), whole)
    assert again.next(10).size == 0 and again.done  # and nothing from the start again


def test_a_finished_replay_resumed_with_the_same_files_gives_nothing(files: tuple[str, str]) -> None:
    first = Feed(replay_cfg(*files))
    take(first, [4000, 4000])
    assert first.next(10).size == 0 and first.done
    again = Feed(replay_cfg(*files))
    again.resume(kept(first))
    assert again.next(2048).size == 0 and again.done


def test_other_files_resume_after_the_marks_market_time_and_say_how_many_were_skipped(
    files: tuple[str, str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    first = Feed(replay_cfg(*files))
    take(first, [1000])
    mark = kept(first)
    longer = [(T0 + k * NS, "EURUSD", 1.2) for k in range(5000)]  # the same start, and more
    other = Feed(replay_cfg(write_csv(tmp_path / "more.csv", longer)))
    other.resume(mark)
    got = take(other, [5000])
    older = sum(ts <= mark["clock_ns"] for ts, _, _ in longer)
    assert other.resumed == {"mode": "after", "clock_ns": mark["clock_ns"], "skipped": older}
    assert len(got) == 5000 - older and got["ts_ns"].min() > mark["clock_ns"]
    assert f"skipped the {older} ticks of the data files at or before it" in capsys.readouterr().out


def test_the_clock_published_by_a_killed_feed_is_a_floor(files: tuple[str, str]) -> None:
    """A gateway restarted in the same run, with no mark kept yet: nothing at or before the
    clock its predecessor published is given again."""
    feed = Feed(replay_cfg(*files))
    floor = T0 + 1000 * NS
    feed.resume(None, same_run=True, clock_floor_ns=floor)
    got = take(feed, [6000])
    assert feed.clock_ns >= floor and got["ts_ns"].min() > floor and feed.resumed["skipped"] == 2001


@pytest.mark.parametrize("n", [10, 3000, 70_000, 200_000])
def test_a_sim_resumed_from_its_mark_goes_on_exactly(n: int) -> None:
    """Past REGENERATE ticks the mark's snapshot of the market is older than the chunk: the
    resume makes the ticks since it again to reach the mark."""
    cfg = from_dict({"feed": SIM})
    whole = take(Feed(cfg), [2048] * 130)
    first = Feed(cfg)
    before = take(first, [2048] * (n // 2048) + [n % 2048])
    again = Feed(cfg)
    again.resume(kept(first))
    after = take(again, [2048] * 130)
    got = np.concatenate([before, after])[: len(whole)]
    assert again.resumed["mode"] == "exact" and np.array_equal(got, whole)


def test_max_ticks_counts_on_in_the_same_run_and_again_in_a_new_one() -> None:
    cfg = from_dict({"feed": {**SIM, "max_ticks": 5000}})
    first = Feed(cfg)
    take(first, [3000])
    for same_run, left in ((True, 2000), (False, 5000)):
        again = Feed(cfg)
        again.resume(kept(first), same_run=same_run)
        assert len(take(again, [1000] * 8)) == left and again.done


@pytest.mark.parametrize("change", [{"seed": 9}, {"symbols": 7}, {"tick_interval_s": 2.0}])
def test_another_sim_starts_after_the_mark_from_its_last_prices(change: dict[str, Any]) -> None:
    first = Feed(from_dict({"feed": SIM}))
    before = take(first, [2048] * 40 + [77])
    mark = kept(first)
    other = Feed(from_dict({"feed": {**SIM, **change}}))
    other.resume(mark)
    after = take(other, [4096] * 4)
    assert other.resumed["mode"] == "after" and after["ts_ns"].min() > mark["clock_ns"]
    for s in range(SIM["symbols"]):  # each goes on from where it was, not from a new draw
        last = before["last"][before["symbol"] == s][-1]
        nxt = after["last"][after["symbol"] == s][0]
        assert abs(nxt / last - 1) < 0.002, (s, last, nxt)


def test_a_paced_sim_without_a_start_follows_the_wall_clock_after_a_restart() -> None:
    cfg = from_dict({"feed": {"symbols": 3, "pace": "realtime", "speed": 1e6}})
    first = Feed(cfg)
    take(first, [64] * 20)
    mark = kept(first)
    mark["clock_ns"] -= 3600 * NS  # as if it was an hour ago
    again = Feed(cfg)
    again.resume(mark)
    assert again.resumed["mode"] == "after" and again.clock_ns == mark["clock_ns"]


def test_an_unreadable_mark_resumes_after_its_market_time(capsys: pytest.CaptureFixture[str]) -> None:
    cfg = from_dict({"feed": SIM})
    first = Feed(cfg)
    take(first, [5000])
    mark = kept(first)
    mark["sim"] = mark["sim"][:-8] + "AAAAAAA="  # damaged bytes
    again = Feed(cfg)
    again.resume(mark)
    got = take(again, [1000])
    assert again.resumed["mode"] == "after" and got["ts_ns"].min() > mark["clock_ns"]
    said = capsys.readouterr().out
    assert "the saved position is unreadable (ValueError: cannot restore a SimMarket state" in said


def test_sim_market_state_round_trips_and_refuses_what_is_not_one() -> None:
    m = SimMarket(4, seed=3)
    m.next(12_345)
    blob = m.state()
    want = m.next(50_000)
    again = SimMarket.from_state(blob)
    assert again.n_symbols == 4 and np.array_equal(again.next(50_000), want)
    assert np.allclose(m.mids(), [want["last"][want["symbol"] == s][-1] for s in range(4)])
    for bad, why in ((blob[:-1], "does not match"), (blob[:40], "too short"), (b"x" * len(blob), "bad magic"),
                     (blob[:100] + bytes([blob[100] ^ 1]) + blob[101:], "checksum")):  # fmt: skip
        with pytest.raises(ValueError, match=why):
            SimMarket.from_state(bad)
    m.set_mids(np.array([2.0, 0.0, 0.5, 3.0]))
    assert np.allclose(m.mids()[[0, 2, 3]], [2.0, 0.5, 3.0])
    for bad_mids in ([1.0], [1.0, -1.0, 1.0, 1.0], [1.0, float("nan"), 1.0, 1.0]):
        with pytest.raises(ValueError, match="set_mids"):
            m.set_mids(np.array(bad_mids))
