"""PyTorch reference steps for `benchmarks/throughput.py` (torch extra only)."""
