"""Benchmarks: encoder and end-to-end latency, peer runtimes."""
