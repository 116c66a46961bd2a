"""Run independent tasks on a few Python threads, with BLAS single-threaded.

Used by the convolutions and by the large matrix products of ``nnkern.runtime.matmul``
(and so by dense layers where the kernels cannot call BLAS themselves, ``ops/_blas.py``). The
Winograd path (conv2d/winograd.py) splits each phase into tasks that run whole serial kernels:
a Numba transform of a range of images (compiled ``nogil``) or a batch of BLAS GEMMs through
``np.matmul`` (which releases the GIL). Threads run the tasks side by side, so the only
parallelism is across tasks: BLAS runs single-threaded meanwhile (NUMBA_NOTES §1.2: one level
of parallelism at a time; small GEMMs parallelise badly inside BLAS, and OpenBLAS threads
spinning against Numba's cost 2x on 2 cores). The worker count follows
``numba.get_num_threads()``.

Results never depend on the worker count: every task computes its own outputs with the same
serial code whatever thread runs it, and the split into tasks is fixed by the shapes.
"""

import os
import threading
from concurrent.futures import ThreadPoolExecutor, wait

import numba
import numpy as np

_lock = threading.Lock()
_pool = None
_pool_key = None      # (size, pid): a forked child needs its own pool (no parent threads)
_blas = None          # threadpoolctl controllers of the BLAS libraries, found once
_blas_depth = 0       # nesting count of single_threaded_blas (calls from several threads)
_blas_saved = ()


_workspace = threading.local()


def scratch(slot, shape, dtype):
    """A reusable work array for the calling thread (grown on demand, never shrunk).

    Fresh multi-MiB arrays come from mmap and page-fault on first touch (~10 ms per Winograd
    forward at 64x64x32x32): buffers that live across calls avoid that. Each thread has its
    own, so concurrent convs (or worker tasks) never share one.
    """
    size = int(np.prod(shape))
    buf = getattr(_workspace, slot, None)
    if buf is None or buf.dtype != dtype or buf.size < size:
        buf = np.empty(size, dtype)
        setattr(_workspace, slot, buf)
    return buf[:size].reshape(shape)


def workers():
    """How many tasks may run at once: Numba's thread count (NUMBA_NUM_THREADS, set_num_threads)."""
    return max(1, numba.get_num_threads())


def _executor(n):
    global _pool, _pool_key
    with _lock:
        if _pool is None or _pool_key != (n, os.getpid()):
            if _pool is not None and _pool_key[1] == os.getpid():
                _pool.shutdown(wait=False)
            _pool = ThreadPoolExecutor(n, thread_name_prefix="nnkern-conv")
            _pool_key = (n, os.getpid())
        return _pool


def run_tasks(calls):
    """Run every call ``(fn, *args)`` in ``calls`` and wait for all of them: on the worker
    threads when there are several workers and calls, else in order on this thread."""
    n = min(workers(), len(calls))
    if n <= 1:
        for fn, *args in calls:
            fn(*args)
        return
    pool = _executor(workers())
    futures = [pool.submit(*call) for call in calls]
    wait(futures)                 # all of them, even after an error: they write shared buffers
    for future in futures:
        future.result()           # re-raises the first error


def _blas_controllers():
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController
        _blas = [lib for lib in ThreadpoolController().lib_controllers if lib.user_api == "blas"]
    return _blas


class single_threaded_blas:
    """Context: every loaded BLAS library runs single-threaded, restored on exit.

    Setting the count costs ~1 µs through the cached controllers (a fresh
    ``threadpool_limits`` scans the process and costs ~0.5 ms, too much per conv call).
    """

    def __enter__(self):
        global _blas_depth, _blas_saved
        with _lock:
            if _blas_depth == 0:
                libs = _blas_controllers()
                _blas_saved = tuple(lib.get_num_threads() for lib in libs)
                for lib in libs:
                    lib.set_num_threads(1)
            _blas_depth += 1
        return self

    def __exit__(self, *exc):
        global _blas_depth
        with _lock:
            _blas_depth -= 1
            if _blas_depth == 0:
                for lib, n in zip(_blas_controllers(), _blas_saved):
                    lib.set_num_threads(n)
        return False
