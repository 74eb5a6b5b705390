// Agent parameters (DESIGN.md section 3 defaults) and their validation.
#pragma once

#include <cmath>
#include <cstdint>
#include <sstream>
#include <stdexcept>
#include <string>

namespace sovereign {

// Fixed capacities keep every agent's state a flat, fixed-size record: contiguous in the
// pool, copied by memcpy into snapshots. They bound the parameters below.
inline constexpr int kMaxPivotK = 16;      // swing window k
inline constexpr int kMaxMomentumM = 128;  // momentum window m
inline constexpr int kMaxLevels = 64;      // max_levels

struct AgentParams {
  int32_t atr_n = 14;
  int32_t k = 3;
  int32_t m = 20;
  int32_t max_levels = 16;
  double tol_mult = 0.25;
  double surge_rv = 1.5;
  double wick = 0.4;
  double weights[4] = {0.30, 0.25, 0.20, 0.25};  // level, trend, momentum, bounce
  double min_conviction = 0.55;

  bool operator==(const AgentParams& o) const {
    return atr_n == o.atr_n && k == o.k && m == o.m && max_levels == o.max_levels && tol_mult == o.tol_mult &&
           surge_rv == o.surge_rv && wick == o.wick && weights[0] == o.weights[0] &&
           weights[1] == o.weights[1] && weights[2] == o.weights[2] && weights[3] == o.weights[3] &&
           min_conviction == o.min_conviction;
  }

  // Throws std::invalid_argument naming the first parameter out of range.
  void validate() const {
    check_int("atr_n", atr_n, 1, 10000);
    check_int("k", k, 1, kMaxPivotK);
    check_int("m", m, 1, kMaxMomentumM);
    check_int("max_levels", max_levels, 1, kMaxLevels);
    check_real("tol_mult", tol_mult, 0.0, 100.0, false);
    check_real("surge_rv", surge_rv, 0.0, 1e6, false);
    if (!(wick >= 0.0 && wick < 1.0)) fail("wick", wick, "[0, 1)");
    double sum = 0.0;
    for (int i = 0; i < 4; ++i) {
      if (!(weights[i] >= 0.0 && weights[i] <= 1.0)) fail("weights", weights[i], "[0, 1] for each weight");
      sum += weights[i];
    }
    if (std::fabs(sum - 1.0) > 1e-9) fail("weights", sum, "a sum of 1 for the four weights");
    check_real("min_conviction", min_conviction, 0.0, 1.0, true);
  }

 private:
  static void check_int(const char* name, int64_t v, int64_t lo, int64_t hi) {
    if (v < lo || v > hi) {
      throw std::invalid_argument(std::string("agent parameter ") + name + ": " + std::to_string(v) +
                                  " is not in [" + std::to_string(lo) + ", " + std::to_string(hi) + "]");
    }
  }
  static void check_real(const char* name, double v, double lo, double hi, bool lo_closed) {
    bool ok = std::isfinite(v) && (lo_closed ? v >= lo : v > lo) && v <= hi;
    if (!ok) {
      std::ostringstream range;
      range << (lo_closed ? "[" : "(") << lo << ", " << hi << "]";
      fail(name, v, range.str());
    }
  }
  [[noreturn]] static void fail(const char* name, double v, const std::string& range) {
    std::ostringstream msg;
    msg << "agent parameter " << name << ": " << v << " is not in " << range;
    throw std::invalid_argument(msg.str());
  }
};

}  // namespace sovereign
