// sovereign._core: the Python face of the C++ hot path. Batches cross the boundary as
// numpy structured arrays; no per-record Python work, and the GIL is released while C++
// works on a batch.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstring>
#include <optional>
#include <vector>

#include "agent_pool.hpp"
#include "quote_board.hpp"
#include "records.hpp"
#include "ring.hpp"
#include "ring_wait.hpp"
#include "screen.hpp"
#include "signal_book.hpp"
#include "sim.hpp"
#include "tick_scan.hpp"

namespace py = pybind11;
using namespace sovereign;

namespace {

// A 1-D, C-contiguous view of `arr` as records of type R, or TypeError.
template <class R>
py::array_t<R> as_records(const py::array& arr, const char* what) {
  if (!arr.dtype().equal(py::dtype::of<R>()) || arr.ndim() != 1) {
    throw py::type_error(
        std::string(what) + " expects a 1-D array of " + py::str(py::dtype::of<R>()).cast<std::string>() +
        ", got ndim=" + std::to_string(arr.ndim()) + " dtype " + py::str(arr.dtype()).cast<std::string>());
  }
  return py::array_t<R, py::array::c_style>::ensure(arr);
}

template <class R>
py::array_t<R> to_array(const std::vector<R>& v) {
  py::array_t<R> out(static_cast<py::ssize_t>(v.size()));
  if (!v.empty()) std::memcpy(out.mutable_data(), v.data(), v.size() * sizeof(R));
  return out;
}

int64_t timeout_ns(std::optional<double> seconds) {
  if (!seconds) return -1;
  if (!(*seconds >= 0.0) || !std::isfinite(*seconds)) {
    throw py::value_error("timeout must be a finite number of seconds >= 0 or None, got " +
                          std::to_string(*seconds));
  }
  return static_cast<int64_t>(*seconds * 1e9);
}

// Lets a blocked push/pop notice Ctrl-C: polled by the wait loop while it sleeps.
struct SignalCheck {
  bool interrupted = false;
  bool operator()() {
    py::gil_scoped_acquire gil;
    interrupted = PyErr_CheckSignals() != 0;
    return !interrupted;
  }
  void raise_if_interrupted() const {
    if (interrupted) throw py::error_already_set();
  }
};

FullPolicy parse_policy(const std::string& s) {
  if (s == "wait") return FullPolicy::kWait;
  if (s == "drop") return FullPolicy::kDrop;
  throw py::value_error("on_full must be 'wait' or 'drop', got '" + s + "'");
}

template <class R>
void bind_ring(py::module_& m, const char* name, const char* doc) {
  using Ring = ShmRing<R>;
  py::class_<Ring>(m, name, doc)
      .def_static(
          "create",
          [](const std::string& n, uint64_t capacity, const std::string& on_full) {
            return Ring::create(n, capacity, parse_policy(on_full));
          },
          py::arg("name"), py::arg("capacity"), py::arg("on_full") = "wait",
          "Create the ring `name` and own it (the owner unlinks it on close). on_full: "
          "'wait' (producer waits for room) or 'drop' (counts what does not fit).")
      .def_static("attach", &Ring::attach, py::arg("name"), "Attach to a ring another process created.")
      .def(
          "push",
          [](Ring& r, const py::array& arr, std::optional<double> timeout) {
            auto recs = as_records<R>(arr, "push");
            int64_t t = timeout_ns(timeout);
            const size_t total = static_cast<size_t>(recs.size());
            size_t n = r.push_now(recs.data(), total);
            if (n == total) return n;
            SignalCheck check;
            {
              py::gil_scoped_release nogil;  // only to wait for room (or to count the drop)
              n += r.push(recs.data() + n, total - n, t, check);
            }
            check.raise_if_interrupted();
            return n;
          },
          py::arg("records"), py::arg("timeout") = py::none(),
          "Push records; returns how many went in. 'wait' rings wait for room up to "
          "`timeout` seconds (None: as long as it takes); 'drop' rings count the rest as dropped.")
      .def(
          "pop",
          [](Ring& r, size_t max_n, double timeout) {
            int64_t t = timeout_ns(timeout);
            py::array_t<R> out(static_cast<py::ssize_t>(max_n));
            size_t n = r.pop_now(out.mutable_data(), max_n);
            SignalCheck check;
            if (n == 0 && t != 0 && max_n != 0) {
              py::gil_scoped_release nogil;  // only to wait
              n = r.pop(out.mutable_data(), max_n, t, check);
            }
            check.raise_if_interrupted();
            out.resize({static_cast<py::ssize_t>(n)}, false);
            return out;
          },
          py::arg("max_n"), py::arg("timeout") = 0.0,
          "Pop up to max_n records into a new array; if empty, wait up to `timeout` seconds.")
      .def(
          "pop_into",
          [](Ring& r, py::array& arr, double timeout) {
            if (!arr.dtype().equal(py::dtype::of<R>()) || arr.ndim() != 1 ||
                !(arr.flags() & py::array::c_style) || !arr.writeable()) {
              throw py::type_error("pop_into expects a writable, C-contiguous 1-D array of the ring's dtype");
            }
            int64_t t = timeout_ns(timeout);
            auto* dst = static_cast<R*>(arr.mutable_data());
            size_t cap = static_cast<size_t>(arr.size());
            size_t n = r.pop_now(dst, cap);
            SignalCheck check;
            if (n == 0 && t != 0 && cap != 0) {
              py::gil_scoped_release nogil;  // only to wait
              n = r.pop(dst, cap, t, check);
            }
            check.raise_if_interrupted();
            return n;
          },
          py::arg("out"), py::arg("timeout") = 0.0,
          "Pop into a preallocated array (no allocation); returns the count.")
      .def("stats",
           [](const Ring& r) {
             RingStats s = r.stats();
             py::dict d;
             d["capacity"] = s.capacity;
             d["depth"] = s.depth;
             d["pushed"] = s.pushed;
             d["popped"] = s.popped;
             d["dropped"] = s.dropped;
             d["full_waits"] = s.full_waits;
             d["high_water"] = s.high_water;
             d["late_wakes"] = s.late_wakes;
             d["owner_pid"] = s.owner_pid;
             d["on_full"] = s.full_policy == FullPolicy::kWait ? "wait" : "drop";
             return d;
           })
      .def("doorbell", &Ring::doorbell, "The records doorbell's count now (for wait_for_records' since).")
      .def("wake_consumer", &Ring::wake_consumer,
           "Wake this ring's consumer if it sleeps in wait_for_records (which then returns False): "
           "for another thread of the consumer's process that has other work for it.")
      .def("close", &Ring::close, "Unmap; the owner also unlinks the name. Idempotent.")
      .def(
          "__enter__", [](Ring& r) -> Ring& { return r; }, py::return_value_policy::reference)
      .def("__exit__", [](Ring& r, const py::args&) { r.close(); })
      .def_property_readonly("name", &Ring::name)
      .def_property_readonly("capacity", &Ring::capacity)
      .def_property_readonly("owner", &Ring::owner)
      .def_property_readonly("reclaimed", &Ring::reclaimed,
                             "True if create() removed a dead owner's segment.")
      .def_property_readonly("closed", [](const Ring& r) { return !r.is_open(); })
      .def_property_readonly_static("dtype", [](const py::object&) { return py::dtype::of<R>(); });
}

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

// The header of a TickRing, SignalRing or OrderRing (the doorbells are the same in all).
RingHeader* ring_header(const py::handle& obj) {
  if (py::isinstance<ShmRing<Tick>>(obj)) return obj.cast<ShmRing<Tick>&>().shared_header();
  if (py::isinstance<ShmRing<Signal>>(obj)) return obj.cast<ShmRing<Signal>&>().shared_header();
  if (py::isinstance<ShmRing<Order>>(obj)) return obj.cast<ShmRing<Order>&>().shared_header();
  throw py::type_error("wait_for_records takes TickRing, SignalRing or OrderRing objects, got " +
                       std::string(py::str(py::type::handle_of(obj))));
}

bool wait_for_records_py(const py::sequence& rings, std::optional<double> timeout,
                         std::optional<std::vector<uint32_t>> since) {
  std::vector<RingHeader*> heads;
  for (const auto& r : rings) heads.push_back(ring_header(r));
  if (heads.empty() || heads.size() > 128) throw py::value_error("wait_for_records takes 1 to 128 rings");
  if (since && since->size() != heads.size()) throw py::value_error("since: one doorbell seq per ring");
  int64_t t = timeout_ns(timeout);
  const uint32_t* seqs = since ? since->data() : nullptr;
  // What needs no wait is answered with the GIL held, as the wait itself would answer it.
  if (any_has_records(heads.data(), heads.size())) return true;
  if (t == 0 || rung_since(heads.data(), heads.size(), seqs)) return false;
  SignalCheck check;
  bool got;
  {
    py::gil_scoped_release nogil;
    got = wait_for_records(heads.data(), heads.size(), t, check, seqs);
  }
  check.raise_if_interrupted();
  return got;
}

void bind_sim(py::module_& m) {
  py::class_<SimMarket>(m, "SimMarket",
                        "The sim feed: a seeded synthetic market (trends, ranges, bursts). See sim.hpp.")
      .def(py::init<uint32_t, uint64_t, int64_t, double>(), py::arg("n_symbols"), py::arg("seed"),
           py::arg("start_ns"), py::arg("mean_interval_s"))
      .def(
          "next",
          [](SimMarket& market, size_t n) {
            py::array_t<Tick> out(static_cast<py::ssize_t>(n));
            Tick* data = out.mutable_data();
            {
              py::gil_scoped_release nogil;
              market.next(data, n);
            }
            return out;
          },
          py::arg("n"), "The next n ticks (TICK_DTYPE, time order, recv_ns 0).")
      .def_property_readonly("n_symbols", &SimMarket::n_symbols)
      .def_property_readonly("clock_ns", &SimMarket::clock_ns, "ts_ns of the last tick made (start_ns before any).");
}

void bind_tick_scans(py::module_& m) {
  m.def(
      "last_of_each",
      [](const py::array& arr) {
        auto ticks = as_records<Tick>(arr, "last_of_each");
        return to_array(last_of_each(ticks.data(), static_cast<size_t>(ticks.size())));
      },
      py::arg("ticks"), "Index of each symbol's last tick in the batch (TICK_DTYPE), latest first.");
  m.def(
      "first_touch",
      [](const py::array& arr, uint32_t symbol, bool is_long, double lo, double hi, size_t start) {
        auto ticks = as_records<Tick>(arr, "first_touch");
        return first_touch(ticks.data(), static_cast<size_t>(ticks.size()), symbol, is_long, lo, hi, start);
      },
      py::arg("ticks"), py::arg("symbol"), py::arg("is_long"), py::arg("lo"), py::arg("hi"), py::arg("start"),
      "First index >= start of a tick of `symbol` whose exit price (bid if long, else ask) is <= lo or >= hi; "
      "-1 if none.");
}

void bind_quote_board(py::module_& m) {
  py::class_<QuoteBoard>(m, "QuoteBoard",
                         "Latest bid/ask per symbol in shared memory; one writer, seqlocked readers.")
      .def_static("create", &QuoteBoard::create, py::arg("name"), py::arg("n_symbols"))
      .def_static("attach", &QuoteBoard::attach, py::arg("name"))
      .def(
          "publish",
          [](QuoteBoard& b, const py::array& arr) {
            auto recs = as_records<Tick>(arr, "publish");
            return b.publish(recs.data(), static_cast<size_t>(recs.size()));
          },
          py::arg("ticks"), "Write each tick's bid/ask into its symbol's slot; returns how many.")
      .def(
          "read",
          [](const QuoteBoard& b, uint32_t symbol) {
            Quote q = b.read(symbol);
            return py::make_tuple(q.ts_ns, q.bid, q.ask, q.recv_ns);
          },
          py::arg("symbol"), "(ts_ns, bid, ask, recv_ns) of one symbol; ts_ns 0 if it has no quote yet.")
      .def(
          "snapshot",
          [](const QuoteBoard& b) {
            py::array_t<Quote> out(static_cast<py::ssize_t>(b.n_symbols()));
            Quote* q = out.mutable_data();
            for (uint32_t s = 0; s < b.n_symbols(); ++s) q[s] = b.read(s);
            return out;
          },
          "Every slot, each read consistently, as an array of QUOTE_DTYPE indexed by symbol.")
      .def("newest_ts", &QuoteBoard::newest_ts,
           "The newest quote time on the board, 0 if none: snapshot()['ts_ns'].max() without the copy.")
      .def("close", &QuoteBoard::close)
      .def(
          "__enter__", [](QuoteBoard& b) -> QuoteBoard& { return b; }, py::return_value_policy::reference)
      .def("__exit__", [](QuoteBoard& b, const py::args&) { b.close(); })
      .def_property_readonly("n_symbols", &QuoteBoard::n_symbols)
      .def_property_readonly("updates", &QuoteBoard::updates)
      .def_property_readonly("owner", &QuoteBoard::owner)
      .def_property_readonly("name", &QuoteBoard::name)
      .def_property_readonly("closed", [](const QuoteBoard& b) { return !b.is_open(); });
}


// The backtest walk's screen (screen.hpp) over one chunk's records, which it holds.
class Screen {
 public:
  using F64 = py::array_t<double, py::array::c_style | py::array::forcecast>;
  using Bool = py::array_t<bool, py::array::c_style | py::array::forcecast>;

  Screen(py::array_t<uint32_t, py::array::c_style | py::array::forcecast> sym, F64 bid, F64 ask,
         std::optional<F64> high, std::optional<F64> low, std::optional<F64> spread)
      : sym_(std::move(sym)), bid_(std::move(bid)), ask_(std::move(ask)) {
    n_ = sym_.size();
    if (bid_.size() != n_ || ask_.size() != n_) throw py::value_error("sym, bid and ask must have one length");
    rec_ = {sym_.data(), bid_.data(), ask_.data()};
    if (high || low || spread) {
      if (!(high && low && spread)) throw py::value_error("bars need high, low and spread together");
      high_ = std::move(*high), low_ = std::move(*low), spread_ = std::move(*spread);
      if (high_.size() != n_ || low_.size() != n_ || spread_.size() != n_)
        throw py::value_error("high, low and spread must have the records' length");
      rec_.high = high_.data(), rec_.low = low_.data(), rec_.spread = spread_.data();
    }
  }

  std::pair<int64_t, int> next(int64_t a, int64_t k, const Bool& is_long, const Bool& is_short, const F64& coef,
                               const F64& sl, const F64& tp, const F64& mark_now, double equity0, bool exits,
                               std::optional<double> peak0, double keep, std::optional<double> daily_floor,
                               std::optional<Bool> pending) {
    range(a, k);
    ScreenBook b = book(is_long, &is_short, coef, &sl, &tp, mark_now);
    ScreenLimits lim;
    lim.exits = exits;
    lim.drawdown = peak0.has_value(), lim.peak0 = peak0.value_or(0.0), lim.keep = keep;
    lim.daily = daily_floor.has_value(), lim.daily_floor = daily_floor.value_or(0.0);
    if (pending) {
      if (static_cast<size_t>(pending->size()) != b.n_symbols) throw py::value_error("pending: one per symbol");
      lim.pending = pending->data();
    }
    ScreenAnswer ans;
    {
      py::gil_scoped_release nogil;
      ans = screen_next(rec_, b, lim, a, k, equity0, last_);
    }
    return {ans.j, ans.kind};
  }

  std::pair<int64_t, double> best(int64_t a, int64_t k, const Bool& is_long, const F64& coef,
                                  const F64& mark_now, double equity0) {
    range(a, k);
    ScreenBook b = book(is_long, nullptr, coef, nullptr, nullptr, mark_now);
    py::gil_scoped_release nogil;
    return screen_best(rec_, b, a, k, equity0, last_);
  }

  py::array_t<int64_t> board(int64_t a, int64_t k, const py::array_t<int64_t, py::array::c_style>& quote_ts,
                             py::array q_ts, py::array q_bid, py::array q_ask) {
    range(a, k);
    if (quote_ts.size() != n_) throw py::value_error("quote_ts must have the records' length");
    const py::ssize_t n_symbols = q_ts.size();
    int64_t* ts = in_place<int64_t>(q_ts, "q_ts", n_symbols);
    double* bid = in_place<double>(q_bid, "q_bid", n_symbols);
    double* ask = in_place<double>(q_ask, "q_ask", n_symbols);
    if (seen_.size() != static_cast<size_t>(n_symbols)) seen_.assign(n_symbols, -1);
    if (!screen_board(rec_, quote_ts.data(), a, k, ts, bid, ask, seen_, ++stamp_, idx_))
      throw py::value_error("a record's symbol is beyond the board");
    py::array_t<int64_t> out(static_cast<py::ssize_t>(idx_.size()));
    std::copy(idx_.begin(), idx_.end(), out.mutable_data());
    return out;
  }

 private:
  void range(int64_t a, int64_t k) const {
    if (a < 0 || k < a || k > n_)
      throw py::index_error("range " + std::to_string(a) + ".." + std::to_string(k) + " outside 0.." +
                            std::to_string(n_));
  }

  // An array written in place: exactly T, contiguous, writeable, n long (never a copy).
  template <class T>
  static T* in_place(py::array& a, const char* name, py::ssize_t n) {
    if (!py::isinstance<py::array_t<T, py::array::c_style>>(a) || !a.writeable() || a.size() != n)
      throw py::value_error(std::string(name) + " must be a writeable contiguous " +
                            std::string(py::str(py::dtype::of<T>())) + " array, one entry per symbol");
    return static_cast<T*>(a.mutable_data());
  }

  static ScreenBook book(const Bool& is_long, const Bool* is_short, const F64& coef, const F64* sl,
                         const F64* tp, const F64& mark_now) {
    const py::ssize_t n = is_long.size();
    for (py::ssize_t m : {coef.size(), mark_now.size(), is_short ? is_short->size() : n, sl ? sl->size() : n,
                          tp ? tp->size() : n})
      if (m != n) throw py::value_error("the book's arrays must have one entry per symbol");
    return {is_long.data(), is_short ? is_short->data() : is_long.data(), coef.data(),
            sl ? sl->data() : coef.data(), tp ? tp->data() : coef.data(), mark_now.data(),
            static_cast<size_t>(n)};
  }

  py::array_t<uint32_t, py::array::c_style | py::array::forcecast> sym_;
  F64 bid_, ask_, high_, low_, spread_;
  py::ssize_t n_ = 0;
  ScreenRecords rec_{};
  std::vector<double> last_;
  std::vector<int64_t> seen_, idx_;
  int64_t stamp_ = 0;
};
}  // namespace

PYBIND11_MODULE(_core, m) {
  m.doc() = "Sovereign's C++ hot path: records, shared-memory rings, analyzers and AgentPool.";
  PYBIND11_NUMPY_DTYPE(Tick, ts_ns, bid, ask, last, volume, symbol, flags, recv_ns);
  PYBIND11_NUMPY_DTYPE(Bar, ts_ns, open, high, low, close, volume, symbol, timeframe_s);
  PYBIND11_NUMPY_DTYPE(Signal, ts_ns, agent, symbol, side, flags, touches, timeframe_s, conviction, entry,
                       stop, target, level, origin_ns);
  PYBIND11_NUMPY_DTYPE(Order, ts_ns, origin_ns, client_order_id, ticket, symbol, agent, side, kind, reason,
                       retcode, volume, price, sl, tp, conviction, risk, commission);
  PYBIND11_NUMPY_DTYPE(Quote, ts_ns, bid, ask, recv_ns);
  m.attr("LAYOUT_VERSION") = kLayoutVersion;
  m.attr("TICK_DTYPE") = py::dtype::of<Tick>();
  m.attr("BAR_DTYPE") = py::dtype::of<Bar>();
  m.attr("SIGNAL_DTYPE") = py::dtype::of<Signal>();
  m.attr("ORDER_DTYPE") = py::dtype::of<Order>();
  m.attr("QUOTE_DTYPE") = py::dtype::of<Quote>();
  m.attr("MAX_SYMBOL") = kMaxSymbol;
  py::register_exception<ShmError>(m, "RingError", PyExc_OSError);

  bind_ring<Tick>(m, "TickRing", "SPSC ring of ticks in POSIX shared memory.");
  bind_ring<Signal>(m, "SignalRing", "SPSC ring of signals in POSIX shared memory.");
  bind_ring<Order>(m, "OrderRing", "SPSC ring of order intents, approved orders or execution reports.");
  m.def("wait_for_records", &wait_for_records_py, py::arg("rings"), py::arg("timeout") = py::none(),
        py::arg("since") = py::none(),
        "Wait until any of these rings (this process is the consumer of each) has records, up to "
        "`timeout` seconds (None: no limit). True if one has; False at the timeout or when woken by "
        "wake_consumer() with nothing to take (callers loop). since: each ring's doorbell() when the "
        "caller last checked a condition of its own; a wake_consumer() after that ends the wait at once, "
        "so no kick is lost between the check and the sleep. Sleeps on the "
        "rings' doorbells together (futex_waitv), so a process that takes from several rings "
        "costs no CPU while they are empty and wakes within a wake-up of the first push.");
  bind_quote_board(m);
  bind_sim(m);
  bind_tick_scans(m);

  py::class_<Screen>(m, "Screen",
                     "The backtest walk's screen over one chunk of records: the first record where a stop "
                     "or target is touched, equity falls below a floor or a bar has an order waiting "
                     "(next), and the highest equity over a range (best). See screen.hpp.")
      .def(py::init<py::array_t<uint32_t, py::array::c_style | py::array::forcecast>, Screen::F64, Screen::F64,
                    std::optional<Screen::F64>, std::optional<Screen::F64>, std::optional<Screen::F64>>(),
           py::arg("sym"), py::arg("bid"), py::arg("ask"), py::arg("high") = py::none(),
           py::arg("low") = py::none(), py::arg("spread") = py::none())
      .def("next", &Screen::next, py::arg("a"), py::arg("k"), py::arg("is_long"), py::arg("is_short"),
           py::arg("coef"), py::arg("sl"), py::arg("tp"), py::arg("mark_now"), py::arg("equity0"),
           py::arg("exits"), py::arg("peak0"), py::arg("keep"), py::arg("daily_floor"),
           py::arg("pending") = py::none(),
           "(j, kind): apply records up to j; kind 0 none (j == k), 1 a pending fill, 2 an exit, 3 a "
           "breach, at record j - 1. peak0/daily_floor None: that floor is not checked.")
      .def("best", &Screen::best, py::arg("a"), py::arg("k"), py::arg("is_long"), py::arg("coef"),
           py::arg("mark_now"), py::arg("equity0"),
           "(i, equity): the record in a..k-1 with the highest equity, the first of equals.")
      .def("board", &Screen::board, py::arg("a"), py::arg("k"), py::arg("quote_ts"), py::arg("q_ts"),
           py::arg("q_bid"), py::arg("q_ask"),
           "The quote board after records a..k-1: each symbol's last record among them writes its "
           "quote_ts, bid and ask into q_ts, q_bid and q_ask (per symbol, in place); returns those "
           "records' indices, ascending.");

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
      .def(
          "live",
          &live_signals,
          py::arg("symbol"),
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
