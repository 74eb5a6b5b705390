// wait_for_records: the consumer of several rings sleeps until the first record in any of them.
//
// Contract
// - It sleeps on the rings' records doorbells together with futex_waitv (Linux 5.16+).
//   Where the kernel lacks it, or SOVEREIGN_NO_FUTEX_WAITV is set, each sleep is a short
//   nap instead (kFallbackNap): correct, only later and busier.
// - `heads[i]` is ring i's header; the caller must be the consumer of every one (it writes
//   their `waiting`), and waits for 1 to 128 rings (futex_waitv's limit).
// - Returns true as soon as one has records; false at the timeout, when keep_waiting() says
//   stop, or when woken with nothing to take (a kick: ShmRing::wake_consumer()). Callers
//   loop, so a false return is never wrong, only early.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <stdexcept>
#include <thread>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
// futex_waitv has the same number on every architecture (new syscalls are unified).
#if defined(SYS_futex_waitv)
inline constexpr long kSysFutexWaitv = SYS_futex_waitv;
#else
inline constexpr long kSysFutexWaitv = 449;
#endif
#endif

#include "futex.hpp"
#include "ring.hpp"

namespace sovereign {

inline bool has_records(const RingHeader* h) {
  return h->head.load(std::memory_order_acquire) != h->tail.load(std::memory_order_relaxed);
}

inline bool any_has_records(RingHeader* const* heads, size_t n) {
  for (size_t i = 0; i < n; ++i)
    if (has_records(heads[i])) return true;
  return false;
}

// Whether any ring's records doorbell has rung since the counts `since` were read (null: no).
inline bool rung_since(RingHeader* const* heads, size_t n, const uint32_t* since) {
  if (since == nullptr) return false;
  for (size_t i = 0; i < n; ++i)
    if (heads[i]->records.seq.load(std::memory_order_acquire) != since[i]) return true;
  return false;
}

// `since` (or null): each ring's doorbell seq when the caller last looked; the wait ends
// at once if one has rung since (the eventcount's "prepare, check, wait" for a condition
// of the caller's own, such as another thread's queue: see wake_consumer()).
template <class KeepWaiting>
bool wait_for_records(RingHeader* const* heads, size_t n, int64_t timeout_ns, KeepWaiting&& keep_waiting,
                      const uint32_t* since = nullptr) {
  constexpr size_t kMaxRings = 128;  // futex_waitv's limit
  constexpr int64_t kMaxNap = 20'000'000, kFallbackNap = 200'000;
  if (n == 0 || n > kMaxRings) throw std::invalid_argument("wait for 1 to 128 rings");
  auto any = [&] { return any_has_records(heads, n); };
  auto rung = [&] { return rung_since(heads, n, since); };
  using clock = std::chrono::steady_clock;
  const auto start = clock::now();
  auto elapsed_ns = [&] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - start).count();
  };
  while (elapsed_ns() < 20'000) {  // spin 20 us, as one ring's wait does
    if (any()) return true;
    if (rung()) return false;
    SOVEREIGN_CPU_RELAX();
    if (timeout_ns >= 0 && elapsed_ns() >= timeout_ns) return any();
  }
#if defined(__linux__)
  // SOVEREIGN_NO_FUTEX_WAITV set: take the fallback as on a kernel without it (tests do).
  static std::atomic<bool> no_waitv{std::getenv("SOVEREIGN_NO_FUTEX_WAITV") != nullptr};
  futex_waitv waiters[kMaxRings];
#endif
  for (;;) {
    const int64_t nap = nap_within(timeout_ns, elapsed_ns(), kMaxNap);
    if (nap <= 0) return any();
    for (size_t i = 0; i < n; ++i) heads[i]->records.waiting.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    bool slept_through = false, woken = false;
#if defined(__linux__)
    for (size_t i = 0; i < n; ++i) {
      waiters[i] = {};
      waiters[i].val = since != nullptr ? since[i] : heads[i]->records.seq.load(std::memory_order_acquire);
      waiters[i].uaddr = reinterpret_cast<uintptr_t>(&heads[i]->records.seq);
      waiters[i].flags = FUTEX_32;  // shared, not FUTEX_PRIVATE_FLAG: the ringers are other processes
    }
#endif
    if (!any() && !rung()) {
#if defined(__linux__)
      if (!no_waitv.load(std::memory_order_relaxed)) {
        timespec until{};
        clock_gettime(CLOCK_MONOTONIC, &until);
        int64_t at = static_cast<int64_t>(until.tv_sec) * 1'000'000'000 + until.tv_nsec + nap;
        until.tv_sec = static_cast<time_t>(at / 1'000'000'000);
        until.tv_nsec = static_cast<long>(at % 1'000'000'000);
        long r = syscall(kSysFutexWaitv, waiters, static_cast<unsigned>(n), 0u, &until, CLOCK_MONOTONIC);
        if (r < 0 && errno == ENOSYS) no_waitv.store(true, std::memory_order_relaxed);
        slept_through = r < 0 && errno == ETIMEDOUT;
        woken = r >= 0 || errno == EAGAIN;  // rung (or rung between our read and the call)
      }
      if (no_waitv.load(std::memory_order_relaxed))
#endif
        std::this_thread::sleep_for(std::chrono::nanoseconds(nap < kFallbackNap ? nap : kFallbackNap));
    }
    for (size_t i = 0; i < n; ++i) heads[i]->records.waiting.store(0, std::memory_order_relaxed);
    bool found = false;
    for (size_t i = 0; i < n; ++i) {
      if (!has_records(heads[i])) continue;
      found = true;
      if (slept_through) count_late(heads[i]->records);
    }
    if (found) return true;
    if (woken || rung() || !keep_waiting()) return false;
  }
}

}  // namespace sovereign
