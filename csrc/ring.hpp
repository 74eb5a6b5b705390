// ShmRing<Record>: a lock-free single-producer single-consumer ring of fixed-size records.
//
// Contract
// - The ring lives in POSIX shared memory, shared by two processes (DESIGN.md section 2).
//   Exactly one process pushes and one pops. A third process may attach to read stats().
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
//   sleeps on a futex doorbell (futex.hpp) that the other side rings after each push / pop.
//   A consumer of several rings waits on all of them at once (ring_wait.hpp).
// - The creator owns the segment and unlinks it on close. A segment whose owner died is
//   reclaimed by the next create of the same name; one whose owner lives is refused.
#pragma once

#include <atomic>
#include <chrono>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <type_traits>
#include <utility>

#include "futex.hpp"
#include "records.hpp"
#include "shm.hpp"

namespace sovereign {

inline constexpr size_t kCacheLine = 64;
inline constexpr uint64_t kRingMagic = 0x31474e4952565353ULL;  // "SSVRING1"

enum class FullPolicy : uint32_t { kWait = 0, kDrop = 1 };

static_assert(std::atomic<uint64_t>::is_always_lock_free,
              "rings need address-free 64-bit atomics to work across processes");

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
  Doorbell room;                     // rung by the consumer after a pop; a producer waiting for
                                     // room sleeps on it
};
static_assert(offsetof(RingHeader, head) % kCacheLine == 0);
static_assert(offsetof(RingHeader, tail) - offsetof(RingHeader, head) >= kCacheLine);
static_assert(sizeof(RingHeader) == 3 * kCacheLine, "the doorbells fit in the index lines");
inline constexpr size_t kRingDataOffset = (sizeof(RingHeader) + kCacheLine - 1) / kCacheLine * kCacheLine;

struct RingStats {
  uint64_t capacity, depth, pushed, popped, dropped, full_waits, high_water, late_wakes;
  int32_t owner_pid;
  FullPolicy full_policy;
};

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
    const size_t bytes = bytes_for(capacity);
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

  // The shared memory a ring of `capacity` records takes.
  static size_t bytes_for(uint64_t capacity) { return kRingDataOffset + capacity * sizeof(Record); }

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
