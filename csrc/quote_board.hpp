// QuoteBoard: the latest bid/ask of every symbol in POSIX shared memory, one slot per
// symbol, written only by the gateway and read by anyone (risk, the CLI) under a seqlock.
//
// Contract: exactly one writer process (the creator). Readers never block the writer;
// a read that overlaps a write retries, so a reader sees each slot's fields from one
// tick, never a torn mix. Slot fields are relaxed atomics (not plain doubles) so that
// the concurrent access is defined behaviour, and cost nothing extra on x86-64.
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <cstring>
#include <string>

#include "records.hpp"
#include "shm.hpp"

namespace sovereign {

inline constexpr uint64_t kBoardMagic = 0x3144524f42565353ULL;  // "SSVBORD1"

struct Quote {
  int64_t ts_ns;  // 0: no tick yet
  double bid;
  double ask;
  int64_t recv_ns;
};

struct BoardHeader {
  std::atomic<uint64_t> magic;  // published last by the creator
  uint32_t layout_version;
  uint32_t n_symbols;
  int32_t owner_pid;
  uint32_t reserved_;
  uint64_t owner_start_time;
  std::atomic<uint64_t> updates;  // ticks published (monitoring)
};

// 64 bytes: one cache line per symbol, so the writer of one slot never invalidates
// a reader's line of another.
struct alignas(64) BoardSlot {
  std::atomic<uint64_t> seq;  // odd while the writer is inside
  std::atomic<int64_t> ts_ns;
  std::atomic<uint64_t> bid_bits, ask_bits;
  std::atomic<int64_t> recv_ns;
};
static_assert(sizeof(BoardSlot) == 64);
inline constexpr size_t kBoardDataOffset = 64;
static_assert(sizeof(BoardHeader) <= kBoardDataOffset);

class QuoteBoard {
 public:
  // Creates the board for symbols 0..n_symbols-1 and owns it (unlinks on close). A board
  // left by a dead owner is reclaimed; one whose owner is alive is refused.
  static QuoteBoard create(const std::string& name, uint32_t n_symbols) {
    if (n_symbols == 0 || n_symbols > (1u << 20)) {
      throw std::invalid_argument("quote board needs 1..2^20 symbols, got " + std::to_string(n_symbols));
    }
    const size_t bytes = bytes_for(n_symbols);
    QuoteBoard b;
    b.seg_ = ShmSegment::create(name, bytes);
    if (!b.seg_.valid()) {
      reclaim_stale_segment<BoardHeader>(name, kBoardMagic, "quote board");
      b.seg_ = ShmSegment::create(name, bytes);
      if (!b.seg_.valid()) throw ShmError("quote board '" + name + "' was re-created by another process");
    }
    BoardHeader* h = b.header();
    const ProcessIdentity me = ProcessIdentity::self();
    h->layout_version = kLayoutVersion;
    h->n_symbols = n_symbols;
    h->owner_pid = me.pid;
    h->owner_start_time = me.start_time;
    h->magic.store(kBoardMagic, std::memory_order_release);
    b.owner_ = true;
    b.bind();
    return b;
  }

  // The shared memory a board of `n_symbols` takes.
  static size_t bytes_for(uint32_t n_symbols) {
    return kBoardDataOffset + size_t{n_symbols} * sizeof(BoardSlot);
  }

  static QuoteBoard attach(const std::string& name) {
    QuoteBoard b;
    b.seg_ = ShmSegment::open(name);
    const auto* h = b.header();
    if (b.seg_.size() < kBoardDataOffset || h->magic.load(std::memory_order_acquire) != kBoardMagic) {
      throw ShmError("cannot attach to quote board '" + name + "': not a Sovereign quote board");
    }
    if (h->layout_version != kLayoutVersion) {
      throw ShmError("cannot attach to quote board '" + name + "': layout version " +
                     std::to_string(h->layout_version) + ", this build speaks " +
                     std::to_string(kLayoutVersion));
    }
    if (b.seg_.size() < kBoardDataOffset + size_t{h->n_symbols} * sizeof(BoardSlot)) {
      throw ShmError("cannot attach to quote board '" + name + "': segment smaller than its symbols");
    }
    b.bind();
    return b;
  }

  QuoteBoard() = default;
  QuoteBoard(QuoteBoard&& o) noexcept { *this = std::move(o); }
  QuoteBoard& operator=(QuoteBoard&& o) noexcept {
    if (this == &o) return *this;
    close();
    seg_ = std::move(o.seg_);
    slots_ = o.slots_;
    n_ = o.n_;
    owner_ = std::exchange(o.owner_, false);
    return *this;
  }
  ~QuoteBoard() { close(); }

  void close() {
    if (!seg_.valid()) return;
    if (owner_) ShmSegment::unlink(seg_.name());
    seg_.unmap();
    owner_ = false;
  }

  // Writer: each tick overwrites its symbol's slot, in order (the last tick of a batch
  // wins). Ticks for symbols beyond the board are skipped, and so is a tick older than the
  // one its slot holds: a symbol's quote never goes back in time. (A restarted gateway
  // gives the ticks after the broker's durable mark again, some of which the board had
  // already shown: republished, risk would mark at older prices.) Returns the ticks
  // published.
  size_t publish(const Tick* ticks, size_t n) {
    check_open();
    size_t skipped = 0;
    for (size_t i = 0; i < n; ++i) {
      const Tick& t = ticks[i];
      if (t.symbol >= n_) {
        ++skipped;
        continue;
      }
      BoardSlot& s = slots_[t.symbol];
      if (t.ts_ns < s.ts_ns.load(std::memory_order_relaxed)) {  // we are its only writer
        ++skipped;
        continue;
      }
      const uint64_t seq = s.seq.load(std::memory_order_relaxed);  // we are its only writer
      s.seq.store(seq + 1, std::memory_order_relaxed);
      std::atomic_thread_fence(std::memory_order_release);  // odd seq before the fields
      s.ts_ns.store(t.ts_ns, std::memory_order_relaxed);
      s.bid_bits.store(bits(t.bid), std::memory_order_relaxed);
      s.ask_bits.store(bits(t.ask), std::memory_order_relaxed);
      s.recv_ns.store(t.recv_ns, std::memory_order_relaxed);
      s.seq.store(seq + 2, std::memory_order_release);  // fields before the even seq
    }
    auto* h = header();
    h->updates.store(h->updates.load(std::memory_order_relaxed) + (n - skipped), std::memory_order_relaxed);
    return n - skipped;
  }

  // Reader: a consistent copy of one slot.
  Quote read(uint32_t symbol) const {
    check_open();
    if (symbol >= n_) throw std::out_of_range("symbol " + std::to_string(symbol) + " is not on the board");
    const BoardSlot& s = slots_[symbol];
    for (;;) {
      const uint64_t before = s.seq.load(std::memory_order_acquire);
      if (before & 1) continue;  // a write is in progress; it takes nanoseconds
      Quote q{s.ts_ns.load(std::memory_order_relaxed), from_bits(s.bid_bits.load(std::memory_order_relaxed)),
              from_bits(s.ask_bits.load(std::memory_order_relaxed)),
              s.recv_ns.load(std::memory_order_relaxed)};
      std::atomic_thread_fence(std::memory_order_acquire);  // the fields before the re-check
      if (s.seq.load(std::memory_order_relaxed) == before) return q;
    }
  }

  // The newest quote time on the board (0: none yet): risk's market clock. Each ts_ns is
  // one aligned word, so it needs no seqlock on its own.
  int64_t newest_ts() const {
    check_open();
    int64_t newest = 0;
    for (uint32_t s = 0; s < n_; ++s) {
      const int64_t ts = slots_[s].ts_ns.load(std::memory_order_relaxed);
      if (ts > newest) newest = ts;
    }
    return newest;
  }

  uint32_t n_symbols() const { return n_; }
  uint64_t updates() const { return header()->updates.load(std::memory_order_relaxed); }
  bool owner() const { return owner_; }
  bool is_open() const { return seg_.valid(); }
  const std::string& name() const { return seg_.name(); }

 private:
  static uint64_t bits(double d) {
    uint64_t u;
    std::memcpy(&u, &d, sizeof u);
    return u;
  }
  static double from_bits(uint64_t u) {
    double d;
    std::memcpy(&d, &u, sizeof d);
    return d;
  }
  BoardHeader* header() const { return static_cast<BoardHeader*>(seg_.data()); }
  void bind() {
    n_ = header()->n_symbols;
    slots_ = reinterpret_cast<BoardSlot*>(static_cast<char*>(seg_.data()) + kBoardDataOffset);
  }
  void check_open() const {
    if (!seg_.valid()) throw std::logic_error("quote board is closed");
  }
  ShmSegment seg_;
  BoardSlot* slots_ = nullptr;
  uint32_t n_ = 0;
  bool owner_ = false;
};

}  // namespace sovereign
