// Doorbells: one process sleeps on a futex word in shared memory until another rings it.
//
// Contract
// - A Doorbell lives in memory shared between processes (a ring's header), so the futex
//   calls are shared ones, not FUTEX_PRIVATE: the ringer is another process.
// - Each doorbell word has one writer: `seq` the ringer, `waiting` and `late` the sleeper.
//   A ring is never lost between the sleeper's last check and its sleep (see Doorbell).
// - Every sleep is bounded: a ringer that never rings costs a late wake, never a hang.
//   Off Linux a short plain sleep stands in for the futex.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <thread>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <cerrno>
#include <ctime>
#endif

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SOVEREIGN_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define SOVEREIGN_CPU_RELAX() asm volatile("yield")
#else
#define SOVEREIGN_CPU_RELAX() ((void)0)
#endif

namespace sovereign {

// Futex on a 32-bit word in shared memory (not FUTEX_PRIVATE: the waker is another
// process). Elsewhere a plain sleep stands in: the waits below are bounded either way.
// Returns true if the sleep ran its full time (no wake came).
inline bool futex_wait(std::atomic<uint32_t>* word, uint32_t expected, int64_t max_ns) {
#if defined(__linux__)
  timespec ts{static_cast<time_t>(max_ns / 1000000000), static_cast<long>(max_ns % 1000000000)};
  long r = syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAIT, expected, &ts, nullptr, 0);
  return r != 0 && errno == ETIMEDOUT;
#else
  (void)word, (void)expected;
  std::this_thread::sleep_for(std::chrono::nanoseconds(max_ns < 50000 ? max_ns : 50000));
  return false;
#endif
}

inline void futex_wake_all(std::atomic<uint32_t>* word) {
#if defined(__linux__)
  syscall(SYS_futex, reinterpret_cast<uint32_t*>(word), FUTEX_WAKE, INT32_MAX, nullptr, nullptr, 0);
#else
  (void)word;
#endif
}

// One side's doorbell (an eventcount): `waiting` says a peer sleeps on `seq`, which the
// other side bumps, then wakes it. The sleeper raises `waiting` and re-checks its
// condition before it sleeps; the ringer publishes its index, then reads `waiting`. The
// seq_cst fences between each side's store and load mean at least one of them sees the
// other's: the sleeper finds the records, or the ringer finds the sleeper. Ringing costs
// one fence and one load when nobody sleeps.
struct Doorbell {
  std::atomic<uint32_t> seq;      // futex word; bumped (fetch_add) by the ringers
  std::atomic<uint32_t> waiting;  // written by the sleeper
  std::atomic<uint64_t> late;     // sleeps that ran their full time and then found the condition
                                  // true: a ring that never came (written by the sleeper)
};
static_assert(std::atomic<uint32_t>::is_always_lock_free && sizeof(std::atomic<uint32_t>) == 4,
              "a doorbell's seq is a futex word");

// A sleep that ran its full time and found the condition true (only the sleeper writes).
inline void count_late(Doorbell& d) {
  d.late.store(d.late.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
}

inline void ring_doorbell(Doorbell& d) {
  std::atomic_thread_fence(std::memory_order_seq_cst);
  if (d.waiting.load(std::memory_order_relaxed) != 0) {
    d.seq.fetch_add(1, std::memory_order_release);
    futex_wake_all(&d.seq);
  }
}

// How long the next sleep may be: max_nap, or what is left of the timeout (< 0: none);
// <= 0 once the timeout has passed.
inline int64_t nap_within(int64_t timeout_ns, int64_t elapsed_ns, int64_t max_nap) {
  if (timeout_ns < 0) return max_nap;
  int64_t left = timeout_ns - elapsed_ns;
  return left < max_nap ? left : max_nap;
}

// Spin briefly (a peer is usually microseconds away), then sleep on the doorbell until it
// rings, so a wait costs no CPU and ends within a wake-up of the records arriving. Each
// sleep is bounded (kMaxNap) so the timeout and `keep_waiting` are still honoured, and a
// peer that never rings (dead mid-push) costs a late wake, never a hang. `keep_waiting` is
// polled between sleeps; returning false abandons the wait (used to let Python handle
// Ctrl-C). timeout_ns < 0: no limit.
template <class Ready, class KeepWaiting>
bool wait_until(Doorbell& bell, Ready&& ready, int64_t timeout_ns, KeepWaiting&& keep_waiting) {
  using clock = std::chrono::steady_clock;
  constexpr int64_t kMaxNap = 20'000'000;  // 20 ms
  const auto start = clock::now();
  const auto spin_for = std::chrono::microseconds(20);
  auto elapsed_ns = [&] {
    return std::chrono::duration_cast<std::chrono::nanoseconds>(clock::now() - start).count();
  };
  for (;;) {
    for (int i = 0; i < 64; ++i) {
      if (ready()) return true;
      SOVEREIGN_CPU_RELAX();
    }
    if (timeout_ns >= 0 && elapsed_ns() >= timeout_ns) return ready();
    if (clock::now() - start < spin_for) continue;
    break;
  }
  for (;;) {
    const int64_t nap = nap_within(timeout_ns, elapsed_ns(), kMaxNap);
    if (nap <= 0) return ready();
    bell.waiting.store(1, std::memory_order_relaxed);
    std::atomic_thread_fence(std::memory_order_seq_cst);
    const uint32_t seq = bell.seq.load(std::memory_order_acquire);
    if (ready()) {
      bell.waiting.store(0, std::memory_order_relaxed);
      return true;
    }
    const bool slept_through = futex_wait(&bell.seq, seq, nap);
    bell.waiting.store(0, std::memory_order_relaxed);
    if (ready()) {
      if (slept_through) count_late(bell);
      return true;
    }
    if (!keep_waiting()) return false;
  }
}

}  // namespace sovereign
