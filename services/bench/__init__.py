"""Benchmarks: `fedscreen bench` and its fixtures."""
