"""Benchmarks: PyTorch against the bundle in one run (runner), one backend per process (worker),
and the matmul floor (floor)."""
