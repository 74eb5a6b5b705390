// BounceDetector: a bar that probes the nearest level within tol and closes back away
// from it with a long enough wick (DESIGN.md section 3).
#pragma once

#include <algorithm>

#include "bar_context.hpp"
#include "levels.hpp"
#include "params.hpp"

namespace sovereign {

struct BounceDetector {
  static void update(const AgentParams& p, const LevelsState& s, BarContext& ctx) {
    if (!ctx.atr_ready) return;
    const Bar& b = ctx.bar;
    const double range = b.high - b.low;
    if (!(range > 0.0)) return;
    const double tol = ctx.tol;
    // Nearest support: highest price <= C; nearest resistance: lowest price >= C; the
    // older of two at the same price.
    const Level* sup = s.support_at_or_below(b.close);
    const Level* res = s.resistance_at_or_above(b.close);
    double lower_wick = (std::min(b.open, b.close) - b.low) / range;
    double upper_wick = (b.high - std::max(b.open, b.close)) / range;
    bool bull = sup && b.low >= sup->price - tol && b.low <= sup->price + tol && b.close > sup->price &&
                lower_wick >= p.wick;
    bool bear = res && b.high >= res->price - tol && b.high <= res->price + tol && b.close < res->price &&
                upper_wick >= p.wick;
    if (bull == bear) return;  // neither, or both at once
    const Level& at = bull ? *sup : *res;
    ctx.bounce_side = bull ? 1 : -1;
    ctx.bounce_level = at.price;
    ctx.bounce_touches = at.touches;
    ctx.bounce_wick = bull ? lower_wick : upper_wick;
  }
};

}  // namespace sovereign
