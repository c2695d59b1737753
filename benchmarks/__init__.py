"""Benchmarks of the circuit breaker against a bare call and its peers (docs/benchmarks.md).

A package so that ``python -m benchmarks.throughput`` runs and the test modules import it.
"""
