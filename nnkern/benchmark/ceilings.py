"""This machine's own ceilings, measured in the same run as the kernels.

* compute: float32 GEMM through NumPy's BLAS (``np.matmul`` of two n×n float32 matrices, n = 2048;
  512 with --quick), BLAS threads limited to the benchmark's thread count. Compute-bound
  kernels (conv, dense) are quoted as a percentage of it.
* memory: large-array copy bandwidth, ``np.copyto`` of a 256 MiB float32 array (32 MiB with
  --quick), counted as read + write (2 × 256 MiB per copy). NumPy copies on one thread, so the
  copy is also run split into one contiguous chunk per thread (each thread's ``np.copyto``
  releases the GIL); the ceiling is the faster of the two. Memory-bound kernels are quoted as a
  percentage of it.

On ``--device cuda`` the ceilings are a device-to-device copy of the same size (Numba) and, when
torch has CUDA, a float32 GEMM with TF32 off.
"""

from concurrent.futures import ThreadPoolExecutor

import numpy as np

from nnkern.benchmark import counting
from nnkern.benchmark.stats import Timed, interleave, rate


def _measure(clock, fn, repeat, target):
    t = Timed(clock, fn, warmup=1, target=target, max_number=100)
    interleave([t], repeat)
    return t.result()


def sgemm_ceiling(clock, size, repeat, target=0.05):
    rng = np.random.default_rng(0)
    a = rng.standard_normal((size, size), dtype=np.float32)
    b = rng.standard_normal((size, size), dtype=np.float32)
    c = np.empty((size, size), np.float32)
    counts = counting.sgemm(size, size, size)
    stats = _measure(clock, lambda: np.matmul(a, b, out=c), repeat, target)
    return {"what": f"np.matmul float32 {size}x{size} @ {size}x{size} (NumPy's BLAS)",
            "size": size, **counts, "time": stats,
            "gflops": rate(counts["flops"], stats["median"]),
            "gflops_best": rate(counts["flops"], stats["min"])}


def copy_ceiling(clock, size_mib, repeat, threads, target=0.05):
    n = size_mib * (1 << 20) // 4
    src = np.ones(n, np.float32)
    dst = np.zeros(n, np.float32)
    counts = counting.copy(src.nbytes)
    single = _measure(clock, lambda: np.copyto(dst, src), repeat, target)
    result = {"what": f"np.copyto of {size_mib} MiB float32, read + write counted",
              "size_mib": size_mib, **counts, "single_thread": single,
              "single_gbs": rate(counts["bytes"], single["median"])}
    best = single
    if threads > 1:
        bounds = np.linspace(0, n, threads + 1).astype(np.int64)
        parts = [(dst[lo:hi], src[lo:hi]) for lo, hi in zip(bounds[:-1], bounds[1:])]
        with ThreadPoolExecutor(threads) as pool:
            def threaded():
                list(pool.map(lambda p: np.copyto(*p), parts))
            multi = _measure(clock, threaded, repeat, target)
        result["threaded"] = multi
        result["threaded_gbs"] = rate(counts["bytes"], multi["median"])
        if multi["median"] < single["median"]:
            best = multi
    result["time"] = best
    result["gbs"] = rate(counts["bytes"], best["median"])
    result["method"] = "threaded" if best is not single else "single thread"
    return result


def cuda_copy_ceiling(clock, size_mib, repeat, target=0.05):
    from numba import cuda
    n = size_mib * (1 << 20) // 4
    src = cuda.to_device(np.ones(n, np.float32))
    dst = cuda.device_array(n, np.float32)
    counts = counting.copy(n * 4)
    stats = _measure(clock, lambda: dst.copy_to_device(src), repeat, target)
    return {"what": f"device-to-device copy of {size_mib} MiB float32 (Numba), read + write",
            "size_mib": size_mib, **counts, "time": stats,
            "gbs": rate(counts["bytes"], stats["median"])}


def cuda_sgemm_ceiling(torch, clock, size, repeat, target=0.05):
    if torch is None:
        return {"skipped": "no torch with CUDA: no GEMM reference on the GPU"}
    a = torch.randn(size, size, device="cuda")
    b = torch.randn(size, size, device="cuda")
    c = torch.empty(size, size, device="cuda")
    counts = counting.sgemm(size, size, size)
    stats = _measure(clock, lambda: torch.matmul(a, b, out=c), repeat, target)
    return {"what": f"torch.matmul float32 {size}x{size} on CUDA, TF32 off", "size": size,
            **counts, "time": stats, "gflops": rate(counts["flops"], stats["median"]),
            "gflops_best": rate(counts["flops"], stats["min"])}
