"""Durable state: the LMDB store, its schema (every database and key), the order book, the
session recordings, and the read-only views the CLI and the supervisor show."""
