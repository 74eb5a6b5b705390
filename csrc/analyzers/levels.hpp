// LosslessLevels: support and resistance from swing pivots, kept only while price has
// never closed through them (DESIGN.md section 3).
//
// Layout. Every bar breaks levels and looks for the nearest support below its close and
// the nearest resistance above it; pivots (which add or merge levels) come far less often.
// So the levels are kept sorted by price, each kind on its own: supports from the front of
// one array, resistances from its back, each ascending by (price, seq). A bar's breaks
// then only pop from the ends (the broken supports are the highest ones: c < p - tol
// holds from some price up, since p - tol never decreases as p grows; the broken
// resistances are the lowest), and the nearest levels are next to the ends, so the
// per-bar work is a few predictable steps instead of scans over every level.
//
// "The older" of two levels is the one with the lower seq (creation order), which is
// what every tie-break reads: the same choices as a list kept in creation order.
#pragma once

#include <cmath>

#include "bar_context.hpp"
#include "params.hpp"

namespace sovereign {

enum LevelKind : int8_t { kSupport = 0, kResistance = 1 };

struct Level {
  double price;
  int64_t last_ts;  // ts of the pivot bar that created or last touched it
  int64_t seq;      // creation order: lower is older
  int32_t touches;
  int8_t kind;
};

inline bool level_before(const Level& a, const Level& b) {
  return a.price < b.price || (a.price == b.price && a.seq < b.seq);
}

struct LevelsState {
  static constexpr int32_t kCap = kMaxLevels + 1;  // one spare slot: add first, then evict
  // Supports in level[0 .. n_sup), resistances in level[kCap - n_res .. kCap), each
  // ascending by (price, seq).
  Level level[kCap];
  int32_t n_sup = 0;
  int32_t n_res = 0;
  int64_t next_seq = 0;

  int32_t count() const { return n_sup + n_res; }
  int32_t res_begin() const { return kCap - n_res; }
  // The highest support with price <= x, the older of equal ones; nullptr if none.
  const Level* support_at_or_below(double x) const {
    int32_t j = n_sup - 1;
    while (j >= 0 && !(level[j].price <= x)) --j;
    if (j < 0) return nullptr;
    while (j > 0 && level[j - 1].price == level[j].price) --j;
    return &level[j];
  }
  // The lowest resistance with price >= x, the older of equal ones; nullptr if none.
  const Level* resistance_at_or_above(double x) const {
    int32_t j = res_begin();
    while (j < kCap && !(level[j].price >= x)) ++j;
    return j < kCap ? &level[j] : nullptr;
  }
};

struct LosslessLevels {
  // At each close: a support closed below (or resistance above) by more than tol breaks.
  static void break_through(const AgentParams&, LevelsState& s, const BarContext& ctx) {
    if (!ctx.atr_ready) return;
    const double c = ctx.bar.close;
    while (s.n_sup > 0 && c < s.level[s.n_sup - 1].price - ctx.tol) --s.n_sup;
    while (s.n_res > 0 && c > s.level[s.res_begin()].price + ctx.tol) --s.n_res;
  }

  // Pivots confirmed at this close become levels (a bar that is both: its high first).
  static void absorb_pivots(const AgentParams& p, LevelsState& s, const BarContext& ctx) {
    if (!ctx.atr_ready) return;
    if (ctx.swing_high) absorb(p, s, ctx.swing_high_price, kResistance, ctx.pivot_ts, ctx.tol);
    if (ctx.swing_low) absorb(p, s, ctx.swing_low_price, kSupport, ctx.pivot_ts, ctx.tol);
  }

 private:
  // Calls f(index) for every level, supports then resistances.
  template <class F>
  static void each(const LevelsState& s, F&& f) {
    for (int32_t j = 0; j < s.n_sup; ++j) f(j);
    for (int32_t j = s.res_begin(); j < LevelsState::kCap; ++j) f(j);
  }

  static void absorb(const AgentParams& p, LevelsState& s, double price, LevelKind kind, int64_t ts,
                     double tol) {
    int32_t nearest = -1;
    double best = 0.0;
    each(s, [&](int32_t j) {
      const double d = std::fabs(s.level[j].price - price);
      if (nearest < 0 || d < best || (d == best && s.level[j].seq < s.level[nearest].seq)) {
        nearest = j;  // a tie keeps the older level
        best = d;
      }
    });
    if (nearest >= 0 && best <= tol) {
      Level& l = s.level[nearest];
      l.price = (l.price * l.touches + price) / (l.touches + 1);
      l.touches += 1;
      l.last_ts = ts;
      resort(s, nearest);
      return;
    }
    insert(s, Level{price, ts, s.next_seq++, 1, static_cast<int8_t>(kind)});
    if (s.count() > p.max_levels) evict_weakest(s);
  }

  // Its kind's range [lo, hi) of the array.
  static void range(const LevelsState& s, int8_t kind, int32_t& lo, int32_t& hi) {
    lo = kind == kSupport ? 0 : s.res_begin();
    hi = kind == kSupport ? s.n_sup : LevelsState::kCap;
  }

  // Level j's price changed: move it to its place in its range.
  static void resort(LevelsState& s, int32_t j) {
    int32_t lo, hi;
    range(s, s.level[j].kind, lo, hi);
    const Level l = s.level[j];
    while (j > lo && level_before(l, s.level[j - 1])) {
      s.level[j] = s.level[j - 1];
      --j;
    }
    while (j + 1 < hi && level_before(s.level[j + 1], l)) {
      s.level[j] = s.level[j + 1];
      ++j;
    }
    s.level[j] = l;
  }

  // The newest level (the highest seq) into its place; the caller keeps count <= kCap.
  static void insert(LevelsState& s, const Level& l) {
    int32_t j;
    if (l.kind == kSupport) {  // grows to the right
      j = s.n_sup++;
      while (j > 0 && level_before(l, s.level[j - 1])) {
        s.level[j] = s.level[j - 1];
        --j;
      }
    } else {  // grows to the left
      ++s.n_res;
      j = s.res_begin();
      while (j + 1 < LevelsState::kCap && level_before(s.level[j + 1], l)) {
        s.level[j] = s.level[j + 1];
        ++j;
      }
    }
    s.level[j] = l;
  }

  // Fewest touches goes; on a tie the oldest last_ts, then the oldest level.
  static void evict_weakest(LevelsState& s) {
    int32_t victim = -1;
    each(s, [&](int32_t j) {
      const Level& l = s.level[j];
      if (victim < 0) {
        victim = j;
        return;
      }
      const Level& v = s.level[victim];
      if (l.touches < v.touches || (l.touches == v.touches && l.last_ts < v.last_ts) ||
          (l.touches == v.touches && l.last_ts == v.last_ts && l.seq < v.seq)) {
        victim = j;
      }
    });
    if (s.level[victim].kind == kSupport) {
      for (int32_t j = victim + 1; j < s.n_sup; ++j) s.level[j - 1] = s.level[j];
      --s.n_sup;
    } else {
      for (int32_t j = victim; j > s.res_begin(); --j) s.level[j] = s.level[j - 1];
      --s.n_res;
    }
  }
};

}  // namespace sovereign
