// Average True Range, Wilder's smoothing as TA-Lib computes it (DESIGN.md section 3).
#pragma once

#include <algorithm>
#include <cmath>

#include "bar_context.hpp"
#include "params.hpp"

namespace sovereign {

struct AtrState {
  double prev_close = 0.0;
  double tr_sum = 0.0;  // TR_1 + ... while warming up
  double atr = 0.0;
  int64_t tr_count = 0;
  bool ready = false;
};

struct Atr {
  static void update(const AgentParams& p, AtrState& s, BarContext& ctx) {
    const Bar& b = ctx.bar;
    if (ctx.index > 0) {
      double tr =
          std::max({b.high - b.low, std::fabs(b.high - s.prev_close), std::fabs(b.low - s.prev_close)});
      if (s.ready) {
        s.atr = (s.atr * (p.atr_n - 1) + tr) / p.atr_n;
      } else {
        s.tr_sum += tr;
        if (++s.tr_count == p.atr_n) {  // first defined at i = n: mean of TR_1..TR_n
          s.atr = s.tr_sum / p.atr_n;
          s.ready = true;
        }
      }
    }
    s.prev_close = b.close;
    if (s.ready) {
      ctx.atr_ready = true;
      ctx.atr = s.atr;
      ctx.tol = p.tol_mult * s.atr;
    }
  }
};

}  // namespace sovereign
