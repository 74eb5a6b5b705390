// BarContext: what one agent knows at one bar close, filled in stage by stage.
//
// Every analyzer has the same shape: a POD State it owns, and a static update that reads
// the bar and the outputs of earlier stages from the context and publishes its own. The
// pipeline in agent.hpp fixes the order; an analyzer never reads another one's State.
#pragma once

#include <cstdint>
#include <limits>

#include "../records.hpp"

namespace sovereign {

inline constexpr double kNaN = std::numeric_limits<double>::quiet_NaN();

struct BarContext {
  const Bar& bar;
  int64_t index;     // 0-based index of this closed bar in the agent's series
  int64_t close_ns;  // bar.ts_ns + timeframe: when the bar became known

  // Atr
  bool atr_ready = false;
  double atr = kNaN;
  double tol = kNaN;  // tol_mult * atr
  // Momentum
  double rv = kNaN;  // relative volume, NaN before it is defined
  double vb = 0.0;   // volume balance, 0 before it is defined
  double obv = 0.0;
  bool surge = false;
  // Trend, as it stood before this bar's pivots
  int8_t trend = 0;
  // BounceDetector
  int8_t bounce_side = 0;  // +1 bullish, -1 bearish, 0 none
  double bounce_level = kNaN;
  int32_t bounce_touches = 0;
  double bounce_wick = kNaN;
  // SwingPivots: the pivot of bar index - k, confirmed at this close
  bool swing_high = false;
  bool swing_low = false;
  double swing_high_price = kNaN;
  double swing_low_price = kNaN;
  int64_t pivot_ts = 0;
};

}  // namespace sovereign
