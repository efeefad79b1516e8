"""asv benchmark suites for wbench (scikit-image style: ``benchmark_<area>.py``, ``<Thing>Suite``).

Run ``asv run --python=same --quick`` for a smoke pass, ``WBENCH_BENCH_FULL=1 asv run`` for the
full parameter grids, and ``python -m bench.speed_gate`` for the CI ratio gate.
"""
