// TrendObserver: market structure from the last two swing highs and lows (DESIGN.md 3).
#pragma once

#include <algorithm>

#include "bar_context.hpp"
#include "params.hpp"

namespace sovereign {

struct TrendState {
  double h1 = 0.0, h2 = 0.0;  // older, newer swing high
  double l1 = 0.0, l2 = 0.0;
  int32_t highs = 0, lows = 0;  // how many seen (saturates at 2)
  int8_t direction = 0;         // +1 UP, -1 DOWN, 0 RANGE
  double strength = 0.0;
};

struct TrendObserver {
  static void update(const AgentParams&, TrendState& s, BarContext& ctx) {
    if (ctx.swing_high) {
      s.h1 = s.h2;
      s.h2 = ctx.swing_high_price;
      s.highs = std::min(s.highs + 1, 2);
    }
    if (ctx.swing_low) {
      s.l1 = s.l2;
      s.l2 = ctx.swing_low_price;
      s.lows = std::min(s.lows + 1, 2);
    }
    if (s.highs < 2 || s.lows < 2) {
      s.direction = 0;
      s.strength = 0.0;
      return;
    }
    if (s.h2 > s.h1 && s.l2 > s.l1) {
      s.direction = 1;
    } else if (s.h2 < s.h1 && s.l2 < s.l1) {
      s.direction = -1;
    } else {
      s.direction = 0;
    }
    s.strength =
        ctx.atr_ready ? std::clamp(((s.h2 - s.h1) + (s.l2 - s.l1)) / (2.0 * ctx.atr), -1.0, 1.0) : 0.0;
  }
};

}  // namespace sovereign
