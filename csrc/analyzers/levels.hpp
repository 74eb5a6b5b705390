// LosslessLevels: support and resistance from swing pivots, kept only while price has
// never closed through them (DESIGN.md section 3).
//
// Levels are stored in creation order, so "the older" of two is the one with the lower
// index; removal shifts the tail down and keeps that order.
#pragma once

#include <cmath>

#include "bar_context.hpp"
#include "params.hpp"

namespace sovereign {

enum LevelKind : int8_t { kSupport = 0, kResistance = 1 };

struct Level {
  double price;
  int64_t last_ts;  // ts of the pivot bar that created or last touched it
  int32_t touches;
  int8_t kind;
};

struct LevelsState {
  Level level[kMaxLevels + 1];  // one spare slot: add first, then evict
  int32_t count = 0;
};

struct LosslessLevels {
  // At each close: a support closed below (or resistance above) by more than tol breaks.
  static void break_through(const AgentParams&, LevelsState& s, const BarContext& ctx) {
    if (!ctx.atr_ready) return;
    const double c = ctx.bar.close;
    int32_t kept = 0;
    for (int32_t j = 0; j < s.count; ++j) {
      const Level& l = s.level[j];
      bool broken = l.kind == kSupport ? c < l.price - ctx.tol : c > l.price + ctx.tol;
      if (!broken) s.level[kept++] = l;
    }
    s.count = kept;
  }

  // Pivots confirmed at this close become levels (a bar that is both: its high first).
  static void absorb_pivots(const AgentParams& p, LevelsState& s, const BarContext& ctx) {
    if (!ctx.atr_ready) return;
    if (ctx.swing_high) absorb(p, s, ctx.swing_high_price, kResistance, ctx.pivot_ts, ctx.tol);
    if (ctx.swing_low) absorb(p, s, ctx.swing_low_price, kSupport, ctx.pivot_ts, ctx.tol);
  }

 private:
  static void absorb(const AgentParams& p, LevelsState& s, double price, LevelKind kind, int64_t ts,
                     double tol) {
    int32_t nearest = -1;
    double best = 0.0;
    for (int32_t j = 0; j < s.count; ++j) {
      double d = std::fabs(s.level[j].price - price);
      if (nearest < 0 || d < best) {  // strict: a tie keeps the older level
        nearest = j;
        best = d;
      }
    }
    if (nearest >= 0 && best <= tol) {
      Level& l = s.level[nearest];
      l.price = (l.price * l.touches + price) / (l.touches + 1);
      l.touches += 1;
      l.last_ts = ts;
      return;
    }
    s.level[s.count++] = Level{price, ts, 1, static_cast<int8_t>(kind)};
    if (s.count > p.max_levels) evict_weakest(s);
  }

  // Fewest touches goes; on a tie the oldest last_ts, then the oldest level.
  static void evict_weakest(LevelsState& s) {
    int32_t victim = 0;
    for (int32_t j = 1; j < s.count; ++j) {
      const Level& l = s.level[j];
      const Level& v = s.level[victim];
      if (l.touches < v.touches || (l.touches == v.touches && l.last_ts < v.last_ts)) victim = j;
    }
    for (int32_t j = victim + 1; j < s.count; ++j) s.level[j - 1] = s.level[j];
    --s.count;
  }
};

}  // namespace sovereign
