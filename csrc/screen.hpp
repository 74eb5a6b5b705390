// Screening for the backtest walk (sovereign/backtest.py): one pass over records a..k-1
// with the open positions held constant, finding the first record where something must
// happen (a stop or target touched, equity below the drawdown or daily-loss floor, a bar
// with an order waiting for its open) and the highest equity on the way.
//
// It is a screen, not a decision: the walk applies records up to the answer and the
// components decide exactly (the broker's Decimal stop check, Risk.mark). Its float
// arithmetic is the one the walk used with numpy before (the same operations in the same
// order), so moving it here changed no run.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <limits>
#include <utility>
#include <vector>

namespace sovereign {

// What the walk knows of the book: per symbol, direction, volume x contract size, stop
// and target (NaN: none), and the price it is marked at now.
struct ScreenBook {
  const bool* is_long;
  const bool* is_short;
  const double* coef;
  const double* sl;
  const double* tp;
  const double* mark_now;  // bid of a long, ask of a short, at the current quotes
  size_t n_symbols;
};

// The records: each symbol's mark price (bid/ask; for bars the close and close + spread)
// and, for bars, the high, low and spread the stop and target are checked against.
struct ScreenRecords {
  const uint32_t* sym;
  const double* bid;
  const double* ask;
  const double* high = nullptr;  // bars only
  const double* low = nullptr;
  const double* spread = nullptr;
};

struct ScreenLimits {
  bool exits = false;             // check stops and targets
  bool drawdown = false;          // check the drawdown floor
  double peak0 = 0.0;             // the peak before record a
  double keep = 1.0;              // 1 - max_drawdown
  bool daily = false;             // check the daily-loss floor
  double daily_floor = 0.0;
  const bool* pending = nullptr;  // bars: symbols with an order waiting for the next open
};

enum ScreenKind : int { kScreenNone = 0, kScreenFill = 1, kScreenExit = 2, kScreenBreach = 3 };

struct ScreenAnswer {
  int64_t j;  // apply up to here (exclusive)
  int kind;
};

// Walks a..k-1, calling on(i, equity) after each record's equity; stops when on() says so.
// Equity = equity0 + the running sum of each record's change to its symbol's mark, where
// the sum starts at 0 (as numpy's cumsum did, so the floats are the same).
template <class On>
inline void walk_equity(const ScreenRecords& r, const ScreenBook& b, int64_t a, int64_t k, double equity0,
                        std::vector<double>& last, On&& on) {
  last.assign(b.mark_now, b.mark_now + b.n_symbols);
  double sum = 0.0;
  for (int64_t i = a; i < k; ++i) {
    const uint32_t s = r.sym[i];
    const double c = s < b.n_symbols ? b.coef[s] : 0.0;
    if (c != 0.0) {
      const double px = b.is_long[s] ? r.bid[i] : r.ask[i];
      sum += (px - last[s]) * c;
      last[s] = px;
    }
    if (!on(i, s, equity0 + sum)) return;
  }
}

inline bool touches_exit(const ScreenRecords& r, const ScreenBook& b, int64_t i, uint32_t s) {
  if (s >= b.n_symbols) return false;
  const bool lg = b.is_long[s], sh = b.is_short[s];
  if (!lg && !sh) return false;
  double worst, best;
  if (r.high == nullptr) {
    worst = best = lg ? r.bid[i] : r.ask[i];
  } else {
    worst = lg ? r.low[i] : r.high[i] + r.spread[i];
    best = lg ? r.high[i] : r.low[i] + r.spread[i];
  }
  const double sl = b.sl[s], tp = b.tp[s];  // NaN compares false: no stop, no target
  return lg ? (worst <= sl || best >= tp) : (worst >= sl || best <= tp);
}

// The first record in a..k-1 where something happens: (i + 1, kind), or (k, none). At one
// record a breach comes before an exit, and an exit before a pending fill.
inline ScreenAnswer screen_next(const ScreenRecords& r, const ScreenBook& b, const ScreenLimits& lim, int64_t a,
                                int64_t k, double equity0, std::vector<double>& last) {
  ScreenAnswer ans{k, kScreenNone};
  const bool breach = lim.drawdown || lim.daily;
  double peak = lim.peak0;
  walk_equity(r, b, a, k, equity0, last, [&](int64_t i, uint32_t s, double eq) {
    if (breach) {
      if (eq > peak) peak = eq;
      if ((lim.drawdown && eq <= peak * lim.keep) || (lim.daily && eq <= lim.daily_floor)) {
        ans = {i + 1, kScreenBreach};
        return false;
      }
    }
    if (lim.exits && touches_exit(r, b, i, s)) {
      ans = {i + 1, kScreenExit};
      return false;
    }
    if (lim.pending != nullptr && s < b.n_symbols && lim.pending[s]) {
      ans = {i + 1, kScreenFill};
      return false;
    }
    return true;
  });
  return ans;
}

// The record in a..k-1 with the highest equity (the first of equals) and that equity.
inline std::pair<int64_t, double> screen_best(const ScreenRecords& r, const ScreenBook& b, int64_t a, int64_t k,
                                              double equity0, std::vector<double>& last) {
  int64_t at = -1;
  double best = -std::numeric_limits<double>::infinity();
  walk_equity(r, b, a, k, equity0, last, [&](int64_t i, uint32_t, double eq) {
    if (at < 0 || eq > best) at = i, best = eq;
    return true;
  });
  return {at, best};
}

// The quote board after records a..k-1: each symbol's last record among them, written to
// the per-symbol arrays (its quote time, bid and ask); their indices go to `out` in
// ascending order. `seen` is per-symbol scratch (one entry per symbol on the board): any
// values, left as it finds them except for the symbols met, which get `stamp` (a value
// the caller never reuses). False, with nothing more written, at a record whose symbol
// is beyond the board.
inline bool screen_board(const ScreenRecords& r, const int64_t* quote_ts, int64_t a, int64_t k, int64_t* q_ts,
                         double* q_bid, double* q_ask, std::vector<int64_t>& seen, int64_t stamp,
                         std::vector<int64_t>& out) {
  out.clear();
  for (int64_t i = k - 1; i >= a; --i) {
    const uint32_t s = r.sym[i];
    if (s >= seen.size()) return false;
    if (seen[s] == stamp) continue;
    seen[s] = stamp;
    q_ts[s] = quote_ts[i], q_bid[s] = r.bid[i], q_ask[s] = r.ask[i];
    out.push_back(i);
    if (out.size() == seen.size()) break;  // every symbol has its quote
  }
  std::reverse(out.begin(), out.end());
  return true;
}

}  // namespace sovereign
