// MomentumObserver: relative volume, volume balance and OBV (DESIGN.md section 3).
//
// Sums are recomputed over the window at each close, oldest bar first, instead of kept
// as running totals: exact for any run length (no drift over years), and bar closes are
// rare next to ticks. vb is defined from i = m, when every bar of its window has a
// predecessor to compare its close with.
#pragma once

#include "bar_context.hpp"
#include "params.hpp"

namespace sovereign {

struct MomentumState {
  double volume[kMaxMomentumM] = {};     // bar j at slot j % m
  int8_t direction[kMaxMomentumM] = {};  // +1 up bar, -1 down bar, 0 neither
  double prev_close = 0.0;
  double obv = 0.0;
  double rv = kNaN;  // outputs at the last close, for inspection
  double vb = 0.0;
  bool vb_ready = false;
  bool surge = false;
};

struct Momentum {
  static void update(const AgentParams& p, MomentumState& s, BarContext& ctx) {
    const Bar& b = ctx.bar;
    const int64_t i = ctx.index;
    const int m = p.m;
    // Slot walks instead of j % m in the loops: the same order, without a division per bar.
    const int slot = static_cast<int>(i % m);  // bar i's slot, which held bar i - m
    if (i >= m) {  // rv_i = V_i / mean(V_{i-m..i-1}): the window before this bar
      double sum = 0.0;
      for (int n = 0, j = slot; n < m; ++n, j = j + 1 == m ? 0 : j + 1) sum += s.volume[j];
      double mean = sum / m;
      ctx.rv = mean > 0.0 ? b.volume / mean : kNaN;
    }
    int8_t dir = 0;
    if (i > 0) dir = b.close > s.prev_close ? 1 : (b.close < s.prev_close ? -1 : 0);
    s.obv = i == 0 ? b.volume : s.obv + dir * b.volume;
    s.prev_close = b.close;
    s.volume[slot] = b.volume;
    s.direction[slot] = dir;
    if (i >= m) {  // vb over bars i-m+1..i: from the slot after bar i's, around to it
      double up = 0.0, down = 0.0, total = 0.0;
      for (int n = 0, j = slot + 1 == m ? 0 : slot + 1; n < m; ++n, j = j + 1 == m ? 0 : j + 1) {
        double v = s.volume[j];
        if (s.direction[j] > 0) up += v;
        if (s.direction[j] < 0) down += v;
        total += v;
      }
      ctx.vb = total > 0.0 ? (up - down) / total : 0.0;
    }
    ctx.obv = s.obv;
    ctx.surge = ctx.rv >= p.surge_rv;  // false while rv is NaN
    s.rv = ctx.rv;
    s.vb = ctx.vb;
    s.vb_ready = i >= m;
    s.surge = ctx.surge;
  }
};

}  // namespace sovereign
