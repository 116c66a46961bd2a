"""The environment a result was measured in, and the thread settings applied to every pool.

Numbers from different machines, thread counts or loads are not comparable, so every result
file carries this record: CPU model and core counts, Numba's threading layer and thread count,
every BLAS/OpenMP pool threadpoolctl sees, library versions, the command, the date, the git
commit, the thread-related environment variables and the load average before and after.
"""

import datetime
import os
import platform
import subprocess
import sys
from pathlib import Path

THREAD_VARIABLES = ("NUMBA_NUM_THREADS", "NUMBA_THREADING_LAYER", "OMP_NUM_THREADS",
                    "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS", "GOMP_SPINCOUNT",
                    "OPENBLAS_THREAD_TIMEOUT", "NNKERN_PARALLEL_MIN_WORK", "NUMBA_CACHE_DIR",
                    "NNKERN_JIT_CACHE", "NUMBA_ENABLE_CUDASIM")


def cpu_model():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def loadavg():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except (OSError, AttributeError):
        return None


def available_cores():
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:
        return os.cpu_count()


def max_threads():
    """The most threads Numba can use in this process (NUMBA_NUM_THREADS, read at import)."""
    import numba
    return int(numba.config.NUMBA_NUM_THREADS)


class ThreadSettings:
    """Apply one thread count to Numba and every BLAS pool (and torch, when it is loaded).

    Uses ``nnkern.set_num_threads`` when nnkern provides it, otherwise ``numba.set_num_threads``
    plus threadpoolctl's limits (which cover NumPy's and SciPy's OpenBLAS copies alike).
    """

    def __init__(self, threads):
        import numba
        self.threads = int(threads)
        limit = max_threads()
        if not 1 <= self.threads <= limit:
            raise ValueError(f"--threads must be between 1 and {limit} (NUMBA_NUM_THREADS, read "
                             f"when Numba is imported), got {self.threads}")
        import nnkern
        setter = getattr(nnkern, "set_num_threads", None)
        self.via = "nnkern.set_num_threads" if setter else "numba.set_num_threads + threadpoolctl"
        self._limits = None
        if setter is not None:
            setter(self.threads)
        else:
            numba.set_num_threads(self.threads)
        try:  # also when nnkern has its setter: covers pools loaded since
            from threadpoolctl import threadpool_limits
            self._limits = threadpool_limits(self.threads)
        except ImportError:
            pass

    def apply_torch(self, torch):
        torch.set_num_threads(self.threads)


def git_commit():
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=10)
        commit = out.stdout.strip() or None
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "-uno", "--",
                                "nnkern"], capture_output=True, text=True, timeout=10)
        return {"commit": commit, "nnkern_dirty": bool(dirty.stdout.strip())}
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "nnkern_dirty": None}


def threading_layer():
    """Numba's threading layer (only known once a parallel kernel has run)."""
    import numba
    try:
        return numba.threading_layer()
    except ValueError:
        return "not initialised (no parallel kernel ran)"


def blas_pools():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    keep = ("user_api", "internal_api", "prefix", "version", "num_threads", "threading_layer",
            "architecture", "filepath")
    return [{k: pool.get(k) for k in keep} for pool in threadpool_info()]


def command_line(argv=None):
    argv = sys.argv[1:] if argv is None else argv
    return " ".join(["python -m nnkern bench", *argv]) if argv is not None else None


def environment(threads, device, torch_info, command):
    """The environment record (call after the measurements: threading layer and pools are
    only known once kernels have run)."""
    import numba
    import numpy as np
    versions = {"python": platform.python_version(), "numpy": np.__version__,
                "numba": numba.__version__}
    for name in ("scipy", "llvmlite", "threadpoolctl", "numba_cuda"):
        try:
            versions[name] = __import__(name).__version__
        except (ImportError, AttributeError):
            versions[name] = None
    import nnkern
    from nnkern import _jit
    versions["nnkern"] = nnkern.__version__
    versions["torch"] = torch_info.get("version")
    return {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "command": command,
        "host": platform.node(),
        "platform": platform.platform(),
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cores_available": available_cores(),
        "device": device,
        "threads": threads.threads,
        "threads_set_via": threads.via,
        "numba_num_threads": numba.get_num_threads(),
        "numba_max_threads": max_threads(),
        "numba_threading_layer": threading_layer(),
        "openmp_runtimes": sorted(_jit.openmp_runtimes()),  # two: torch's and Numba's own
        "blas_pools": blas_pools(),
        "torch_threads": torch_info.get("threads"),
        "versions": versions,
        "git": git_commit(),
        "env": {k: os.environ.get(k) for k in THREAD_VARIABLES if k in os.environ},
    }
