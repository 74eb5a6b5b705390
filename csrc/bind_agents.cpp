// The agents' bindings: SignalBook (the coordinator's net) and AgentPool (the analyzers' agents).
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

#include "agent_pool.hpp"
#include "bindings.hpp"
#include "records.hpp"
#include "ring.hpp"
#include "signal_book.hpp"

namespace sovereign {
namespace {

// ---- AgentPool parameters from Python keywords.

int32_t int_param(const char* key, const py::handle& v) {
  if (!py::isinstance<py::int_>(v) || py::isinstance<py::bool_>(v)) {
    throw py::value_error(std::string("agent parameter ") + key + " must be an integer, got " +
                          py::repr(v).cast<std::string>());
  }
  long long x = v.cast<long long>();
  if (x < INT32_MIN || x > INT32_MAX) {
    throw py::value_error(std::string("agent parameter ") + key + ": " + std::to_string(x) +
                          " is out of range");
  }
  return static_cast<int32_t>(x);
}

double real_param(const char* key, const py::handle& v) {
  if (!(py::isinstance<py::float_>(v) || py::isinstance<py::int_>(v)) || py::isinstance<py::bool_>(v)) {
    throw py::value_error(std::string("agent parameter ") + key + " must be a number, got " +
                          py::repr(v).cast<std::string>());
  }
  return v.cast<double>();
}

AgentParams parse_params(const py::kwargs& kw) {
  AgentParams p;
  for (auto item : kw) {
    std::string key = item.first.cast<std::string>();
    py::handle v = item.second;
    if (key == "atr_n")
      p.atr_n = int_param("atr_n", v);
    else if (key == "k")
      p.k = int_param("k", v);
    else if (key == "m")
      p.m = int_param("m", v);
    else if (key == "max_levels")
      p.max_levels = int_param("max_levels", v);
    else if (key == "tol_mult")
      p.tol_mult = real_param("tol_mult", v);
    else if (key == "surge_rv")
      p.surge_rv = real_param("surge_rv", v);
    else if (key == "wick")
      p.wick = real_param("wick", v);
    else if (key == "min_conviction")
      p.min_conviction = real_param("min_conviction", v);
    else if (key == "weights") {
      py::list w;
      try {
        w = py::list(py::reinterpret_borrow<py::object>(v));
      } catch (const py::error_already_set&) {
        throw py::value_error("agent parameter weights must be a sequence of 4 numbers");
      }
      if (w.size() != 4) {
        throw py::value_error(
            "agent parameter weights must have 4 numbers (level, trend, momentum, "
            "bounce), got " +
            std::to_string(w.size()));
      }
      for (int i = 0; i < 4; ++i) p.weights[i] = real_param("weights", w[i]);
    } else {
      throw py::value_error(
          "unknown agent parameter '" + key +
          "'; known: atr_n, tol_mult, k, m, surge_rv, max_levels, wick, weights, min_conviction");
    }
  }
  p.validate();
  return p;
}

// AgentPool::on_ticks / on_bars with the GIL released while C++ works on the batch.
template <class R, size_t (AgentPool::*Method)(const R*, size_t, std::vector<Signal>&)>
py::array_t<Signal> feed(AgentPool& pool, const py::array& arr) {
  auto recs = as_records<R>(arr, std::is_same_v<R, Tick> ? "on_ticks" : "on_bars");
  std::vector<Signal> out;
  {
    py::gil_scoped_release nogil;
    (pool.*Method)(recs.data(), static_cast<size_t>(recs.size()), out);
  }
  return to_array(out);
}

py::dict params_dict(const AgentParams& p) {
  py::dict d;
  d["atr_n"] = p.atr_n;
  d["tol_mult"] = p.tol_mult;
  d["k"] = p.k;
  d["m"] = p.m;
  d["surge_rv"] = p.surge_rv;
  d["max_levels"] = p.max_levels;
  d["wick"] = p.wick;
  d["weights"] = py::make_tuple(p.weights[0], p.weights[1], p.weights[2], p.weights[3]);
  d["min_conviction"] = p.min_conviction;
  return d;
}

py::object maybe(bool defined, double v) {
  return defined ? py::object(py::float_(v)) : py::object(py::none());
}

py::dict agent_state_dict(const AgentPool& pool, uint32_t id) {
  if (id >= pool.size())
    throw py::index_error("no agent " + std::to_string(id) + " (pool has " + std::to_string(pool.size()) +
                          ")");
  const AgentConfig& c = pool.config(id);
  const AgentState& s = pool.state(id);
  py::dict d;
  d["agent"] = id;
  d["symbol"] = c.symbol;
  d["timeframe_s"] = c.timeframe_s;
  d["bars"] = s.bars;
  d["atr"] = maybe(s.atr.ready, s.atr.atr);
  d["tol"] = maybe(s.atr.ready, c.params.tol_mult * s.atr.atr);
  d["trend"] = s.trend.direction;
  d["trend_strength"] = s.trend.strength;
  py::list highs, lows;
  if (s.trend.highs == 2) highs.append(s.trend.h1);
  if (s.trend.highs >= 1) highs.append(s.trend.h2);
  if (s.trend.lows == 2) lows.append(s.trend.l1);
  if (s.trend.lows >= 1) lows.append(s.trend.l2);
  d["swing_highs"] = highs;
  d["swing_lows"] = lows;
  py::dict mom;
  mom["rv"] = maybe(s.momentum.rv == s.momentum.rv, s.momentum.rv);
  mom["vb"] = maybe(s.momentum.vb_ready, s.momentum.vb);
  mom["obv"] = maybe(s.bars > 0, s.momentum.obv);
  mom["surge"] = s.momentum.surge;
  d["momentum"] = mom;
  py::list levels;  // in creation order, as DESIGN.md lists them
  std::vector<Level> by_age;
  for (int32_t j = 0; j < s.levels.n_sup; ++j) by_age.push_back(s.levels.level[j]);
  for (int32_t j = s.levels.res_begin(); j < LevelsState::kCap; ++j) by_age.push_back(s.levels.level[j]);
  std::sort(by_age.begin(), by_age.end(), [](const Level& a, const Level& b) { return a.seq < b.seq; });
  for (const Level& l : by_age) {
    py::dict ld;
    ld["price"] = l.price;
    ld["touches"] = l.touches;
    ld["kind"] = l.kind == kSupport ? "support" : "resistance";
    ld["last_ts"] = l.last_ts;
    levels.append(ld);
  }
  d["levels"] = levels;
  return d;
}

// A symbol's live signals in netting order, as (agent, expires_ns, side, conviction, entry,
// stop, target): what SignalBook.live shows and its pickle keeps.
py::list live_signals(const SignalBook& book, uint32_t symbol) {
  py::list res;
  for (const LiveSignal& l : book.live(symbol))
    res.append(py::make_tuple(l.agent, l.expires_ns, l.side, l.conviction, l.entry, l.stop, l.target));
  return res;
}

// A worker's hot loop in C++: ring -> AgentPool -> ring, with the GIL released throughout.
// Returns to Python within about budget_s so the worker can heartbeat and take control messages.
py::tuple pump(AgentPool& pool, ShmRing<Tick>& in, ShmRing<Signal>& out, double budget_s, size_t batch) {
  int64_t budget = timeout_ns(budget_s);
  if (batch == 0 || batch > (1u << 20)) throw py::value_error("batch must be in [1, 2^20]");
  size_t ticks = 0, emitted = 0, pushed = 0;
  {
    py::gil_scoped_release nogil;
    using clock = std::chrono::steady_clock;
    const auto deadline = clock::now() + std::chrono::nanoseconds(budget);
    auto go_on = [] { return true; };  // bounded by the deadline instead of Ctrl-C
    std::vector<Tick> buf(batch);
    std::vector<Signal> sigs;
    for (;;) {
      int64_t left = std::chrono::duration_cast<std::chrono::nanoseconds>(deadline - clock::now()).count();
      if (left <= 0) break;
      size_t n = in.pop(buf.data(), batch, left, go_on);
      if (n == 0) continue;
      sigs.clear();
      pool.on_ticks(buf.data(), n, sigs);
      ticks += n;
      if (!sigs.empty()) {
        emitted += sigs.size();
        pushed += out.push(sigs.data(), sigs.size(), 0, go_on);
      }
    }
  }
  return py::make_tuple(ticks, emitted, pushed);
}

void bind_signal_book(py::module_& m) {
  py::class_<SignalBook>(m, "SignalBook",
                         "The coordinator's live signals per symbol and their net (DESIGN.md section 4).")
      .def(py::init<double>(), py::arg("threshold"))
      .def(
          "update",
          [](SignalBook& book, const py::array& arr) {
            auto sig = as_records<Signal>(arr, "SignalBook.update");
            std::vector<Candidate> out;
            book.update(sig.data(), static_cast<size_t>(sig.size()), out);
            py::list res(out.size());
            for (size_t i = 0; i < out.size(); ++i) {
              const Candidate& c = out[i];
              res[i] = py::make_tuple(c.symbol, c.origin_ns, c.net, c.agent, c.entry, c.stop, c.target);
            }
            return res;
          },
          py::arg("signals"),
          "Take a batch of signals (SIGNAL_DTYPE); returns the symbols it touched whose |net| reaches "
          "the threshold, in the order it first touched them, as (symbol, origin_ns, net, agent, entry, "
          "stop, target) of the strongest live signal in net's direction.")
      .def_property_readonly("clock_ns", &SignalBook::clock_ns, "The newest signal time seen.")
      .def_property_readonly("threshold", &SignalBook::threshold)
      .def("live", &live_signals, py::arg("symbol"),
           "A symbol's live signals in netting order, as (agent, expires_ns, side, conviction, entry, stop, "
           "target); expired ones leave at the symbol's next decision.")
      .def(py::pickle(
          [](const SignalBook& book) {
            py::list symbols;
            for (uint32_t s = 0; s < book.symbols(); ++s) {
              py::list live = live_signals(book, s);
              if (!live.empty()) symbols.append(py::make_tuple(s, live));
            }
            return py::make_tuple(book.threshold(), book.clock_ns(), symbols);
          },
          [](const py::tuple& t) {
            if (t.size() != 3) throw std::runtime_error("SignalBook: bad pickled state");
            SignalBook book(t[0].cast<double>());
            book.set_clock(t[1].cast<int64_t>());
            for (const auto& item : t[2].cast<py::list>()) {
              auto st = item.cast<py::tuple>();
              std::vector<LiveSignal> live;
              for (const auto& x : st[1].cast<py::list>()) {
                auto f = x.cast<py::tuple>();
                live.push_back(LiveSignal{f[0].cast<uint32_t>(), f[2].cast<int8_t>(), f[1].cast<int64_t>(),
                                          f[3].cast<double>(), f[4].cast<double>(), f[5].cast<double>(),
                                          f[6].cast<double>()});
              }
              book.restore(st[0].cast<uint32_t>(), std::move(live));
            }
            return book;
          }));
}

void bind_agent_pool(py::module_& m) {
  py::class_<AgentPool> agent_pool(m, "AgentPool", "Agents in contiguous storage, fed tick or bar batches.");
  agent_pool.def(py::init<>())
      .def(
          "add_agent",
          [](AgentPool& pool, int64_t symbol, int64_t timeframe_s, const py::kwargs& kw) {
            return pool.add_agent(symbol, timeframe_s, parse_params(kw));
          },
          py::arg("symbol"), py::arg("timeframe_s") = 3600,
          "Add an agent and return its id. Parameters as in DESIGN.md section 3.")
      .def("on_ticks", &feed<Tick, &AgentPool::on_ticks>, py::arg("ticks"),
           "Feed a batch of ticks; returns the signals of the bars it closed.")
      .def("on_bars", &feed<Bar, &AgentPool::on_bars>, py::arg("bars"),
           "Feed closed bars, time order; returns signals. A bar feeds the agents of its symbol and "
           "timeframe_s, and builds the bars of every larger timeframe it divides (M1 -> M5, M15); "
           "such a bar closes with the bar that completes its period.")
      .def(
          "flush",
          [](AgentPool& pool, std::optional<int64_t> now_ns) {
            std::vector<Signal> out;
            if (now_ns)
              pool.flush(*now_ns, out);
            else
              pool.flush_all(out);
            return to_array(out);
          },
          py::arg("now_ns") = py::none(),
          "Close open bars whose period ended by now_ns (all of them if None); returns signals.")
      .def("snapshot", [](const AgentPool& pool) { return py::bytes(pool.snapshot()); })
      .def(
          "restore", [](AgentPool& pool, const py::bytes& blob) { pool.restore(std::string(blob)); },
          py::arg("blob"), "Restore a snapshot (see AgentPool::restore for the rules).")
      .def("agent_state", &agent_state_dict, py::arg("agent"))
      .def(
          "agent_config",
          [](const AgentPool& pool, uint32_t id) {
            if (id >= pool.size()) throw py::index_error("no agent " + std::to_string(id));
            const AgentConfig& c = pool.config(id);
            py::dict d = params_dict(c.params);
            d["symbol"] = c.symbol;
            d["timeframe_s"] = c.timeframe_s;
            return d;
          },
          py::arg("agent"))
      .def("stats",
           [](const AgentPool& pool) {
             const PoolCounters& c = pool.counters();
             py::dict rejected;
             for (size_t i = 0; i < c.rejected.size(); ++i) rejected[kRejectNames[i]] = c.rejected[i];
             py::dict d;
             d["agents"] = pool.size();
             d["ticks"] = c.ticks;
             d["bars"] = c.bars;
             d["signals"] = c.signals;
             d["rejected"] = rejected;
             return d;
           })
      .def("pump", &pump, py::arg("ticks"), py::arg("signals"), py::arg("budget_s"), py::arg("batch") = 4096,
           "A worker's hot loop: pop tick batches from `ticks`, run every agent, push the signals to "
           "`signals`, for up to budget_s seconds, without the GIL. Returns (ticks, signals, "
           "signals_pushed); signals that did not fit are counted as dropped by the signal ring.")
      .def_property("threads", &AgentPool::threads, &AgentPool::set_threads,
                    "Threads on_bars may use, each on its own symbols (default 1); results do not "
                    "depend on it.")
      .def("memory_bytes", &AgentPool::memory_bytes)
      .def_property_readonly("twins", &AgentPool::twins,
                             "Agents whose analyzers run once for them and an earlier agent of their series "
                             "(parameters that differ only in weights and min_conviction, equal states); "
                             "each still scores with its own.")
      .def("__len__", &AgentPool::size);
  // The times it takes and how far ahead of its stream a tick may be (agent_pool.hpp).
  agent_pool.attr("MIN_TIME_NS") = kMinTimeNs;
  agent_pool.attr("MAX_TIME_NS") = kMaxTimeNs;
  agent_pool.attr("MAX_AHEAD_NS") = kMaxAheadNs;
  agent_pool.attr("JUMP_CONFIRM_NS") = kJumpConfirmNs;
}

}  // namespace

void bind_agents(py::module_& m) {
  bind_signal_book(m);
  bind_agent_pool(m);
}

}  // namespace sovereign
