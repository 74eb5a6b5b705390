/* sovbridge: the MetaTrader 5 bridge, a fixed C ABI with two faces over one mapped file.
 *
 * The terminal face (`sbt_*`) is what the Expert Advisor calls from the Windows DLL (and
 * what the terminal simulator calls from the Linux build); the engine face (`sbe_*`,
 * Linux only) is what sovereign/broker/bridge.py calls through cffi. Calls shared by
 * both are `sb_*`.
 *
 * The file: a 4096-byte header (magic, ABI version, the size and capacity of every ring's
 * records, an epoch that changes each time the terminal side creates the file, a
 * heartbeat per side), then one single-producer single-consumer ring per record kind.
 * Records are fixed-size, hold no pointers, and every field is naturally aligned with
 * explicit padding, so MQL5's packed structs have the same layout. Strings are NUL-
 * terminated UTF-8 in fixed char arrays; the terminal face takes UTF-16 (MQL5 strings)
 * and converts.
 *
 * Contract of every call:
 *  - it never blocks and never waits: a full ring answers SB_FULL (nothing written), an
 *    empty one SB_EMPTY;
 *  - it returns SB_OK (0), SB_EMPTY/SB_FULL (> 0) or an error (< 0, `sb_strerror`);
 *    an error on a handle also leaves a message for `sb_error`/`sb_error_w`;
 *  - a record is consumed only after it has been checked (its slot's sequence and CRC32,
 *    NUL-terminated strings) and copied out: a torn or garbage record answers
 *    SB_E_CORRUPT and stays where it is until the consumer skips it (`sbe_skip`,
 *    counted), so nothing is lost silently;
 *  - a handle is used by one thread at a time (each side is one thread: the EA's, the
 *    engine's broker thread).
 *
 * Handles are positive int64 values (MQL5 passes no pointers), checked on every call: a
 * stale or made-up handle answers SB_E_HANDLE instead of crashing the terminal.
 */
#ifndef SOVBRIDGE_H
#define SOVBRIDGE_H

#include <stdint.h>

#ifdef _WIN32
#define SB_API __declspec(dllexport)
#else
#define SB_API __attribute__((visibility("default")))
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* cdef-begin: bridge.py hands the text from here to cdef-end to cffi (SB_API removed). */

enum {
  SB_ABI_VERSION = 1,
  SB_HEADER_SIZE = 4096,
  SB_SYMBOL_LEN = 32,
  SB_COMMENT_LEN = 32, /* MT5 keeps at most 31 characters of a comment */
  SB_TEXT_LEN = 64,
  SB_CCY_LEN = 8
};

/* Status codes. */
enum {
  SB_OK = 0,
  SB_EMPTY = 1,           /* nothing to read */
  SB_FULL = 2,            /* no room: nothing was written, try again later */
  SB_E_ARG = -1,          /* a bad argument (a NULL, a wrong size, the wrong face's ring) */
  SB_E_IO = -2,           /* the file could not be created, opened, sized or mapped */
  SB_E_MAGIC = -3,        /* not a bridge file */
  SB_E_VERSION = -4,      /* another ABI version */
  SB_E_LAYOUT = -5,       /* record sizes or ring geometry differ from this build's */
  SB_E_PERM = -6,         /* the file's owner or mode is not trusted */
  SB_E_CORRUPT = -7,      /* a record fails its check (torn or garbage): not consumed */
  SB_E_PEER_STOPPED = -8, /* the other side's heartbeat stopped */
  SB_E_RECREATED = -9,    /* the terminal side made a new file: reopen */
  SB_E_HANDLE = -10,      /* not an open handle */
  SB_E_PEER_CLOSED = -11, /* the other side closed the bridge */
  SB_E_NOT_READY = -12,   /* the file is still being initialised by the terminal side */
  SB_E_TEXT = -13         /* a string too long for its field, or not valid UTF-16 */
};

/* Rings: T2E from the terminal to the engine, E2T the other way. */
enum {
  SB_RING_TICKS = 0,     /* T2E sb_tick */
  SB_RING_SPECS = 1,     /* T2E sb_spec */
  SB_RING_ACCOUNT = 2,   /* T2E sb_account */
  SB_RING_RESULTS = 3,   /* T2E sb_result */
  SB_RING_DEALS = 4,     /* T2E sb_deal */
  SB_RING_POSITIONS = 5, /* T2E sb_position */
  SB_RING_REQUESTS = 6,  /* E2T sb_request */
  SB_N_RINGS = 7
};

/* sb_request.action: TRADE_ACTION_DEAL as MT5, then the bridge's own look-ups, each
 * answered by one sb_result with the same request_id (and action). */
enum {
  SB_ACTION_DEAL = 1,       /* a market order: OrderSend */
  SB_ACTION_LOOKUP = 100,   /* find client_order_id (in comment, with magic) in orders and deals */
  SB_ACTION_HISTORY = 101,  /* replay the deals with ticket > since (sb_deal.replay = 1) */
  SB_ACTION_POSITIONS = 102 /* a snapshot of every open position (sb_position.snapshot = request_id) */
};

/* sb_result.retcode of a LOOKUP (the bridge's own codes, outside MT5's 10004..10046):
 * FOUND means deals were found (volume = their sum, deal = the last), PENDING that an
 * order with this client id is still working at the server, NONE that there is neither. */
enum { SB_LOOKUP_NONE = 1, SB_LOOKUP_FOUND = 2, SB_LOOKUP_PENDING = 3, SB_LIST_DONE = 4 };

/* Heartbeat / side states. */
enum { SB_SIDE_NONE = 0, SB_SIDE_OPEN = 1, SB_SIDE_CLOSED = 2 };
enum { SB_FILE_INIT = 0, SB_FILE_READY = 1, SB_FILE_RETIRED = 2 };

typedef struct sb_tick {
  int64_t time_msc; /* the tick's time, Unix ms UTC: every time on the bridge is (the EA converts the
                     * trade server's zone, commonly GMT+2/+3) */
  double bid, ask, last, volume;
  uint32_t flags; /* MT5's TICK_FLAG_* */
  uint32_t pad;
  char symbol[32];
} sb_tick; /* 80 bytes */

typedef struct sb_spec {
  double point, tick_size, tick_value, contract_size, volume_min, volume_max, volume_step;
  int32_t exists; /* 0: the terminal has no such symbol (the other fields are 0) */
  int32_t digits, stops_level;
  int32_t filling_mode;   /* SYMBOL_FILLING_MODE, a bitmask: FOK=1 IOC=2 BOC=4 */
  int32_t execution_mode; /* SYMBOL_TRADE_EXECUTION */
  int32_t trade_mode;     /* SYMBOL_TRADE_MODE */
  char symbol[32];
  char currency_base[8], currency_profit[8], currency_margin[8];
} sb_spec; /* 136 bytes */

typedef struct sb_account {
  int64_t time_msc;
  int64_t login;
  double balance, equity, margin, margin_free;
  int32_t margin_mode; /* ACCOUNT_MARGIN_MODE: 0 netting, 1 exchange, 2 hedging */
  int32_t connected;   /* TERMINAL_CONNECTED */
  int32_t trade_allowed, dlls_allowed;
  char currency[8];
  char server[32];
} sb_account; /* 104 bytes */

typedef struct sb_request {
  uint64_t request_id; /* the engine's own sequence, never MT5's request_id */
  uint64_t client_order_id;
  uint64_t magic;
  uint64_t position;  /* hedging: the ticket to close, 0 = none */
  int64_t since;      /* HISTORY: deals with a ticket above this */
  int64_t expire_msc; /* Unix ms after which the terminal must not execute it; 0 = never */
  double volume, price, sl, tp;
  int32_t action;    /* SB_ACTION_* */
  int32_t type;      /* ORDER_TYPE: 0 buy, 1 sell */
  int32_t deviation; /* points */
  int32_t filling;   /* ORDER_FILLING_*, or -1: the terminal chooses by the symbol's rules */
  char symbol[32];
  char comment[32]; /* our client order id, in decimal */
} sb_request;       /* 160 bytes */

typedef struct sb_result {
  uint64_t request_id, client_order_id;
  uint64_t deal, order;
  double volume, price, bid, ask;
  int32_t action;
  uint32_t retcode; /* TRADE_RETCODE_*, or SB_LOOKUP_* / SB_LIST_DONE for the bridge's own */
  int64_t time_msc;
  char comment[64]; /* the broker's text */
} sb_result;        /* 144 bytes */

typedef struct sb_deal {
  uint64_t ticket, order, position, magic;
  int64_t time_msc;
  double volume, price, profit, commission, swap;
  int32_t type, entry, reason; /* DEAL_TYPE, DEAL_ENTRY, DEAL_REASON */
  uint32_t replay;             /* 0: live (OnTradeTransaction); 1: in answer to a HISTORY request */
  char symbol[32];
  char comment[32];
} sb_deal; /* 160 bytes */

typedef struct sb_position {
  uint64_t snapshot; /* the POSITIONS request_id this answers */
  uint64_t ticket, magic;
  int64_t time_msc;
  double volume, price_open, sl, tp, profit;
  int32_t type;          /* POSITION_TYPE: 0 buy, 1 sell */
  uint32_t index, count; /* this is position index of count; count 0: no positions */
  uint32_t pad;
  char symbol[32];
  char comment[32];
} sb_position; /* 152 bytes */

typedef struct sb_ring_stats {
  uint64_t pushed, popped, full, corrupt_skipped;
} sb_ring_stats;

/* ---- both faces */

/* The ABI version this build speaks, and the open file's epoch (changes when the terminal
 * side creates the file anew). */
SB_API int sb_hello(int64_t h, uint32_t* abi_version, uint64_t* epoch);
/* Beat this side's heartbeat (a counter and the time). Call it at least every timeout/3. */
SB_API int sb_beat(int64_t h);
/* Whether the other side is alive: SB_OK if it has opened the bridge and its counter
 * moved within timeout_ms of this side's clock (the first call starts the watch);
 * SB_E_PEER_STOPPED if it has not opened the file yet or stopped beating;
 * SB_E_PEER_CLOSED if it closed. *age_ms: how long since its counter last moved. */
SB_API int sb_peer(int64_t h, int64_t timeout_ms, int64_t* age_ms);
/* Counters of one ring. */
SB_API int sb_stats(int64_t h, int32_t ring, sb_ring_stats* out);
/* Records waiting in one ring. */
SB_API int64_t sb_pending(int64_t h, int32_t ring);
/* Mark this side closed and release the handle. */
SB_API int sb_close(int64_t h);
/* The last error's message on this handle (UTF-8 / UTF-16, NUL-terminated, truncated to
 * len); returns its length. */
SB_API int sb_error(int64_t h, char* buf, int32_t len);
SB_API int sb_error_w(int64_t h, uint16_t* buf, int32_t len);
SB_API const char* sb_strerror(int32_t code);

/* ---- terminal face */

/* Create the bridge file at path anew (UTF-16; a Windows path in the DLL, `Z:\x\y` or a
 * POSIX path in the Linux build), mode 0660 there: an old file is marked retired and
 * removed first, so an engine that maps it sees SB_E_RECREATED. Returns a handle (> 0),
 * or an error code (< 0) with its message in err (UTF-16, err_len units). */
SB_API int64_t sbt_open_w(const uint16_t* path, uint16_t* err, int32_t err_len);
SB_API int sbt_account_w(int64_t h, int64_t login, int32_t margin_mode, int32_t connected,
                         int32_t trade_allowed, int32_t dlls_allowed, double balance, double equity,
                         double margin, double margin_free, const uint16_t* currency, const uint16_t* server);
SB_API int sbt_spec_w(int64_t h, const uint16_t* symbol, int32_t exists, int32_t digits, double point,
                      double tick_size, double tick_value, double contract_size, double volume_min,
                      double volume_max, double volume_step, int32_t stops_level, int32_t filling_mode,
                      int32_t execution_mode, int32_t trade_mode, const uint16_t* currency_base,
                      const uint16_t* currency_profit, const uint16_t* currency_margin);
SB_API int sbt_tick_w(int64_t h, const uint16_t* symbol, int64_t time_msc, double bid, double ask,
                      double last, double volume, uint32_t flags);
/* The next request, copied into *out; SB_EMPTY when there is none. */
SB_API int sbt_take_request(int64_t h, sb_request* out);
SB_API int sbt_result_w(int64_t h, uint64_t request_id, uint64_t client_order_id, int32_t action,
                        uint32_t retcode, uint64_t deal, uint64_t order, double volume, double price,
                        double bid, double ask, int64_t time_msc, const uint16_t* comment);
SB_API int sbt_deal_w(int64_t h, uint64_t ticket, uint64_t order, uint64_t position, const uint16_t* symbol,
                      int32_t type, int32_t entry, int32_t reason, double volume, double price, double profit,
                      double commission, double swap, uint64_t magic, int64_t time_msc, uint32_t replay,
                      const uint16_t* comment);
SB_API int sbt_position_w(int64_t h, uint64_t snapshot, uint32_t index, uint32_t count, uint64_t ticket,
                          const uint16_t* symbol, int32_t type, double volume, double price_open, double sl,
                          double tp, double profit, uint64_t magic, int64_t time_msc,
                          const uint16_t* comment);
/* Push up to n records of a T2E ring at once (the simulator's batches); *pushed: how many
 * went in (the rest did not fit). Each record is checked as the engine will check it. */
SB_API int sbt_push(int64_t h, int32_t ring, const void* records, int32_t record_size, int32_t n,
                    int32_t* pushed);

/* ---- engine face (Linux) */

/* Map an existing bridge file. Refused (SB_E_PERM) unless it is a regular file (not a
 * symlink) owned by owner_uid (-1: this process's user) that others may not read or
 * write (mode 0660 or tighter); SB_E_MAGIC/VERSION/LAYOUT/NOT_READY as they say. Returns
 * a handle (> 0) or an error (< 0) with its message in err. */
SB_API int64_t sbe_open(const char* path, int64_t owner_uid, char* err, int32_t err_len);
SB_API int sbe_request(int64_t h, const sb_request* req);
/* Pop up to max records of a T2E ring into out (record_size each); *got: how many. Stops
 * at the first bad record (SB_E_CORRUPT after the good ones before it are out). */
SB_API int sbe_poll(int64_t h, int32_t ring, void* out, int32_t record_size, int32_t max, int32_t* got);
/* Discard the record at the head of a ring (one that fails its check): counted. */
SB_API int sbe_skip(int64_t h, int32_t ring);
/* SB_E_RECREATED if the terminal side retired this file or another file now has its
 * path; else SB_OK. */
SB_API int sbe_check(int64_t h);

/* cdef-end */

#ifdef __cplusplus
}
#endif

#endif /* SOVBRIDGE_H */
