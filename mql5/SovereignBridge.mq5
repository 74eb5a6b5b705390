//+------------------------------------------------------------------+
//| SovereignBridge.mq5: the terminal's side of the Sovereign bridge. |
//| It calls sovbridge.dll in the sequence csrc/bridge/wintest.c      |
//| tests under Wine: open (Wine path) -> hello -> account -> specs ->|
//| timer { beat, peer, ticks, requests } -> close. Deals and         |
//| position changes go out from OnTradeTransaction, ours or not.     |
//| No DLL call blocks: a full ring answers SB_FULL and the next      |
//| timer event tries again.                                          |
//+------------------------------------------------------------------+
#property strict
#property version "1.00"

input string BridgePath = "Z:\\run\\sovereign-bridge\\bridge.sov";  // where the engine maps it
input string Symbols    = "EURUSD,GBPUSD";                           // the terminal's names
input long   Magic      = 770001;                                    // this account's magic
input int    TimerMs    = 20;
input int    PeerTimeoutMs = 3000;

// The records' layout, field for field (MQL5 packs structs: the C side pads explicitly).
struct SbRequest {
   ulong  request_id, client_order_id, magic, position;
   long   since, expire_msc;
   double volume, price, sl, tp;
   int    action, type, deviation, filling;
   uchar  symbol[32];
   uchar  comment[32];
};

#import "sovbridge.dll"
long sbt_open_w(string path, ushort &err[], int err_len);
int  sb_hello(long h, uint &abi, ulong &epoch);
int  sb_beat(long h);
int  sb_peer(long h, long timeout_ms, long &age_ms);
int  sb_close(long h);
int  sb_error_w(long h, ushort &buf[], int len);
int  sbt_account_w(long h, long login, int margin_mode, int connected, int trade_allowed, int dlls_allowed,
                   double balance, double equity, double margin, double margin_free, string currency, string server);
int  sbt_spec_w(long h, string symbol, int exists, int digits, double point, double tick_size, double tick_value,
                double contract_size, double volume_min, double volume_max, double volume_step, int stops_level,
                int filling_mode, int execution_mode, int trade_mode, string base, string profit, string margin);
int  sbt_tick_w(long h, string symbol, long time_msc, double bid, double ask, double last, double volume, uint flags);
int  sbt_take_request(long h, SbRequest &out);
int  sbt_result_w(long h, ulong request_id, ulong cid, int action, uint retcode, ulong deal, ulong order,
                  double volume, double price, double bid, double ask, long time_msc, string comment);
int  sbt_deal_w(long h, ulong ticket, ulong order, ulong position, string symbol, int type, int entry, int reason,
                double volume, double price, double profit, double commission, double swap, ulong magic,
                long time_msc, uint replay, string comment);
int  sbt_position_w(long h, ulong snapshot, uint index, uint count, ulong ticket, string symbol, int type,
                    double volume, double price_open, double sl, double tp, double profit, ulong magic,
                    long time_msc, string comment);
#import

#define SB_OK 0
#define SB_EMPTY 1
#define SB_FULL 2
#define SB_ACTION_DEAL 1
#define SB_ACTION_LOOKUP 100
#define SB_ACTION_HISTORY 101
#define SB_ACTION_POSITIONS 102
#define SB_LOOKUP_NONE 1
#define SB_LOOKUP_FOUND 2
#define SB_LOOKUP_PENDING 3
#define SB_LIST_DONE 4

long   g_h = 0;
string g_symbols[];
long   g_last_msc[];
int    g_peer = -999;
// The bridge carries UTC (Unix ms): the engine's market calendar, its trading day and its
// request expiries are UTC. The trade server stamps ticks and deals in its own zone (brokers
// commonly GMT+2, +3 in summer, so that midnight is New York's 17:00): its offset, to the
// quarter hour, from the terminal's computed server time and the computer's GMT, taken at
// every timer event (it follows the server's daylight saving). A deal replayed from before a
// switch is converted with today's offset: an hour off, which no decision depends on.
long   g_offset_ms = 0;

void ServerOffset() {
   g_offset_ms = (long)(MathRound((double)(TimeTradeServer() - TimeGMT()) / 900.0) * 900.0) * 1000;
}

// Now in UTC ms, to the second: the computer's clock, the one the engine sets expiries by.
long NowUtcMs() { return (long)TimeGMT() * 1000; }

string BridgeError() {
   ushort buf[320];
   sb_error_w(g_h, buf, 320);
   return ShortArrayToString(buf);
}

int OnInit() {
   if(!TerminalInfoInteger(TERMINAL_DLLS_ALLOWED)) { Print("Sovereign: allow DLL imports"); return INIT_FAILED; }
   ushort err[320];
   g_h = sbt_open_w(BridgePath, err, 320);                                    // 1. open by the Wine path
   if(g_h <= 0) { Print("Sovereign: ", ShortArrayToString(err)); return INIT_FAILED; }
   uint abi; ulong epoch;
   sb_hello(g_h, abi, epoch);                                                 // 2. hello
   PrintFormat("Sovereign bridge ABI %u epoch %I64u", abi, epoch);
   ServerOffset();                                                            // (UTC before any record)
   SendAccount();                                                             // 3. account
   int n = StringSplit(Symbols, ',', g_symbols);                              // 4. specs
   ArrayResize(g_last_msc, n);
   for(int i = 0; i < n; i++) { g_last_msc[i] = 0; SendSpec(g_symbols[i]); }
   EventSetMillisecondTimer(TimerMs);
   return INIT_SUCCEEDED;
}

void OnDeinit(const int reason) {
   EventKillTimer();
   if(g_h > 0) sb_close(g_h);                                                 // 8. close
   g_h = 0;
}

void SendAccount() {
   sbt_account_w(g_h, AccountInfoInteger(ACCOUNT_LOGIN), (int)AccountInfoInteger(ACCOUNT_MARGIN_MODE),
                 (int)TerminalInfoInteger(TERMINAL_CONNECTED), (int)TerminalInfoInteger(TERMINAL_TRADE_ALLOWED),
                 (int)TerminalInfoInteger(TERMINAL_DLLS_ALLOWED), AccountInfoDouble(ACCOUNT_BALANCE),
                 AccountInfoDouble(ACCOUNT_EQUITY), AccountInfoDouble(ACCOUNT_MARGIN),
                 AccountInfoDouble(ACCOUNT_MARGIN_FREE), AccountInfoString(ACCOUNT_CURRENCY),
                 AccountInfoString(ACCOUNT_SERVER));
}

void SendSpec(string s) {
   if(!SymbolSelect(s, true)) {                                               // the terminal lacks it: say so
      sbt_spec_w(g_h, s, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, "", "", "");
      return;
   }
   sbt_spec_w(g_h, s, 1, (int)SymbolInfoInteger(s, SYMBOL_DIGITS), SymbolInfoDouble(s, SYMBOL_POINT),
              SymbolInfoDouble(s, SYMBOL_TRADE_TICK_SIZE), SymbolInfoDouble(s, SYMBOL_TRADE_TICK_VALUE),
              SymbolInfoDouble(s, SYMBOL_TRADE_CONTRACT_SIZE), SymbolInfoDouble(s, SYMBOL_VOLUME_MIN),
              SymbolInfoDouble(s, SYMBOL_VOLUME_MAX), SymbolInfoDouble(s, SYMBOL_VOLUME_STEP),
              (int)SymbolInfoInteger(s, SYMBOL_TRADE_STOPS_LEVEL), (int)SymbolInfoInteger(s, SYMBOL_FILLING_MODE),
              (int)SymbolInfoInteger(s, SYMBOL_TRADE_EXEMODE), (int)SymbolInfoInteger(s, SYMBOL_TRADE_MODE),
              SymbolInfoString(s, SYMBOL_CURRENCY_BASE), SymbolInfoString(s, SYMBOL_CURRENCY_PROFIT),
              SymbolInfoString(s, SYMBOL_CURRENCY_MARGIN));
}

void OnTimer() {
   if(g_h <= 0) return;
   sb_beat(g_h);                                                              // 5. heartbeat
   long age;
   int peer = sb_peer(g_h, PeerTimeoutMs, age);
   if(peer != g_peer) { g_peer = peer; Print("Sovereign engine: ", peer == SB_OK ? "alive" : BridgeError()); }
   ServerOffset();
   ForwardTicks();                                                            // 6. ticks
   static ulong beats = 0;
   if(++beats % 50 == 0) SendAccount();
   SbRequest q;                                                               // 7. requests
   for(int i = 0; i < 64 && sb_peer(g_h, PeerTimeoutMs, age) != -11; i++) {
      int rc = sbt_take_request(g_h, q);
      if(rc == SB_EMPTY) break;
      if(rc != SB_OK) { Print("Sovereign: ", BridgeError()); break; }
      Serve(q);
   }
}

// Every tick since the last one sent, by time_msc: CopyTicks backfills a gap (a busy timer, a reconnect).
void ForwardTicks() {
   for(int i = 0; i < ArraySize(g_symbols); i++) {
      MqlTick ticks[];
      int n = g_last_msc[i] == 0 ? CopyTicks(g_symbols[i], ticks, COPY_TICKS_ALL, 0, 1)
                                 : CopyTicks(g_symbols[i], ticks, COPY_TICKS_ALL, (ulong)g_last_msc[i] + 1, 100000);
      for(int k = 0; k < n; k++) {
         int rc = sbt_tick_w(g_h, g_symbols[i], ticks[k].time_msc - g_offset_ms, ticks[k].bid, ticks[k].ask, ticks[k].last,
                             ticks[k].volume_real, ticks[k].flags);
         if(rc != SB_OK) break;                                               // full: the rest next time
         g_last_msc[i] = ticks[k].time_msc;
      }
   }
}

// MetaQuotes' CTrade::FillingCheck (SYMBOL_FILLING_MODE is a mask: FOK=1, IOC=2).
ENUM_ORDER_TYPE_FILLING Filling(string s, int wanted) {
   if(wanted >= 0) return (ENUM_ORDER_TYPE_FILLING)wanted;
   long mode = SymbolInfoInteger(s, SYMBOL_TRADE_EXEMODE), mask = SymbolInfoInteger(s, SYMBOL_FILLING_MODE);
   if(mode == SYMBOL_TRADE_EXECUTION_REQUEST || mode == SYMBOL_TRADE_EXECUTION_INSTANT) return ORDER_FILLING_FOK;
   if((mask & 1) != 0) return ORDER_FILLING_FOK;
   if((mask & 2) != 0) return ORDER_FILLING_IOC;
   return ORDER_FILLING_RETURN;
}

void Serve(SbRequest &q) {
   string symbol = CharArrayToString(q.symbol, 0, -1, CP_UTF8), comment = CharArrayToString(q.comment, 0, -1, CP_UTF8);
   long now = NowUtcMs();
   if(q.action == SB_ACTION_DEAL) {
      // Expired when any moment of this second is past it (never executed late). Not
      // TimeTradeServer(): the server's zone would expire every request on a GMT+2 server.
      if(q.expire_msc != 0 && now + 999 > q.expire_msc) {
         sbt_result_w(g_h, q.request_id, q.client_order_id, q.action, TRADE_RETCODE_CANCEL, 0, 0, 0, 0, 0, 0, now,
                      "expired before it was executed");
         return;
      }
      MqlTradeRequest r = {}; MqlTradeResult res = {};
      r.action = TRADE_ACTION_DEAL; r.magic = Magic; r.symbol = symbol; r.volume = q.volume;
      r.type = q.type == 0 ? ORDER_TYPE_BUY : ORDER_TYPE_SELL;
      r.price = q.type == 0 ? SymbolInfoDouble(symbol, SYMBOL_ASK) : SymbolInfoDouble(symbol, SYMBOL_BID);
      r.sl = q.sl; r.tp = q.tp; r.deviation = (ulong)q.deviation; r.position = q.position;
      r.type_filling = Filling(symbol, q.filling); r.comment = comment;          // our client order id
      if(!OrderSend(r, res) && res.retcode == 0) res.retcode = TRADE_RETCODE_ERROR;
      sbt_result_w(g_h, q.request_id, q.client_order_id, q.action, res.retcode, res.deal, res.order, res.volume,
                   res.price, res.bid, res.ask, now, res.comment);
   } else if(q.action == SB_ACTION_LOOKUP) {
      Lookup(q, comment, now);
   } else if(q.action == SB_ACTION_HISTORY) {
      HistorySelect(0, TimeCurrent() + 86400);
      for(int i = 0; i < HistoryDealsTotal(); i++) {
         ulong t = HistoryDealGetTicket(i);
         if((long)t > q.since) SendDeal(t, 1);
      }
      sbt_result_w(g_h, q.request_id, 0, q.action, SB_LIST_DONE, 0, 0, 0, 0, 0, 0, now, "");
   } else if(q.action == SB_ACTION_POSITIONS) {
      int n = PositionsTotal();
      for(int i = 0; i < n; i++) {
         ulong t = PositionGetTicket(i);
         sbt_position_w(g_h, q.request_id, i, n, t, PositionGetString(POSITION_SYMBOL),
                        (int)PositionGetInteger(POSITION_TYPE), PositionGetDouble(POSITION_VOLUME),
                        PositionGetDouble(POSITION_PRICE_OPEN), PositionGetDouble(POSITION_SL),
                        PositionGetDouble(POSITION_TP), PositionGetDouble(POSITION_PROFIT),
                        PositionGetInteger(POSITION_MAGIC), PositionGetInteger(POSITION_TIME_MSC) - g_offset_ms,
                        PositionGetString(POSITION_COMMENT));
      }
      sbt_result_w(g_h, q.request_id, 0, q.action, SB_LIST_DONE, 0, 0, 0, 0, 0, 0, now, "");
   } else {
      sbt_result_w(g_h, q.request_id, q.client_order_id, q.action, TRADE_RETCODE_INVALID, 0, 0, 0, 0, 0, 0, now,
                   "unknown action");
   }
}

// Our client id (magic + comment) in the working orders, then in the deal history.
void Lookup(SbRequest &q, string comment, long now) {
   for(int i = 0; i < OrdersTotal(); i++) {
      ulong t = OrderGetTicket(i);
      if(OrderGetInteger(ORDER_MAGIC) == Magic && OrderGetString(ORDER_COMMENT) == comment) {
         sbt_result_w(g_h, q.request_id, q.client_order_id, q.action, SB_LOOKUP_PENDING, 0, t, 0, 0, 0, 0, now, "");
         return;
      }
   }
   HistorySelect(0, TimeCurrent() + 86400);
   double vol = 0, value = 0; ulong last = 0, order = 0;
   for(int i = 0; i < HistoryDealsTotal(); i++) {
      ulong t = HistoryDealGetTicket(i);
      if(HistoryDealGetInteger(t, DEAL_MAGIC) != Magic || HistoryDealGetString(t, DEAL_COMMENT) != comment) continue;
      double v = HistoryDealGetDouble(t, DEAL_VOLUME);
      vol += v; value += v * HistoryDealGetDouble(t, DEAL_PRICE); last = t;
      order = HistoryDealGetInteger(t, DEAL_ORDER);
   }
   sbt_result_w(g_h, q.request_id, q.client_order_id, q.action, vol > 0 ? SB_LOOKUP_FOUND : SB_LOOKUP_NONE, last,
                order, vol, vol > 0 ? value / vol : 0, 0, 0, now, "");
}

void SendDeal(ulong t, uint replay) {
   sbt_deal_w(g_h, t, HistoryDealGetInteger(t, DEAL_ORDER), HistoryDealGetInteger(t, DEAL_POSITION_ID),
              HistoryDealGetString(t, DEAL_SYMBOL), (int)HistoryDealGetInteger(t, DEAL_TYPE),
              (int)HistoryDealGetInteger(t, DEAL_ENTRY), (int)HistoryDealGetInteger(t, DEAL_REASON),
              HistoryDealGetDouble(t, DEAL_VOLUME), HistoryDealGetDouble(t, DEAL_PRICE),
              HistoryDealGetDouble(t, DEAL_PROFIT), HistoryDealGetDouble(t, DEAL_COMMISSION),
              HistoryDealGetDouble(t, DEAL_SWAP), HistoryDealGetInteger(t, DEAL_MAGIC),
              HistoryDealGetInteger(t, DEAL_TIME_MSC) - g_offset_ms, replay, HistoryDealGetString(t, DEAL_COMMENT));
}

// Every deal, ours or not (manual, SL/TP, stop-out): the engine adopts what it did not send.
void OnTradeTransaction(const MqlTradeTransaction &trans, const MqlTradeRequest &request,
                        const MqlTradeResult &result) {
   if(g_h <= 0 || trans.type != TRADE_TRANSACTION_DEAL_ADD) return;
   if(HistoryDealSelect(trans.deal)) SendDeal(trans.deal, 0);
}
