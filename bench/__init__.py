"""Benchmarks and long fuzzing for the node (issue 6). Run as ``python -m bench.run`` / ``python -m bench.fuzz``.

Everything here talks to loopback only, is bounded in count and time, and stops what it starts.
Results go to ``BENCHMARKS.md``; the test suite never asserts timings.
"""
