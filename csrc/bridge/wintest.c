/* wintest: loads sovbridge.dll as MetaTrader 5 would (LoadLibrary, then each export by
 * name) and calls it in exactly the sequence mql5/SovereignBridge.mq5 does, against an
 * engine that maps the same file from Linux:
 *
 *   open by the Wine path -> hello -> account -> specs (one symbol the terminal lacks:
 *   exists=0) -> wait for the engine's heartbeat -> ticks -> loop { beat, take requests,
 *   answer them (result, deals, positions) } until the engine closes -> close.
 *
 * Usage: wintest.exe DLL BRIDGE_PATH [N_TICKS]. Prints one line per step; exit 0 when
 * the engine closed the bridge after the exchange, 2 on a bridge error, 3 on a timeout. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <wchar.h>
#include <windows.h>

#include "sovbridge.h"

typedef int64_t (*open_fn)(const uint16_t*, uint16_t*, int32_t);
typedef int (*hello_fn)(int64_t, uint32_t*, uint64_t*);
typedef int (*beat_fn)(int64_t);
typedef int (*peer_fn)(int64_t, int64_t, int64_t*);
typedef int (*close_fn)(int64_t);
typedef int (*error_w_fn)(int64_t, uint16_t*, int32_t);
typedef int (*account_fn)(int64_t, int64_t, int32_t, int32_t, int32_t, int32_t, double, double, double,
                          double, const uint16_t*, const uint16_t*);
typedef int (*spec_fn)(int64_t, const uint16_t*, int32_t, int32_t, double, double, double, double, double,
                       double, double, int32_t, int32_t, int32_t, int32_t, const uint16_t*, const uint16_t*,
                       const uint16_t*);
typedef int (*tick_fn)(int64_t, const uint16_t*, int64_t, double, double, double, double, uint32_t);
typedef int (*take_fn)(int64_t, sb_request*);
typedef int (*result_fn)(int64_t, uint64_t, uint64_t, int32_t, uint32_t, uint64_t, uint64_t, double, double,
                         double, double, int64_t, const uint16_t*);
typedef int (*deal_fn)(int64_t, uint64_t, uint64_t, uint64_t, const uint16_t*, int32_t, int32_t, int32_t,
                       double, double, double, double, double, uint64_t, int64_t, uint32_t, const uint16_t*);
typedef int (*position_fn)(int64_t, uint64_t, uint32_t, uint32_t, uint64_t, const uint16_t*, int32_t, double,
                           double, double, double, double, uint64_t, int64_t, const uint16_t*);

static struct {
  open_fn open;
  hello_fn hello;
  beat_fn beat;
  peer_fn peer;
  close_fn close;
  error_w_fn error_w;
  account_fn account;
  spec_fn spec;
  tick_fn tick;
  take_fn take;
  result_fn result;
  deal_fn deal;
  position_fn position;
} B;

static int64_t g_h;

static void say_error(const char* step, int rc) {
  uint16_t w[320];
  char msg[640];
  B.error_w(g_h, w, 320);
  WideCharToMultiByte(CP_UTF8, 0, (LPCWCH)w, -1, msg, sizeof msg, NULL, NULL);
  printf("error %s rc=%d %s\n", step, rc, msg);
  fflush(stdout);
}

#define LOAD(field, name)                                 \
  do {                                                    \
    FARPROC p = GetProcAddress(dll, name);                \
    if (p == NULL) {                                      \
      printf("error the DLL does not export %s\n", name); \
      return 2;                                           \
    }                                                     \
    memcpy(&B.field, &p, sizeof p);                       \
  } while (0)

/* A netting account's book of one position per symbol, enough to answer as the EA does. */
typedef struct {
  const wchar_t* symbol;
  double volume; /* signed */
  double price;
  uint64_t ticket;
} position;

int main(int argc, char** argv) {
  if (argc < 3) {
    printf("usage: wintest.exe DLL BRIDGE_PATH [N_TICKS]\n");
    return 2;
  }
  int n_ticks = argc > 3 ? atoi(argv[3]) : 1000;
  wchar_t dll_path[1024], bridge_path[1024];
  MultiByteToWideChar(CP_UTF8, 0, argv[1], -1, dll_path, 1024);
  MultiByteToWideChar(CP_UTF8, 0, argv[2], -1, bridge_path, 1024);
  HMODULE dll = LoadLibraryW(dll_path);
  if (dll == NULL) {
    printf("error LoadLibrary failed: Windows error %lu\n", (unsigned long)GetLastError());
    return 2;
  }
  LOAD(open, "sbt_open_w");
  LOAD(hello, "sb_hello");
  LOAD(beat, "sb_beat");
  LOAD(peer, "sb_peer");
  LOAD(close, "sb_close");
  LOAD(error_w, "sb_error_w");
  LOAD(account, "sbt_account_w");
  LOAD(spec, "sbt_spec_w");
  LOAD(tick, "sbt_tick_w");
  LOAD(take, "sbt_take_request");
  LOAD(result, "sbt_result_w");
  LOAD(deal, "sbt_deal_w");
  LOAD(position, "sbt_position_w");
  printf("loaded\n");

  /* 1. open by the Wine path */
  uint16_t err[320];
  g_h = B.open((const uint16_t*)bridge_path, err, 320);
  if (g_h <= 0) {
    char msg[640];
    WideCharToMultiByte(CP_UTF8, 0, (LPCWCH)err, -1, msg, sizeof msg, NULL, NULL);
    printf("error open rc=%lld %s\n", (long long)g_h, msg);
    return 2;
  }
  /* 2. hello */
  uint32_t abi = 0;
  uint64_t epoch = 0;
  B.hello(g_h, &abi, &epoch);
  printf("hello abi=%u epoch=%llu\n", abi, (unsigned long long)epoch);
  /* A made-up handle is refused, not dereferenced. */
  printf("bogus handle rc=%d\n", B.hello(12345, &abi, &epoch));
  /* 3. account, 4. specs */
  int rc = B.account(g_h, 5551234, 0, 1, 1, 1, 100000.0, 100000.0, 0.0, 100000.0, (const uint16_t*)L"USD",
                     (const uint16_t*)L"Demo-Server");
  if (rc != SB_OK) return say_error("account", rc), 2;
  const wchar_t* symbols[2] = {L"EURUSD.r", L"GBPUSD.r"};
  for (int i = 0; i < 2; i++) {
    rc = B.spec(g_h, (const uint16_t*)symbols[i], 1, 5, 0.00001, 0.00001, 1.0, 100000.0, 0.01, 100.0, 0.01,
                10, 1, 2, 4, (const uint16_t*)L"EUR", (const uint16_t*)L"USD", (const uint16_t*)L"EUR");
    if (rc != SB_OK) return say_error("spec", rc), 2;
  }
  rc = B.spec(g_h, (const uint16_t*)L"NOSUCH", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, (const uint16_t*)L"",
              (const uint16_t*)L"", (const uint16_t*)L"");
  if (rc != SB_OK) return say_error("spec", rc), 2;
  /* A symbol longer than its field is refused with a message, nothing written. */
  rc = B.tick(g_h, (const uint16_t*)L"A_SYMBOL_NAME_FAR_LONGER_THAN_THIRTY_ONE_CHARS", 0, 1, 1, 0, 0, 0);
  say_error("long-symbol", rc);
  printf("specs sent\n");
  fflush(stdout);

  /* 5. wait for the engine's heartbeat */
  DWORD start = GetTickCount();
  for (;;) {
    B.beat(g_h);
    int64_t age = 0;
    if (B.peer(g_h, 20000, &age) == SB_OK) break;
    if (GetTickCount() - start > 60000) return printf("error the engine never beat\n"), 3;
    Sleep(1);
  }
  printf("engine alive\n");
  fflush(stdout);

  /* 6. ticks (a full ring is retried on the next pass, as the EA's next timer event) */
  int64_t t0 = 1767225600000; /* 2026-01-01 */
  for (int i = 0; i < n_ticks;) {
    double bid = 1.1 + 0.00001 * (i % 100);
    rc = B.tick(g_h, (const uint16_t*)symbols[i % 2], t0 + i, bid, bid + 0.0002, 0.0, 1.0, 6);
    if (rc == SB_FULL) {
      Sleep(1);
      continue;
    }
    if (rc != SB_OK) return say_error("tick", rc), 2;
    i++;
  }
  printf("ticks sent %d\n", n_ticks);
  fflush(stdout);

  /* 7. requests until the engine closes */
  position book[2] = {{L"EURUSD.r", 0, 0, 0}, {L"GBPUSD.r", 0, 0, 0}};
  uint64_t next_ticket = 1000, n_deals = 0, deals_done[64][6];
  double deal_px[64];
  int served = 0;
  start = GetTickCount();
  for (;;) {
    B.beat(g_h);
    int64_t age = 0;
    rc = B.peer(g_h, 20000, &age);
    if (rc == SB_E_PEER_CLOSED) break;
    if (rc != SB_OK) return say_error("peer", rc), 3;
    if (GetTickCount() - start > 60000) return printf("error timeout serving requests\n"), 3;
    sb_request q;
    rc = B.take(g_h, &q);
    if (rc == SB_EMPTY) {
      Sleep(1);
      continue;
    }
    if (rc != SB_OK) return say_error("take", rc), 2;
    served++;
    wchar_t comment[64], sym[64];
    MultiByteToWideChar(CP_UTF8, 0, q.comment, -1, comment, 64);
    MultiByteToWideChar(CP_UTF8, 0, q.symbol, -1, sym, 64);
    int64_t now = t0 + n_ticks + served;
    if (q.action == SB_ACTION_DEAL) {
      int k = wcscmp(sym, L"EURUSD.r") == 0 ? 0 : wcscmp(sym, L"GBPUSD.r") == 0 ? 1 : -1;
      if (k < 0) {
        B.result(g_h, q.request_id, q.client_order_id, q.action, 10013, 0, 0, 0, 0, 0, 0, now,
                 (const uint16_t*)L"Invalid request: unknown symbol");
        continue;
      }
      double px = q.type == 0 ? 1.1002 : 1.1;
      uint64_t order = next_ticket++, deal = next_ticket++;
      double before = book[k].volume, signed_vol = q.type == 0 ? q.volume : -q.volume;
      int entry = before == 0 ? 0 : (before > 0) == (signed_vol > 0) ? 0 : 1;
      if (book[k].ticket == 0) book[k].ticket = order;
      book[k].volume += signed_vol;
      book[k].price = px;
      B.result(g_h, q.request_id, q.client_order_id, q.action, 10009, deal, order, q.volume, px, 1.1, 1.1002,
               now, (const uint16_t*)L"Request executed \u00e9");
      B.deal(g_h, deal, order, book[k].ticket, (const uint16_t*)sym, q.type, entry, 3, q.volume, px, 0, -0.7,
             0, q.magic, now, 0, (const uint16_t*)comment);
      if (n_deals < 64) {
        uint64_t* d = deals_done[n_deals];
        d[0] = deal, d[1] = order, d[2] = book[k].ticket, d[3] = (uint64_t)q.type, d[4] = (uint64_t)entry,
        d[5] = q.magic;
        deal_px[n_deals++] = px;
      }
      printf("deal %llu cid=%llu\n", (unsigned long long)deal, (unsigned long long)q.client_order_id);
    } else if (q.action == SB_ACTION_LOOKUP) {
      B.result(g_h, q.request_id, q.client_order_id, q.action, SB_LOOKUP_NONE, 0, 0, 0, 0, 0, 0, now,
               (const uint16_t*)L"");
    } else if (q.action == SB_ACTION_HISTORY) {
      for (uint64_t i = 0; i < n_deals; i++) {
        uint64_t* d = deals_done[i];
        if ((int64_t)d[0] <= q.since) continue;
        B.deal(g_h, d[0], d[1], d[2], (const uint16_t*)book[0].symbol, (int32_t)d[3], (int32_t)d[4], 3, 0.01,
               deal_px[i], 0, 0, 0, d[5], now, 1, (const uint16_t*)L"replayed");
      }
      B.result(g_h, q.request_id, 0, q.action, SB_LIST_DONE, 0, 0, 0, 0, 0, 0, now, (const uint16_t*)L"");
    } else if (q.action == SB_ACTION_POSITIONS) {
      uint32_t count = 0, index = 0;
      for (int k = 0; k < 2; k++) count += book[k].volume != 0;
      for (int k = 0; k < 2; k++) {
        if (book[k].volume == 0) continue;
        B.position(g_h, q.request_id, index++, count, book[k].ticket, (const uint16_t*)book[k].symbol,
                   book[k].volume > 0 ? 0 : 1, book[k].volume > 0 ? book[k].volume : -book[k].volume,
                   book[k].price, 0, 0, 0, q.magic, now, (const uint16_t*)L"");
      }
      B.result(g_h, q.request_id, 0, q.action, SB_LIST_DONE, 0, 0, 0, 0, 0, 0, now, (const uint16_t*)L"");
    } else {
      B.result(g_h, q.request_id, q.client_order_id, q.action, 10013, 0, 0, 0, 0, 0, 0, now,
               (const uint16_t*)L"Invalid request: unknown action");
    }
    fflush(stdout);
  }
  printf("served %d\n", served);
  /* 8. close */
  rc = B.close(g_h);
  printf("closed rc=%d\n", rc);
  return 0;
}
