"""Reproducible benchmarks of xpipe against Dask distributed, run side by side.

Run ``python -m bench`` (``make bench``) for the full set, ``python -m bench --quick`` for
a smoke check; ``python -m bench --help`` lists the options. Task functions both systems
run live in :mod:`bench.tasks`; results go to ``bench/results/`` as JSON.
"""

__all__: list[str] = []
