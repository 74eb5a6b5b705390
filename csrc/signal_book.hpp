// SignalBook: the coordinator's live signals and their per-symbol net (DESIGN.md section 4).
//
// A signal lives for one bar of its agent's timeframe (until ts_ns + timeframe_s, on the
// market clock: the newest signal time seen). Per symbol the book keeps each agent's
// newest signal, in the order the agents first came (an agent whose signal expired comes
// again at the end), and nets them in that order: net = sum of side * conviction over the
// live ones, rounding each step. Candidates are the symbols a batch touched whose |net|
// reaches the threshold, with the strongest live signal in net's direction (the first of
// equals). What becomes of a candidate (positions, orders in flight, ids, the risk
// budget) is the Coordinator's, in Python.
//
// Thread safety: none; one book belongs to one coordinator.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <stdexcept>
#include <string>
#include <vector>

#include "records.hpp"

namespace sovereign {

struct LiveSignal {
  uint32_t agent;
  int8_t side;
  int64_t expires_ns;
  double conviction, entry, stop, target;
};

struct Candidate {
  uint32_t symbol;
  int64_t origin_ns;  // the newest origin_ns among the batch's signals for the symbol
  double net;
  uint32_t agent;  // the strongest live signal in net's direction
  double entry, stop, target;
};

class SignalBook {
 public:
  static constexpr int64_t kNs = 1'000'000'000;

  explicit SignalBook(double threshold) : threshold_(threshold) {
    if (!(threshold > 0.0) || !std::isfinite(threshold)) {
      throw std::invalid_argument("SignalBook threshold must be a finite number > 0, got " +
                                  std::to_string(threshold));
    }
  }

  // Takes one batch of signals (any order of symbols and agents, as they came) and appends
  // the candidates to `out`, in the order the batch first touched their symbols.
  void update(const Signal* sig, size_t n, std::vector<Candidate>& out) {
    if (n == 0) return;
    for (size_t i = 0; i < n; ++i) {
      if (sig[i].symbol > kMaxSymbol) {
        throw std::invalid_argument("signal symbol " + std::to_string(sig[i].symbol) + " is out of range");
      }
      clock_ns_ = std::max(clock_ns_, sig[i].ts_ns);
    }
    ++batch_;
    touched_.clear();
    for (size_t i = 0; i < n; ++i) {
      const Signal& s = sig[i];
      if (s.symbol >= symbols_.size()) symbols_.resize(s.symbol + 1);
      Symbol& book = symbols_[s.symbol];
      const LiveSignal live{s.agent,      s.side,  s.ts_ns + int64_t{s.timeframe_s} * kNs,
                            s.conviction, s.entry, s.stop,
                            s.target};
      bool found = false;
      for (LiveSignal& l : book.live) {
        if (l.agent == s.agent) {
          l = live;
          found = true;
          break;
        }
      }
      if (!found) book.live.push_back(live);
      if (book.batch != batch_) {
        book.batch = batch_;
        book.origin_ns = std::max<int64_t>(0, s.origin_ns);
        touched_.push_back(s.symbol);
      } else if (s.origin_ns > book.origin_ns) {
        book.origin_ns = s.origin_ns;
      }
    }
    for (uint32_t symbol : touched_) decide(symbol, out);
  }

  int64_t clock_ns() const { return clock_ns_; }
  double threshold() const { return threshold_; }
  size_t symbols() const { return symbols_.size(); }
  const std::vector<LiveSignal>& live(uint32_t symbol) const {
    static const std::vector<LiveSignal> none;
    return symbol < symbols_.size() ? symbols_[symbol].live : none;
  }
  // For restoring a copy (pickling): the clock, and each symbol's live signals in order.
  void set_clock(int64_t clock_ns) { clock_ns_ = clock_ns; }
  void restore(uint32_t symbol, std::vector<LiveSignal> live) {
    if (symbol > kMaxSymbol) throw std::invalid_argument("symbol out of range");
    if (symbol >= symbols_.size()) symbols_.resize(symbol + 1);
    symbols_[symbol].live = std::move(live);
  }

 private:
  struct Symbol {
    std::vector<LiveSignal> live;
    uint64_t batch = 0;  // the last batch that touched it
    int64_t origin_ns = 0;
  };

  void decide(uint32_t symbol, std::vector<Candidate>& out) {
    std::vector<LiveSignal>& live = symbols_[symbol].live;
    double net = 0.0;
    size_t kept = 0;
    for (size_t j = 0; j < live.size(); ++j) {  // expired ones leave, the rest keep their order
      if (live[j].expires_ns <= clock_ns_) continue;
      net += live[j].side * live[j].conviction;
      live[kept++] = live[j];
    }
    live.resize(kept);
    if (!(std::fabs(net) >= threshold_)) return;
    const int8_t side = net > 0.0 ? 1 : -1;
    const LiveSignal* best = nullptr;
    for (const LiveSignal& l : live) {
      if (l.side == side && (best == nullptr || l.conviction > best->conviction)) best = &l;
    }
    if (best == nullptr) return;  // only with a NaN or negative conviction, which agents never make
    out.push_back(Candidate{symbol, symbols_[symbol].origin_ns, net, best->agent, best->entry, best->stop,
                            best->target});
  }

  double threshold_;
  int64_t clock_ns_ = 0;
  uint64_t batch_ = 0;
  std::vector<Symbol> symbols_;
  std::vector<uint32_t> touched_;
};

}  // namespace sovereign
