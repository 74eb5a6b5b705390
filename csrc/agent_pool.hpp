// AgentPool: thousands of agents in contiguous arrays, fed by tick or bar batches.
//
// Agents that share (symbol, timeframe) share one BarSeries, so a tick costs one bar
// update per distinct timeframe of its symbol; the analyzers run only when a bar closes.
// Agents of one series that differ only in how they score (weights, min_conviction) share
// their analyzers' work as well: it runs once per bar and each of them scores.
// Bad input is rejected and counted by reason, never processed.
//
// Thread safety: none. One pool belongs to one thread (a worker's hot loop).
#pragma once

#include <algorithm>
#include <array>
#include <cstdint>
#include <string>
#include <unordered_map>
#include <vector>

#include "agent.hpp"
#include "records.hpp"

namespace sovereign {

enum class Reject : uint32_t {
  kBadPrice,       // bid or ask NaN, infinite, zero or negative
  kCrossed,        // ask < bid
  kBadVolume,      // volume NaN, infinite or negative
  kBadTimestamp,   // ts_ns <= 0
  kBackwards,      // older than the symbol's previous tick / the series' previous bar
  kUnknownSymbol,  // no agent trades this symbol (or this symbol/timeframe, for bars)
  kLate,           // belongs to a bar period that a flush already closed
  kBadBar,         // OHLC not finite/positive, or high/low not enclosing open/close
  kMisaligned,     // bar ts_ns not a multiple of its timeframe
  kOutOfWindow,    // ts_ns > 0 but outside [kMinTimeNs, kMaxTimeNs)
  kAhead,          // a tick more than kMaxAheadNs ahead of the newest tick taken (see StreamClock)
  kCount
};
inline constexpr const char* kRejectNames[] = {"bad_price",  "crossed",        "bad_volume", "bad_timestamp",
                                               "backwards",  "unknown_symbol", "late",       "bad_bar",
                                               "misaligned", "out_of_window",  "ahead"};
static_assert(std::size(kRejectNames) == static_cast<size_t>(Reject::kCount));

inline constexpr uint32_t kMaxTimeframeS = 7 * 86400;
inline constexpr int64_t kNoBar = INT64_MIN;

// The times the pool takes, in ns since the epoch: [2000-01-01, 2200-01-01) UTC. Before it
// there is no market data this system can trade (MT5 dates from 2010), and it is where a
// unit error puts a time (seconds, ms or us read as ns land in 1970). From 2200 on is a
// corrupt clock; that bound leaves INT64_MAX 62 years above it, so a time plus any period
// (at most kMaxTimeframeS) never overflows. A snapshot holding other times is refused.
inline constexpr int64_t kMinTimeNs = 946'684'800LL * 1'000'000'000;
inline constexpr int64_t kMaxTimeNs = 7'258'118'400LL * 1'000'000'000;
static_assert(kMaxTimeNs < INT64_MAX - 2 * int64_t{kMaxTimeframeS} * 1'000'000'000);
inline constexpr bool in_time_window(int64_t ts) { return ts >= kMinTimeNs && ts < kMaxTimeNs; }

// A tick more than this ahead of the newest tick the pool took is refused as `ahead`: one
// bad clock must not take its symbol years into the future, where every later tick would be
// refused as going backwards. A whole market is never closed this long (a weekend is two
// days, with a holiday four), and the stream's newest time moves with every symbol's ticks,
// so a live stream loses nothing to it.
inline constexpr int64_t kMaxAheadNs = 7 * 86'400 * 1'000'000'000LL;
// A stream that does resume after a longer silence (a data set with a hole, a system down
// for weeks) is not refused for good: once the ticks refused as ahead, with none taken
// between, have gone on for this long at the new time (within kMaxAheadNs of the first),
// the stream is taken there. A burst of bad ticks at one bogus time never spans it.
inline constexpr int64_t kJumpConfirmNs = 60 * 1'000'000'000LL;

// The stream's clock, by the ticks the pool took. Part of the snapshot.
struct StreamClock {
  int64_t newest_ns = 0;  // the newest tick time taken; 0 before the first
  int64_t jump_ns = 0;    // the first tick refused as ahead since the last one taken; 0 if none
};

// The bar being built for one (symbol, timeframe), plus where the last one ended.
struct SeriesState {
  uint32_t symbol;
  uint32_t timeframe_s;
  int64_t tf_ns;
  int64_t open_start;  // period start of the bar being built, kNoBar if none
  int64_t open_end;    // open_start + tf_ns
  int64_t closed_end;  // end of the last closed period: data before it is late
  double open, high, low, close;
  double volume_sum;
  uint64_t tick_count;
};

struct PoolCounters {
  uint64_t ticks = 0;  // accepted
  uint64_t bars = 0;   // closed bars delivered to series
  uint64_t signals = 0;
  std::array<uint64_t, static_cast<size_t>(Reject::kCount)> rejected{};
};

class AgentPool {
 public:
  // Adds an agent and returns its id (ids are dense, in order of addition).
  // Throws std::invalid_argument for an out-of-range symbol, timeframe or parameter.
  uint32_t add_agent(int64_t symbol, int64_t timeframe_s, const AgentParams& params);

  // Process a batch; signals are appended to `out`. Returns the number accepted. A rejected
  // record changes nothing but its reason's count (and, refused as ahead, StreamClock's
  // note of it). Times outside the window are rejected (ticks and bars), and ticks far ahead.
  size_t on_ticks(const Tick* ticks, size_t n, std::vector<Signal>& out);
  size_t on_bars(const Bar* bars, size_t n, std::vector<Signal>& out);

  // Closes every open bar whose period has ended by now_ns (a quiet market must not
  // hold a bar open). flush_all closes them all, as at the end of a data set; a tick
  // for a period closed this way is then rejected as late.
  void flush(int64_t now_ns, std::vector<Signal>& out);
  void flush_all(std::vector<Signal>& out);

  // The whole pool (agents, their state, open bars, counters) as bytes, and back.
  // restore() into an empty pool adopts the snapshot's agents; into a configured pool
  // it requires the same agents in the same order. Throws std::invalid_argument on a
  // foreign, corrupt or other-version snapshot, or one holding times outside the window,
  // leaving the pool untouched.
  std::string snapshot() const;
  void restore(const std::string& blob);

  size_t size() const { return configs_.size(); }
  const AgentConfig& config(uint32_t id) const { return configs_.at(id); }
  const AgentState& state(uint32_t id) const { return states_.at(leader_.at(id)); }
  size_t twins();  // agents whose analyzers' work a twin does (same_analysis in agent.hpp)
  const PoolCounters& counters() const { return counters_; }
  size_t memory_bytes() const;  // heap held by the pool's arrays

  // on_bars may use up to this many threads, each on its own symbols (1: none besides
  // the caller's). Results do not depend on it.
  void set_threads(size_t n) { threads_ = std::max<size_t>(1, n); }
  size_t threads() const { return threads_; }

 private:
  uint32_t series_for(uint32_t symbol, uint32_t timeframe_s);
  void rebuild_routes();
  void materialize_twins();
  void group_twins();
  bool bar_one(const Bar& bar, PoolCounters& counters, std::vector<Signal>& out);
  bool far_ahead(int64_t ts);  // refuse as ahead? (notes the jump if so)
  static void check_times(const std::vector<SeriesState>& series, const std::vector<int64_t>& last_ts,
                          const StreamClock& clock);
  void close_bar(uint32_t series, PoolCounters& counters, std::vector<Signal>& out);
  void run_agents(uint32_t series, const Bar& bar, PoolCounters& counters, std::vector<Signal>& out);
  void reject(Reject why) { ++counters_.rejected[static_cast<size_t>(why)]; }

  std::vector<AgentConfig> configs_;
  std::vector<AgentState> states_;
  std::vector<SeriesState> series_;
  std::vector<int64_t> last_ts_;  // per symbol id up to the largest traded: newest tick ts, 0 if none
  PoolCounters counters_;
  StreamClock clock_;
  // Derived from configs_ (rebuilt, never snapshotted): agents per series, series per
  // symbol as CSR arrays so routing a tick touches two small contiguous ranges.
  std::unordered_map<uint64_t, uint32_t> series_index_;  // (symbol << 32 | timeframe_s) -> series
  std::vector<uint32_t> agent_series_;
  std::vector<uint32_t> series_agent_offsets_, series_agents_;
  std::vector<uint32_t> symbol_series_offsets_, symbol_series_;
  // Twins: leader_[a] is the agent whose state agent a's is (a itself for most); a
  // leader's followers are twins_[twin_offsets_[a] .. twin_offsets_[a + 1]). A follower's
  // own entry in states_ is stale until materialize_twins() copies its leader's in.
  std::vector<uint32_t> leader_, twin_offsets_, twins_;
  bool routes_dirty_ = false;
  size_t threads_ = 1;
  static constexpr size_t kMinBarsPerLane = 4096;  // a thread is worth starting for this many bars
  static constexpr size_t kLanesPerThread = 8;      // lanes of on_bars, taken in turn by its threads
};

}  // namespace sovereign
