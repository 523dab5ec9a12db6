"""Benchmarks for retrain's speed targets; `make bench` runs them all and prints figures."""
