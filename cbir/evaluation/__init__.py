"""Metrics, protocols and benchmarks over stored indexes."""
