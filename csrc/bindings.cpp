// sovereign._core: the Python face of the C++ hot path. Batches cross the boundary as
// numpy structured arrays; no per-record Python work, and the GIL is released while C++
// works on a batch. This file registers the records; bind_*.cpp bind the rest (bindings.hpp).
#include "bindings.hpp"

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include "quote_board.hpp"
#include "records.hpp"
#include "shm.hpp"

using namespace sovereign;

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

  bind_ring(m);
  bind_market(m);
  bind_agents(m);
}
