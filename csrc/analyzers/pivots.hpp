// Swing pivots: bar i is confirmed as a swing high/low at the close of bar i + k
// (DESIGN.md section 3), so nothing here looks ahead.
#pragma once

#include "bar_context.hpp"
#include "params.hpp"

namespace sovereign {

inline constexpr int kPivotWindow = 2 * kMaxPivotK + 1;

struct PivotState {
  double high[kPivotWindow] = {};  // bar j at slot j % (2k + 1)
  double low[kPivotWindow] = {};
  int64_t ts[kPivotWindow] = {};
};

struct SwingPivots {
  static void update(const AgentParams& p, PivotState& s, BarContext& ctx) {
    const int k = p.k;
    const int w = 2 * k + 1;
    const int64_t i = ctx.index;
    s.high[i % w] = ctx.bar.high;
    s.low[i % w] = ctx.bar.low;
    s.ts[i % w] = ctx.bar.ts_ns;
    const int64_t c = i - k;  // the candidate bar
    if (c < k) return;
    const double hc = s.high[c % w], lc = s.low[c % w];
    bool is_high = true, is_low = true;
    for (int64_t j = c - k; j < c; ++j) {  // strictly beyond every earlier bar
      is_high = is_high && hc > s.high[j % w];
      is_low = is_low && lc < s.low[j % w];
    }
    for (int64_t j = c + 1; j <= c + k; ++j) {  // at least as far as every later bar
      is_high = is_high && hc >= s.high[j % w];
      is_low = is_low && lc <= s.low[j % w];
    }
    ctx.swing_high = is_high;
    ctx.swing_low = is_low;
    ctx.swing_high_price = hc;
    ctx.swing_low_price = lc;
    ctx.pivot_ts = s.ts[c % w];
  }
};

}  // namespace sovereign
