"""How nnkern compiles its CPU kernels: one policy, in one place.

* ``fastmath`` without ``nnan``/``ninf``: reductions still vectorise (``reassoc``), but
  ``np.isnan`` keeps working (``fastmath=True`` folds it to ``False``; NUMBA_NOTES §1.3).
* ``error_model="numpy"``: no zero-division checks inside inner loops.
* ``cache=True``, in a directory keyed by Numba's version and a hash of ``nnkern/ops`` (where
  every jitted function lives). Numba's own cache notices edits to a kernel's file but not to
  jitted helpers it calls in other files; keying the directory on the whole kernel tree does.
  ``NUMBA_CACHE_DIR`` (if set) wins; ``NNKERN_JIT_CACHE=0`` turns caching off.
* Each kernel is compiled from one source into two functions with distinct names, a serial one
  for small work and a ``prange``-parallel one for large work. They must be distinct
  functions because Numba's cache key ignores compile options (numba#6845): the same function
  compiled serial and parallel would load each other's machine code.
* Numba's threads start when this module is imported, with a brief OpenMP spin-wait that
  PyTorch's OpenMP in the same process does not see (``_start_threads``).
"""

import hashlib
import os
import types
from pathlib import Path

import numba

#: Below this many elements of work a kernel runs serially: a parallel region costs ~2 µs to
#: start on these machines, which a 2-core split only pays back from about 3e4-5e4 elements.
PARALLEL_MIN_WORK = int(os.environ.get("NNKERN_PARALLEL_MIN_WORK", "32768"))

FASTMATH = {"reassoc", "contract", "nsz", "arcp"}
CACHE = os.environ.get("NNKERN_JIT_CACHE", "1") != "0"


def _kernel_tree_hash():
    ops = Path(__file__).resolve().parent / "ops"
    digest = hashlib.sha1()
    for path in sorted(ops.rglob("*.py")):
        digest.update(path.relative_to(ops).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()[:12]


def _set_cache_dir():
    if not CACHE or os.environ.get("NUMBA_CACHE_DIR"):
        return
    root = os.environ.get("NNKERN_CACHE_DIR") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "nnkern")
    numba.config.CACHE_DIR = os.path.join(root, f"numba-{numba.__version__}-{_kernel_tree_hash()}")


_set_cache_dir()  # before any kernel is decorated: the cache locator is chosen at decoration


def _start_threads():
    """Start Numba's thread pool now, with OpenMP's waiting set for nnkern.

    OpenMP threads busy-wait after each parallel region (libgomp: ~300,000 spins, about a
    millisecond). nnkern alternates Numba regions with OpenBLAS calls and the conv's worker
    threads, which the spinning threads starve: on 2 cores a CNN step took 90 ms instead of
    31 ms, a VGG-10 step 1.2 s instead of 0.6 s. GOMP_SPINCOUNT=10000 (measured: a region
    still starts in ~2 µs 0.1 ms after the last one, then the threads sleep and one costs
    ~45 µs after 0.3 ms idle) cures it. libgomp reads it once, when it is
    loaded, so it is set only while Numba loads its OpenMP layer and then removed again:
    PyTorch ships its own libgomp, which must keep its own default (with 10000 in its
    environment, torch's small ops ran 5x slower in the same process).

    If an OpenMP runtime is already loaded (PyTorch imported first), Numba's OpenMP layer binds
    to that one, already initialised with the default spinning (a VGG-10 + BN step: 345 ms
    instead of 293 ms). Then nnkern takes Numba's "workqueue" layer, whose threads sleep
    between kernels (314 ms), though each parallel launch costs ~0.1-0.2 ms on 2 cores (an
    empty region: 0.11-0.13 ms, against ~2 µs back to back on OpenMP). A GOMP_SPINCOUNT or
    NUMBA_THREADING_LAYER of the user's own is left as it is.
    """
    from numba.np.ufunc import parallel
    if getattr(parallel, "_is_initialized", False):
        return  # somebody already started Numba's threads: their choice stands
    if not os.environ.get("NUMBA_THREADING_LAYER") and _openmp_loaded():
        numba.config.THREADING_LAYER = "workqueue"
    own = "GOMP_SPINCOUNT" not in os.environ
    if own:
        os.environ["GOMP_SPINCOUNT"] = "10000"
    try:
        numba.get_num_threads()  # loads the threading layer (and libgomp) and starts the pool
    finally:
        if own:
            os.environ.pop("GOMP_SPINCOUNT", None)


def _openmp_loaded():
    """Whether an OpenMP runtime is already in this process (Linux; elsewhere: False)."""
    try:
        with open("/proc/self/maps") as maps:
            text = maps.read()
    except OSError:
        return False
    return any(name in text for name in ("libgomp", "libiomp", "libomp"))


_start_threads()

# On Numba's "workqueue" layer (taken above when PyTorch was imported first) a parallel region
# costs ~0.1 ms to start on 2 cores, against ~2 µs back to back (~45 µs from sleep) on OpenMP:
# kernels then go parallel only from 1M elements.
if numba.threading_layer() == "workqueue" and "NNKERN_PARALLEL_MIN_WORK" not in os.environ:
    PARALLEL_MIN_WORK = 1 << 20

_OPTIONS = dict(cache=CACHE, error_model="numpy", fastmath=FASTMATH, nogil=True)


def _renamed(fn, suffix):
    """A copy of ``fn`` under another name, so that it gets its own cache entry."""
    copy = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + suffix,
                              fn.__defaults__, fn.__closure__)
    copy.__qualname__ = fn.__qualname__ + suffix
    copy.__module__ = fn.__module__
    copy.__doc__ = fn.__doc__
    return copy


class CpuKernel:
    """A kernel compiled serially and in parallel; ``for_size(work)`` picks one.

    Write the body with ``numba.prange`` over independent outputs: in the serial variant
    ``prange`` is a plain ``range``.
    """

    def __init__(self, fn, contract=True):
        options = dict(_OPTIONS, fastmath=FASTMATH if contract else FASTMATH - {"contract"})
        self.serial = numba.njit(**options)(_renamed(fn, "_serial"))
        self.parallel = numba.njit(parallel=True, **options)(_renamed(fn, "_parallel"))
        self.__name__ = fn.__name__
        self.__doc__ = fn.__doc__

    def for_size(self, work):
        """The variant to run for ``work`` elements (parallel from PARALLEL_MIN_WORK up)."""
        return self.parallel if work >= PARALLEL_MIN_WORK else self.serial

    def __call__(self, *args):
        """Run serially (for callers whose work is always small, e.g. per-channel vectors)."""
        return self.serial(*args)


def cpu_kernel(fn=None, *, contract=True):
    """Decorator: compile ``fn`` as a :class:`CpuKernel` (serial and parallel variants).

    ``@cpu_kernel(contract=False)``: no fused multiply-adds. LLVM contracts ``a * b + c``
    differently in the two variants (the parallel one is a separately optimised loop body), so
    an elementwise kernel whose variants must give the same bits (the SGD kernels, which
    split tensors by thread) rounds each product and sum on its own, as PyTorch's op-by-op
    code does."""
    if fn is None:
        return lambda f: CpuKernel(f, contract)
    return CpuKernel(fn, contract)


def cpu_serial(fn):
    """Decorator: a serial, cached njit function (kernels that are never worth threading)."""
    return numba.njit(**_OPTIONS)(fn)


def cpu_inline(fn):
    """Decorator: a jitted scalar helper for use inside kernels (compiled into its callers)."""
    return numba.njit(error_model="numpy", fastmath=FASTMATH, inline="always")(fn)
