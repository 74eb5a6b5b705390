"""Market data: the simulated market, data files (CSV, MT5 exports, .sovdata) and the feeds
that turn them into the gateway's ticks."""
