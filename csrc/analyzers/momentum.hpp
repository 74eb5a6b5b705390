// MomentumObserver: relative volume, volume balance and OBV (DESIGN.md section 3).
//
// The sums are those of the window, oldest bar first, as DESIGN.md defines them. While
// every volume in the window is a whole number below 2^45 (tick counts, exchange lots:
// the usual case), each partial sum is a whole number below 2^53, so every one of those
// additions is exact, in any order: the window's sums are then kept as running integer
// totals, O(1) per bar, and are bit for bit the sums the loop would make. A window with
// any other volume in it is summed by the loop. Either way there is no drift over years.
// vb is defined from i = m, when every bar of its window has a predecessor to compare its
// close with.
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
  int32_t inexact = 0;  // volumes in the window that are not whole numbers below 2^45
  int64_t total = 0;    // running sums of the window's other volumes: all of them, up bars', down bars'
  int64_t up = 0;
  int64_t down = 0;
  int32_t slot = 0;  // the next bar's j % m
};

struct Momentum {
  static constexpr double kWholeLimit = 35184372088832.0;  // 2^45: m <= 128 of them sum below 2^53

  static bool whole(double v) {
    return v >= 0.0 && v < kWholeLimit && static_cast<double>(static_cast<int64_t>(v)) == v;
  }

  static void update(const AgentParams& p, MomentumState& s, BarContext& ctx) {
    const Bar& b = ctx.bar;
    const int64_t i = ctx.index;
    const int m = p.m;
    // Slot walks instead of j % m in the loops: the same order, without a division per bar.
    const int slot = s.slot;  // bar i's slot (i % m), which held bar i - m
    s.slot = slot + 1 == m ? 0 : slot + 1;
    if (i >= m) {                              // rv_i = V_i / mean(V_{i-m..i-1}): the window before this bar
      double sum = 0.0;
      if (s.inexact == 0) {
        sum = static_cast<double>(s.total);
      } else {
        for (int n = 0, j = slot; n < m; ++n, j = j + 1 == m ? 0 : j + 1) sum += s.volume[j];
      }
      double mean = sum / m;
      ctx.rv = mean > 0.0 ? b.volume / mean : kNaN;
      tally(s, s.volume[slot], s.direction[slot], -1);  // bar i - m leaves the window
    }
    int8_t dir = 0;
    if (i > 0) dir = b.close > s.prev_close ? 1 : (b.close < s.prev_close ? -1 : 0);
    s.obv = i == 0 ? b.volume : s.obv + dir * b.volume;
    s.prev_close = b.close;
    s.volume[slot] = b.volume;
    s.direction[slot] = dir;
    tally(s, b.volume, dir, +1);
    if (i >= m) {  // vb over bars i-m+1..i: from the slot after bar i's, around to it
      double up = 0.0, down = 0.0, total = 0.0;
      if (s.inexact == 0) {
        up = static_cast<double>(s.up);
        down = static_cast<double>(s.down);
        total = static_cast<double>(s.total);
      } else {
        for (int n = 0, j = slot + 1 == m ? 0 : slot + 1; n < m; ++n, j = j + 1 == m ? 0 : j + 1) {
          double v = s.volume[j];
          if (s.direction[j] > 0) up += v;
          if (s.direction[j] < 0) down += v;
          total += v;
        }
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

 private:
  // A volume enters (sign +1) or leaves (sign -1) the window's sums.
  static void tally(MomentumState& s, double v, int8_t dir, int sign) {
    if (!whole(v)) {
      s.inexact += sign;
      return;
    }
    const int64_t n = sign * static_cast<int64_t>(v);
    s.total += n;
    if (dir > 0) s.up += n;
    if (dir < 0) s.down += n;
  }
};

}  // namespace sovereign
