// ShmRing<Record>: a single-producer single-consumer, lock-free ring of fixed-size
// records in POSIX shared memory, shared by two processes (DESIGN.md section 2).
//
// Contract
// - Exactly one process pushes and one pops. A third process may attach to read stats().
// - Indices are free-running 64-bit counters (never wrap in practice); the slot of index i
//   is i & (capacity - 1), so head - tail is the depth and head/tail double as the
//   pushed/popped counters.
// - The producer writes records, then publishes head with release; the consumer reads
//   head with acquire, copies records out, then publishes tail with release, which hands
//   the slots back. Each side keeps a private cached copy of the other's index and
//   reloads it only when the cache says full (producer) or empty (consumer), so a batch
//   costs one cross-core cache-line transfer at most.
// - Each shared counter has a single writer: head, dropped, full_waits (producer); tail,
//   high_water (consumer). Everyone else only loads them.
// - A side that must wait (consumer on empty, 'wait' producer on full) spins briefly, then
//   sleeps on a futex doorbell that the other side rings after each push / pop. Each
//   doorbell word has one writer too: `seq` the ringer, `waiting` the sleeper.
// - The creator owns the segment and unlinks it on close. A segment whose owner died is
//   reclaimed by the next create of the same name; one whose owner lives is refused.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <string>
#include <thread>
#include <utility>

#if defined(__linux__)
#include <linux/futex.h>
#include <sys/syscall.h>
#include <unistd.h>
#include <cerrno>
#include <climits>
#include <ctime>
// futex_waitv has the same number on every architecture (new syscalls are unified).
#if defined(SYS_futex_waitv)
inline constexpr long kSysFutexWaitv = SYS_futex_waitv;
#else
inline constexpr long kSysFutexWaitv = 449;
#endif
#endif

#include "records.hpp"
#include "shm.hpp"

#if defined(__x86_64__) || defined(__i386__)
#include <immintrin.h>
#define SOVEREIGN_CPU_RELAX() _mm_pause()
#elif defined(__aarch64__)
#define SOVEREIGN_CPU_RELAX() asm volatile("yield")
#else
#define SOVEREIGN_CPU_RELAX() ((void)0)
#endif

namespace sovereign {

inline constexpr size_t kCacheLine = 64;
inline constexpr uint64_t kRingMagic = 0x31474e4952565353ULL;  // "SSVRING1"

enum class FullPolicy : uint32_t { kWait = 0, kDrop = 1 };

static_assert(std::atomic<uint64_t>::is_always_lock_free,
              "rings need address-free 64-bit atomics to work across processes");

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

struct RingHeader {
  // Written once by the creator before `magic` is published; read-only afterwards.
  std::atomic<uint64_t> magic;
  uint32_t layout_version;
  uint32_t record_type;
  uint32_t record_size;
  uint32_t full_policy;
  uint64_t capacity;
  int32_t owner_pid;
  uint32_t reserved_;
  uint64_t owner_start_time;
  int64_t created_ns;
  // Producer's line.
  alignas(kCacheLine) std::atomic<uint64_t> head;
  std::atomic<uint64_t> dropped;
  std::atomic<uint64_t> full_waits;  // pushes that found the ring full and had to wait
  Doorbell records;                  // rung by the producer after a push; the consumer sleeps on it
  // Consumer's line.
  alignas(kCacheLine) std::atomic<uint64_t> tail;
  std::atomic<uint64_t> high_water;  // largest depth the consumer has observed
  Doorbell room;                     // rung by the consumer after a pop; a producer waiting for room sleeps on it
};
static_assert(offsetof(RingHeader, head) % kCacheLine == 0);
static_assert(offsetof(RingHeader, tail) - offsetof(RingHeader, head) >= kCacheLine);
static_assert(sizeof(RingHeader) == 3 * kCacheLine, "the doorbells fit in the index lines");
static_assert(std::atomic<uint32_t>::is_always_lock_free && sizeof(std::atomic<uint32_t>) == 4,
              "a doorbell's seq is a futex word");
inline constexpr size_t kRingDataOffset = (sizeof(RingHeader) + kCacheLine - 1) / kCacheLine * kCacheLine;

struct RingStats {
  uint64_t capacity, depth, pushed, popped, dropped, full_waits, high_water, late_wakes;
  int32_t owner_pid;
  FullPolicy full_policy;
};

// The consumer of several rings waits for the first record in any of them: the same
// doorbells, slept on together with futex_waitv (Linux 5.16+). Where the kernel lacks it,
// each sleep is a short nap instead (kFallbackNap): correct, only later and busier.
// `heads[i]` is ring i's header; the caller must be the consumer of every one (it writes
// their `waiting`). Returns true as soon as one has records; false at the timeout, when
// keep_waiting() says stop, or when woken with nothing to take (a kick: wake_consumer()).
// Callers loop, so a false return is never wrong, only early.
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

template <class Record>
class ShmRing {
  static_assert(std::is_trivially_copyable_v<Record>);

 public:
  // Creates the segment `name` and becomes its owner. Reclaims a stale segment left by
  // a dead owner (reclaimed() tells); refuses one whose owner is alive.
  static ShmRing create(const std::string& name, uint64_t capacity, FullPolicy policy) {
    if (capacity < 2 || (capacity & (capacity - 1)) != 0 || capacity > (1ULL << 32)) {
      throw std::invalid_argument("ring capacity must be a power of two in [2, 2^32], got " +
                                  std::to_string(capacity));
    }
    const size_t bytes = kRingDataOffset + capacity * sizeof(Record);
    ShmRing ring;
    for (int attempt = 0; attempt < 2; ++attempt) {
      ring.seg_ = ShmSegment::create(name, bytes);
      if (ring.seg_.valid()) break;
      reclaim_stale_segment<RingHeader>(name, kRingMagic, "ring");
      ring.reclaimed_ = true;
    }
    if (!ring.seg_.valid()) throw ShmError("ring '" + name + "' was re-created by another process");
    RingHeader* h = ring.header();
    const ProcessIdentity me = ProcessIdentity::self();
    h->layout_version = kLayoutVersion;
    h->record_type = Record::kTypeId;
    h->record_size = sizeof(Record);
    h->full_policy = static_cast<uint32_t>(policy);
    h->capacity = capacity;
    h->owner_pid = me.pid;
    h->owner_start_time = me.start_time;
    h->created_ns = std::chrono::duration_cast<std::chrono::nanoseconds>(
                        std::chrono::system_clock::now().time_since_epoch())
                        .count();
    h->magic.store(kRingMagic, std::memory_order_release);  // publishes the fields above
    ring.owner_ = true;
    ring.bind();
    return ring;
  }

  // Attaches to a ring another process created. Fails with a message naming the mismatch.
  static ShmRing attach(const std::string& name) {
    ShmRing ring;
    ring.seg_ = ShmSegment::open(name);
    std::string why = ring.incompatibility();
    if (!why.empty()) throw ShmError("cannot attach to ring '" + name + "': " + why);
    ring.bind();
    return ring;
  }

  ShmRing() = default;
  ShmRing(ShmRing&& o) noexcept { *this = std::move(o); }
  // Closes (and, if owned, unlinks) the ring this one held; the source gives up ownership.
  ShmRing& operator=(ShmRing&& o) noexcept {
    if (this == &o) return *this;
    close();
    seg_ = std::move(o.seg_);
    slots_ = o.slots_;
    capacity_ = o.capacity_;
    mask_ = o.mask_;
    policy_ = o.policy_;
    cached_tail_ = o.cached_tail_;
    cached_head_ = o.cached_head_;
    owner_ = std::exchange(o.owner_, false);
    reclaimed_ = o.reclaimed_;
    return *this;
  }
  ~ShmRing() { close(); }

  // Unmaps; the owner also unlinks the name (attached processes keep their mapping).
  void close() {
    if (!seg_.valid()) return;
    if (owner_) ShmSegment::unlink(seg_.name());
    seg_.unmap();
    owner_ = false;
  }

  // Producer. Pushes up to n records and returns how many went in. kDrop: never waits,
  // counts what did not fit as dropped. kWait: waits for room until all are in, the
  // timeout passes, or keep_waiting() says stop; nothing is counted as dropped.
  template <class KeepWaiting>
  size_t push(const Record* recs, size_t n, int64_t timeout_ns, KeepWaiting&& keep_waiting) {
    check_open();
    size_t done = try_push(recs, n);
    if (done == n) return n;
    RingHeader* h = header();
    if (policy_ == FullPolicy::kDrop) {
      h->dropped.store(h->dropped.load(std::memory_order_relaxed) + (n - done), std::memory_order_relaxed);
      return done;
    }
    h->full_waits.store(h->full_waits.load(std::memory_order_relaxed) + 1, std::memory_order_relaxed);
    wait_until(
        h->room,
        [&] {
          done += try_push(recs + done, n - done);
          return done == n;
        },
        timeout_ns, keep_waiting);
    return done;
  }

  // The part of push / pop that never waits: what fits goes in, what is there comes out
  // (no drop counted). The bindings call these with the GIL held and release it only to
  // wait: a thread that released it for every short call would queue behind any other
  // thread for the GIL (up to the switch interval) at every return.
  size_t push_now(const Record* recs, size_t n) {
    check_open();
    return try_push(recs, n);
  }
  size_t pop_now(Record* out, size_t max_n) {
    check_open();
    return try_pop(out, max_n);
  }

  // Consumer. Copies up to max_n records into out and returns the count. If the ring is
  // empty, waits up to timeout_ns for the first record (0: do not wait).
  template <class KeepWaiting>
  size_t pop(Record* out, size_t max_n, int64_t timeout_ns, KeepWaiting&& keep_waiting) {
    check_open();
    size_t got = try_pop(out, max_n);
    if (got > 0 || max_n == 0 || timeout_ns == 0) return got;
    wait_until(
        header()->records,
        [&] {
          got = try_pop(out, max_n);
          return got > 0;
        },
        timeout_ns, keep_waiting);
    return got;
  }

  RingStats stats() const {
    check_open();
    const RingHeader* h = header();
    // Load tail first: head only grows, so depth can never come out negative.
    uint64_t tail = h->tail.load(std::memory_order_acquire);
    uint64_t head = h->head.load(std::memory_order_acquire);
    return {capacity_,
            head - tail,
            head,
            tail,
            h->dropped.load(std::memory_order_relaxed),
            h->full_waits.load(std::memory_order_relaxed),
            h->high_water.load(std::memory_order_relaxed),
            h->records.late.load(std::memory_order_relaxed) + h->room.late.load(std::memory_order_relaxed),
            h->owner_pid,
            policy_};
  }

  const std::string& name() const { return seg_.name(); }
  // Wakes a consumer asleep on this ring (in pop or wait_for_records) without a record:
  // another thread of the consumer's process has something else for it. Rings the same
  // doorbell as a push; the seq is bumped atomically, so several ringers are fine.
  void wake_consumer() {
    check_open();
    Doorbell& d = header()->records;
    d.seq.fetch_add(1, std::memory_order_seq_cst);  // always: a waiter passing `since` sees it
    if (d.waiting.load(std::memory_order_seq_cst) != 0) futex_wake_all(&d.seq);
  }
  // The records doorbell's seq now: pass it as wait_for_records' `since`.
  uint32_t doorbell() const {
    check_open();
    return header()->records.seq.load(std::memory_order_acquire);
  }

  // For wait_for_records, by the ring's consumer only.
  RingHeader* shared_header() {
    check_open();
    return header();
  }
  uint64_t capacity() const { return capacity_; }
  bool owner() const { return owner_; }
  bool reclaimed() const { return reclaimed_; }
  bool is_open() const { return seg_.valid(); }

 private:
  RingHeader* header() const { return static_cast<RingHeader*>(seg_.data()); }

  void bind() {
    RingHeader* h = header();
    capacity_ = h->capacity;
    mask_ = capacity_ - 1;
    policy_ = static_cast<FullPolicy>(h->full_policy);
    slots_ = reinterpret_cast<Record*>(static_cast<char*>(seg_.data()) + kRingDataOffset);
    cached_tail_ = h->tail.load(std::memory_order_acquire);
    cached_head_ = h->head.load(std::memory_order_acquire);
  }

  void check_open() const {
    if (!seg_.valid()) throw std::logic_error("ring is closed");
  }

  // Why this segment is not a ring of Record at this layout version ("" if it is).
  std::string incompatibility() const {
    if (seg_.size() < kRingDataOffset) {
      return "segment is " + std::to_string(seg_.size()) + " bytes, smaller than a ring header";
    }
    const RingHeader* h = header();
    if (h->magic.load(std::memory_order_acquire) != kRingMagic) return "not a Sovereign ring (bad magic)";
    if (h->layout_version != kLayoutVersion) {
      return "layout version " + std::to_string(h->layout_version) + ", this build speaks " +
             std::to_string(kLayoutVersion);
    }
    if (h->record_type != Record::kTypeId || h->record_size != sizeof(Record)) {
      return "it carries records of type " + std::to_string(h->record_type) + " (" +
             std::to_string(h->record_size) + " bytes), expected type " + std::to_string(Record::kTypeId) +
             " (" + std::to_string(sizeof(Record)) + " bytes)";
    }
    uint64_t cap = h->capacity;
    if (cap < 2 || (cap & (cap - 1)) != 0 || seg_.size() < kRingDataOffset + cap * sizeof(Record)) {
      return "capacity " + std::to_string(cap) + " does not match the segment size";
    }
    return "";
  }

  size_t try_push(const Record* recs, size_t n) {
    RingHeader* h = header();
    const uint64_t head = h->head.load(std::memory_order_relaxed);  // we are its only writer
    if (head + n - cached_tail_ > capacity_) {
      cached_tail_ = h->tail.load(std::memory_order_acquire);  // see the consumer's copies done
    }
    size_t room = static_cast<size_t>(capacity_ - (head - cached_tail_));
    size_t k = n < room ? n : room;
    if (k == 0) return 0;
    copy_in(head, recs, k);
    h->head.store(head + k, std::memory_order_release);  // publishes the records
    ring_doorbell(h->records);
    return k;
  }

  size_t try_pop(Record* out, size_t max_n) {
    RingHeader* h = header();
    const uint64_t tail = h->tail.load(std::memory_order_relaxed);  // we are its only writer
    if (cached_head_ - tail < max_n) {
      cached_head_ = h->head.load(std::memory_order_acquire);  // see the producer's records
      uint64_t depth = cached_head_ - tail;
      if (depth > h->high_water.load(std::memory_order_relaxed)) {
        h->high_water.store(depth, std::memory_order_relaxed);
      }
    }
    size_t avail = static_cast<size_t>(cached_head_ - tail);
    size_t k = max_n < avail ? max_n : avail;
    if (k == 0) return 0;
    copy_out(tail, out, k);
    h->tail.store(tail + k, std::memory_order_release);  // hands the slots back
    ring_doorbell(h->room);
    return k;
  }

  void copy_in(uint64_t at, const Record* src, size_t k) {
    size_t slot = static_cast<size_t>(at & mask_);
    size_t first = k < capacity_ - slot ? k : static_cast<size_t>(capacity_ - slot);
    std::memcpy(slots_ + slot, src, first * sizeof(Record));
    if (first < k) std::memcpy(slots_, src + first, (k - first) * sizeof(Record));
  }

  void copy_out(uint64_t at, Record* dst, size_t k) const {
    size_t slot = static_cast<size_t>(at & mask_);
    size_t first = k < capacity_ - slot ? k : static_cast<size_t>(capacity_ - slot);
    std::memcpy(dst, slots_ + slot, first * sizeof(Record));
    if (first < k) std::memcpy(dst + first, slots_, (k - first) * sizeof(Record));
  }

  ShmSegment seg_;
  Record* slots_ = nullptr;
  uint64_t capacity_ = 0;
  uint64_t mask_ = 0;
  FullPolicy policy_ = FullPolicy::kWait;
  uint64_t cached_tail_ = 0;  // producer's view of tail
  uint64_t cached_head_ = 0;  // consumer's view of head
  bool owner_ = false;
  bool reclaimed_ = false;
};

}  // namespace sovereign
