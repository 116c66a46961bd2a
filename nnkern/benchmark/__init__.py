"""``nnkern.benchmark``: the benchmark suite behind ``python -m nnkern bench``.

* :mod:`~nnkern.benchmark.stats` — clocks, calibration, summary statistics;
* :mod:`~nnkern.benchmark.counting` — FLOP and byte counts per op and pass;
* :mod:`~nnkern.benchmark.ceilings` — this machine's sgemm and copy-bandwidth ceilings;
* :mod:`~nnkern.benchmark.cases` — the standard shape set, nnkern and PyTorch closures;
* :mod:`~nnkern.benchmark.steps` — whole training steps against PyTorch with the same weights;
* :mod:`~nnkern.benchmark.jitcost` — cold/warm compile cost in fresh processes;
* :mod:`~nnkern.benchmark.report` — table, JSON (schema in bench/README.md), roofline, RESULTS.md;
* :mod:`~nnkern.benchmark.runner` and :mod:`~nnkern.benchmark.cli` — orchestration and options.

PyTorch is only ever imported lazily, for the comparison, and is never required.
"""
