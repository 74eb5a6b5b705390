// One agent: (symbol, timeframe, parameters) and the state of its analyzers, advanced one
// closed bar at a time in the order DESIGN.md section 3 fixes.
#pragma once

#include <type_traits>

#include "analyzers/atr.hpp"
#include "analyzers/bounce.hpp"
#include "analyzers/conviction.hpp"
#include "analyzers/levels.hpp"
#include "analyzers/momentum.hpp"
#include "analyzers/params.hpp"
#include "analyzers/pivots.hpp"
#include "analyzers/trend.hpp"

namespace sovereign {

struct AgentConfig {
  uint32_t symbol;
  uint32_t timeframe_s;
  AgentParams params;
};

struct AgentState {
  int64_t bars = 0;  // closed bars seen
  AtrState atr;
  MomentumState momentum;
  PivotState pivots;
  TrendState trend;
  LevelsState levels;
};
static_assert(std::is_trivially_copyable_v<AgentState> && std::is_trivially_copyable_v<AgentConfig>);

// Advances the agent by one closed bar. Returns true and fills `out` if it signals.
inline bool agent_on_bar(const AgentConfig& cfg, AgentState& s, const Bar& bar, uint32_t agent_id,
                         Signal& out) {
  const AgentParams& p = cfg.params;
  BarContext ctx{bar, s.bars, bar.ts_ns + int64_t{cfg.timeframe_s} * 1'000'000'000};
  ctx.trend = s.trend.direction;
  Atr::update(p, s.atr, ctx);
  Momentum::update(p, s.momentum, ctx);
  LosslessLevels::break_through(p, s.levels, ctx);
  BounceDetector::update(p, s.levels, ctx);  // against levels as they stood before this bar's pivots
  bool signalled = Conviction::score(p, s.levels, ctx, agent_id, out);
  SwingPivots::update(p, s.pivots, ctx);
  LosslessLevels::absorb_pivots(p, s.levels, ctx);
  TrendObserver::update(p, s.trend, ctx);
  ++s.bars;
  return signalled;
}

}  // namespace sovereign
