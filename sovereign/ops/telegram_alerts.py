"""What the bot says unasked: alerts drawn from the system's `status`, polled.

Each condition is raised once when it begins and, where it can end, once when it ends
(deduplicated: a halt seen on every poll is one alert); a condition that flaps is held down:
the system unreachable only after UNREACHABLE_POLLS polls in a row, a stale feed only
after telegram.stale_feed_s, a limit warning again only once the ratio fell back under
REARM of its threshold, and a process's restarts at most one alert a RESTART_QUIET_S, the
ones in between counted into it. Transport-free: `Watch.on_status` and `on_unreachable`
take what the poll got and the wall clock, and return the alerts.

The conditions: the trading state (HALTED and why, REDUCING and why, ACTIVE again); the
drawdown from the peak and the day's loss approaching (telegram.drawdown_warn_ratio of
risk.max_drawdown and risk.daily_loss_limit) and hitting their limits; process restarts and
a restarted supervisor; the feed stalled while the market is open (risk's feed state:
"closed" is the calendar's, no alarm); the MT5 terminal disconnected and back; the system
unreachable and back.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import date, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any
from zoneinfo import ZoneInfo

from sovereign.config import Config
from sovereign.text import clean

UNREACHABLE_POLLS = 2
RESTART_QUIET_S = 60.0
REARM = 0.9
WHY_CHARS = 300


@dataclass(frozen=True)
class Alert:
    key: str  # what it is about: "state", "drawdown", "restart:risk", ...
    text: str
    critical: bool  # never dropped while a non-critical alert is queued


def _duration(s: float) -> str:
    s = int(s)
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


class Watch:
    def __init__(self, config: Config):
        self.risk = config.risk
        self.tg = config.telegram
        self.failures = 0
        self.unreachable_since: float | None = None  # when the first poll failed (monotonic s)
        self.down = False  # the unreachable alert was sent
        self.supervisor: int | None = None
        self.state: str | None = None
        self.levels = {"drawdown": 0, "daily_loss": 0}  # 0 under the warning, 1 warned, 2 the limit hit
        self.restarts: dict[str, int] = {}
        self.unsaid: dict[str, int] = {}  # restarts not yet in an alert, per process
        self.quiet_until: dict[str, float] = {}
        self.why: dict[str, str] = {}
        self.stale = False
        self.bridge_down: bool | None = None
        self.summary = Summary(self.tg.summary_at, self.risk.day_timezone)

    # ---- the system unreachable

    def on_unreachable(self, why: str, now: float) -> list[Alert]:
        self.failures += 1
        if self.unreachable_since is None:
            self.unreachable_since = now
        if self.failures < UNREACHABLE_POLLS or self.down:
            return []
        self.down = True
        return [Alert("reachable", f"🔴 The system does not answer: {clean(why, WHY_CHARS)}", True)]

    def on_status(self, status: dict[str, Any], now: float) -> list[Alert]:
        out: list[Alert] = []
        if self.down:
            gone = now - (self.unreachable_since or now)
            out.append(Alert("reachable", f"🟢 The system answers again (it did not for {_duration(gone)}).",
                             False))  # fmt: skip
        self.failures, self.unreachable_since, self.down = 0, None, False
        out += self._supervisor(status)
        account = status.get("account") or {}
        out += self._state(account)
        out += self._limits(account)
        out += self._restarts(status.get("processes") or [], now)
        out += self._feed(status, account)
        out += self._bridge(status.get("bridge"))
        return out

    # ---- each condition

    def _supervisor(self, status: dict[str, Any]) -> list[Alert]:
        pid = status.get("supervisor_pid")
        if self.supervisor is not None and pid != self.supervisor:
            self.supervisor, self.restarts, self.unsaid = pid, {}, {}
            return [Alert("supervisor", f"🔄 The supervisor restarted (pid {pid}): "
                                        f"{clean(status.get('status', ''), WHY_CHARS)}", True)]  # fmt: skip
        self.supervisor = pid
        return []

    def _state(self, account: dict[str, Any]) -> list[Alert]:
        state, why = account.get("state"), clean(account.get("why") or "", WHY_CHARS)
        if state is None or state == self.state:
            return []
        first, self.state = self.state is None, state
        if state == "HALTED":
            flat = " Every position is being closed." if account.get("flattening") else ""
            return [Alert("state", f"🛑 HALTED: {why or 'no reason given'}.{flat}", True)]
        if state == "REDUCING":
            return [Alert("state", f"🟠 REDUCING (exits only): {why or 'no reason given'}.", True)]
        if first:  # ACTIVE when the bot starts: nothing to say
            return []
        return [Alert("state", f"🟢 ACTIVE again: {why or 'resumed'}.", False)]

    def _limits(self, account: dict[str, Any]) -> list[Alert]:
        out = []
        try:
            drawdown = float(account.get("drawdown") or 0.0)
            equity, day_pnl = Decimal(account.get("equity") or 0), Decimal(account.get("day_pnl") or 0)
        except (InvalidOperation, TypeError, ValueError):
            return []
        start = equity - day_pnl
        loss = float(-day_pnl / start) if start > 0 and day_pnl < 0 else 0.0
        for key, ratio, limit, name in (
            ("drawdown", drawdown, self.risk.max_drawdown, "Drawdown from the peak"),
            ("daily_loss", loss, self.risk.daily_loss_limit, "The day's loss"),
        ):
            warn = limit * self.tg.drawdown_warn_ratio
            level = 2 if ratio >= limit else 1 if ratio >= warn else 0
            if level > self.levels[key]:
                hit = "has hit its limit" if level == 2 else "is near its limit"
                text = f"{name} {hit}: {ratio:.2%} (limit {limit:.2%}, warning at {warn:.2%})."
                out.append(Alert(key, f"{'🛑' if level == 2 else '⚠'} {text}", level == 2))
                self.levels[key] = level
            elif self.levels[key] and ratio < warn * REARM:
                self.levels[key] = 0
        return out

    def _restarts(self, processes: list[dict[str, Any]], now: float) -> list[Alert]:
        out = []
        for p in processes:
            role, n = str(p.get("role")), int(p.get("restarts") or 0)
            before = self.restarts.get(role)
            self.restarts[role] = n
            if before is not None and n > before:
                self.unsaid[role] = self.unsaid.get(role, 0) + n - before
                self.why[role] = str(p.get("why") or p.get("health") or "")
            if self.unsaid.get(role) and now >= self.quiet_until.get(role, 0.0):
                k = self.unsaid.pop(role)
                self.quiet_until[role] = now + RESTART_QUIET_S
                times = "was restarted" if k == 1 else f"was restarted {k} times"
                out.append(Alert(f"restart:{role}", f"🔄 Process {clean(role, 40)} {times} "
                                                    f"({clean(self.why.get(role, ''), 40) or 'no reason'}); "
                                                    f"{n} restarts since the supervisor started.",
                                 False))  # fmt: skip
        return out

    def _feed(self, status: dict[str, Any], account: dict[str, Any]) -> list[Alert]:
        feed, age = account.get("feed"), status.get("newest_quote_age_s")
        if feed is None:  # risk is not answering: its processes' alerts say so
            return []
        stale = feed == "stalled" and age is not None and float(age) >= self.tg.stale_feed_s
        if stale == self.stale or (self.stale and feed == "stalled"):
            return []
        self.stale = stale
        if stale:
            return [Alert("feed", f"📉 The feed is stale while the market is open: no quote for "
                                  f"{_duration(float(age or 0))}.", True)]  # fmt: skip
        return [Alert("feed", "📈 The feed is live again." if feed != "closed" else
                      "The market closed (the feed's silence is the calendar's).", False)]  # fmt: skip

    def _bridge(self, bridge: dict[str, Any] | None) -> list[Alert]:
        if bridge is None:
            return []
        down = not bridge.get("connected")
        if down == self.bridge_down or (self.bridge_down is None and not down):
            self.bridge_down = down
            return []
        self.bridge_down = down
        if down:
            return [Alert("broker", f"🔌 The broker (MT5) is disconnected: "
                                    f"{clean(bridge.get('why') or 'no reason given', WHY_CHARS)}.", True)]
        return [Alert("broker", "🔌 The broker (MT5) is connected again.", False)]


class Summary:
    """When the daily summary is due: at "HH:MM" in the risk day's time zone, once a day. A
    bot started after today's time waits for tomorrow's."""

    def __init__(self, at: str, zone: str):
        self.at = at
        self.zone = ZoneInfo(zone) if zone != "UTC" else None
        self.last: date | None = None

    def due(self, now: float) -> bool:
        if not self.at:
            return False
        from datetime import timezone

        wall = datetime.fromtimestamp(now, self.zone or timezone.utc)
        hours, minutes = (int(x) for x in self.at.split(":"))
        passed = (wall.hour, wall.minute) >= (hours, minutes)
        today = wall.date()
        if self.last is None:  # at start: today's is due only if its time is still to come
            self.last = today if passed else today - timedelta(days=1)
            return False
        if passed and self.last != today:
            self.last = today
            return True
        return False
