"""Sovereign: an autonomous trading engine with a C++ hot path."""

__version__ = "0.1.0"
