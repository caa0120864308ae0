"""Benchmark scripts: run them as modules, e.g. ``python -m minipeft.benchmarks.models --quick``."""
