/* clockshift: a wall clock stepped for one system alone, as NTP steps a host's (bench/soak.py).

   LD_PRELOAD=libclockshift.so SOV_CLOCKSHIFT=<file>: CLOCK_REALTIME (and its coarse and TAI
   variants, gettimeofday, time) of this process and every child it starts reads the real
   clock plus the signed 64-bit nanoseconds at the start of <file>, which the soak rewrites
   to step it. CLOCK_MONOTONIC and BOOTTIME are never touched: NTP does not move them, and
   every sleep and timeout here is by them (libfaketime 0.9.10 could not leave them alone
   without breaking Python's sleep, which is why this exists).

   The file is mapped once (8 bytes, shared): a step is one aligned 8-byte store, seen by the
   next clock read in every process. No file, or an unreadable one: the real clock. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <fcntl.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

typedef int (*clock_gettime_fn)(clockid_t, struct timespec *);

static clock_gettime_fn real_clock_gettime;
static _Atomic int64_t *offset_ns;

__attribute__((constructor)) static void clockshift_init(void) {
  real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
  const char *path = getenv("SOV_CLOCKSHIFT");
  if (path == NULL) return;
  int fd = open(path, O_RDONLY | O_CLOEXEC);
  if (fd < 0) return;
  void *p = mmap(NULL, sizeof(int64_t), PROT_READ, MAP_SHARED, fd, 0);
  close(fd);
  if (p != MAP_FAILED) offset_ns = (_Atomic int64_t *)p;
}

static int64_t shift(void) {
  return offset_ns != NULL ? atomic_load_explicit(offset_ns, memory_order_relaxed) : 0;
}

static int is_wall(clockid_t clk) {
  return clk == CLOCK_REALTIME || clk == CLOCK_REALTIME_COARSE || clk == CLOCK_TAI;
}

int clock_gettime(clockid_t clk, struct timespec *ts) {
  if (real_clock_gettime == NULL) real_clock_gettime = (clock_gettime_fn)dlsym(RTLD_NEXT, "clock_gettime");
  int rc = real_clock_gettime(clk, ts);
  if (rc == 0 && is_wall(clk)) {
    int64_t ns = (int64_t)ts->tv_sec * 1000000000 + ts->tv_nsec + shift();
    int64_t sec = ns / 1000000000, rem = ns % 1000000000;
    if (rem < 0) rem += 1000000000, sec -= 1;
    ts->tv_sec = (time_t)sec;
    ts->tv_nsec = (long)rem;
  }
  return rc;
}

#pragma GCC diagnostic ignored "-Wnonnull-compare" /* glibc declares tv nonnull; a caller may not know */
int gettimeofday(struct timeval *tv, void *tz) {
  (void)tz;
  struct timespec ts;
  int rc = clock_gettime(CLOCK_REALTIME, &ts);
  if (rc == 0 && tv != NULL) {
    tv->tv_sec = ts.tv_sec;
    tv->tv_usec = ts.tv_nsec / 1000;
  }
  return rc;
}

time_t time(time_t *out) {
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  if (out != NULL) *out = ts.tv_sec;
  return ts.tv_sec;
}
