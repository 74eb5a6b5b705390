// Conviction: scores a bounce against level strength, trend and volume balance, and
// turns one that clears min_conviction into a Signal (DESIGN.md section 3).
#pragma once

#include <algorithm>
#include <cmath>

#include "bar_context.hpp"
#include "levels.hpp"
#include "params.hpp"

namespace sovereign {

struct Conviction {
  // Returns true and fills `out` when the bounce in ctx earns a signal.
  static bool score(const AgentParams& p, const LevelsState& s, const BarContext& ctx, uint32_t agent,
                    Signal& out) {
    if (ctx.bounce_side == 0) return false;
    const int d = ctx.bounce_side;
    const double level_score = std::min(ctx.bounce_touches, 5) / 5.0;
    const double trend_align = ctx.trend == d ? 1.0 : (ctx.trend == 0 ? 0.5 : 0.0);
    const double mom_align = (1.0 + d * ctx.vb) / 2.0;
    const double bounce_score = (ctx.bounce_wick - p.wick) / (1.0 - p.wick);
    const double conviction = p.weights[0] * level_score + p.weights[1] * trend_align +
                              p.weights[2] * mom_align + p.weights[3] * bounce_score;
    if (!(conviction >= p.min_conviction)) return false;

    const double entry = ctx.bar.close;
    const double stop = ctx.bounce_level - d * ctx.tol;
    bool found = false;
    double target = 0.0;
    auto consider = [&](int32_t j) {  // nearest level strictly beyond entry on side d
      const double lp = s.level[j].price;
      if (d > 0 ? lp > entry : lp < entry) {
        if (!found || (d > 0 ? lp < target : lp > target)) target = lp;
        found = true;
      }
    };
    for (int32_t j = 0; j < s.n_sup; ++j) consider(j);
    for (int32_t j = s.res_begin(); j < LevelsState::kCap; ++j) consider(j);
    if (!found) target = entry + d * 2.0 * std::fabs(entry - stop);

    out = Signal{};
    out.ts_ns = ctx.close_ns;
    out.agent = agent;
    out.symbol = ctx.bar.symbol;
    out.side = static_cast<int8_t>(d);
    out.flags = ctx.surge ? kSignalSurge : 0;
    out.touches = static_cast<uint16_t>(std::min(ctx.bounce_touches, 65535));
    out.timeframe_s = static_cast<uint32_t>((ctx.close_ns - ctx.bar.ts_ns) / 1'000'000'000);
    out.conviction = conviction;
    out.entry = entry;
    out.stop = stop;
    out.target = target;
    out.level = ctx.bounce_level;
    return true;
  }
};

}  // namespace sovereign
