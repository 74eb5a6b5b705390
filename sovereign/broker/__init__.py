"""Brokers: where orders leave the system. `paper` simulates fills on the live ticks."""
