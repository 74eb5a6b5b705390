// Swing pivots: bar i is confirmed as a swing high/low at the close of bar i + k
// (DESIGN.md section 3), so nothing here looks ahead.
#pragma once

#include "bar_context.hpp"
#include "params.hpp"

namespace sovereign {

inline constexpr int kPivotWindow = 2 * kMaxPivotK + 1;

// The last 2k + 1 bars' highs and lows in a ring written twice (slot j and j + w), so the
// window, oldest bar first, is always the contiguous run [first, first + w): compared
// without a division or a wrap per bar.
struct PivotState {
  double high[2 * kPivotWindow] = {};  // bar j at slots j % w and j % w + w
  double low[2 * kPivotWindow] = {};
  int64_t ts[kPivotWindow] = {};  // bar j at slot j % w
  int32_t slot = 0;               // the next bar's j % w
};

struct SwingPivots {
  static void update(const AgentParams& p, PivotState& s, BarContext& ctx) {
    const int k = p.k;
    const int w = 2 * k + 1;
    const int64_t i = ctx.index;
    const int slot = s.slot;  // i % w
    s.slot = slot + 1 == w ? 0 : slot + 1;
    s.high[slot] = s.high[slot + w] = ctx.bar.high;
    s.low[slot] = s.low[slot + w] = ctx.bar.low;
    s.ts[slot] = ctx.bar.ts_ns;
    const int64_t c = i - k;  // the candidate bar
    if (c < k) return;
    // The window is bars c-k..c+k = i-2k..i, from the oldest, (i + 1) % w.
    const int first = s.slot;
    const double* hw = s.high + first;
    const double* lw = s.low + first;
    const double hc = hw[k], lc = lw[k];
    bool is_high = true, is_low = true;
    for (int n = 0; n < k; ++n) {  // strictly beyond every earlier bar
      is_high &= hc > hw[n];
      is_low &= lc < lw[n];
    }
    for (int n = k + 1; n < w; ++n) {  // at least as far as every later bar
      is_high &= hc >= hw[n];
      is_low &= lc <= lw[n];
    }
    ctx.swing_high = is_high;
    ctx.swing_low = is_low;
    ctx.swing_high_price = hc;
    ctx.swing_low_price = lc;
    ctx.pivot_ts = s.ts[first + k < w ? first + k : first + k - w];
  }
};

}  // namespace sovereign
