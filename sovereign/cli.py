"""The `sovereign` command.

  sovereign run [--config FILE]   the whole system (supervisor, gateway, workers,
                                  coordinator, risk) in the foreground; no file: the
                                  embedded defaults (simulated market, paper broker,
                                  1000 agents, state in ./state)
  sovereign demo                  the C++ core alone on a simulated market

Exit codes: 0 success (run: a clean shutdown), 1 an unclean shutdown, 2 bad arguments
or an invalid config (nothing was started).
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from dataclasses import replace

import numpy as np

from sovereign.core import AgentPool, RingError
from sovereign.presets import add_default_agents
from sovereign.sim import simulate_ticks


def _positive(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value} is not >= 1")
    return value


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="sovereign", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    system = sub.add_parser("run", help="run the whole system in the foreground",
                            epilog="example: sovereign run --config /etc/sovereign/sovereign.toml")
    system.add_argument("--config", metavar="FILE", help="TOML config (default: the embedded defaults)")
    system.add_argument("--max-ticks", type=_positive, dest="max_ticks",
                        help="stop the feed after N ticks, then shut down cleanly (overrides feed.max_ticks)")
    system.add_argument("--state-dir", help="state directory (overrides system.state_dir)")
    run = sub.add_parser("demo", help="run the C++ core alone on a simulated market and print signals",
                         epilog="example: sovereign demo --symbols 20 --ticks-per-symbol 50000 --seed 7")
    run.add_argument("--symbols", type=_positive, default=100, help="number of symbols (default 100)")
    run.add_argument("--ticks-per-symbol", type=_positive, default=20_000,
                     help="simulated ticks per symbol, about 0.25 s apart (default 20000)")
    run.add_argument("--seed", type=int, default=1, help="market seed (default 1)")
    run.add_argument("--show", type=int, default=15, help="signals to print (default 15)")
    return parser


def _print_signals(signals: np.ndarray, show: int) -> None:
    print(f"{'time (UTC)':<20} {'agent':>5} {'sym':>4} {'side':<4} {'conv':>5} {'entry':>11} "
          f"{'stop':>11} {'target':>11} {'touches':>7}")
    for s in signals[:show]:
        when = np.datetime64(int(s["ts_ns"]), "ns").astype("datetime64[s]")
        side = "BUY" if s["side"] > 0 else "SELL"
        print(f"{str(when).replace('T', ' '):<20} {s['agent']:>5} {s['symbol']:>4} {side:<4} "
              f"{s['conviction']:>5.2f} {s['entry']:>11.5f} {s['stop']:>11.5f} {s['target']:>11.5f} "
              f"{s['touches']:>7}")
    if len(signals) > show:
        print(f"... and {len(signals) - show} more")


def cmd_run(args: argparse.Namespace) -> int:
    from sovereign import supervisor
    from sovereign.config import ConfigError, load
    from sovereign.data import DataError
    from sovereign.state import StateError

    try:
        config = load(args.config)
        if args.state_dir is not None:
            config = replace(config, system=replace(config.system, state_dir=args.state_dir))
        if args.max_ticks is not None:
            config = replace(config, feed=replace(config.feed, max_ticks=args.max_ticks))
        return supervisor.Supervisor(config, args.config).run()
    except (ConfigError, DataError) as e:
        print(f"sovereign: {e}", file=sys.stderr)
        return 2
    except (StateError, RingError) as e:
        print(f"sovereign: cannot start: {e}", file=sys.stderr)
        return 1


def cmd_demo(args: argparse.Namespace) -> int:
    ticks = simulate_ticks(args.symbols, args.ticks_per_symbol, seed=args.seed, mean_interval_s=0.25)
    pool = AgentPool()
    add_default_agents(pool, args.symbols)
    batches = []
    t = time.perf_counter()
    for at in range(0, len(ticks), 4096):
        batches.append(pool.on_ticks(ticks[at : at + 4096]))
    batches.append(pool.flush())
    elapsed = time.perf_counter() - t
    signals = np.concatenate(batches)
    _print_signals(signals, args.show)
    stats = pool.stats()
    print(f"\n{len(pool)} agents, {stats['ticks']:,} ticks, {stats['bars']:,} bars closed, "
          f"{stats['signals']:,} signals in {elapsed:.2f} s "
          f"({stats['ticks'] / elapsed / 1e6:.1f} M ticks/s); "
          f"rejected: {sum(stats['rejected'].values())}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    return {"run": cmd_run, "demo": cmd_demo}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
