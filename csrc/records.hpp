// Fixed-size records that cross process boundaries (DESIGN.md section 2).
//
// Each struct is mirrored field for field by a numpy dtype in sovereign/core.py; the
// static_asserts pin the layout so that a change here is a compile error until the
// Python side (and kLayoutVersion) change with it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <type_traits>

namespace sovereign {

// Bumped whenever any record or persisted state layout changes. Shared-memory rings and
// AgentPool snapshots carry it, and refuse to attach to / restore from another version.
inline constexpr uint32_t kLayoutVersion = 1;

// Tick flags, as MT5's TICK_FLAG_* bits: which fields this tick changed.
enum TickFlags : uint32_t {
  kTickBid = 2,
  kTickAsk = 4,
  kTickLast = 8,
  kTickVolume = 16,
};

struct Tick {
  int64_t ts_ns;  // ns since the Unix epoch, UTC
  double bid;
  double ask;
  double last;
  double volume;  // 0 where the feed has no volume
  uint32_t symbol;
  uint32_t flags;
  static constexpr uint32_t kTypeId = 1;
};

struct Bar {
  int64_t ts_ns;  // period start, aligned to a UTC multiple of timeframe_s
  double open;
  double high;
  double low;
  double close;
  double volume;  // sum of tick volumes, or the tick count where the feed has none
  uint32_t symbol;
  uint32_t timeframe_s;
  static constexpr uint32_t kTypeId = 2;
};

enum SignalFlags : uint8_t {
  kSignalSurge = 1,  // the bar's relative volume reached surge_rv
};

// No padding anywhere: numpy drops unnamed padding when it promotes structured dtypes
// (np.concatenate), which would silently change the record's layout.
struct Signal {
  int64_t ts_ns;  // close time of the bar that produced it (period start + timeframe)
  uint32_t agent;
  uint32_t symbol;
  int8_t side;           // +1 buy, -1 sell
  uint8_t flags;         // SignalFlags
  uint16_t touches;      // of the level it bounced from (saturates at 65535)
  uint32_t timeframe_s;  // the agent's; a signal lives for one bar of it
  double conviction;
  double entry;
  double stop;
  double target;
  double level;
  static constexpr uint32_t kTypeId = 3;
};

static_assert(sizeof(Tick) == 48 && alignof(Tick) == 8);
static_assert(offsetof(Tick, bid) == 8 && offsetof(Tick, volume) == 32);
static_assert(offsetof(Tick, symbol) == 40 && offsetof(Tick, flags) == 44);
static_assert(sizeof(Bar) == 56 && offsetof(Bar, symbol) == 48 && offsetof(Bar, timeframe_s) == 52);
static_assert(sizeof(Signal) == 64 && offsetof(Signal, side) == 16 && offsetof(Signal, touches) == 18);
static_assert(offsetof(Signal, timeframe_s) == 20 && offsetof(Signal, conviction) == 24);
static_assert(offsetof(Signal, level) == 56);
static_assert(std::is_trivially_copyable_v<Tick> && std::is_trivially_copyable_v<Bar> &&
              std::is_trivially_copyable_v<Signal>);

}  // namespace sovereign
