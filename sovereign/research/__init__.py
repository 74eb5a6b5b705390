"""Research over history: backtests, replays of recorded sessions, their reports, and the
pure-Python reference of the analyzers. It runs the engine's decision code, never the reverse."""
