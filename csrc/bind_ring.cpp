// The rings' bindings: TickRing, SignalRing and OrderRing (one template) and wait_for_records.
#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "bindings.hpp"
#include "records.hpp"
#include "ring.hpp"
#include "ring_wait.hpp"

namespace sovereign {
namespace {

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
void bind_shm_ring(py::module_& m, const char* name, const char* doc) {
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
      .def_static("bytes_for", &Ring::bytes_for, py::arg("capacity"),
                  "The shared memory a ring of `capacity` records takes.")
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

}  // namespace

void bind_ring(py::module_& m) {
  bind_shm_ring<Tick>(m, "TickRing", "SPSC ring of ticks in POSIX shared memory.");
  bind_shm_ring<Signal>(m, "SignalRing", "SPSC ring of signals in POSIX shared memory.");
  bind_shm_ring<Order>(m, "OrderRing", "SPSC ring of order intents, approved orders or execution reports.");
  m.def("wait_for_records", &wait_for_records_py, py::arg("rings"), py::arg("timeout") = py::none(),
        py::arg("since") = py::none(),
        "Wait until any of these rings (this process is the consumer of each) has records, up to "
        "`timeout` seconds (None: no limit). True if one has; False at the timeout or when woken by "
        "wake_consumer() with nothing to take (callers loop). since: each ring's doorbell() when the "
        "caller last checked a condition of its own; a wake_consumer() after that ends the wait at once, "
        "so no kick is lost between the check and the sleep. Sleeps on the "
        "rings' doorbells together (futex_waitv), so a process that takes from several rings "
        "costs no CPU while they are empty and wakes within a wake-up of the first push.");
}

}  // namespace sovereign
