"""The tiled CUDA GEMM core (nnkern/ops/_gemm_cuda.py) against NumPy.

Simulator tests keep M, N, K tiny and off the tile sizes: one 64x64 block of 256 simulated
threads costs ~0.15 s per K tile. The last test compiles the tiled kernels for sm_90 in a
subprocess without the simulator and links them with ptxas, to check that the register tiling
held (accumulators in registers: no stack frame, no spills), which no simulator can tell.
"""

import numpy as np
import pytest

import nnkern
from nnkern.backend import to_host
from nnkern.ops import _gemm_cuda as G
from nnkern.testing import assert_close

pytestmark = pytest.mark.cuda


def _dev(a):
    return nnkern.to_device(np.ascontiguousarray(a), "cuda")


def _operands(rng, M, N, K, trans_a, trans_b, dtype):
    a = rng.standard_normal((M, K)).astype(dtype)
    b = rng.standard_normal((K, N)).astype(dtype)
    return a, b, (a.T if trans_a else a), (b.T if trans_b else b)


@pytest.mark.parametrize("M, N, K, trans_a, trans_b, dtype", [
    (1, 1, 1, False, False, np.float32),
    (5, 70, 3, False, True, np.float32),
    (33, 17, 40, True, False, np.float32),
    (66, 9, 21, True, True, np.float32),
    (7, 13, 35, False, False, np.float64),
    (19, 65, 5, True, False, np.float64),
    (20, 3, 17, False, True, np.float64),
    (2, 11, 70, True, True, np.float64),
])
def test_gemm_matches_numpy_for_every_transpose(rng, M, N, K, trans_a, trans_b, dtype):
    a, b, sa, sb = _operands(rng, M, N, K, trans_a, trans_b, dtype)
    c = _dev(np.full((M, N), np.nan, dtype))               # beta = 0 never reads c
    assert G.gemm(_dev(sa), _dev(sb), c, trans_a=trans_a, trans_b=trans_b) is c
    got = to_host(c)
    assert got.dtype == dtype
    assert_close(got, a.astype(np.float64) @ b, scale=K / 10 + 1)


@pytest.mark.parametrize("tile, trans_a, trans_b", [
    ((128, 128), False, True), ((64, 128), True, False), ((128, 64), False, False)])
def test_larger_tiles(rng, tile, trans_a, trans_b):
    M, N, K = 70, 45, 20
    a, b, sa, sb = _operands(rng, M, N, K, trans_a, trans_b, np.float32)
    c = G.gemm(_dev(sa), _dev(sb), _dev(np.zeros((M, N), np.float32)), trans_a=trans_a,
               trans_b=trans_b, tile=tile)
    assert_close(to_host(c), a.astype(np.float64) @ b, scale=3)


def test_float64_keeps_the_64_tile():
    assert (G.pick_tile(4096, 4096, np.float64).BM, G.pick_tile(4096, 4096, np.float64).BN) \
        == (64, 64)
    assert G.pick_tile(4096, 4096, np.float32).name == "128x128"
    assert G.pick_tile(64, 100_000, np.float32).name == "64x128"
    assert G.pick_tile(100, 100, np.float32).name == "64x64"
    x = _dev(np.ones((3, 3)))
    with pytest.raises(ValueError, match="64x64 tile only"):
        G.gemm(x, x, x, tile=(128, 128))


def test_bias_alpha_beta_and_shape_errors(rng):
    M, N, K = 9, 21, 6
    a, b, sa, sb = _operands(rng, M, N, K, False, True, np.float32)
    c0 = rng.standard_normal((M, N)).astype(np.float32)
    bias_n = rng.standard_normal(N).astype(np.float32)
    bias_m = rng.standard_normal(M).astype(np.float32)
    ab = a.astype(np.float64) @ b
    got = G.gemm(_dev(sa), _dev(sb), _dev(c0), trans_b=True, alpha=0.5, bias=_dev(bias_n))
    assert_close(to_host(got), 0.5 * ab + bias_n)
    got = G.gemm(_dev(sa), _dev(sb), _dev(c0), trans_b=True, alpha=2, beta=-1.5,
                 bias=_dev(bias_m), bias_on="rows")
    assert_close(to_host(got), 2 * ab - 1.5 * c0 + bias_m[:, None], scale=2)
    with pytest.raises(ValueError, match=r"op\(a\) is 9x6, op\(b\) is 21x6"):
        G.gemm(_dev(sa), _dev(sb), _dev(c0))


def test_three_dimensional_operand_views(rng):
    # a (P, R, Q) array is the R x (P*Q) matrix with element (r, w) at [w // Q, r, w % Q]:
    # y (N, K, L) = w (K, C) @ x (N, C, L) is one GEMM, as in a 1x1 convolution
    n, k, c, length = 3, 5, 4, 7
    w = rng.standard_normal((k, c))
    x = rng.standard_normal((n, c, length))
    y = G.gemm(_dev(w), _dev(x), _dev(np.zeros((n, k, length))))
    assert_close(to_host(y), np.einsum("kc,ncl->nkl", w, x))
    dy = rng.standard_normal((n, k, length))
    dw = G.gemm(_dev(dy), _dev(x), _dev(np.zeros((k, c))), trans_b=True)   # reduce over n, l
    assert_close(to_host(dw), np.einsum("nkl,ncl->kc", dy, x))
    dx = G.gemm(_dev(w), _dev(dy), _dev(np.zeros((n, c, length))), trans_a=True)
    assert_close(to_host(dx), np.einsum("kc,nkl->ncl", w, dy))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_split_k_is_exact_and_deterministic(rng, monkeypatch, dtype):
    monkeypatch.setattr(G, "SPLIT_MIN_K", 16)
    M, N, K = 6, 10, 70
    assert G.pick_split(M, N, K, G.TILES[(64, 64)]) == (3, 32)   # chunks 32 + 32 + 6 of K
    a, b, sa, sb = _operands(rng, M, N, K, True, False, dtype)
    bias = rng.standard_normal(N).astype(dtype)
    runs = [to_host(G.gemm(_dev(sa), _dev(sb), _dev(np.zeros((M, N), dtype)), trans_a=True,
                           bias=_dev(bias))) for _ in range(2)]
    assert_close(runs[0], a.astype(np.float64) @ b + bias, scale=K / 10)
    assert runs[0].tobytes() == runs[1].tobytes()


def test_split_k_and_tile_choice_depend_on_shapes_only():
    cfg = G.TILES[(64, 64)]
    assert G.pick_split(64, 576, 32 * 1024, cfg) == (15, 2192)   # conv dw: 9 tiles -> 135 blocks
    assert G.pick_split(1024, 1024, 4096, cfg) == (1, 4096)      # 256 tiles: no split
    assert G.pick_split(10, 10, 255, cfg) == (1, 256)            # too short to split


# -------------------------------------------------------------------------------------------
# Compile check for a real GPU: register tiling held (no GPU needed: NVVM + nvJitLink)
# -------------------------------------------------------------------------------------------

_COMPILE_CHECK = r"""
import os
import sys
from numba import cuda, types
try:
    cuda.compile_ptx(lambda a: None, "void(float32[::1])", cc=(9, 0))
    from cuda.bindings import nvjitlink
except Exception as e:  # numba-cuda without its [cu12]/[cu13] extra
    print("SKIP", e)
    sys.exit(0)
from nnkern.ops import _gemm_cuda as G
from nnkern.ops.conv2d import cuda as conv

f32, i64, i32, b1 = types.float32, types.int64, types.int32, types.boolean
def arr(nd, dt=f32):
    return types.Array(dt, nd, "C")
# every tile shape with NNKERN_CHECK_ALL_TILES=1 (~75 s on 2 cores), else the 128x128 tile (the
# most registers) and the 64x64 GEMM
everything = os.environ.get("NNKERN_CHECK_ALL_TILES") == "1"
kernels = []
for cfg in G.TILES.values():
    if not everything and cfg.name != "128x128":
        kernels.append((cfg.gemm[False, False], (arr(3), arr(3), arr(1), arr(1), arr(1), f32)
                        + (i64,) * 5 + (b1, i64)))
        continue
    for k in cfg.gemm.values():
        kernels.append((k, (arr(3), arr(3), arr(1), arr(1), arr(1), f32)
                        + (i64,) * 5 + (b1, i64)))
    for kind, k in conv._KERNELS[cfg.name].items():
        srcs = {"fwd": (arr(1), arr(3)), "wgrad": (arr(3), arr(1)), "dgrad": (arr(1), arr(1))}
        ints = (i64,) * (12 if kind == "dgrad" else 13)
        kernels.append((k, srcs[kind] + (arr(1), arr(1), arr(1), arr(2, i32)) + ints + (b1, i64)))
bad = []
for k, sig in kernels:
    name = k.py_func.__name__
    ptx, _ = cuda.compile_ptx(k.py_func, sig, cc=(9, 0))
    h = nvjitlink.create(2, ["-arch=sm_90", "-verbose"])
    data = ptx.encode()
    nvjitlink.add_data(h, nvjitlink.InputType.PTX, data, len(data), "kernel.ptx")
    nvjitlink.complete(h)
    log = bytearray(nvjitlink.get_info_log_size(h))
    nvjitlink.get_info_log(h, log)
    nvjitlink.destroy(h)
    log = log.decode(errors="replace")
    if ".f64" in ptx:
        bad.append(f"{name}: float64 instructions in a float32 kernel")
    if " 0 bytes stack frame" not in log or " 0 bytes spill stores" not in log:
        bad.append(f"{name}: local memory (accumulators not in registers):\n{log}")
print("CHECKED", len(kernels))
print("\n".join(bad))
sys.exit(1 if bad else 0)
"""


def test_tiled_kernels_keep_accumulators_in_registers():
    # The simulator checks no types and no register allocation: compile every tiled kernel
    # (GEMM and conv, every tile shape, float32) for sm_90 in a process without the simulator
    # and link it with ptxas (nvJitLink): a kernel whose loops the compiler failed to unroll
    # keeps its accumulators in local memory (a stack frame), ~10x slower.
    import os
    import subprocess
    import sys
    env = {k: v for k, v in os.environ.items()
           if k not in ("NUMBA_ENABLE_CUDASIM", "NNKERN_RECORD_CUDA_SIGNATURES")}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    run = subprocess.run([sys.executable, "-c", _COMPILE_CHECK], env=env, capture_output=True,
                         text=True, timeout=600)
    if run.stdout.startswith("SKIP"):
        pytest.skip(f"NVVM / nvJitLink not available: {run.stdout[5:].strip()}")
    assert run.returncode == 0, run.stdout + run.stderr
    assert "CHECKED 10" in run.stdout or "CHECKED 28" in run.stdout
