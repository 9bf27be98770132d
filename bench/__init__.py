"""Benchmarks of the encoders, data pipeline, pre-training and probes (results in BENCHMARKS.md).

Each script runs as ``python -m bench.NAME`` or ``python bench/NAME.py`` from the repository root.
"""
