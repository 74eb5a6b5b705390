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
    const int slot = static_cast<int>(i % w);
    s.high[slot] = ctx.bar.high;
    s.low[slot] = ctx.bar.low;
    s.ts[slot] = ctx.bar.ts_ns;
    const int64_t c = i - k;  // the candidate bar
    if (c < k) return;
    // The window is bars c-k..c+k = i-2k..i, which fill all w slots; walk them from the
    // oldest (slot (i+1) % w) without a division per bar.
    const int first = static_cast<int>((i + 1) % w);
    const int cs = first + k < w ? first + k : first + k - w;  // the candidate's slot
    const double hc = s.high[cs], lc = s.low[cs];
    bool is_high = true, is_low = true;
    for (int n = 0, j = first; n < w; ++n, j = j + 1 == w ? 0 : j + 1) {
      if (n < k) {  // strictly beyond every earlier bar
        is_high = is_high && hc > s.high[j];
        is_low = is_low && lc < s.low[j];
      } else if (n > k) {  // at least as far as every later bar
        is_high = is_high && hc >= s.high[j];
        is_low = is_low && lc <= s.low[j];
      }
    }
    ctx.swing_high = is_high;
    ctx.swing_low = is_low;
    ctx.swing_high_price = hc;
    ctx.swing_low_price = lc;
    ctx.pivot_ts = s.ts[cs];
  }
};

}  // namespace sovereign
