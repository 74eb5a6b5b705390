// The binding files of sovereign._core: each binds one part of the module, and shares these helpers.
//
// bindings.cpp registers the record dtypes first, then calls the bind_x functions in this
// order (the module's attributes appear in it); each file must see the dtypes registered.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <cstring>
#include <optional>
#include <string>
#include <vector>

namespace py = pybind11;

namespace sovereign {

void bind_ring(py::module_& m);    // bind_ring.cpp: TickRing, SignalRing, OrderRing, wait_for_records
void bind_market(py::module_& m);  // bind_market.cpp: QuoteBoard, SimMarket, tick scans, Screen
void bind_agents(py::module_& m);  // bind_agents.cpp: SignalBook, AgentPool

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

inline int64_t timeout_ns(std::optional<double> seconds) {
  if (!seconds) return -1;
  if (!(*seconds >= 0.0) || !std::isfinite(*seconds)) {
    throw py::value_error("timeout must be a finite number of seconds >= 0 or None, got " +
                          std::to_string(*seconds));
  }
  return static_cast<int64_t>(*seconds * 1e9);
}

}  // namespace sovereign
