#include "agent_pool.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <exception>
#include <stdexcept>
#include <thread>
#include <unordered_map>

namespace sovereign {

namespace {

inline bool positive_finite(double x) { return x > 0.0 && std::isfinite(x); }

uint64_t fnv1a(const void* data, size_t n, uint64_t h = 0xcbf29ce484222325ULL) {
  const auto* p = static_cast<const unsigned char*>(data);
  for (size_t i = 0; i < n; ++i) h = (h ^ p[i]) * 0x100000001b3ULL;
  return h;
}

constexpr uint64_t kSnapshotMagic = 0x31504f4f4c565353ULL;  // "SSVLOOP1"

struct SnapshotHeader {
  uint64_t magic;
  uint32_t layout_version;
  uint32_t header_size;
  uint64_t fingerprint;  // of the state structs' sizes and capacities
  uint64_t n_agents, n_series, n_symbols;
  uint64_t payload_bytes;
  uint64_t checksum;  // FNV-1a of the payload
};

uint64_t layout_fingerprint() {
  const uint64_t parts[] = {sizeof(AgentConfig),  sizeof(AgentState),  sizeof(SeriesState),
                            sizeof(PoolCounters), sizeof(StreamClock), kMaxPivotK,
                            kMaxMomentumM,        kMaxLevels,          static_cast<uint64_t>(Reject::kCount)};
  return fnv1a(parts, sizeof(parts));
}

template <class T>
void append(std::string& out, const std::vector<T>& v) {
  out.append(reinterpret_cast<const char*>(v.data()), v.size() * sizeof(T));
}

template <class T>
void take(const char*& p, std::vector<T>& v, size_t n) {
  v.resize(n);
  std::memcpy(static_cast<void*>(v.data()), p, n * sizeof(T));
  p += n * sizeof(T);
}

[[noreturn]] void refuse(const std::string& why) {
  throw std::invalid_argument("cannot restore AgentPool snapshot: " + why);
}

constexpr const char* kWindowText = "outside the window [2000-01-01, 2200-01-01)";

}  // namespace

uint32_t AgentPool::add_agent(int64_t symbol, int64_t timeframe_s, const AgentParams& params) {
  if (symbol < 0 || symbol > kMaxSymbol) {
    throw std::invalid_argument("symbol " + std::to_string(symbol) + " is not in [0, " +
                                std::to_string(kMaxSymbol) + "]");
  }
  if (timeframe_s < 1 || timeframe_s > kMaxTimeframeS) {
    throw std::invalid_argument("timeframe_s " + std::to_string(timeframe_s) + " is not in [1, " +
                                std::to_string(kMaxTimeframeS) + "]");
  }
  params.validate();
  const auto id = static_cast<uint32_t>(configs_.size());
  const auto sym = static_cast<uint32_t>(symbol);
  const auto tf = static_cast<uint32_t>(timeframe_s);
  configs_.push_back(AgentConfig{sym, tf, params});
  states_.emplace_back();
  leader_.push_back(id);
  agent_series_.push_back(series_for(sym, tf));
  routes_dirty_ = true;
  return id;
}

uint32_t AgentPool::series_for(uint32_t symbol, uint32_t timeframe_s) {
  const uint64_t key = uint64_t{symbol} << 32 | timeframe_s;
  auto found = series_index_.find(key);
  if (found != series_index_.end()) return found->second;
  SeriesState st{};
  st.symbol = symbol;
  st.timeframe_s = timeframe_s;
  st.tf_ns = int64_t{timeframe_s} * 1'000'000'000;
  st.open_start = st.open_end = kNoBar;
  st.closed_end = kNoBar;
  series_.push_back(st);
  series_index_.emplace(key, static_cast<uint32_t>(series_.size() - 1));
  if (symbol >= last_ts_.size()) last_ts_.resize(symbol + 1, 0);
  return static_cast<uint32_t>(series_.size() - 1);
}

void AgentPool::rebuild_routes() {
  const size_t n_series = series_.size();
  series_agent_offsets_.assign(n_series + 1, 0);
  for (uint32_t s : agent_series_) ++series_agent_offsets_[s + 1];
  for (size_t s = 0; s < n_series; ++s) series_agent_offsets_[s + 1] += series_agent_offsets_[s];
  series_agents_.resize(agent_series_.size());
  std::vector<uint32_t> fill(series_agent_offsets_.begin(), series_agent_offsets_.end() - 1);
  for (uint32_t a = 0; a < agent_series_.size(); ++a) series_agents_[fill[agent_series_[a]]++] = a;

  const size_t n_symbols = last_ts_.size();
  symbol_series_offsets_.assign(n_symbols + 1, 0);
  for (const SeriesState& s : series_) ++symbol_series_offsets_[s.symbol + 1];
  for (size_t y = 0; y < n_symbols; ++y) symbol_series_offsets_[y + 1] += symbol_series_offsets_[y];
  symbol_series_.resize(n_series);
  fill.assign(symbol_series_offsets_.begin(), symbol_series_offsets_.end() - 1);
  for (uint32_t s = 0; s < n_series; ++s) symbol_series_[fill[series_[s].symbol]++] = s;
  materialize_twins();
  group_twins();
  routes_dirty_ = false;
}

void AgentPool::materialize_twins() {
  for (uint32_t a = 0; a < leader_.size(); ++a)
    if (leader_[a] != a) states_[a] = states_[leader_[a]];
}

void AgentPool::group_twins() {
  // Needs every agent's own state in states_ (materialize_twins) and the series' agent
  // lists (ascending ids): each agent follows the first earlier agent of its series with
  // the same analysis parameters and, byte for byte, the same state.
  const size_t n = configs_.size();
  for (uint32_t a = 0; a < n; ++a) leader_[a] = a;
  std::vector<uint32_t> count(n + 1, 0);
  for (size_t s = 0; s + 1 < series_agent_offsets_.size(); ++s) {
    for (uint32_t j = series_agent_offsets_[s]; j < series_agent_offsets_[s + 1]; ++j) {
      const uint32_t a = series_agents_[j];
      for (uint32_t i = series_agent_offsets_[s]; i < j; ++i) {
        const uint32_t l = series_agents_[i];
        if (leader_[l] == l && same_analysis(configs_[l].params, configs_[a].params) &&
            std::memcmp(&states_[l], &states_[a], sizeof(AgentState)) == 0) {
          leader_[a] = l;
          ++count[l + 1];
          break;
        }
      }
    }
  }
  for (size_t a = 0; a < n; ++a) count[a + 1] += count[a];
  twin_offsets_ = count;
  twins_.resize(count[n]);
  for (uint32_t a = 0; a < n; ++a)
    if (leader_[a] != a) twins_[count[leader_[a]]++] = a;  // ascending within each leader
}

size_t AgentPool::twins() {
  if (routes_dirty_) rebuild_routes();
  size_t n = 0;
  for (uint32_t a = 0; a < leader_.size(); ++a) n += leader_[a] != a;
  return n;
}

size_t AgentPool::on_ticks(const Tick* ticks, size_t n, std::vector<Signal>& out) {
  if (routes_dirty_) rebuild_routes();
  const size_t n_symbols = last_ts_.size();
  size_t accepted = 0;
  for (size_t i = 0; i < n; ++i) {
    const Tick& t = ticks[i];
    if (!positive_finite(t.bid) || !positive_finite(t.ask)) {
      reject(Reject::kBadPrice);
      continue;
    }
    if (t.ask < t.bid) {
      reject(Reject::kCrossed);
      continue;
    }
    if (!(t.volume >= 0.0) || !std::isfinite(t.volume)) {
      reject(Reject::kBadVolume);
      continue;
    }
    if (t.ts_ns <= 0) {
      reject(Reject::kBadTimestamp);
      continue;
    }
    if (!in_time_window(t.ts_ns)) {
      reject(Reject::kOutOfWindow);
      continue;
    }
    const uint32_t sym = t.symbol;
    if (sym >= n_symbols || symbol_series_offsets_[sym] == symbol_series_offsets_[sym + 1]) {
      reject(Reject::kUnknownSymbol);
      continue;
    }
    if (far_ahead(t.ts_ns)) {
      reject(Reject::kAhead);
      continue;
    }
    if (t.ts_ns < last_ts_[sym]) {
      reject(Reject::kBackwards);
      continue;
    }
    const uint32_t* first = symbol_series_.data() + symbol_series_offsets_[sym];
    const uint32_t* last = symbol_series_.data() + symbol_series_offsets_[sym + 1];
    bool late = false;
    for (const uint32_t* s = first; s != last; ++s) late |= t.ts_ns < series_[*s].closed_end;
    if (late) {
      reject(Reject::kLate);
      continue;
    }

    last_ts_[sym] = t.ts_ns;
    clock_.newest_ns = std::max(clock_.newest_ns, t.ts_ns);
    clock_.jump_ns = 0;
    ++accepted;
    for (const uint32_t* s = first; s != last; ++s) {
      SeriesState& ss = series_[*s];
      if (t.ts_ns < ss.open_end) {  // same period (ts >= open_start since time moves forward)
        ss.high = std::max(ss.high, t.bid);
        ss.low = std::min(ss.low, t.bid);
        ss.close = t.bid;
        ss.volume_sum += t.volume;
        ++ss.tick_count;
        continue;
      }
      if (ss.open_start != kNoBar) {
        const size_t before = out.size();
        close_bar(*s, counters_, out);
        for (size_t k = before; k < out.size(); ++k) out[k].origin_ns = t.recv_ns;
      }
      ss.open_start = t.ts_ns - t.ts_ns % ss.tf_ns;  // ts > 0, so this is the floor
      ss.open_end = ss.open_start + ss.tf_ns;        // below kMaxTimeNs + tf_ns: no overflow
      ss.open = ss.high = ss.low = ss.close = t.bid;
      ss.volume_sum = t.volume;
      ss.tick_count = 1;
    }
  }
  counters_.ticks += accepted;
  return accepted;
}

size_t AgentPool::on_bars(const Bar* bars, size_t n, std::vector<Signal>& out) {
  if (routes_dirty_) rebuild_routes();
  // Agents of different symbols share nothing, so the bars are taken symbol by symbol
  // (a symbol's agents stay in cache while its bars pass), in up to threads_ lanes of
  // disjoint symbols, and the signals are put back in the order one pass in time order
  // makes: by bar, and within a bar as its agents made them.
  const size_t n_symbols = last_ts_.size();
  std::vector<uint32_t> start(n_symbols + 2, 0), order(n);
  auto bucket = [&](const Bar& b) { return b.symbol < n_symbols ? b.symbol : n_symbols; };  // unknown: last
  for (size_t i = 0; i < n; ++i) ++start[bucket(bars[i]) + 1];
  for (size_t s = 0; s <= n_symbols; ++s) start[s + 1] += start[s];
  {
    std::vector<uint32_t> fill(start.begin(), start.end() - 1);
    for (size_t i = 0; i < n; ++i) order[fill[bucket(bars[i])]++] = static_cast<uint32_t>(i);
  }
  struct Lane {
    size_t from = 0, to = 0;  // positions in `order`
    std::vector<Signal> signals;
    std::vector<uint32_t> at;  // the bar each signal came from
    PoolCounters counters;
    size_t accepted = 0;
    std::exception_ptr error;
  };
  // More lanes than threads, taken in turn: a thread that loses its core for a while (to
  // the caller's other work, on a small machine) holds up one small lane, not half of it.
  const size_t workers = std::max<size_t>(1, std::min<size_t>(threads_, n / kMinBarsPerLane + 1));
  const size_t lanes_n = workers == 1 ? 1 : std::min<size_t>(workers * kLanesPerThread, n / kMinBarsPerLane + 1);
  std::vector<Lane> lanes(lanes_n);
  for (size_t k = 0, s = 0; k < lanes_n; ++k) {  // contiguous symbols, about n / lanes bars each
    lanes[k].from = start[s];
    const size_t goal = n * (k + 1) / lanes_n;
    while (s <= n_symbols && (k + 1 == lanes_n || start[s + 1] <= goal)) ++s;
    lanes[k].to = start[s];
  }
  auto run = [&](Lane& lane) {
    try {
      for (size_t j = lane.from; j < lane.to; ++j) {
        const size_t before = lane.signals.size();
        lane.accepted += bar_one(bars[order[j]], lane.counters, lane.signals);
        lane.at.insert(lane.at.end(), lane.signals.size() - before, order[j]);
      }
    } catch (...) {
      lane.error = std::current_exception();
    }
  };
  std::atomic<size_t> next{0};
  auto take = [&] {
    for (size_t k; (k = next.fetch_add(1, std::memory_order_relaxed)) < lanes_n;) run(lanes[k]);
  };
  std::vector<std::thread> helpers;
  for (size_t k = 1; k < workers; ++k) helpers.emplace_back(take);
  take();
  for (auto& t : helpers) t.join();
  size_t accepted = 0, total = 0;
  for (const Lane& lane : lanes) {
    if (lane.error) std::rethrow_exception(lane.error);
    accepted += lane.accepted;
    total += lane.signals.size();
    counters_.bars += lane.counters.bars;
    counters_.signals += lane.counters.signals;
    for (size_t r = 0; r < counters_.rejected.size(); ++r) counters_.rejected[r] += lane.counters.rejected[r];
  }
  // Each lane's signals are in bar order per symbol; one bar's signals are all in one lane.
  std::vector<std::pair<uint32_t, uint32_t>> where;  // (lane, index)
  where.reserve(total);
  for (uint32_t k = 0; k < lanes.size(); ++k)
    for (uint32_t j = 0; j < lanes[k].signals.size(); ++j) where.emplace_back(k, j);
  std::stable_sort(where.begin(), where.end(), [&](const auto& x, const auto& y) {
    return lanes[x.first].at[x.second] < lanes[y.first].at[y.second];
  });
  out.reserve(out.size() + total);
  for (const auto& [k, j] : where) out.push_back(lanes[k].signals[j]);
  return accepted;
}

bool AgentPool::bar_one(const Bar& b, PoolCounters& counters, std::vector<Signal>& out) {
  const size_t n_symbols = last_ts_.size();
  auto reject = [&](Reject why) { ++counters.rejected[static_cast<size_t>(why)]; };
  bool ohlc_ok = positive_finite(b.open) && positive_finite(b.high) && positive_finite(b.low) &&
                 positive_finite(b.close) && b.low <= std::min(b.open, b.close) &&
                 b.high >= std::max(b.open, b.close) && b.timeframe_s >= 1;
  if (!ohlc_ok) {
    reject(Reject::kBadBar);
    return false;
  }
  if (!(b.volume >= 0.0) || !std::isfinite(b.volume)) {
    reject(Reject::kBadVolume);
    return false;
  }
  if (b.ts_ns <= 0) {
    reject(Reject::kBadTimestamp);
    return false;
  }
  if (!in_time_window(b.ts_ns)) {  // so that b.ts_ns + a timeframe cannot overflow
    reject(Reject::kOutOfWindow);
    return false;
  }
  if (b.ts_ns % (int64_t{b.timeframe_s} * 1'000'000'000) != 0) {
    reject(Reject::kMisaligned);
    return false;
  }
  // The series this bar feeds: its own timeframe directly, and every larger timeframe
  // it divides by aggregation (M1 bars build M5 and M15 bars).
  const int64_t bar_ns = int64_t{b.timeframe_s} * 1'000'000'000;
  bool known = false, backwards = false;
  if (b.symbol < n_symbols) {
    for (uint32_t j = symbol_series_offsets_[b.symbol]; j < symbol_series_offsets_[b.symbol + 1]; ++j) {
      const SeriesState& ss = series_[symbol_series_[j]];
      if (ss.timeframe_s % b.timeframe_s != 0) continue;
      known = true;
      const int64_t floor = ss.timeframe_s == b.timeframe_s ? ss.open_end : ss.open_start;
      backwards |= b.ts_ns < ss.closed_end || (ss.open_start != kNoBar && b.ts_ns < floor);
    }
  }
  if (!known) {
    reject(Reject::kUnknownSymbol);
    return false;
  }
  if (backwards) {
    reject(Reject::kBackwards);
    return false;
  }
  for (uint32_t j = symbol_series_offsets_[b.symbol]; j < symbol_series_offsets_[b.symbol + 1]; ++j) {
    const uint32_t s = symbol_series_[j];
    SeriesState& ss = series_[s];
    if (ss.timeframe_s % b.timeframe_s != 0) continue;
    if (ss.timeframe_s == b.timeframe_s) {
      if (ss.open_start != kNoBar) close_bar(s, counters, out);  // a tick-built bar before it
      ss.closed_end = b.ts_ns + ss.tf_ns;
      ++counters.bars;
      run_agents(s, b, counters, out);
      continue;
    }
    if (ss.open_start != kNoBar && b.ts_ns >= ss.open_end) close_bar(s, counters, out);
    if (ss.open_start == kNoBar) {
      ss.open_start = b.ts_ns - b.ts_ns % ss.tf_ns;
      ss.open_end = ss.open_start + ss.tf_ns;
      ss.open = b.open;
      ss.high = b.high;
      ss.low = b.low;
      ss.volume_sum = 0.0;
      ss.tick_count = 0;
    }
    ss.high = std::max(ss.high, b.high);
    ss.low = std::min(ss.low, b.low);
    ss.close = b.close;
    ss.volume_sum += b.volume;
    ++ss.tick_count;
    if (b.ts_ns + bar_ns >= ss.open_end) close_bar(s, counters, out);  // it completes the period: no waiting
  }
  return true;
}

bool AgentPool::far_ahead(int64_t ts) {
  if (clock_.newest_ns == 0 || ts - clock_.newest_ns <= kMaxAheadNs) return false;
  if (clock_.jump_ns == 0 || std::abs(ts - clock_.jump_ns) > kMaxAheadNs) {  // a jump begins (or another)
    clock_.jump_ns = ts;
    return true;
  }
  return ts - clock_.jump_ns < kJumpConfirmNs;  // taken once the stream has gone on there
}

void AgentPool::close_bar(uint32_t series, PoolCounters& counters, std::vector<Signal>& out) {
  SeriesState& ss = series_[series];
  Bar bar{ss.open_start, ss.open,
          ss.high,       ss.low,
          ss.close,      ss.volume_sum > 0.0 ? ss.volume_sum : static_cast<double>(ss.tick_count),
          ss.symbol,     ss.timeframe_s};
  ss.closed_end = ss.open_end;
  ss.open_start = ss.open_end = kNoBar;
  ++counters.bars;
  run_agents(series, bar, counters, out);
}

void AgentPool::run_agents(uint32_t series, const Bar& bar, PoolCounters& counters, std::vector<Signal>& out) {
  const size_t before = out.size();
  bool twins = false;
  Signal sig;
  for (uint32_t j = series_agent_offsets_[series]; j < series_agent_offsets_[series + 1]; ++j) {
    const uint32_t a = series_agents_[j];
    if (leader_[a] != a) {  // scored with its leader
      twins = true;
      continue;
    }
    const AgentConfig& cfg = configs_[a];
    AgentState& s = states_[a];
    BarContext ctx = bar_context(cfg, s, bar);
    agent_analyze(cfg.params, s, ctx);
    if (Conviction::score(cfg.params, s.levels, ctx, a, sig)) out.push_back(sig);
    for (uint32_t k = twin_offsets_[a]; k < twin_offsets_[a + 1]; ++k) {
      const uint32_t f = twins_[k];
      if (Conviction::score(configs_[f].params, s.levels, ctx, f, sig)) out.push_back(sig);
    }
    agent_advance(cfg.params, s, ctx);
  }
  if (twins) {  // back in agent order, as if each had run alone
    std::sort(out.begin() + static_cast<std::ptrdiff_t>(before), out.end(),
              [](const Signal& x, const Signal& y) { return x.agent < y.agent; });
  }
  counters.signals += out.size() - before;
}

void AgentPool::flush(int64_t now_ns, std::vector<Signal>& out) {
  if (routes_dirty_) rebuild_routes();
  for (uint32_t s = 0; s < series_.size(); ++s) {
    if (series_[s].open_start != kNoBar && series_[s].open_end <= now_ns) close_bar(s, counters_, out);
  }
}

void AgentPool::flush_all(std::vector<Signal>& out) { flush(INT64_MAX, out); }

size_t AgentPool::memory_bytes() const {
  auto bytes = [](const auto& v) { return v.capacity() * sizeof(v[0]); };
  return bytes(configs_) + bytes(states_) + bytes(series_) + bytes(last_ts_) + bytes(agent_series_) +
         bytes(series_agent_offsets_) + bytes(series_agents_) + bytes(symbol_series_offsets_) +
         bytes(symbol_series_) + bytes(leader_) + bytes(twin_offsets_) + bytes(twins_) + sizeof(*this);
}

std::string AgentPool::snapshot() const {
  std::string payload;
  append(payload, configs_);
  for (uint32_t leader : leader_)  // a twin's state is its leader's
    payload.append(reinterpret_cast<const char*>(&states_[leader]), sizeof(AgentState));
  append(payload, series_);
  append(payload, last_ts_);
  payload.append(reinterpret_cast<const char*>(&counters_), sizeof(counters_));
  payload.append(reinterpret_cast<const char*>(&clock_), sizeof(clock_));

  SnapshotHeader h{kSnapshotMagic,       kLayoutVersion,  sizeof(SnapshotHeader),
                   layout_fingerprint(), configs_.size(), series_.size(),
                   last_ts_.size(),      payload.size(),  fnv1a(payload.data(), payload.size())};
  std::string blob(reinterpret_cast<const char*>(&h), sizeof(h));
  blob += payload;
  return blob;
}

void AgentPool::restore(const std::string& blob) {
  SnapshotHeader h{};
  if (blob.size() < sizeof(h))
    refuse("it is " + std::to_string(blob.size()) + " bytes, too short for a header");
  std::memcpy(&h, blob.data(), sizeof(h));
  if (h.magic != kSnapshotMagic) refuse("not an AgentPool snapshot (bad magic)");
  if (h.layout_version != kLayoutVersion || h.header_size != sizeof(h) ||
      h.fingerprint != layout_fingerprint()) {
    refuse("it has layout version " + std::to_string(h.layout_version) + ", this build reads version " +
           std::to_string(kLayoutVersion) +
           (h.layout_version == kLayoutVersion ? " (different state layout)" : ""));
  }
  const uint64_t expect = h.n_agents * (sizeof(AgentConfig) + sizeof(AgentState)) +
                          h.n_series * sizeof(SeriesState) + h.n_symbols * sizeof(int64_t) +
                          sizeof(PoolCounters) + sizeof(StreamClock);
  if (h.payload_bytes != expect || blob.size() != sizeof(h) + expect) {
    refuse("its size (" + std::to_string(blob.size()) + " bytes) does not match its header");
  }
  const char* p = blob.data() + sizeof(h);
  if (fnv1a(p, h.payload_bytes) != h.checksum) refuse("checksum mismatch (corrupt data)");

  std::vector<AgentConfig> configs;
  take(p, configs, h.n_agents);
  if (!configs_.empty()) {
    if (configs.size() != configs_.size()) {
      refuse("it holds " + std::to_string(configs.size()) + " agents, this pool has " +
             std::to_string(configs_.size()));
    }
    for (size_t a = 0; a < configs.size(); ++a) {
      const AgentConfig& x = configs[a];
      const AgentConfig& y = configs_[a];
      if (x.symbol != y.symbol || x.timeframe_s != y.timeframe_s || !(x.params == y.params)) {
        refuse("agent " + std::to_string(a) + " differs from this pool's (symbol, timeframe or parameters)");
      }
    }
  }
  AgentPool fresh;
  try {
    for (const AgentConfig& c : configs) fresh.add_agent(c.symbol, c.timeframe_s, c.params);
  } catch (const std::invalid_argument& e) { refuse(e.what()); }
  fresh.rebuild_routes();
  if (fresh.series_.size() != h.n_series || fresh.last_ts_.size() != h.n_symbols) {
    refuse("its series do not match its agents");
  }
  take(p, fresh.states_, h.n_agents);
  fresh.group_twins();  // every agent's own state was just read
  std::vector<SeriesState> series;
  take(p, series, h.n_series);
  for (size_t s = 0; s < series.size(); ++s) {
    if (series[s].symbol != fresh.series_[s].symbol ||
        series[s].timeframe_s != fresh.series_[s].timeframe_s || series[s].tf_ns != fresh.series_[s].tf_ns) {
      refuse("its series do not match its agents");
    }
  }
  fresh.series_ = std::move(series);
  take(p, fresh.last_ts_, h.n_symbols);
  std::memcpy(&fresh.counters_, p, sizeof(PoolCounters));
  p += sizeof(PoolCounters);
  std::memcpy(&fresh.clock_, p, sizeof(StreamClock));
  check_times(fresh.series_, fresh.last_ts_, fresh.clock_);
  *this = std::move(fresh);
}

// Every time a snapshot holds is one the pool could have made: in the window (or none), and
// a bar's end its start plus its period, so nothing restored can overflow or poison a symbol.
void AgentPool::check_times(const std::vector<SeriesState>& series, const std::vector<int64_t>& last_ts,
                            const StreamClock& clock) {
  for (size_t y = 0; y < last_ts.size(); ++y) {
    if (last_ts[y] != 0 && !in_time_window(last_ts[y])) {
      refuse("symbol " + std::to_string(y) + "'s last tick time " + std::to_string(last_ts[y]) + " ns is " +
             kWindowText);
    }
  }
  for (const SeriesState& ss : series) {
    const bool open_ok = ss.open_start == kNoBar
                             ? ss.open_end == kNoBar
                             : in_time_window(ss.open_start) && ss.open_start % ss.tf_ns == 0 &&
                                   ss.open_end == ss.open_start + ss.tf_ns;
    const bool closed_ok =
        ss.closed_end == kNoBar || (ss.closed_end > kMinTimeNs && ss.closed_end <= kMaxTimeNs + ss.tf_ns);
    if (!open_ok || !closed_ok) {
      refuse("the bar times of symbol " + std::to_string(ss.symbol) + " at timeframe " +
             std::to_string(ss.timeframe_s) + " s are " + kWindowText + " or not on the timeframe");
    }
  }
  for (int64_t ts : {clock.newest_ns, clock.jump_ns}) {
    if (ts != 0 && !in_time_window(ts))
      refuse("its stream clock " + std::to_string(ts) + " ns is " + kWindowText);
  }
}

}  // namespace sovereign
