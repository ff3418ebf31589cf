"""Benchmark entry points runnable from the repository root (``python -m bench.gpu_bench``)."""
