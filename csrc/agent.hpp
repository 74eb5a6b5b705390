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

// Advances the agent by one closed bar in three steps: the analyzers up to the bounce
// (agent_analyze), the score (Conviction::score, which reads nothing but the parameters,
// the levels and the context) and the analyzers after it (agent_advance).
inline void agent_analyze(const AgentParams& p, AgentState& s, BarContext& ctx) {
  ctx.trend = s.trend.direction;
  Atr::update(p, s.atr, ctx);
  Momentum::update(p, s.momentum, ctx);
  LosslessLevels::break_through(p, s.levels, ctx);
  BounceDetector::update(p, s.levels, ctx);  // against levels as they stood before this bar's pivots
}

inline void agent_advance(const AgentParams& p, AgentState& s, BarContext& ctx) {
  SwingPivots::update(p, s.pivots, ctx);
  LosslessLevels::absorb_pivots(p, s.levels, ctx);
  TrendObserver::update(p, s.trend, ctx);
  ++s.bars;
}

inline BarContext bar_context(const AgentConfig& cfg, const AgentState& s, const Bar& bar) {
  return BarContext{bar, s.bars, bar.ts_ns + int64_t{cfg.timeframe_s} * 1'000'000'000};
}

// Returns true and fills `out` if the agent signals on this bar.
inline bool agent_on_bar(const AgentConfig& cfg, AgentState& s, const Bar& bar, uint32_t agent_id,
                         Signal& out) {
  BarContext ctx = bar_context(cfg, s, bar);
  agent_analyze(cfg.params, s, ctx);
  const bool signalled = Conviction::score(cfg.params, s.levels, ctx, agent_id, out);
  agent_advance(cfg.params, s, ctx);
  return signalled;
}

// Two agents of one series whose parameters differ only in what the score reads (weights,
// min_conviction) and whose states are equal stay equal bar after bar: they are twins,
// and one state serves both (AgentPool runs the analyzers once and scores each).
inline bool same_analysis(const AgentParams& a, const AgentParams& b) {
  return a.atr_n == b.atr_n && a.k == b.k && a.m == b.m && a.max_levels == b.max_levels &&
         a.tol_mult == b.tol_mult && a.surge_rv == b.surge_rv && a.wick == b.wick;
}

}  // namespace sovereign
