// Scans of one batch of ticks for the paper broker (gateway and replay): which tick is each
// symbol's last, and the first tick at which a position's stop or target is touched.
// One pass each in C++, where numpy took a sort and one array per open position.
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "records.hpp"

namespace sovereign {

// The index of each symbol's last tick in ticks[0..n), latest first.
inline std::vector<int64_t> last_of_each(const Tick* ticks, size_t n) {
  std::vector<int64_t> out;
  if (n == 0) return out;
  uint32_t top = 0;
  for (size_t i = 0; i < n; ++i) top = ticks[i].symbol > top ? ticks[i].symbol : top;
  std::vector<bool> seen(static_cast<size_t>(top) + 1);
  for (size_t i = n; i-- > 0;) {
    if (!seen[ticks[i].symbol]) {
      seen[ticks[i].symbol] = true;
      out.push_back(static_cast<int64_t>(i));
    }
  }
  return out;
}

// The first i in [start, n) where ticks[i] is of `symbol` and its exit price (the bid for
// a long, the ask for a short) is <= lo or >= hi; -1 if none. A long's stop is lo and its
// target hi, a short's the other way round; an absent one is -inf or +inf. These are the
// float comparisons of a screen: the broker decides each candidate exactly.
inline int64_t first_touch(const Tick* ticks, size_t n, uint32_t symbol, bool is_long, double lo, double hi,
                           size_t start) {
  for (size_t i = start; i < n; ++i) {
    if (ticks[i].symbol != symbol) continue;
    const double px = is_long ? ticks[i].bid : ticks[i].ask;
    if (px <= lo || px >= hi) return static_cast<int64_t>(i);
  }
  return -1;
}

}  // namespace sovereign
