// POSIX shared-memory segments, and the identity of the process that owns one.
//
// A segment is created by exactly one owner, which unlinks it on close. A crashed owner
// leaves its segment behind; ProcessIdentity lets the next creator tell a live owner from
// a dead one (pid plus the kernel's start time, so a recycled pid is not mistaken for it).
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#include <atomic>
#include <cerrno>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <utility>

namespace sovereign {

class ShmError : public std::runtime_error {
  using std::runtime_error::runtime_error;
};

struct ProcessIdentity {
  int32_t pid = 0;
  uint64_t start_time = 0;  // field 22 of /proc/<pid>/stat, in clock ticks since boot

  static ProcessIdentity self() { return of(static_cast<int32_t>(::getpid())); }

  // The identity of a running process, or {pid, 0} when it cannot be read (gone).
  static ProcessIdentity of(int32_t pid) {
    std::ifstream stat("/proc/" + std::to_string(pid) + "/stat");
    std::string text((std::istreambuf_iterator<char>(stat)), std::istreambuf_iterator<char>());
    // The command name (field 2) may contain spaces and parentheses: skip to the last ')'.
    auto close = text.rfind(')');
    if (close == std::string::npos) return {pid, 0};
    std::istringstream fields(text.substr(close + 2));
    std::string field;
    for (int i = 3; i <= 22 && (fields >> field); ++i) {
      if (i == 22) return {pid, std::stoull(field)};
    }
    return {pid, 0};
  }

  bool alive() const {
    if (pid <= 0) return false;
    if (::kill(pid, 0) != 0 && errno == ESRCH) return false;
    return of(pid).start_time == start_time;
  }
};

inline std::string shm_path(const std::string& name) {
  if (name.empty() || name.size() > 200) {
    throw std::invalid_argument("shared-memory name must be 1..200 characters, got " +
                                std::to_string(name.size()));
  }
  for (char c : name) {
    bool ok = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '_' ||
              c == '-' || c == '.';
    if (!ok) {
      throw std::invalid_argument("shared-memory name '" + name +
                                  "' may only contain letters, digits, '_', '-' and '.'");
    }
  }
  return "/" + name;
}

// A mapped POSIX shared-memory object. Move-only; unmaps on destruction.
class ShmSegment {
 public:
  ShmSegment() = default;
  ShmSegment(ShmSegment&& o) noexcept { *this = std::move(o); }
  ShmSegment& operator=(ShmSegment&& o) noexcept {
    std::swap(name_, o.name_);
    std::swap(data_, o.data_);
    std::swap(size_, o.size_);
    return *this;
  }
  ShmSegment(const ShmSegment&) = delete;
  ShmSegment& operator=(const ShmSegment&) = delete;
  ~ShmSegment() { unmap(); }

  // Creates a new segment of `size` bytes, zero-filled, its pages reserved: a /dev/shm
  // too small fails here with ENOSPC, not later with SIGBUS in whichever process first
  // touches a page tmpfs cannot give. Returns an empty segment (no throw) if one of that
  // name already exists, so the caller can inspect and reclaim it.
  static ShmSegment create(const std::string& name, size_t size) {
    std::string path = shm_path(name);
    int fd = ::shm_open(path.c_str(), O_RDWR | O_CREAT | O_EXCL, 0600);
    if (fd < 0 && errno == EEXIST) return ShmSegment();
    if (fd < 0) fail("create", name);
    const char* step = nullptr;
    if (::ftruncate(fd, static_cast<off_t>(size)) != 0) {
      step = "size";
    } else if (int err = ::posix_fallocate(fd, 0, static_cast<off_t>(size));
               err != 0 && err != EOPNOTSUPP && err != EINVAL) {  // those two: no reservation here
      errno = err;
      step = "reserve the pages of";
    }
    if (step != nullptr) {
      int err = errno;
      ::close(fd);
      ::shm_unlink(path.c_str());
      errno = err;
      throw ShmError("cannot " + std::string(step) + " shared-memory segment '" + name + "' (" +
                     std::to_string(size) + " bytes): " + std::strerror(err));
    }
    return map(fd, name, size);
  }

  // Maps an existing segment whole. Throws ShmError if there is none of that name.
  static ShmSegment open(const std::string& name) {
    int fd = ::shm_open(shm_path(name).c_str(), O_RDWR, 0);
    if (fd < 0) fail("open", name);
    struct stat st{};
    if (::fstat(fd, &st) != 0) {
      ::close(fd);
      fail("stat", name);
    }
    // Only a segment of this user that nobody else may reach is ours: another user's (one
    // planted under a name it guessed) would let them feed or steer the engine.
    if (st.st_uid != ::geteuid() || (st.st_mode & 077) != 0) {
      ::close(fd);
      throw ShmError("shared-memory segment '" + name + "' is owned by uid " + std::to_string(st.st_uid) +
                     " with mode " + octal(st.st_mode & 0777) + ": only one of uid " +
                     std::to_string(::geteuid()) + " with mode 600 is trusted");
    }
    if (st.st_size == 0) {
      ::close(fd);
      throw ShmError("shared-memory segment '" + name + "' is empty (not initialised)");
    }
    return map(fd, name, static_cast<size_t>(st.st_size));
  }

  static void unlink(const std::string& name) { ::shm_unlink(shm_path(name).c_str()); }

  bool valid() const { return data_ != nullptr; }
  void* data() const { return data_; }
  size_t size() const { return size_; }
  const std::string& name() const { return name_; }

  void unmap() {
    if (data_ != nullptr) ::munmap(data_, size_);
    data_ = nullptr;
    size_ = 0;
  }

 private:
  static ShmSegment map(int fd, const std::string& name, size_t size) {
    void* p = ::mmap(nullptr, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    int err = errno;
    ::close(fd);  // the mapping keeps the object alive
    if (p == MAP_FAILED) {
      errno = err;
      fail("map", name);
    }
    ShmSegment s;
    s.name_ = name;
    s.data_ = p;
    s.size_ = size;
    return s;
  }

  static std::string octal(unsigned mode) {
    char buf[8];
    std::snprintf(buf, sizeof buf, "%o", mode);
    return buf;
  }

  [[noreturn]] static void fail(const char* what, const std::string& name) {
    throw ShmError("cannot " + std::string(what) + " shared-memory segment '" + name +
                   "': " + std::strerror(errno));
  }

  std::string name_;
  void* data_ = nullptr;
  size_t size_ = 0;
};

// Before re-creating `name`: removes the segment already there if its owner is dead (or
// it is not a finished segment of this kind, e.g. a creator that died half-way); throws
// if a live process owns it. Header needs `magic` (an atomic), `owner_pid` and
// `owner_start_time`; `what` names the kind in the error ("ring", "quote board").
template <class Header>
void reclaim_stale_segment(const std::string& name, uint64_t magic, const char* what) {
  ShmSegment seg;
  try {
    seg = ShmSegment::open(name);
  } catch (const ShmError&) {
    ShmSegment::unlink(name);  // empty or vanished: nothing to preserve
    return;
  }
  if (seg.size() >= sizeof(Header)) {
    const auto* h = static_cast<const Header*>(seg.data());
    ProcessIdentity owner{h->owner_pid, h->owner_start_time};
    if (h->magic.load(std::memory_order_acquire) == magic && owner.alive()) {
      throw ShmError(std::string(what) + " '" + name + "' already exists and its owner (pid " +
                     std::to_string(owner.pid) + ") is alive");
    }
  }
  ShmSegment::unlink(name);
}

}  // namespace sovereign
