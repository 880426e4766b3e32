"""
Runnable benchmarks that print tables of ratios (never timing asserts in tests).

Each ``benchmarks/bench_<name>.py`` defines ``main() -> str`` returning its results as
markdown. ``python -m benchmarks`` runs them all (or those named:
``python -m benchmarks pipeline monitor``), prints each table and writes them together to
``benchmarks/results.md``. ``BENCH_QUICK=1`` asks every benchmark for a short smoke run.
"""
