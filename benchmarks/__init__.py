"""Benchmarks of the book, run from the repository root: ``python -m benchmarks.bench`` (``make bench``).

Not part of the ``helpers`` library: they import it and measure what its recipes achieve.
"""
