"""Reproducible benchmarks; each module runs with ``python -m bench.<name>`` and ends with a
one-line summary. docs/benchmarks.md keeps the latest figures."""
