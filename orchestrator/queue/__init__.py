"""Queues: RQ over Redis, fed from the store (never the other way round)."""
