// The sim feed: a seeded synthetic market with the structure the analyzers look for.
//
// Each symbol's mid price walks in log-price through regimes of 300-3000 of its ticks:
// trends (a drifting random walk), ranges (the walk reflected inside a band, so price
// keeps returning to the same support and resistance) and volatility bursts. Arrivals
// are one Poisson process over all symbols (each tick picks its symbol uniformly), so
// the stream is merged in time order by construction; the spread widens with volatility
// and tick volume rises with it.
//
// Contract: the stream is a function of (n_symbols, seed, start_ns, mean_interval_s)
// alone. A regime ends exactly at its last tick, so how the stream is cut into batches
// never changes it: next(a) then next(b) gives the ticks of next(a + b). The generator
// and every distribution are written out here (std::*_distribution differs between
// standard libraries), so one build gives the same ticks on every machine.
//
// A market can be taken as bytes (state) and made again from them (from_state): the
// stream then goes on exactly as if it had never stopped, which is how a restarted gateway
// resumes the sim feed. A market can also be started from another's last prices
// (set_mids), where the stream itself cannot go on (another seed or symbol count).
#pragma once

#include <cmath>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <vector>

#include "records.hpp"

namespace sovereign {

// xoshiro256** 1.0 (Blackman and Vigna, public domain), seeded through splitmix64.
class Rng {
 public:
  explicit Rng(uint64_t seed) {
    for (auto& word : s_) {
      seed += 0x9e3779b97f4a7c15ULL;
      uint64_t z = seed;
      z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
      z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
      word = z ^ (z >> 31);
    }
  }

  uint64_t next() {
    const uint64_t out = rotl(s_[1] * 5, 7) * 9;
    const uint64_t t = s_[1] << 17;
    s_[2] ^= s_[0];
    s_[3] ^= s_[1];
    s_[1] ^= s_[2];
    s_[0] ^= s_[3];
    s_[2] ^= t;
    s_[3] = rotl(s_[3], 45);
    return out;
  }

  double uniform() { return static_cast<double>(next() >> 11) * 0x1.0p-53; }  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform(); }

  // Uniform in [0, n), unbiased (Lemire's multiply-and-reject on 32 bits: n is a symbol
  // count or a regime length, and a 64-bit product needs no __int128).
  uint32_t below(uint32_t n) {
    uint64_t m = (next() >> 32) * n;
    auto low = static_cast<uint32_t>(m);
    if (low < n) {
      const uint32_t floor = (0u - n) % n;
      while (low < floor) {
        m = (next() >> 32) * n;
        low = static_cast<uint32_t>(m);
      }
    }
    return static_cast<uint32_t>(m >> 32);
  }

  double exponential(double mean) { return -mean * std::log1p(-uniform()); }

  // Marsaglia's polar method; the second value of each pair is kept for the next call.
  double normal() {
    if (has_spare_) {
      has_spare_ = false;
      return spare_;
    }
    double u, v, s;
    do {
      u = 2.0 * uniform() - 1.0;
      v = 2.0 * uniform() - 1.0;
      s = u * u + v * v;
    } while (s >= 1.0 || s == 0.0);
    const double f = std::sqrt(-2.0 * std::log(s) / s);
    spare_ = v * f;
    has_spare_ = true;
    return u * f;
  }

  // Knuth's product of uniforms: exact, and fast for the small means tick volume has.
  // `floor` is exp(-mean), which callers drawing many values of one mean keep.
  uint32_t poisson_below(double floor) {
    uint32_t k = 0;
    for (double p = uniform(); p > floor; p *= uniform()) ++k;
    return k;
  }

 private:
  friend class SimMarket;  // takes and gives back the whole state (SimMarket::state)
  static uint64_t rotl(uint64_t x, int k) { return (x << k) | (x >> (64 - k)); }
  uint64_t s_[4];
  double spare_ = 0.0;
  bool has_spare_ = false;
};

class SimMarket {
 public:
  enum Regime : int32_t { kTrend = 0, kRange = 1, kBurst = 2 };

  SimMarket(uint32_t n_symbols, uint64_t seed, int64_t start_ns, double mean_interval_s)
      : rng_(seed), clock_ns_(start_ns), walks_(n_symbols) {
    if (n_symbols < 1) throw std::invalid_argument("n_symbols must be >= 1, got 0");
    if (!(mean_interval_s > 0.0) || !std::isfinite(mean_interval_s)) {
      throw std::invalid_argument("mean_interval_s must be a finite number > 0, got " +
                                  std::to_string(mean_interval_s));
    }
    gap_ns_ = mean_interval_s * 1e9 / n_symbols;  // mean gap of the merged stream
    for (auto& w : walks_) w.anchor = std::log(rng_.uniform(0.6, 1.8));  // FX-like: one spec fits all
    for (auto& w : walks_) new_regime(w);
  }

  uint32_t n_symbols() const { return static_cast<uint32_t>(walks_.size()); }
  int64_t clock_ns() const { return clock_ns_; }

  // Each symbol's mid price now: its last tick's (a tick's `last`), or where it starts.
  std::vector<double> mids() const {
    std::vector<double> out(walks_.size());
    for (size_t s = 0; s < walks_.size(); ++s) out[s] = std::exp(log_mid(walks_[s]));
    return out;
  }

  // Each symbol's walk goes on from mids[s] (a finite price > 0; 0 leaves the symbol as it
  // is), in the regime it is in. Throws std::invalid_argument, changing nothing, unless
  // there is one entry per symbol and each is 0 or a finite positive price.
  void set_mids(const double* mids, size_t n) {
    if (n != walks_.size()) {
      throw std::invalid_argument("set_mids: " + std::to_string(n) + " prices for " +
                                  std::to_string(walks_.size()) + " symbols");
    }
    for (size_t s = 0; s < n; ++s) {
      if (mids[s] != 0.0 && !(mids[s] > 0.0 && std::isfinite(mids[s]))) {
        throw std::invalid_argument("set_mids: the price of symbol " + std::to_string(s) + " is " +
                                    std::to_string(mids[s]) + ", not a finite price > 0 (or 0: unchanged)");
      }
    }
    for (size_t s = 0; s < n; ++s) {
      if (mids[s] == 0.0) continue;
      walks_[s].anchor = std::log(mids[s]);  // log_mid is the anchor where the walk is 0, in every regime
      walks_[s].raw = 0.0;
    }
  }

  // The whole market (generator, clock, every walk) as bytes, field by field in this
  // build's byte order, with a checksum: from_state(state()) makes the same ticks as this
  // market would have from here on.
  std::string state() const {
    std::string out;
    put(out, kStateMagic);
    put(out, static_cast<uint64_t>(walks_.size()));
    for (uint64_t word : rng_.s_) put(out, word);
    put(out, rng_.spare_);
    put(out, static_cast<uint64_t>(rng_.has_spare_));
    put(out, clock_ns_);
    put(out, gap_ns_);
    for (const Walk& w : walks_) {
      put(out, w.anchor), put(out, w.raw), put(out, w.sigma), put(out, w.drift), put(out, w.width);
      put(out, w.volume_floor), put(out, w.left), put(out, static_cast<int64_t>(w.regime));
    }
    put(out, checksum(out));
    return out;
  }

  // A market from state()'s bytes. Throws std::invalid_argument naming what is wrong for
  // bytes that are not a state of this build (magic, size, checksum) or hold a value the
  // generator never makes (so a bad state cannot make NaN prices or an endless regime).
  static SimMarket from_state(const std::string& blob) {
    const size_t head = 8 * 10, per_walk = 8 * 8;  // as state() writes them
    if (blob.size() < head + 8) bad_state("it is " + std::to_string(blob.size()) + " bytes, too short");
    const char* p = blob.data();
    uint64_t magic = 0, n = 0;
    get(p, magic), get(p, n);
    if (magic != kStateMagic) bad_state("not a SimMarket state of this version (bad magic)");
    if (n < 1 || n > static_cast<uint64_t>(kMaxSymbol) + 1 || blob.size() != head + n * per_walk + 8) {
      bad_state("its size (" + std::to_string(blob.size()) + " bytes) does not match its " +
                std::to_string(n) + " symbols");
    }
    uint64_t sum = 0;
    std::memcpy(&sum, blob.data() + blob.size() - 8, 8);
    if (sum != checksum(std::string(blob.data(), blob.size() - 8)))
      bad_state("checksum mismatch (corrupt data)");
    SimMarket m;
    m.walks_.resize(n);
    uint64_t has_spare = 0;
    for (uint64_t& word : m.rng_.s_) get(p, word);
    get(p, m.rng_.spare_), get(p, has_spare), get(p, m.clock_ns_), get(p, m.gap_ns_);
    m.rng_.has_spare_ = has_spare != 0;
    const uint64_t* s = m.rng_.s_;
    if ((s[0] | s[1] | s[2] | s[3]) == 0 || !std::isfinite(m.rng_.spare_) || has_spare > 1 ||
        !(m.gap_ns_ > 0.0 && std::isfinite(m.gap_ns_))) {
      bad_state("its generator or clock is not one a market has");
    }
    for (Walk& w : m.walks_) {
      int64_t regime = 0;
      get(p, w.anchor), get(p, w.raw), get(p, w.sigma), get(p, w.drift), get(p, w.width);
      get(p, w.volume_floor), get(p, w.left), get(p, regime);
      const bool finite = std::isfinite(w.anchor) && std::isfinite(w.raw) && std::isfinite(w.sigma) &&
                          std::isfinite(w.drift) && std::isfinite(w.width);
      if (!finite || !(w.sigma >= 0.0) || !(w.width > 0.0) ||
          !(w.volume_floor > 0.0 && w.volume_floor <= 1.0) || w.left < 1 || w.left > 3000 ||
          regime < kTrend || regime > kBurst) {
        bad_state("a symbol's walk holds values the market never makes");
      }
      w.regime = static_cast<Regime>(regime);
    }
    return m;
  }

  // The next n ticks into out (recv_ns left 0 for the gateway to stamp).
  void next(Tick* out, size_t n) {
    const auto n_sym = static_cast<uint32_t>(walks_.size());
    for (size_t i = 0; i < n; ++i) {
      const uint32_t s = rng_.below(n_sym);
      Walk& w = walks_[s];
      clock_ns_ += static_cast<int64_t>(rng_.exponential(gap_ns_)) + 1;
      w.raw += rng_.normal() * w.sigma + w.drift;
      const double mid = std::exp(log_mid(w));
      const double half_spread = mid * (0.4e-4 + 2.0 * w.sigma) / 2.0;
      Tick& t = out[i];
      t.ts_ns = clock_ns_;
      t.bid = quoted(mid - half_spread);  // quoted to the point, as FX is
      t.ask = std::fmax(quoted(mid + half_spread), t.bid + 1e-5);
      t.last = mid;
      t.volume = static_cast<double>(rng_.poisson_below(w.volume_floor) + 1);
      t.symbol = s;
      t.flags = kTickBid | kTickAsk | kTickVolume;
      t.recv_ns = 0;
      if (--w.left <= 0) new_regime(w);
    }
  }

 private:
  struct Walk {
    double anchor = 0.0;  // log-mid where the current regime started
    double raw = 0.0;     // the walk since then
    double sigma = 0.0, drift = 0.0, width = 1.0;
    double volume_floor = 1.0;  // exp(-mean) of tick volume - 1, a Poisson of mean 1 + 2 sigma / 1e-4
    int64_t left = 0;  // ticks left in the regime
    Regime regime = kTrend;
  };

  static constexpr uint64_t kStateMagic = 0x31534d4953564f53ULL;  // "SOVSIMS1"

  SimMarket() : rng_(0), clock_ns_(0) {}  // from_state fills it

  template <class T>
  static void put(std::string& out, const T& x) {
    out.append(reinterpret_cast<const char*>(&x), sizeof(x));
  }
  template <class T>
  static void get(const char*& p, T& x) {
    std::memcpy(&x, p, sizeof(x));
    p += sizeof(x);
  }
  static uint64_t checksum(const std::string& bytes) {  // FNV-1a: catches a damaged state
    uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned char c : bytes) h = (h ^ c) * 0x100000001b3ULL;
    return h;
  }
  [[noreturn]] static void bad_state(const std::string& why) {
    throw std::invalid_argument("cannot restore a SimMarket state: " + why);
  }

  static double quoted(double price) { return std::nearbyint(price * 1e5) / 1e5; }

  // Trends and bursts follow the walk; ranges reflect it into a band (a triangle wave of
  // it), so price keeps returning to the same support and resistance.
  static double log_mid(const Walk& w) {
    if (w.regime != kRange) return w.anchor + w.raw;
    const double period = 2 * w.width, x = w.raw + w.width / 2;
    const double phase = x - period * std::floor(x / period);  // in [0, period), as a modulo
    const double reflected = (phase <= w.width ? phase : 2 * w.width - phase) - w.width / 2;
    return w.anchor + reflected;
  }

  void new_regime(Walk& w) {
    w.anchor = log_mid(w);
    w.raw = 0.0;
    const double pick = rng_.uniform();  // trend 35%, range 50%, burst 15%
    w.regime = pick < 0.35 ? kTrend : pick < 0.85 ? kRange : kBurst;
    w.sigma = rng_.uniform(0.5e-4, 1.5e-4) * (w.regime == kBurst ? 3.0 : 1.0);
    const double slope = (rng_.uniform() < 0.5 ? -1.0 : 1.0) * w.sigma * rng_.uniform(0.05, 0.2);
    w.drift = w.regime == kTrend ? slope : 0.0;
    w.width = w.sigma * rng_.uniform(15.0, 40.0);
    w.volume_floor = std::exp(-(1.0 + w.sigma / 1e-4 * 2.0));
    w.left = 300 + static_cast<int64_t>(rng_.below(2700));
  }

  Rng rng_;
  int64_t clock_ns_;
  double gap_ns_ = 0.0;
  std::vector<Walk> walks_;
};

}  // namespace sovereign
