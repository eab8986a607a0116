"""cxrflow benchmarks: every number is a ratio against a bare baseline measured in the same run.

Run `python -m bench.run_all [--count N] [--only NAME]`; see bench/README.md.
"""
