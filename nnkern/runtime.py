"""Runtime controls: thread counts for every pool nnkern uses, and kernel warm-up.

Threads
-------
nnkern runs work on Numba's threads (the ``prange`` kernels) and on its own worker threads
(tasks of the convolutions and of large matrix products, each with single-threaded BLAS;
``nnkern/ops/_parallel.py``, sized by Numba's count). The OpenBLAS copies of NumPy and of
SciPy (BLAS calls inside jitted code, when SciPy is installed) have pools of their own. Each
defaults to every core, and on a small machine two pools busy at once, or one pool fighting
other processes, cost far more than threads gain (NUMBA_NOTES §1.3: one level of parallelism
at a time). :func:`set_num_threads` sets all of them together::

    nnkern.set_num_threads(1)      # e.g. one process per core, or under MPI
    nnkern.get_num_threads()       # -> 1
    nnkern.thread_info()           # every pool and its current size

* ``NUMBA_NUM_THREADS`` (default: the cores this process may run on) is read when Numba is
  imported and is the **maximum**: Numba starts that many threads once, and
  ``set_num_threads`` can only use fewer. Set the variable before importing nnkern to allow
  more, or to cap every pool from the start.
* Numba keeps its count per Python thread (a thread started later uses all
  ``NUMBA_NUM_THREADS``); the BLAS counts are process-wide.
* Work below ``nnkern._jit.PARALLEL_MIN_WORK`` elements (32768; 1M when Numba runs on its
  slower-starting workqueue layer: see nnkern/_jit.py) runs serially whatever
  the count, and GEMMs of at most :data:`BLAS_SERIAL_MAX_WORK` multiply-adds run on this thread (see
  :func:`matmul`): small pieces of work lose more to waking and waiting for a second thread
  than they gain, and lose milliseconds when another process holds the other core. Dense
  layers run their GEMMs inside their kernels (float32 as vector code, ``ops/_simd.py``, else
  OpenBLAS single-threaded), and cut products of 2**18
  multiply-adds and more over Numba's threads (``nnkern/ops/dense/cpu.py``); float32
  convolutions split larger GEMMs over the worker threads. Neither runs BLAS multi-threaded.

Warm-up
-------
Kernels compile on first use (~0.5-1.5 s each, parallel variants ~2x more) or load from Numba's
on-disk cache (about a millisecond each). :func:`warmup` compiles or loads them all up front,
so that a benchmark or a training run does not pay for it in its first steps, and reports what
it did.
"""

import os
import threading
import time

import numpy as np

# numba (and nnkern._jit, which imports it) are imported inside the functions: importing
# nnkern stays free of Numba's import time until a kernel or one of these controls is used.

__all__ = ["set_num_threads", "get_num_threads", "max_threads", "thread_info", "matmul",
           "warmup", "WarmupReport", "BLAS_SERIAL_MAX_WORK"]

#: GEMMs with at most this many multiply-adds (M*N*K) run whole on the calling thread; larger
#: ones are split over nnkern's worker threads (:func:`matmul`). 2**26 covers every product of
#: the seed 002 MLP and VGG-10 at batch 64 (at most 1.7e7, ~0.4 ms on one core), where a
#: split saved nothing (VGG-10's 64x512x512 forward: 0.39 ms whole, 0.45 ms in 4 tasks).
BLAS_SERIAL_MAX_WORK = int(os.environ.get("NNKERN_BLAS_SERIAL_MAX_WORK", str(1 << 26)))


# ---------------------------------------------------------------------------------- threads

def max_threads():
    """The most threads Numba can use in this process (``NUMBA_NUM_THREADS``, read at import)."""
    import numba
    return int(numba.config.NUMBA_NUM_THREADS)


def _blas_controllers():
    """threadpoolctl's controllers of every BLAS library loaded in this process."""
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:  # a dependency, but keep set_num_threads usable without it
        return []
    return [lc for lc in ThreadpoolController().lib_controllers if lc.user_api == "blas"]


def _load_scipy_blas():
    """Load SciPy's OpenBLAS copy (what BLAS calls inside jitted code use), if SciPy is
    installed, so that its pool gets the count too rather than starting at every core."""
    try:
        import scipy.linalg.cython_blas  # noqa: F401
    except ImportError:
        pass


def set_num_threads(n):
    """Use ``n`` threads in Numba's kernels and in every BLAS pool (NumPy's and SciPy's
    OpenBLAS). ``n`` must be between 1 and :func:`max_threads` (``NUMBA_NUM_THREADS``, read
    when Numba is imported: it is a maximum that cannot be raised at run time).

    Numba's count applies to the calling Python thread (Numba keeps one per thread); the BLAS
    counts are process-wide. Returns None.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"set_num_threads: n must be an int, got {type(n).__name__} {n!r}")
    n, limit = int(n), max_threads()
    if not 1 <= n <= limit:
        raise ValueError(f"set_num_threads: n must be between 1 and {limit}, got {n}; "
                         f"{limit} is NUMBA_NUM_THREADS, which Numba reads when it is imported "
                         "and which set_num_threads cannot raise (set the environment variable "
                         "before importing nnkern)")
    import numba

    from nnkern import _jit  # noqa: F401  (starts Numba's threads with nnkern's OpenMP wait)
    numba.set_num_threads(n)
    _load_scipy_blas()
    for lc in _blas_controllers():
        lc.set_num_threads(n)


def get_num_threads():
    """The number of threads Numba's parallel kernels use in the calling Python thread (what
    :func:`set_num_threads` set, else ``NUMBA_NUM_THREADS``)."""
    import numba

    from nnkern import _jit  # noqa: F401  (as in set_num_threads)
    return int(numba.get_num_threads())


def thread_info():
    """Every pool and its size: ``{"numba": {"threads", "max_threads", "threading_layer"},
    "blas": [{"library", "internal_api", "threading_layer", "threads"}, ...],
    "openmp_runtimes": [...], "parallel_min_work": ..., "blas_serial_max_work": ...}``.
    ``openmp_runtimes``: the OpenMP libraries loaded (Linux), two when PyTorch's bundled
    libgomp and Numba's run separately (see nnkern/_jit.py)."""
    import numba

    from nnkern import _jit
    try:
        layer = numba.threading_layer()
    except ValueError:  # no parallel kernel has run yet
        layer = None
    return {
        "numba": {"threads": get_num_threads(), "max_threads": max_threads(),
                  "threading_layer": layer},
        "blas": [{"library": lc.filepath, "internal_api": lc.internal_api,
                  "threading_layer": getattr(lc, "threading_layer", None),
                  "threads": lc.num_threads} for lc in _blas_controllers()],
        "openmp_runtimes": sorted(_jit.openmp_runtimes()),
        "parallel_min_work": _jit.PARALLEL_MIN_WORK,
        "blas_serial_max_work": BLAS_SERIAL_MAX_WORK,
    }


# ------------------------------------------------------------------- small GEMMs, one thread

class _NumpyBlas:
    """ctypes handles to ``openblas_{get,set}_num_threads`` of the OpenBLAS NumPy calls (about
    0.3 µs a call), found on first use. Off (``ok`` False) when NumPy's BLAS is not a
    pthreads OpenBLAS (MKL, an OpenMP build): its count is per thread or not ours to flip."""

    def __init__(self):
        self.ok = False
        self.get = self.set = self.path = None
        try:
            controllers = [lc for lc in _blas_controllers() if lc.internal_api == "openblas"]
            numpy_root = os.path.realpath(os.path.dirname(np.__file__))
            mine = [lc for lc in controllers
                    if os.path.realpath(lc.filepath).startswith(numpy_root)]  # numpy/.libs
            if not mine:  # wheels: site-packages/numpy.libs/
                mine = [lc for lc in controllers
                        if os.path.realpath(lc.filepath).startswith(numpy_root + ".libs")]
            if not mine and len(controllers) == 1:  # a system OpenBLAS shared by everyone
                mine = controllers
            if len(mine) != 1 or getattr(mine[0], "threading_layer", None) != "pthreads":
                return
            get = mine[0]._get_symbol("openblas_get_num_threads")
            set_ = mine[0]._get_symbol("openblas_set_num_threads")
        except Exception:  # threadpoolctl internals moved: run GEMMs as they come
            return
        if get is None or set_ is None:
            return
        self.get, self.set, self.path, self.ok = get, set_, mine[0].filepath, True


_blas = None
_blas_lock = threading.Lock()


def _numpy_blas():
    global _blas
    if _blas is None:
        with _blas_lock:
            if _blas is None:
                _blas = _NumpyBlas()
    return _blas


_serial_depth = 0   # serial_blas blocks entered and not yet left, in any thread
_serial_saved = 1   # the count the outermost block restores
_serial_lock = threading.Lock()


class serial_blas:
    """Context: NumPy's OpenBLAS single-threaded until the outermost block exits, which
    restores the count it found (nothing happens where NumPy's BLAS is not a pthreads
    OpenBLAS). For kernels that call BLAS from Numba's threads (``nnkern/ops/_blas.py``).
    The outermost block costs ~1.1 µs (three ctypes calls when the count is not 1), a nested
    one ~0.6 µs (the lock): ``Sequential`` wraps its whole forward and backward in one, so that
    an MLP's layers do not each set and restore the count (eight times per step).
    A shared base with ``_parallel.single_threaded_blas`` (the same nesting over every BLAS
    library) was tried: class attributes and hook calls made each block ~0.3 µs slower."""

    __slots__ = ()

    def __enter__(self):
        global _serial_depth, _serial_saved
        with _serial_lock:
            if _serial_depth == 0:
                blas = _blas if _blas is not None else _numpy_blas()
                _serial_saved = blas.get() if blas.ok else 1
                if _serial_saved != 1:
                    blas.set(1)
            _serial_depth += 1
        return self

    def __exit__(self, *exc):
        global _serial_depth
        with _serial_lock:
            _serial_depth -= 1
            if _serial_depth == 0 and _serial_saved != 1:
                _blas.set(_serial_saved)
        return False


def matmul(a, b, out=None):
    """``np.matmul(a, b, out=out)`` for 2-D float arrays, always on single-threaded BLAS.

    Products of at most :data:`BLAS_SERIAL_MAX_WORK` multiply-adds run on this thread; larger
    ones are cut into :data:`MATMUL_BLOCKS` blocks of output rows (or columns, when those are
    more), run as tasks on nnkern's worker threads (``nnkern/ops/_parallel.py``).

    Never multi-threaded BLAS, because OpenBLAS's idle threads spin for ~0.1 s after each
    multi-threaded call (unless ``OPENBLAS_THREAD_TIMEOUT`` was set before NumPy loaded it),
    on the cores Numba's next kernel needs: with NumPy imported before nnkern, a VGG-10 + BN
    step took 333 ms instead of 281 ms. The blocks depend on the shapes alone and each is the
    same single-threaded GEMM on any thread, so results never depend on the thread count.
    The BLAS count is restored afterwards (a ``threadpool_limits`` block keeps its effect).
    """
    M, N = a.shape[0], b.shape[1]
    if out is None:
        out = np.empty((M, N), np.result_type(a, b))
    if M * a.shape[1] * N > BLAS_SERIAL_MAX_WORK:
        return _blocked_matmul(a, b, out)
    blas = _blas if _blas is not None else _numpy_blas()
    if not blas.ok:
        return np.matmul(a, b, out=out)
    threads = blas.get()
    if threads <= 1:
        return np.matmul(a, b, out=out)
    blas.set(1)
    try:
        return np.matmul(a, b, out=out)
    finally:
        blas.set(threads)


#: Blocks of a large product (a fixed count: the split must not follow the thread count), each
#: a multiple of MATMUL_ALIGN rows or columns (whole SIMD registers of float32).
MATMUL_BLOCKS = 4
MATMUL_ALIGN = 16


def _blocked_matmul(a, b, out):
    from nnkern.ops._parallel import run_tasks, single_threaded_blas
    M, N = out.shape
    by_rows = M >= N
    size = max(M if by_rows else N, 1)
    per_block = -(-size // MATMUL_BLOCKS)                             # ceil(size / blocks)
    step = -(-per_block // MATMUL_ALIGN) * MATMUL_ALIGN               # rounded up to ALIGN
    if by_rows:   # out[i0:i1] = a[i0:i1] @ b
        calls = [(np.matmul, a[i:i + step], b, out[i:i + step]) for i in range(0, M, step)]
    else:         # out[:, j0:j1] = a @ b[:, j0:j1]
        calls = [(np.matmul, a, b[:, j:j + step], out[:, j:j + step]) for j in range(0, N, step)]
    with single_threaded_blas():
        run_tasks(calls)
    return out


# ---------------------------------------------------------------------------------- warm-up

class WarmupReport(dict):
    """What :func:`warmup` did: a dict with ``seconds`` (total), ``ops`` ({op: seconds}),
    ``compiled`` and ``loaded`` (kernel signatures compiled now / loaded from Numba's cache),
    ``signatures`` (all signatures ready after it), ``dtypes``, ``variants``, ``cache_dir``.
    ``str(report)`` is a one-line summary."""

    def __str__(self):
        return (f"nnkern.warmup: {self['signatures']} kernel signatures ready "
                f"({self['compiled']} compiled, {self['loaded']} loaded from the cache) for "
                f"{', '.join(self['dtypes'])}, {' and '.join(self['variants'])} variants, in "
                f"{self['seconds']:.2f} s; cache: {self['cache_dir']}")


def _exercises():
    from nnkern import _warmup_ops
    return _warmup_ops.EXERCISES


def _dispatchers():
    """Every Numba dispatcher of nnkern's loaded CPU kernel modules (serial and parallel)."""
    import sys

    from numba.core.dispatcher import Dispatcher

    from nnkern import _jit
    found = {}
    for name, module in list(sys.modules.items()):
        if module is None or not name.startswith("nnkern."):
            continue
        for value in list(vars(module).values()):
            if isinstance(value, _jit.CpuKernel):
                for d in (value.serial, value.parallel):
                    found[id(d)] = d
            elif isinstance(value, Dispatcher):
                found[id(value)] = value
    return list(found.values())


def _cache_counts(dispatchers):
    hits = misses = sigs = 0
    for d in dispatchers:
        stats = d.stats
        hits += sum(stats.cache_hits.values())
        misses += sum(stats.cache_misses.values())
        sigs += len(d.overloads)
    return hits, misses, sigs


def warmup(ops=None, *, dtypes=("float32",), parallel=True, serial=True, verbose=False):
    """Compile, or load from Numba's on-disk cache, nnkern's CPU kernels by running every op
    (forward and backward, each option that selects another kernel) once on tiny inputs, and
    the fused layer paths and optimizer rules likewise.

    ops: None (all) or a list of names from ``warmup_ops()`` ("dense", "conv2d", "pool2d",
    "batch_norm", "activation", "dropout", "shift_scale", "loss", "update", "layers").
    dtypes: float dtypes to compile for (float64 is only needed for gradient checks and
    float64 training). parallel / serial: which variants of each kernel (both by default:
    work below ``PARALLEL_MIN_WORK`` elements runs the serial one, larger work the parallel
    one). verbose: print one line per op.

    Returns a :class:`WarmupReport`. With a warm cache this takes well under a second per
    dtype; with an empty one, minutes (every kernel compiles). Not thread-safe: run it before
    starting threads that use nnkern (it switches ``PARALLEL_MIN_WORK`` while it runs).
    """
    import numba

    from nnkern import _jit
    table = _exercises()
    if ops is None:
        names = list(table)
    else:
        names = [ops] if isinstance(ops, str) else list(ops)
        unknown = [n for n in names if n not in table]
        if unknown:
            raise ValueError(f"warmup: unknown ops {unknown}; choose from {sorted(table)}")
    if isinstance(dtypes, str):
        dtypes = (dtypes,)
    dts = []
    for d in dtypes:
        dt = np.dtype(d)
        if dt not in (np.float32, np.float64):
            raise TypeError(f"warmup: dtypes must be float32 and/or float64, got {dt}")
        dts.append(dt)
    variants = [v for v, on in (("serial", serial), ("parallel", parallel)) if on]
    if not variants:
        raise ValueError("warmup: parallel and serial are both False: nothing to compile")
    start = time.perf_counter()
    before = _cache_counts(_dispatchers())
    seconds = {}
    saved = _jit.PARALLEL_MIN_WORK
    try:
        for name in names:
            t0 = time.perf_counter()
            for variant in variants:
                _jit.PARALLEL_MIN_WORK = 0 if variant == "parallel" else 1 << 62
                for dt in dts:
                    table[name](dt)
            seconds[name] = time.perf_counter() - t0
            if verbose:
                print(f"nnkern.warmup: {name:12s} {seconds[name]:7.2f} s", flush=True)
    finally:
        _jit.PARALLEL_MIN_WORK = saved
    hits, misses, sigs = _cache_counts(_dispatchers())
    return WarmupReport(
        seconds=time.perf_counter() - start, ops=seconds, compiled=misses - before[1],
        loaded=hits - before[0], signatures=sigs, dtypes=[str(d) for d in dts],
        variants=variants, cache_dir=numba.config.CACHE_DIR or "(Numba's default: __pycache__)")


def warmup_ops():
    """The op names :func:`warmup` accepts."""
    return sorted(_exercises())
