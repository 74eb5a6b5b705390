"""Paper fills against the price risk decided at: a live run of the whole system at the
default fast pace, then each opening order's fill compared with its decision price.

A fill that beats the decision price more often than not means the broker side filled
at quotes older than the decision saw (issue 19, defect 12). Run:

    python3 bench/fill_quality.py [TICKS]      # default 6,000,000
"""

from __future__ import annotations

import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from sovereign.state.store import StateStore


def main(ticks: int) -> None:
    with tempfile.TemporaryDirectory(prefix="sov-fills-") as tmp:
        cfg = Path(tmp) / "sovereign.toml"
        cfg.write_text(f'[system]\nstate_dir = "{tmp}/state"\nrecord_days = 0\n')
        subprocess.run([sys.executable, "-m", "sovereign.cli", "run", "--config", str(cfg), "--max-ticks",
                        str(ticks)], check=True, stdout=subprocess.DEVNULL)  # fmt: skip
        with StateStore(Path(tmp) / "state", readonly=True) as st:
            orders = st.read(lambda t: [v for _, v in t.items("orders")])
            balance = st.read(lambda t: t.get("bridge", "paper"))["ledger"]["balance"]
    opened = [o for o in orders if o["state"] == "FILLED" and o.get("reason") == "OK"]
    bp = [(o["price"] - float(o["fill_price"])) * o["side"] / o["price"] * 1e4 for o in opened]
    print(f"{ticks} ticks: {len(bp)} opening fills, {sum(b > 0 for b in bp) / max(1, len(bp)):.0%} beat the "
          f"decision price, mean {statistics.mean(bp) if bp else 0:+.2f} bp; balance 100000 -> {balance}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 6_000_000)
