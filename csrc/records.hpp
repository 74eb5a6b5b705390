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
inline constexpr uint32_t kLayoutVersion = 2;
inline constexpr uint32_t kMaxSymbol = (1u << 20) - 1;  // symbol ids are 0 .. kMaxSymbol

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
  // CLOCK_MONOTONIC ns when the gateway received the tick (system-wide, so comparable
  // across processes). For latency tracking only: no decision may depend on it.
  int64_t recv_ns;
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
  int64_t origin_ns;  // recv_ns of the tick that closed the bar; 0 if a flush or a bar closed it
  static constexpr uint32_t kTypeId = 3;
};

// What an Order record is, at each hop of DESIGN.md section 1.
enum OrderKind : uint8_t {
  kOrderIntent = 1,    // coordinator -> risk: side, conviction, risk budget, entry/stop/target
  kOrderApproved = 2,  // risk -> gateway: sized volume, ready to send
  kOrderFill = 3,      // gateway -> risk, coordinator: an execution (fill price, commission)
  kOrderReject = 4,    // gateway -> risk, coordinator: the broker refused it (retcode)
};

// One fixed record for order intents, approved orders and execution reports, so one
// ring type serves every hop and a record can be journaled as it travels.
struct Order {
  int64_t ts_ns;             // event time: the market clock when this hop produced it
  int64_t origin_ns;         // recv_ns of the tick that led to it (latency), 0 if none
  uint64_t client_order_id;  // allocated before it leaves the coordinator or risk, never reused
  uint64_t ticket;           // the broker's deal/order ticket, 0 until it has one
  uint32_t symbol;
  uint32_t agent;    // the agent with the strongest signal behind it, UINT32_MAX for none
  int8_t side;       // +1 buy, -1 sell
  uint8_t kind;      // OrderKind
  uint16_t reason;   // why: sovereign.risk.Reason for risk's orders, exit reason for fills
  uint32_t retcode;  // MT5 TRADE_RETCODE_* of the broker's answer
  double volume;     // lots; 0 in an intent (risk sizes it)
  double price;      // intent: entry; fill: execution price
  double sl;         // 0: none
  double tp;         // 0: none
  double conviction;
  double risk;        // intent: fraction of equity the coordinator allots to this trade
  double commission;  // fill: charged by the broker
  static constexpr uint32_t kTypeId = 4;
};

static_assert(sizeof(Tick) == 56 && alignof(Tick) == 8 && offsetof(Tick, recv_ns) == 48);
static_assert(offsetof(Tick, bid) == 8 && offsetof(Tick, volume) == 32);
static_assert(offsetof(Tick, symbol) == 40 && offsetof(Tick, flags) == 44);
static_assert(sizeof(Bar) == 56 && offsetof(Bar, symbol) == 48 && offsetof(Bar, timeframe_s) == 52);
static_assert(offsetof(Signal, side) == 16 && offsetof(Signal, touches) == 18);
static_assert(offsetof(Signal, timeframe_s) == 20 && offsetof(Signal, conviction) == 24);
static_assert(offsetof(Signal, level) == 56 && offsetof(Signal, origin_ns) == 64 && sizeof(Signal) == 72);
static_assert(sizeof(Order) == 104 && offsetof(Order, symbol) == 32 && offsetof(Order, side) == 40);
static_assert(offsetof(Order, retcode) == 44 && offsetof(Order, volume) == 48);
static_assert(offsetof(Order, commission) == 96);
static_assert(std::is_trivially_copyable_v<Tick> && std::is_trivially_copyable_v<Bar> &&
              std::is_trivially_copyable_v<Signal> && std::is_trivially_copyable_v<Order>);

}  // namespace sovereign
