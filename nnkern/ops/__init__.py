"""Kernels, one package per op: ``__init__`` validates and dispatches, ``ref.py`` is the plain
NumPy reference (the test oracle), ``cpu.py`` the Numba CPU kernels, ``cuda.py`` the CUDA kernels.
All three backends export the same function names with the same signatures."""
