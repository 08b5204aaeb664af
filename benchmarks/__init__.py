"""medalist's speed benchmarks: ``python -m benchmarks [P1 P7 ...]`` (``make bench``).

The harness is :mod:`benchmarks.harness`; each ``benchmarks/p<N>_*.py`` registers its benchmarks.
"""
