// The market's bindings: QuoteBoard, SimMarket, the tick scans and the backtest's Screen.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <cstdint>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "bindings.hpp"
#include "quote_board.hpp"
#include "records.hpp"
#include "screen.hpp"
#include "sim.hpp"
#include "tick_scan.hpp"

namespace sovereign {
namespace {

void bind_quote_board(py::module_& m) {
  py::class_<QuoteBoard>(m, "QuoteBoard",
                         "Latest bid/ask per symbol in shared memory; one writer, seqlocked readers.")
      .def_static("create", &QuoteBoard::create, py::arg("name"), py::arg("n_symbols"))
      .def_static("attach", &QuoteBoard::attach, py::arg("name"))
      .def_static("bytes_for", &QuoteBoard::bytes_for, py::arg("n_symbols"),
                  "The shared memory a board of `n_symbols` takes.")
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
      .def_property_readonly("clock_ns", &SimMarket::clock_ns,
                             "ts_ns of the last tick made (start_ns before any).")
      .def(
          "state", [](const SimMarket& market) { return py::bytes(market.state()); },
          "The whole market as bytes: from_state(state()) goes on with the same ticks.")
      .def_static(
          "from_state", [](const py::bytes& blob) { return SimMarket::from_state(std::string(blob)); },
          py::arg("blob"), "A market from state()'s bytes (ValueError for bytes that are not one).")
      .def(
          "mids", [](const SimMarket& market) { return to_array(market.mids()); },
          "Each symbol's mid price now (float64): its last tick's, or where it starts.")
      .def(
          "set_mids",
          [](SimMarket& market, const py::array_t<double, py::array::c_style | py::array::forcecast>& mids) {
            if (mids.ndim() != 1) throw py::value_error("set_mids expects a 1-D array of prices");
            market.set_mids(mids.data(), static_cast<size_t>(mids.size()));
          },
          py::arg("mids"), "Each symbol's walk goes on from mids[s] (0: unchanged). See sim.hpp.");
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
      "First index >= start of a tick of `symbol` whose exit price (bid if long, else ask) is <= lo or "
      ">= hi; -1 if none.");
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
    if (bid_.size() != n_ || ask_.size() != n_)
      throw py::value_error("sym, bid and ask must have one length");
    rec_ = {sym_.data(), bid_.data(), ask_.data()};
    if (high || low || spread) {
      if (!(high && low && spread)) throw py::value_error("bars need high, low and spread together");
      high_ = std::move(*high), low_ = std::move(*low), spread_ = std::move(*spread);
      if (high_.size() != n_ || low_.size() != n_ || spread_.size() != n_)
        throw py::value_error("high, low and spread must have the records' length");
      rec_.high = high_.data(), rec_.low = low_.data(), rec_.spread = spread_.data();
    }
  }

  std::pair<int64_t, int> next(int64_t a, int64_t k, const Bool& is_long, const Bool& is_short,
                               const F64& coef, const F64& sl, const F64& tp, const F64& mark_now,
                               double equity0, bool exits, std::optional<double> peak0, double keep,
                               std::optional<double> daily_floor, std::optional<Bool> pending) {
    range(a, k);
    ScreenBook b = book(is_long, &is_short, coef, &sl, &tp, mark_now);
    ScreenLimits lim;
    lim.exits = exits;
    lim.drawdown = peak0.has_value(), lim.peak0 = peak0.value_or(0.0), lim.keep = keep;
    lim.daily = daily_floor.has_value(), lim.daily_floor = daily_floor.value_or(0.0);
    if (pending) {
      if (static_cast<size_t>(pending->size()) != b.n_symbols)
        throw py::value_error("pending: one per symbol");
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
    return {is_long.data(),
            is_short ? is_short->data() : is_long.data(),
            coef.data(),
            sl ? sl->data() : coef.data(),
            tp ? tp->data() : coef.data(),
            mark_now.data(),
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

void bind_screen(py::module_& m) {
  py::class_<Screen>(m, "Screen",
                     "The backtest walk's screen over one chunk of records: the first record where a stop "
                     "or target is touched, equity falls below a floor or a bar has an order waiting "
                     "(next), and the highest equity over a range (best). See screen.hpp.")
      .def(
          py::init<py::array_t<uint32_t, py::array::c_style | py::array::forcecast>, Screen::F64, Screen::F64,
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
}

}  // namespace

void bind_market(py::module_& m) {
  bind_quote_board(m);
  bind_sim(m);
  bind_tick_scans(m);
  bind_screen(m);
}

}  // namespace sovereign
