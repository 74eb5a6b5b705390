/* sovbridge: one source, two builds (Linux .so: both faces; Windows DLL: the terminal
 * face). The contract is in sovbridge.h; this file holds the file layout, the rings and
 * the operating-system layer (POSIX mmap, or CreateFileW + CreateFileMappingW). */
#ifndef _WIN32
#define _GNU_SOURCE /* O_NOFOLLOW, O_CLOEXEC, fchmod, posix_fallocate under -std=c11 */
#endif
#include "sovbridge.h"

#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>

#ifdef _WIN32
#include <windows.h>
#else
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>
#endif

/* ---- the file */

static const char SB_MAGIC[8] = {'S', 'O', 'V', 'B', 'R', 'D', 'G', '\0'};
#define SB_LINE 64
#define SB_SIDE_TERMINAL 0
#define SB_SIDE_ENGINE 1

typedef struct sb_ring_geom {
  uint64_t offset; /* of the ring's control block from the start of the file */
  uint32_t capacity, record_size;
} sb_ring_geom;

/* One side's heartbeat, on a cache line of its own (one writer). */
typedef struct sb_beat_line {
  uint64_t counter;
  int64_t time_ns; /* wall clock, Unix ns: for people; liveness uses the counter */
  uint32_t pid, state;
  uint8_t pad[SB_LINE - 24];
} sb_beat_line;

typedef struct sb_file_header {
  char magic[8];
  uint32_t abi_version, header_size;
  uint64_t file_size, epoch;
  uint32_t state, n_rings; /* state: SB_FILE_*, published last (release) */
  sb_ring_geom rings[SB_N_RINGS];
  uint8_t pad[256 - 40 - SB_N_RINGS * sizeof(sb_ring_geom)];
  sb_beat_line beat[2]; /* [SB_SIDE_TERMINAL], [SB_SIDE_ENGINE] */
} sb_file_header;

/* A ring's control: the producer's line (head, full count) and the consumer's (tail,
 * skipped count), apart so the two sides never write one cache line. */
typedef struct sb_ring_ctl {
  uint64_t head, full;
  uint8_t pad1[SB_LINE - 16];
  uint64_t tail, corrupt_skipped;
  uint8_t pad2[SB_LINE - 16];
} sb_ring_ctl;

/* A slot: the index it was written for, a CRC32 over that index and the record, the
 * record's size; the record follows. */
typedef struct sb_slot {
  uint64_t seq;
  uint32_t crc, size;
} sb_slot;

_Static_assert(sizeof(sb_file_header) == 384, "header layout");
_Static_assert(sizeof(sb_ring_ctl) == 2 * SB_LINE, "ring control layout");
_Static_assert(sizeof(sb_tick) == 80, "sb_tick layout");
_Static_assert(sizeof(sb_spec) == 136, "sb_spec layout");
_Static_assert(sizeof(sb_account) == 104, "sb_account layout");
_Static_assert(sizeof(sb_request) == 160, "sb_request layout");
_Static_assert(sizeof(sb_result) == 144, "sb_result layout");
_Static_assert(sizeof(sb_deal) == 160, "sb_deal layout");
_Static_assert(sizeof(sb_position) == 152, "sb_position layout");

typedef struct sb_ring_kind {
  const char* name;
  uint32_t record_size, capacity;
  int producer;           /* SB_SIDE_* that pushes */
  uint16_t strings[4][2]; /* (offset, length) of each char array that must hold a NUL */
} sb_ring_kind;

#define STR(type, field) {(uint16_t)offsetof(type, field), (uint16_t)sizeof(((type*)0)->field)}
static const sb_ring_kind RINGS[SB_N_RINGS] = {
    {"ticks", sizeof(sb_tick), 1u << 16, SB_SIDE_TERMINAL, {STR(sb_tick, symbol)}},
    {"specs",
     sizeof(sb_spec),
     1u << 10,
     SB_SIDE_TERMINAL,
     {STR(sb_spec, symbol), STR(sb_spec, currency_base), STR(sb_spec, currency_profit),
      STR(sb_spec, currency_margin)}},
    {"account",
     sizeof(sb_account),
     1u << 6,
     SB_SIDE_TERMINAL,
     {STR(sb_account, currency), STR(sb_account, server)}},
    {"results", sizeof(sb_result), 1u << 12, SB_SIDE_TERMINAL, {STR(sb_result, comment)}},
    {"deals", sizeof(sb_deal), 1u << 14, SB_SIDE_TERMINAL, {STR(sb_deal, symbol), STR(sb_deal, comment)}},
    {"positions",
     sizeof(sb_position),
     1u << 12,
     SB_SIDE_TERMINAL,
     {STR(sb_position, symbol), STR(sb_position, comment)}},
    {"requests",
     sizeof(sb_request),
     1u << 12,
     SB_SIDE_ENGINE,
     {STR(sb_request, symbol), STR(sb_request, comment)}},
};

static uint64_t slot_stride(uint32_t record_size) { return (sizeof(sb_slot) + record_size + 7) & ~7ull; }

static uint64_t ring_bytes(const sb_ring_kind* k) {
  uint64_t b = sizeof(sb_ring_ctl) + (uint64_t)k->capacity * slot_stride(k->record_size);
  return (b + SB_LINE - 1) & ~(uint64_t)(SB_LINE - 1);
}

/* ---- CRC32 (IEEE, reflected), table-driven */

static const uint32_t CRC_TABLE[256] = {
    0x00000000u, 0x77073096u, 0xee0e612cu, 0x990951bau, 0x076dc419u, 0x706af48fu, 0xe963a535u, 0x9e6495a3u,
    0x0edb8832u, 0x79dcb8a4u, 0xe0d5e91eu, 0x97d2d988u, 0x09b64c2bu, 0x7eb17cbdu, 0xe7b82d07u, 0x90bf1d91u,
    0x1db71064u, 0x6ab020f2u, 0xf3b97148u, 0x84be41deu, 0x1adad47du, 0x6ddde4ebu, 0xf4d4b551u, 0x83d385c7u,
    0x136c9856u, 0x646ba8c0u, 0xfd62f97au, 0x8a65c9ecu, 0x14015c4fu, 0x63066cd9u, 0xfa0f3d63u, 0x8d080df5u,
    0x3b6e20c8u, 0x4c69105eu, 0xd56041e4u, 0xa2677172u, 0x3c03e4d1u, 0x4b04d447u, 0xd20d85fdu, 0xa50ab56bu,
    0x35b5a8fau, 0x42b2986cu, 0xdbbbc9d6u, 0xacbcf940u, 0x32d86ce3u, 0x45df5c75u, 0xdcd60dcfu, 0xabd13d59u,
    0x26d930acu, 0x51de003au, 0xc8d75180u, 0xbfd06116u, 0x21b4f4b5u, 0x56b3c423u, 0xcfba9599u, 0xb8bda50fu,
    0x2802b89eu, 0x5f058808u, 0xc60cd9b2u, 0xb10be924u, 0x2f6f7c87u, 0x58684c11u, 0xc1611dabu, 0xb6662d3du,
    0x76dc4190u, 0x01db7106u, 0x98d220bcu, 0xefd5102au, 0x71b18589u, 0x06b6b51fu, 0x9fbfe4a5u, 0xe8b8d433u,
    0x7807c9a2u, 0x0f00f934u, 0x9609a88eu, 0xe10e9818u, 0x7f6a0dbbu, 0x086d3d2du, 0x91646c97u, 0xe6635c01u,
    0x6b6b51f4u, 0x1c6c6162u, 0x856530d8u, 0xf262004eu, 0x6c0695edu, 0x1b01a57bu, 0x8208f4c1u, 0xf50fc457u,
    0x65b0d9c6u, 0x12b7e950u, 0x8bbeb8eau, 0xfcb9887cu, 0x62dd1ddfu, 0x15da2d49u, 0x8cd37cf3u, 0xfbd44c65u,
    0x4db26158u, 0x3ab551ceu, 0xa3bc0074u, 0xd4bb30e2u, 0x4adfa541u, 0x3dd895d7u, 0xa4d1c46du, 0xd3d6f4fbu,
    0x4369e96au, 0x346ed9fcu, 0xad678846u, 0xda60b8d0u, 0x44042d73u, 0x33031de5u, 0xaa0a4c5fu, 0xdd0d7cc9u,
    0x5005713cu, 0x270241aau, 0xbe0b1010u, 0xc90c2086u, 0x5768b525u, 0x206f85b3u, 0xb966d409u, 0xce61e49fu,
    0x5edef90eu, 0x29d9c998u, 0xb0d09822u, 0xc7d7a8b4u, 0x59b33d17u, 0x2eb40d81u, 0xb7bd5c3bu, 0xc0ba6cadu,
    0xedb88320u, 0x9abfb3b6u, 0x03b6e20cu, 0x74b1d29au, 0xead54739u, 0x9dd277afu, 0x04db2615u, 0x73dc1683u,
    0xe3630b12u, 0x94643b84u, 0x0d6d6a3eu, 0x7a6a5aa8u, 0xe40ecf0bu, 0x9309ff9du, 0x0a00ae27u, 0x7d079eb1u,
    0xf00f9344u, 0x8708a3d2u, 0x1e01f268u, 0x6906c2feu, 0xf762575du, 0x806567cbu, 0x196c3671u, 0x6e6b06e7u,
    0xfed41b76u, 0x89d32be0u, 0x10da7a5au, 0x67dd4accu, 0xf9b9df6fu, 0x8ebeeff9u, 0x17b7be43u, 0x60b08ed5u,
    0xd6d6a3e8u, 0xa1d1937eu, 0x38d8c2c4u, 0x4fdff252u, 0xd1bb67f1u, 0xa6bc5767u, 0x3fb506ddu, 0x48b2364bu,
    0xd80d2bdau, 0xaf0a1b4cu, 0x36034af6u, 0x41047a60u, 0xdf60efc3u, 0xa867df55u, 0x316e8eefu, 0x4669be79u,
    0xcb61b38cu, 0xbc66831au, 0x256fd2a0u, 0x5268e236u, 0xcc0c7795u, 0xbb0b4703u, 0x220216b9u, 0x5505262fu,
    0xc5ba3bbeu, 0xb2bd0b28u, 0x2bb45a92u, 0x5cb36a04u, 0xc2d7ffa7u, 0xb5d0cf31u, 0x2cd99e8bu, 0x5bdeae1du,
    0x9b64c2b0u, 0xec63f226u, 0x756aa39cu, 0x026d930au, 0x9c0906a9u, 0xeb0e363fu, 0x72076785u, 0x05005713u,
    0x95bf4a82u, 0xe2b87a14u, 0x7bb12baeu, 0x0cb61b38u, 0x92d28e9bu, 0xe5d5be0du, 0x7cdcefb7u, 0x0bdbdf21u,
    0x86d3d2d4u, 0xf1d4e242u, 0x68ddb3f8u, 0x1fda836eu, 0x81be16cdu, 0xf6b9265bu, 0x6fb077e1u, 0x18b74777u,
    0x88085ae6u, 0xff0f6a70u, 0x66063bcau, 0x11010b5cu, 0x8f659effu, 0xf862ae69u, 0x616bffd3u, 0x166ccf45u,
    0xa00ae278u, 0xd70dd2eeu, 0x4e048354u, 0x3903b3c2u, 0xa7672661u, 0xd06016f7u, 0x4969474du, 0x3e6e77dbu,
    0xaed16a4au, 0xd9d65adcu, 0x40df0b66u, 0x37d83bf0u, 0xa9bcae53u, 0xdebb9ec5u, 0x47b2cf7fu, 0x30b5ffe9u,
    0xbdbdf21cu, 0xcabac28au, 0x53b39330u, 0x24b4a3a6u, 0xbad03605u, 0xcdd70693u, 0x54de5729u, 0x23d967bfu,
    0xb3667a2eu, 0xc4614ab8u, 0x5d681b02u, 0x2a6f2b94u, 0xb40bbe37u, 0xc30c8ea1u, 0x5a05df1bu, 0x2d02ef8du,
};

static uint32_t crc32_update(uint32_t crc, const uint8_t* p, size_t n) {
  while (n--) crc = CRC_TABLE[(crc ^ *p++) & 0xffu] ^ (crc >> 8);
  return crc;
}

static uint32_t slot_crc(uint64_t seq, const void* rec, uint32_t size) {
  uint8_t s[8];
  memcpy(s, &seq, sizeof s);
  uint32_t crc = crc32_update(0xffffffffu, s, sizeof s);
  return ~crc32_update(crc, (const uint8_t*)rec, size);
}

/* ---- clocks */

static int64_t wall_ns(void) {
#ifdef _WIN32
  FILETIME ft;
  GetSystemTimePreciseAsFileTime(&ft);
  uint64_t t = ((uint64_t)ft.dwHighDateTime << 32) | ft.dwLowDateTime; /* 100 ns since 1601 */
  return (int64_t)(t - 116444736000000000ull) * 100;
#else
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
#endif
}

static int64_t mono_ms(void) {
#ifdef _WIN32
  return (int64_t)GetTickCount64();
#else
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
#endif
}

static uint32_t own_pid(void) {
#ifdef _WIN32
  return (uint32_t)GetCurrentProcessId();
#else
  return (uint32_t)getpid();
#endif
}

/* ---- handles */

typedef struct sb_bridge {
  uint64_t nonce;
  int side;
  uint8_t* base;
  uint64_t size;
  sb_file_header* hdr;
#ifdef _WIN32
  HANDLE file, mapping;
#else
  char path[4096];
  dev_t dev;
  ino_t ino;
#endif
  uint64_t peer_counter;
  int64_t peer_changed_ms;
  int peer_watching;
  char err[320];
} sb_bridge;

#define SB_MAX_HANDLES 64
/* The table of open handles: the one piece of global state, so that a handle MQL5 passes
 * back (a number, not a pointer) is checked before anything is dereferenced. */
static sb_bridge* g_handles[SB_MAX_HANDLES];
static uint64_t g_nonce;

static int64_t handle_new(sb_bridge* b) {
  b->nonce = (__atomic_add_fetch(&g_nonce, 1, __ATOMIC_RELAXED) + (uint64_t)mono_ms()) & 0xffffffffffull;
  for (int i = 0; i < SB_MAX_HANDLES; i++) {
    sb_bridge* none = NULL;
    if (__atomic_compare_exchange_n(&g_handles[i], &none, b, 0, __ATOMIC_ACQ_REL, __ATOMIC_ACQUIRE))
      return (int64_t)((b->nonce << 8) | (uint64_t)(i + 1));
  }
  return 0;
}

static sb_bridge* handle_get(int64_t h) {
  if (h <= 0) return NULL;
  int64_t i = (h & 0xff) - 1;
  if (i < 0 || i >= SB_MAX_HANDLES) return NULL;
  sb_bridge* b = __atomic_load_n(&g_handles[i], __ATOMIC_ACQUIRE);
  return (b != NULL && b->nonce == ((uint64_t)h >> 8)) ? b : NULL;
}

static int fail(sb_bridge* b, int code, const char* fmt, ...) __attribute__((format(printf, 3, 4)));
static int fail(sb_bridge* b, int code, const char* fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(b->err, sizeof b->err, fmt, ap);
  va_end(ap);
  return code;
}

/* ---- text */

/* UTF-16 (NUL-terminated) to UTF-8 into dst[cap] with its NUL; SB_E_TEXT if it does not
 * fit or is not valid UTF-16. A NULL src is the empty string. */
static int utf16_to_utf8(const uint16_t* src, char* dst, size_t cap) {
  size_t n = 0;
  for (; src != NULL && *src; src++) {
    uint32_t c = *src;
    if (c >= 0xd800 && c <= 0xdbff) {
      if (src[1] < 0xdc00 || src[1] > 0xdfff) return SB_E_TEXT;
      c = 0x10000 + ((c - 0xd800) << 10) + (src[1] - 0xdc00u);
      src++;
    } else if (c >= 0xdc00 && c <= 0xdfff) {
      return SB_E_TEXT;
    }
    size_t len = c < 0x80 ? 1 : c < 0x800 ? 2 : c < 0x10000 ? 3 : 4;
    if (n + len + 1 > cap) return SB_E_TEXT;
    if (len == 1) {
      dst[n++] = (char)c;
    } else if (len == 2) {
      dst[n++] = (char)(0xc0 | (c >> 6));
      dst[n++] = (char)(0x80 | (c & 0x3f));
    } else if (len == 3) {
      dst[n++] = (char)(0xe0 | (c >> 12));
      dst[n++] = (char)(0x80 | ((c >> 6) & 0x3f));
      dst[n++] = (char)(0x80 | (c & 0x3f));
    } else {
      dst[n++] = (char)(0xf0 | (c >> 18));
      dst[n++] = (char)(0x80 | ((c >> 12) & 0x3f));
      dst[n++] = (char)(0x80 | ((c >> 6) & 0x3f));
      dst[n++] = (char)(0x80 | (c & 0x3f));
    }
  }
  if (n + 1 > cap) return SB_E_TEXT;
  memset(dst + n, 0, cap - n);
  return SB_OK;
}

/* UTF-8 to UTF-16 (bytes above 0x7f of a multi-byte sequence decoded; truncated to cap). */
static int utf8_to_utf16(const char* src, uint16_t* dst, int32_t cap) {
  int32_t n = 0;
  const uint8_t* p = (const uint8_t*)src;
  while (*p && n + 2 < cap) {
    uint32_t c = *p++;
    int more = c >= 0xf0 ? 3 : c >= 0xe0 ? 2 : c >= 0xc0 ? 1 : 0;
    if (more) c &= (0x3fu >> more);
    for (; more > 0 && (*p & 0xc0) == 0x80; more--) c = (c << 6) | (*p++ & 0x3fu);
    if (c >= 0x10000) {
      c -= 0x10000;
      dst[n++] = (uint16_t)(0xd800 + (c >> 10));
      dst[n++] = (uint16_t)(0xdc00 + (c & 0x3ff));
    } else {
      dst[n++] = (uint16_t)c;
    }
  }
  if (cap > 0) dst[n < cap ? n : cap - 1] = 0;
  return n;
}

/* ---- rings */

static sb_ring_ctl* ring_ctl(sb_bridge* b, int ring) {
  return (sb_ring_ctl*)(b->base + b->hdr->rings[ring].offset);
}

static sb_slot* ring_slot(sb_bridge* b, int ring, uint64_t index) {
  const sb_ring_geom* g = &b->hdr->rings[ring];
  uint8_t* slots = b->base + g->offset + sizeof(sb_ring_ctl);
  return (sb_slot*)(slots + (index & (g->capacity - 1)) * slot_stride(g->record_size));
}

static int check_strings(const sb_ring_kind* k, const uint8_t* rec) {
  for (int i = 0; i < 4 && k->strings[i][1] != 0; i++)
    if (memchr(rec + k->strings[i][0], 0, k->strings[i][1]) == NULL) return i;
  return -1;
}

static int ring_arg(sb_bridge* b, int32_t ring, int32_t record_size, int producer) {
  if (ring < 0 || ring >= SB_N_RINGS)
    return fail(b, SB_E_ARG, "ring %d is not one of 0..%d", ring, SB_N_RINGS - 1);
  const sb_ring_kind* k = &RINGS[ring];
  if ((uint32_t)record_size != k->record_size)
    return fail(b, SB_E_ARG, "%s ring: record size %d, this build's is %u", k->name, record_size,
                k->record_size);
  if ((k->producer == b->side) != producer)
    return fail(b, SB_E_ARG, "%s ring: the %s side may not %s it", k->name,
                b->side == SB_SIDE_ENGINE ? "engine" : "terminal", producer ? "write" : "read");
  return SB_OK;
}

/* Push n records; the producer's half of the SPSC protocol: fill the slots, then publish
 * them with one release store of head (the consumer's acquire load of head sees them). */
static int ring_push(sb_bridge* b, int32_t ring, const void* recs, int32_t record_size, int32_t n,
                     int32_t* pushed) {
  int rc = ring_arg(b, ring, record_size, 1);
  if (rc != SB_OK) return rc;
  const sb_ring_kind* k = &RINGS[ring];
  sb_ring_ctl* c = ring_ctl(b, ring);
  uint64_t head = __atomic_load_n(&c->head, __ATOMIC_RELAXED); /* ours */
  uint64_t tail = __atomic_load_n(&c->tail, __ATOMIC_ACQUIRE); /* slots before it are free */
  uint64_t room = b->hdr->rings[ring].capacity - (head - tail);
  int32_t i = 0;
  for (; i < n && (uint64_t)i < room; i++) {
    const uint8_t* rec = (const uint8_t*)recs + (size_t)i * (size_t)record_size;
    int bad = check_strings(k, rec);
    if (bad >= 0) {
      rc = fail(b, SB_E_TEXT, "%s ring: record %d's text field %d has no terminating NUL", k->name, i, bad);
      break;
    }
    sb_slot* s = ring_slot(b, ring, head + (uint64_t)i);
    s->seq = head + (uint64_t)i;
    s->size = (uint32_t)record_size;
    memcpy(s + 1, rec, (size_t)record_size);
    s->crc = slot_crc(s->seq, rec, (uint32_t)record_size);
  }
  if (i > 0) __atomic_store_n(&c->head, head + (uint64_t)i, __ATOMIC_RELEASE);
  if (pushed) *pushed = i;
  if (rc != SB_OK) return rc;
  if (i < n) {
    __atomic_store_n(&c->full, c->full + 1, __ATOMIC_RELAXED);
    if (i == 0) return SB_FULL;
  }
  return SB_OK;
}

/* Pop up to max records: each is copied out and checked before the tail passes it, and
 * the tail is released once at the end, so the producer reuses a slot only after its
 * record has been copied. */
static int ring_pop(sb_bridge* b, int32_t ring, void* out, int32_t record_size, int32_t max, int32_t* got) {
  int rc = ring_arg(b, ring, record_size, 0);
  if (got) *got = 0;
  if (rc != SB_OK) return rc;
  const sb_ring_kind* k = &RINGS[ring];
  sb_ring_ctl* c = ring_ctl(b, ring);
  uint64_t tail = __atomic_load_n(&c->tail, __ATOMIC_RELAXED);
  uint64_t head = __atomic_load_n(&c->head, __ATOMIC_ACQUIRE);
  if (head - tail > b->hdr->rings[ring].capacity)
    return fail(b, SB_E_CORRUPT, "%s ring: head %llu and tail %llu are more than its capacity apart", k->name,
                (unsigned long long)head, (unsigned long long)tail);
  int32_t i = 0;
  for (; i < max && tail + (uint64_t)i != head; i++) {
    uint64_t at = tail + (uint64_t)i;
    const sb_slot* s = ring_slot(b, ring, at);
    uint8_t* dst = (uint8_t*)out + (size_t)i * (size_t)record_size;
    sb_slot meta = *s;
    memcpy(dst, s + 1, (size_t)record_size);
    int bad = -1;
    if (meta.seq != at || meta.size != (uint32_t)record_size ||
        meta.crc != slot_crc(at, dst, (uint32_t)record_size) || (bad = check_strings(k, dst)) >= 0) {
      rc = fail(b, SB_E_CORRUPT,
                "%s ring: record %llu is torn or garbage (%s); not consumed: skip it to go on", k->name,
                (unsigned long long)at,
                meta.seq != at                       ? "its slot's sequence is not its index"
                : meta.size != (uint32_t)record_size ? "its size is wrong"
                : bad >= 0                           ? "a text field has no terminating NUL"
                                                     : "its CRC32 does not match");
      break;
    }
  }
  if (i > 0) __atomic_store_n(&c->tail, tail + (uint64_t)i, __ATOMIC_RELEASE);
  if (got) *got = i;
  if (rc != SB_OK) return rc;
  return i == 0 ? SB_EMPTY : SB_OK;
}

/* ---- layout */

static void layout_init(sb_file_header* h, uint64_t* size) {
  uint64_t off = SB_HEADER_SIZE;
  for (int r = 0; r < SB_N_RINGS; r++) {
    h->rings[r].offset = off;
    h->rings[r].capacity = RINGS[r].capacity;
    h->rings[r].record_size = RINGS[r].record_size;
    off += ring_bytes(&RINGS[r]);
  }
  *size = off;
}

static uint64_t file_size_wanted(void) {
  sb_file_header h;
  uint64_t size;
  layout_init(&h, &size);
  return size;
}

#ifndef _WIN32
/* Check a mapped header against this build (the engine's open). */
static int layout_check(sb_bridge* b, const char* path) {
  const sb_file_header* h = b->hdr;
  static const char zeros[sizeof SB_MAGIC];
  if (b->size >= SB_HEADER_SIZE && memcmp(h->magic, zeros, sizeof zeros) == 0) /* sized, not yet written */
    return fail(b, SB_E_NOT_READY, "%s is still being set up by the terminal side", path);
  if (b->size < SB_HEADER_SIZE || memcmp(h->magic, SB_MAGIC, sizeof SB_MAGIC) != 0)
    return fail(b, SB_E_MAGIC, "%s is not a Sovereign bridge file (no magic)", path);
  if (h->abi_version != SB_ABI_VERSION)
    return fail(b, SB_E_VERSION,
                "%s speaks bridge ABI version %u, this library %u: install the same release's "
                "DLL in the terminal",
                path, h->abi_version, SB_ABI_VERSION);
  uint32_t state = __atomic_load_n(&h->state, __ATOMIC_ACQUIRE);
  if (state == SB_FILE_INIT)
    return fail(b, SB_E_NOT_READY, "%s is still being set up by the terminal side", path);
  if (state == SB_FILE_RETIRED)
    return fail(b, SB_E_RECREATED, "%s was retired by the terminal side, which is making a new one", path);
  /* Wine extends a file in steps: the file may be a byte longer than the layout for a while. */
  if (h->header_size != SB_HEADER_SIZE || h->n_rings != SB_N_RINGS || h->file_size > b->size)
    return fail(b, SB_E_LAYOUT,
                "%s: header size %u, %u rings, %llu bytes; expected %u, %d, at most the file's %llu", path,
                h->header_size, h->n_rings, (unsigned long long)h->file_size, SB_HEADER_SIZE, SB_N_RINGS,
                (unsigned long long)b->size);
  for (int r = 0; r < SB_N_RINGS; r++) {
    const sb_ring_geom* g = &h->rings[r];
    uint64_t end = g->offset + sizeof(sb_ring_ctl) + (uint64_t)g->capacity * slot_stride(g->record_size);
    if (g->record_size != RINGS[r].record_size)
      return fail(b, SB_E_LAYOUT, "%s: %s records are %u bytes there, %u here: the two builds differ", path,
                  RINGS[r].name, g->record_size, RINGS[r].record_size);
    if (g->capacity == 0 || (g->capacity & (g->capacity - 1)) != 0 || g->offset % SB_LINE != 0 ||
        g->offset < SB_HEADER_SIZE || end > b->size)
      return fail(b, SB_E_LAYOUT, "%s: the %s ring (offset %llu, capacity %u) does not fit the file", path,
                  RINGS[r].name, (unsigned long long)g->offset, g->capacity);
  }
  return SB_OK;
}

#endif

static void header_init(sb_file_header* h, uint64_t epoch) {
  uint64_t size;
  memcpy(h->magic, SB_MAGIC, sizeof SB_MAGIC);
  h->abi_version = SB_ABI_VERSION;
  h->header_size = SB_HEADER_SIZE;
  layout_init(h, &size);
  h->file_size = size;
  h->epoch = epoch;
  h->n_rings = SB_N_RINGS;
}

static uint64_t next_epoch(uint64_t old) {
  uint64_t now = (uint64_t)wall_ns();
  return now > old ? now : old + 1;
}

static void side_open(sb_bridge* b) {
  sb_beat_line* l = &b->hdr->beat[b->side];
  l->pid = own_pid();
  l->time_ns = wall_ns();
  __atomic_store_n(&l->state, SB_SIDE_OPEN, __ATOMIC_RELEASE);
  __atomic_add_fetch(&l->counter, 1, __ATOMIC_RELEASE);
}

/* ---- the operating-system layer */

#ifdef _WIN32

static void os_unmap(sb_bridge* b) {
  if (b->base) UnmapViewOfFile(b->base);
  if (b->mapping) CloseHandle(b->mapping);
  if (b->file && b->file != INVALID_HANDLE_VALUE) CloseHandle(b->file);
  b->base = NULL;
  b->mapping = b->file = NULL;
}

static int os_map(sb_bridge* b, HANDLE file, uint64_t size) {
  b->file = file;
  b->mapping = CreateFileMappingW(file, NULL, PAGE_READWRITE, 0, 0, NULL);
  if (b->mapping == NULL) return SB_E_IO;
  b->base = (uint8_t*)MapViewOfFile(b->mapping, FILE_MAP_ALL_ACCESS, 0, 0, 0);
  if (b->base == NULL) return SB_E_IO;
  b->size = size;
  b->hdr = (sb_file_header*)b->base;
  return SB_OK;
}

/* Retire an old file (so an engine mapping it learns of the new one) and remove it. */
static uint64_t os_retire(const uint16_t* path) {
  uint64_t epoch = 0;
  HANDLE f = CreateFileW((LPCWSTR)path, GENERIC_READ | GENERIC_WRITE,
                         FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL, OPEN_EXISTING,
                         FILE_ATTRIBUTE_NORMAL, NULL);
  if (f == INVALID_HANDLE_VALUE) return 0;
  LARGE_INTEGER sz;
  if (GetFileSizeEx(f, &sz) && sz.QuadPart >= SB_HEADER_SIZE) {
    sb_bridge old = {0};
    if (os_map(&old, f, (uint64_t)sz.QuadPart) == SB_OK &&
        memcmp(old.hdr->magic, SB_MAGIC, sizeof SB_MAGIC) == 0) {
      epoch = old.hdr->epoch;
      __atomic_store_n(&old.hdr->state, SB_FILE_RETIRED, __ATOMIC_RELEASE);
    }
    os_unmap(&old);
  } else {
    CloseHandle(f);
  }
  DeleteFileW((LPCWSTR)path);
  return epoch;
}

static int os_create(sb_bridge* b, const uint16_t* path) {
  uint64_t epoch = next_epoch(os_retire(path));
  uint64_t size = file_size_wanted();
  HANDLE f = CreateFileW((LPCWSTR)path, GENERIC_READ | GENERIC_WRITE,
                         FILE_SHARE_READ | FILE_SHARE_WRITE | FILE_SHARE_DELETE, NULL, CREATE_NEW,
                         FILE_ATTRIBUTE_NORMAL, NULL);
  if (f == INVALID_HANDLE_VALUE)
    return fail(b, SB_E_IO, "cannot create the bridge file: Windows error %lu",
                (unsigned long)GetLastError());
  LARGE_INTEGER at;
  at.QuadPart = (LONGLONG)size;
  if (!SetFilePointerEx(f, at, NULL, FILE_BEGIN) || !SetEndOfFile(f)) {
    CloseHandle(f);
    return fail(b, SB_E_IO, "cannot size the bridge file to %llu bytes: Windows error %lu",
                (unsigned long long)size, (unsigned long)GetLastError());
  }
  if (os_map(b, f, size) != SB_OK) {
    unsigned long e = (unsigned long)GetLastError();
    os_unmap(b);
    return fail(b, SB_E_IO, "cannot map the bridge file: Windows error %lu", e);
  }
  header_init(b->hdr, epoch);
  return SB_OK;
}

#else

static void os_unmap(sb_bridge* b) {
  if (b->base) munmap(b->base, b->size);
  b->base = NULL;
}

/* A Wine path (Z:\a\b) is the POSIX path /a/b; a POSIX path stays as it is. */
static int os_path(sb_bridge* b, const uint16_t* wpath, char* out, size_t cap) {
  char tmp[4096];
  if (utf16_to_utf8(wpath, tmp, sizeof tmp) != SB_OK)
    return fail(b, SB_E_TEXT, "the path is not valid UTF-16");
  const char* p = tmp;
  if (((tmp[0] | 0x20) >= 'a' && (tmp[0] | 0x20) <= 'z') && tmp[1] == ':') {
    if ((tmp[0] | 0x20) != 'z')
      return fail(b, SB_E_ARG, "%s: only drive Z: is the Linux root under Wine", tmp);
    p = tmp + 2;
  }
  if (p[0] != '/' && p[0] != '\\') return fail(b, SB_E_ARG, "%s: the path must be absolute", tmp);
  size_t n = strlen(p);
  if (n + 1 > cap) return fail(b, SB_E_ARG, "the path is too long");
  for (size_t i = 0; i <= n; i++) out[i] = p[i] == '\\' ? '/' : p[i];
  return SB_OK;
}

static int os_map_fd(sb_bridge* b, int fd, uint64_t size) {
  void* m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  if (m == MAP_FAILED) return SB_E_IO;
  b->base = (uint8_t*)m;
  b->size = size;
  b->hdr = (sb_file_header*)m;
  return SB_OK;
}

static uint64_t os_retire(const char* path) {
  uint64_t epoch = 0;
  int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (fd >= 0) {
    struct stat st;
    sb_bridge old;
    memset(&old, 0, sizeof old);
    if (fstat(fd, &st) == 0 && S_ISREG(st.st_mode) && st.st_size >= SB_HEADER_SIZE &&
        os_map_fd(&old, fd, (uint64_t)st.st_size) == SB_OK) {
      if (memcmp(old.hdr->magic, SB_MAGIC, sizeof SB_MAGIC) == 0) {
        epoch = old.hdr->epoch;
        __atomic_store_n(&old.hdr->state, SB_FILE_RETIRED, __ATOMIC_RELEASE);
      }
      os_unmap(&old);
    }
    close(fd);
  }
  unlink(path);
  return epoch;
}

static int os_create(sb_bridge* b, const uint16_t* wpath) {
  int rc = os_path(b, wpath, b->path, sizeof b->path);
  if (rc != SB_OK) return rc;
  uint64_t epoch = next_epoch(os_retire(b->path));
  uint64_t size = file_size_wanted();
  int fd = open(b->path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0660);
  if (fd < 0) return fail(b, SB_E_IO, "cannot create %s: %s", b->path, strerror(errno));
  const char* step = NULL;
  if (fchmod(fd, 0660) != 0) { /* whatever the umask: the terminal's user and the engine's group */
    step = "set the mode of";
  } else if (ftruncate(fd, (off_t)size) != 0) {
    step = "size";
  } else {
    int e = posix_fallocate(fd, 0, (off_t)size);
    if (e != 0 && e != EOPNOTSUPP && e != EINVAL) {
      errno = e;
      step = "reserve the space of";
    }
  }
  if (step == NULL && os_map_fd(b, fd, size) != SB_OK) step = "map";
  struct stat st;
  if (step == NULL && fstat(fd, &st) != 0) step = "stat";
  if (step != NULL) {
    int e = errno;
    close(fd);
    unlink(b->path);
    return fail(b, SB_E_IO, "cannot %s %s (%llu bytes): %s", step, b->path, (unsigned long long)size,
                strerror(e));
  }
  close(fd);
  b->dev = st.st_dev;
  b->ino = st.st_ino;
  header_init(b->hdr, epoch);
  return SB_OK;
}

#endif

/* ---- both faces */

static sb_bridge* bridge_new(int side) {
#ifdef _WIN32
  sb_bridge* b = (sb_bridge*)HeapAlloc(GetProcessHeap(), HEAP_ZERO_MEMORY, sizeof(sb_bridge));
#else
  sb_bridge* b = (sb_bridge*)calloc(1, sizeof(sb_bridge));
#endif
  if (b) b->side = side;
  return b;
}

static void bridge_free(sb_bridge* b) {
  os_unmap(b);
#ifdef _WIN32
  HeapFree(GetProcessHeap(), 0, b);
#else
  free(b);
#endif
}

SB_API int sb_hello(int64_t h, uint32_t* abi_version, uint64_t* epoch) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  if (abi_version) *abi_version = SB_ABI_VERSION;
  if (epoch) *epoch = b->hdr->epoch;
  return SB_OK;
}

SB_API int sb_beat(int64_t h) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  sb_beat_line* l = &b->hdr->beat[b->side];
  __atomic_store_n(&l->time_ns, wall_ns(), __ATOMIC_RELAXED);
  __atomic_add_fetch(&l->counter, 1, __ATOMIC_RELEASE);
  return SB_OK;
}

SB_API int sb_peer(int64_t h, int64_t timeout_ms, int64_t* age_ms) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  const sb_beat_line* l = &b->hdr->beat[1 - b->side];
  const char* peer = b->side == SB_SIDE_ENGINE ? "terminal" : "engine";
  uint64_t counter = __atomic_load_n(&l->counter, __ATOMIC_ACQUIRE);
  int64_t now = mono_ms();
  if (!b->peer_watching || counter != b->peer_counter) {
    b->peer_watching = 1;
    b->peer_counter = counter;
    b->peer_changed_ms = now;
  }
  int64_t age = now - b->peer_changed_ms;
  if (age_ms) *age_ms = age;
  uint32_t state = __atomic_load_n(&l->state, __ATOMIC_ACQUIRE);
  if (state == SB_SIDE_CLOSED) return fail(b, SB_E_PEER_CLOSED, "the %s side closed the bridge", peer);
  if (state == SB_SIDE_NONE || age > timeout_ms)
    return fail(b, SB_E_PEER_STOPPED, "the %s side %s for %lld ms (timeout %lld ms)", peer,
                state == SB_SIDE_NONE ? "has not opened the bridge" : "has not beaten", (long long)age,
                (long long)timeout_ms);
  return SB_OK;
}

SB_API int sb_stats(int64_t h, int32_t ring, sb_ring_stats* out) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  if (ring < 0 || ring >= SB_N_RINGS || out == NULL) return fail(b, SB_E_ARG, "sb_stats: bad ring or NULL");
  sb_ring_ctl* c = ring_ctl(b, ring);
  out->pushed = __atomic_load_n(&c->head, __ATOMIC_ACQUIRE);
  out->popped = __atomic_load_n(&c->tail, __ATOMIC_ACQUIRE);
  out->full = __atomic_load_n(&c->full, __ATOMIC_RELAXED);
  out->corrupt_skipped = __atomic_load_n(&c->corrupt_skipped, __ATOMIC_RELAXED);
  return SB_OK;
}

SB_API int64_t sb_pending(int64_t h, int32_t ring) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  if (ring < 0 || ring >= SB_N_RINGS) return fail(b, SB_E_ARG, "sb_pending: ring %d", ring);
  sb_ring_ctl* c = ring_ctl(b, ring);
  return (int64_t)(__atomic_load_n(&c->head, __ATOMIC_ACQUIRE) - __atomic_load_n(&c->tail, __ATOMIC_ACQUIRE));
}

SB_API int sb_close(int64_t h) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  __atomic_store_n(&b->hdr->beat[b->side].state, SB_SIDE_CLOSED, __ATOMIC_RELEASE);
  int64_t i = (h & 0xff) - 1;
  __atomic_store_n(&g_handles[i], NULL, __ATOMIC_RELEASE);
  bridge_free(b);
  return SB_OK;
}

SB_API int sb_error(int64_t h, char* buf, int32_t len) {
  sb_bridge* b = handle_get(h);
  const char* msg = b ? b->err : "not an open bridge handle";
  if (buf == NULL || len <= 0) return (int)strlen(msg);
  snprintf(buf, (size_t)len, "%s", msg);
  return (int)strlen(buf);
}

SB_API int sb_error_w(int64_t h, uint16_t* buf, int32_t len) {
  sb_bridge* b = handle_get(h);
  if (buf == NULL || len <= 0) return SB_E_ARG;
  return utf8_to_utf16(b ? b->err : "not an open bridge handle", buf, len);
}

SB_API const char* sb_strerror(int32_t code) {
  switch (code) {
    case SB_OK:
      return "ok";
    case SB_EMPTY:
      return "nothing to read";
    case SB_FULL:
      return "the ring is full";
    case SB_E_ARG:
      return "bad argument";
    case SB_E_IO:
      return "cannot create, open or map the bridge file";
    case SB_E_MAGIC:
      return "not a bridge file";
    case SB_E_VERSION:
      return "another bridge ABI version";
    case SB_E_LAYOUT:
      return "the two builds' record layouts differ";
    case SB_E_PERM:
      return "the bridge file's owner or mode is not trusted";
    case SB_E_CORRUPT:
      return "a torn or garbage record (not consumed)";
    case SB_E_PEER_STOPPED:
      return "the other side stopped beating";
    case SB_E_RECREATED:
      return "the terminal side recreated the bridge file";
    case SB_E_HANDLE:
      return "not an open bridge handle";
    case SB_E_PEER_CLOSED:
      return "the other side closed the bridge";
    case SB_E_NOT_READY:
      return "the bridge file is still being set up";
    case SB_E_TEXT:
      return "a string too long for its field, or not valid UTF-16";
    default:
      return "unknown status";
  }
}

/* ---- terminal face */

SB_API int64_t sbt_open_w(const uint16_t* path, uint16_t* err, int32_t err_len) {
  sb_bridge* b = bridge_new(SB_SIDE_TERMINAL);
  if (b == NULL) return SB_E_IO;
  int rc = path == NULL ? fail(b, SB_E_ARG, "no path") : os_create(b, path);
  int64_t h = 0;
  if (rc == SB_OK) {
    side_open(b);
    __atomic_store_n(&b->hdr->state, SB_FILE_READY, __ATOMIC_RELEASE); /* publish the header */
    h = handle_new(b);
    if (h == 0) rc = fail(b, SB_E_IO, "more than %d bridges open in this process", SB_MAX_HANDLES);
  }
  if (rc != SB_OK) {
    if (err != NULL && err_len > 0) utf8_to_utf16(b->err, err, err_len);
    bridge_free(b);
    return rc;
  }
  return h;
}

#define PUT_TEXT(b, src, dst, what)                                                       \
  do {                                                                                    \
    if (utf16_to_utf8((src), (dst), sizeof(dst)) != SB_OK)                                \
      return fail((b), SB_E_TEXT, "%s: not valid UTF-16 or longer than %d bytes", (what), \
                  (int)sizeof(dst) - 1);                                                  \
  } while (0)

static int push_one(sb_bridge* b, int32_t ring, const void* rec, int32_t size) {
  int32_t n = 0;
  int rc = ring_push(b, ring, rec, size, 1, &n);
  if (rc == SB_FULL) fail(b, SB_FULL, "the %s ring is full: the engine is not reading", RINGS[ring].name);
  return rc;
}

SB_API int sbt_account_w(int64_t h, int64_t login, int32_t margin_mode, int32_t connected,
                         int32_t trade_allowed, int32_t dlls_allowed, double balance, double equity,
                         double margin, double margin_free, const uint16_t* currency,
                         const uint16_t* server) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  sb_account a;
  memset(&a, 0, sizeof a);
  a.time_msc = wall_ns() / 1000000;
  a.login = login;
  a.margin_mode = margin_mode;
  a.connected = connected;
  a.trade_allowed = trade_allowed;
  a.dlls_allowed = dlls_allowed;
  a.balance = balance;
  a.equity = equity;
  a.margin = margin;
  a.margin_free = margin_free;
  PUT_TEXT(b, currency, a.currency, "account currency");
  PUT_TEXT(b, server, a.server, "account server");
  return push_one(b, SB_RING_ACCOUNT, &a, sizeof a);
}

SB_API int sbt_spec_w(int64_t h, const uint16_t* symbol, int32_t exists, int32_t digits, double point,
                      double tick_size, double tick_value, double contract_size, double volume_min,
                      double volume_max, double volume_step, int32_t stops_level, int32_t filling_mode,
                      int32_t execution_mode, int32_t trade_mode, const uint16_t* currency_base,
                      const uint16_t* currency_profit, const uint16_t* currency_margin) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  sb_spec s;
  memset(&s, 0, sizeof s);
  PUT_TEXT(b, symbol, s.symbol, "symbol");
  s.exists = exists;
  s.digits = digits;
  s.point = point;
  s.tick_size = tick_size;
  s.tick_value = tick_value;
  s.contract_size = contract_size;
  s.volume_min = volume_min;
  s.volume_max = volume_max;
  s.volume_step = volume_step;
  s.stops_level = stops_level;
  s.filling_mode = filling_mode;
  s.execution_mode = execution_mode;
  s.trade_mode = trade_mode;
  PUT_TEXT(b, currency_base, s.currency_base, "base currency");
  PUT_TEXT(b, currency_profit, s.currency_profit, "profit currency");
  PUT_TEXT(b, currency_margin, s.currency_margin, "margin currency");
  return push_one(b, SB_RING_SPECS, &s, sizeof s);
}

SB_API int sbt_tick_w(int64_t h, const uint16_t* symbol, int64_t time_msc, double bid, double ask,
                      double last, double volume, uint32_t flags) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  sb_tick t;
  memset(&t, 0, sizeof t);
  PUT_TEXT(b, symbol, t.symbol, "symbol");
  t.time_msc = time_msc;
  t.bid = bid;
  t.ask = ask;
  t.last = last;
  t.volume = volume;
  t.flags = flags;
  return push_one(b, SB_RING_TICKS, &t, sizeof t);
}

SB_API int sbt_take_request(int64_t h, sb_request* out) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  if (out == NULL) return fail(b, SB_E_ARG, "sbt_take_request: NULL");
  int32_t got = 0;
  return ring_pop(b, SB_RING_REQUESTS, out, sizeof *out, 1, &got);
}

SB_API int sbt_result_w(int64_t h, uint64_t request_id, uint64_t client_order_id, int32_t action,
                        uint32_t retcode, uint64_t deal, uint64_t order, double volume, double price,
                        double bid, double ask, int64_t time_msc, const uint16_t* comment) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  sb_result r;
  memset(&r, 0, sizeof r);
  r.request_id = request_id;
  r.client_order_id = client_order_id;
  r.action = action;
  r.retcode = retcode;
  r.deal = deal;
  r.order = order;
  r.volume = volume;
  r.price = price;
  r.bid = bid;
  r.ask = ask;
  r.time_msc = time_msc;
  /* The broker's text is free: cut to the field rather than lose the result. */
  char text[256];
  if (utf16_to_utf8(comment, text, sizeof text) != SB_OK) snprintf(text, sizeof text, "(unreadable comment)");
  size_t n = strlen(text);
  if (n >= sizeof r.comment) n = sizeof r.comment - 1;
  while (n > 0 && ((uint8_t)text[n] & 0xc0) == 0x80) n--; /* not inside a UTF-8 sequence */
  memcpy(r.comment, text, n);
  return push_one(b, SB_RING_RESULTS, &r, sizeof r);
}

SB_API int sbt_deal_w(int64_t h, uint64_t ticket, uint64_t order, uint64_t position, const uint16_t* symbol,
                      int32_t type, int32_t entry, int32_t reason, double volume, double price, double profit,
                      double commission, double swap, uint64_t magic, int64_t time_msc, uint32_t replay,
                      const uint16_t* comment) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  sb_deal d;
  memset(&d, 0, sizeof d);
  d.ticket = ticket;
  d.order = order;
  d.position = position;
  PUT_TEXT(b, symbol, d.symbol, "deal symbol");
  d.type = type;
  d.entry = entry;
  d.reason = reason;
  d.volume = volume;
  d.price = price;
  d.profit = profit;
  d.commission = commission;
  d.swap = swap;
  d.magic = magic;
  d.time_msc = time_msc;
  d.replay = replay;
  PUT_TEXT(b, comment, d.comment, "deal comment");
  return push_one(b, SB_RING_DEALS, &d, sizeof d);
}

SB_API int sbt_position_w(int64_t h, uint64_t snapshot, uint32_t index, uint32_t count, uint64_t ticket,
                          const uint16_t* symbol, int32_t type, double volume, double price_open, double sl,
                          double tp, double profit, uint64_t magic, int64_t time_msc,
                          const uint16_t* comment) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  sb_position p;
  memset(&p, 0, sizeof p);
  p.snapshot = snapshot;
  p.index = index;
  p.count = count;
  p.ticket = ticket;
  PUT_TEXT(b, symbol, p.symbol, "position symbol");
  p.type = type;
  p.volume = volume;
  p.price_open = price_open;
  p.sl = sl;
  p.tp = tp;
  p.profit = profit;
  p.magic = magic;
  p.time_msc = time_msc;
  PUT_TEXT(b, comment, p.comment, "position comment");
  return push_one(b, SB_RING_POSITIONS, &p, sizeof p);
}

SB_API int sbt_push(int64_t h, int32_t ring, const void* records, int32_t record_size, int32_t n,
                    int32_t* pushed) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  if (records == NULL || n < 0) return fail(b, SB_E_ARG, "sbt_push: NULL records or n < 0");
  return ring_push(b, ring, records, record_size, n, pushed);
}

/* ---- engine face */

#ifndef _WIN32

static int64_t open_fail(sb_bridge* b, int rc, char* err, int32_t err_len) {
  if (err != NULL && err_len > 0) snprintf(err, (size_t)err_len, "%s", b->err);
  bridge_free(b);
  return rc;
}

SB_API int64_t sbe_open(const char* path, int64_t owner_uid, char* err, int32_t err_len) {
  sb_bridge* b = bridge_new(SB_SIDE_ENGINE);
  if (b == NULL) return SB_E_IO;
  if (path == NULL || strlen(path) >= sizeof b->path)
    return open_fail(b, fail(b, SB_E_ARG, "bad path"), err, err_len);
  snprintf(b->path, sizeof b->path, "%s", path);
  int fd = open(path, O_RDWR | O_NOFOLLOW | O_CLOEXEC);
  if (fd < 0)
    return open_fail(b,
                     fail(b, SB_E_IO, "cannot open %s: %s%s", path, strerror(errno),
                          errno == ENOENT ? " (is the terminal running the EA?)" : ""),
                     err, err_len);
  struct stat st;
  if (fstat(fd, &st) != 0) {
    close(fd);
    return open_fail(b, fail(b, SB_E_IO, "cannot stat %s: %s", path, strerror(errno)), err, err_len);
  }
  uid_t want = owner_uid < 0 ? geteuid() : (uid_t)owner_uid;
  /* Only the terminal's user may own it and nobody but that user and the engine's group
   * may reach it: anyone else could feed the engine prices or read its orders. */
  if (!S_ISREG(st.st_mode) || st.st_uid != want || (st.st_mode & 0007) != 0) {
    close(fd);
    return open_fail(b,
                     fail(b, SB_E_PERM,
                          "%s is %s owned by uid %u with mode %03o: only a regular file of uid %u "
                          "that others cannot reach (mode 0660 or tighter) is trusted",
                          path, S_ISREG(st.st_mode) ? "a file" : "not a regular file", (unsigned)st.st_uid,
                          (unsigned)(st.st_mode & 0777), (unsigned)want),
                     err, err_len);
  }
  if (st.st_size < SB_HEADER_SIZE) {
    close(fd);
    int rc = st.st_size == 0
                 ? fail(b, SB_E_NOT_READY, "%s is empty: the terminal side is setting it up", path)
                 : fail(b, SB_E_MAGIC, "%s is too small to be a bridge file", path);
    return open_fail(b, rc, err, err_len);
  }
  int rc = os_map_fd(b, fd, (uint64_t)st.st_size);
  close(fd);
  if (rc != SB_OK)
    return open_fail(b, fail(b, SB_E_IO, "cannot map %s: %s", path, strerror(errno)), err, err_len);
  b->dev = st.st_dev;
  b->ino = st.st_ino;
  rc = layout_check(b, path);
  if (rc != SB_OK) return open_fail(b, rc, err, err_len);
  side_open(b);
  int64_t h = handle_new(b);
  if (h == 0)
    return open_fail(b, fail(b, SB_E_IO, "more than %d bridges open", SB_MAX_HANDLES), err, err_len);
  return h;
}

SB_API int sbe_request(int64_t h, const sb_request* req) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  if (req == NULL) return fail(b, SB_E_ARG, "sbe_request: NULL");
  return push_one(b, SB_RING_REQUESTS, req, sizeof *req);
}

SB_API int sbe_poll(int64_t h, int32_t ring, void* out, int32_t record_size, int32_t max, int32_t* got) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  if (out == NULL || max < 0) return fail(b, SB_E_ARG, "sbe_poll: NULL out or max < 0");
  return ring_pop(b, ring, out, record_size, max, got);
}

SB_API int sbe_skip(int64_t h, int32_t ring) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  if (ring < 0 || ring >= SB_N_RINGS || RINGS[ring].producer == b->side)
    return fail(b, SB_E_ARG, "sbe_skip: ring %d is not one this side reads", ring);
  sb_ring_ctl* c = ring_ctl(b, ring);
  uint64_t tail = __atomic_load_n(&c->tail, __ATOMIC_RELAXED);
  if (tail == __atomic_load_n(&c->head, __ATOMIC_ACQUIRE)) return SB_EMPTY;
  __atomic_store_n(&c->corrupt_skipped, c->corrupt_skipped + 1, __ATOMIC_RELAXED);
  __atomic_store_n(&c->tail, tail + 1, __ATOMIC_RELEASE);
  return SB_OK;
}

SB_API int sbe_check(int64_t h) {
  sb_bridge* b = handle_get(h);
  if (!b) return SB_E_HANDLE;
  if (__atomic_load_n(&b->hdr->state, __ATOMIC_ACQUIRE) == SB_FILE_RETIRED)
    return fail(b, SB_E_RECREATED, "%s was retired: the terminal made a new bridge file", b->path);
  struct stat st;
  if (stat(b->path, &st) != 0)
    return fail(b, SB_E_RECREATED, "%s is gone (%s): the terminal is making a new one, or stopped", b->path,
                strerror(errno));
  if (st.st_ino != b->ino || st.st_dev != b->dev)
    return fail(b, SB_E_RECREATED, "%s is another file now: the terminal made a new one", b->path);
  return SB_OK;
}

#endif
