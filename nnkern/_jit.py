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

    OpenMP threads busy-wait after each parallel region (libgomp's default: 300,000 spins,
    ~5 ms of a core here, measured as the CPU time PyTorch's threads take after its last op).
    nnkern alternates Numba regions with OpenBLAS calls and the conv's worker threads, which
    the spinning threads starve: on 2 cores a VGG-10 + BN step takes 326 ms instead of 277, the
    small CNN's 19.4 instead of 16.3 (2-3x before the convolutions' rework).
    GOMP_SPINCOUNT=10000 (measured: a region still starts in ~2 µs 0.1 ms after the last one,
    then the threads sleep and one costs ~45 µs after 0.3 ms idle) cures it. libgomp reads it
    once, when it is loaded, so it is set only while Numba loads its OpenMP layer and then
    removed again:
    PyTorch's bundled libgomp, if it loads later, reads its own default (with 10000 in its
    environment, torch's small ops ran 5x slower). But PyTorch imported after nnkern has
    started its threads does not load its copy: it binds to the libgomp already loaded (same
    soname) and shares the short spin-wait (its MLP 3x100 + BN step 0.89 -> 1.00-1.03 ms).
    Hence ``python -m nnkern bench`` imports torch first.

    If an OpenMP runtime is already loaded (PyTorch imported first), Numba's OpenMP layer
    would bind to it (its symbols come first in the process's global scope), initialised with
    the default spinning. So the layer's library is loaded first with RTLD_DEEPBIND
    (``_own_openmp``): it then binds to the libgomp it was linked against, a runtime of its own
    that reads GOMP_SPINCOUNT, beside PyTorch's copy. Only if that libgomp is the very one
    already loaded (one runtime, shared) does nnkern take Numba's "workqueue" layer, whose
    threads sleep between kernels, though each parallel launch costs ~0.1-0.2 ms on 2 cores (an
    empty region: 0.11-0.13 ms, against ~2 µs back to back on OpenMP). Measured with PyTorch
    imported first: an MLP 3x100 + BN step 0.50 ms on workqueue, 0.36 ms on a runtime of its
    own (0.40 sampled right after torch's steps, whose threads still spin); a VGG-10 + BN step
    322 and 290-305 ms (bound to PyTorch's spinning runtime: 0.37 and 325-335 ms).
    A GOMP_SPINCOUNT or NUMBA_THREADING_LAYER of the user's own is left as it is.
    """
    from numba.np.ufunc import parallel
    if getattr(parallel, "_is_initialized", False):
        return  # somebody already started Numba's threads: their choice stands
    own = "GOMP_SPINCOUNT" not in os.environ
    if own:
        os.environ["GOMP_SPINCOUNT"] = "10000"
    try:
        if not os.environ.get("NUMBA_THREADING_LAYER") and openmp_runtimes() \
                and not _own_openmp():
            numba.config.THREADING_LAYER = "workqueue"
        numba.get_num_threads()  # loads the threading layer (and libgomp) and starts the pool
    finally:
        if own:
            os.environ.pop("GOMP_SPINCOUNT", None)


def openmp_runtimes():
    """The OpenMP runtimes mapped into this process, as file paths (Linux; elsewhere none)."""
    try:
        with open("/proc/self/maps") as maps:
            lines = maps.read().splitlines()
    except OSError:
        return set()
    paths = set()
    for line in lines:
        fields = line.split(maxsplit=5)  # address, perms, offset, dev, inode, path
        if len(fields) == 6 and any(n in fields[5] for n in ("libgomp", "libiomp", "libomp")):
            paths.add(os.path.realpath(fields[5]))
    return paths


def _own_openmp():
    """Load Numba's OpenMP layer with RTLD_DEEPBIND, before Numba imports it (the import then
    finds it loaded), so that it binds to the libgomp it was linked against rather than to
    the runtime already in the global scope. True when that brought a runtime of its own."""
    import ctypes
    import importlib.util
    deepbind = getattr(os, "RTLD_DEEPBIND", 0)
    try:
        spec = importlib.util.find_spec("numba.np.ufunc.omppool")
    except ImportError:
        spec = None
    if not deepbind or spec is None or not spec.origin:
        return False
    before = openmp_runtimes()
    try:
        ctypes.CDLL(spec.origin, mode=os.RTLD_NOW | deepbind)
    except OSError:
        return False  # no libgomp to link: Numba falls back to another layer by itself
    return bool(openmp_runtimes() - before)


_start_threads()

# On Numba's "workqueue" layer (taken above when Numba's libgomp was already loaded) a region
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
