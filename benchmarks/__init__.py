"""Benchmark scripts that measure tierkit's claims; run each from the repository root as python -m benchmarks.<name>."""
