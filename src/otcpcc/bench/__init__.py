"""Benchmarks: ``otcpcc bench`` (``speed.py``) against the per-pair reference loop (``reference.py``)."""
