"""Durable state: the LMDB store, its schema (every database and key), the order book, and
the session recordings."""
